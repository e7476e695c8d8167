// An AssemblyScript filter for Meshwork (and Envoy), built with @solo-io/proxy-runtime 0.1.8 from npm: tags
// requests with `x-as-filter: <plugin config>` and responses with `x-as-response: 1`, and answers requests that
// carry `x-as-block` with a local 401. The WasmPlugin's pluginName must be "meshwork_as" (the root id this SDK
// selects its root context by).
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context, send_local_response,
  GrpcStatusValues,
} from "@solo-io/proxy-runtime";
// Not re-exported by the package's index in 0.1.8; the runtime module has them.
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";

class TagRoot extends RootContext {
  tag: string = "";

  // The SDK's own onConfigure passes the size where an out-pointer belongs (fixed upstream after 0.1.8); read the
  // configuration buffer directly instead.
  onConfigure(configuration_size: u32): bool {
    this.tag = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
    return this.tag.length > 0;
  }

  createContext(context_id: u32): Context {
    return new Tag(context_id, this);
  }
}

class Tag extends Context {
  tag: string;

  constructor(context_id: u32, root: TagRoot) {
    super(context_id, root);
    this.tag = root.tag;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (stream_context.headers.request.get("x-as-block") != "") {
      send_local_response(401, "blocked", String.UTF8.encode("blocked by the AssemblyScript filter\n"), [], GrpcStatusValues.Unauthenticated);
      return FilterHeadersStatusValues.StopIteration;
    }
    stream_context.headers.request.add("x-as-filter", this.tag);
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-response", "1");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new TagRoot(context_id); }, "meshwork_as");
