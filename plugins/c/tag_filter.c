/*
 * A C filter for Meshwork (and Envoy): tags requests with `x-c-filter: <plugin config>`, and answers requests that
 * carry `x-block` with a local 403. Built with clang for wasm32-wasi against plugin-sdk/c/proxy_wasm.h.
 */
#include "proxy_wasm.h"

static char *tag = NULL;

PROXY_WASM_EXPORT(proxy_on_configure)
uint32_t proxy_on_configure(uint32_t root_id, uint32_t config_size) {
  free(tag);
  tag = proxy_plugin_config();
  if (tag == NULL) {
    proxy_log_str(PROXY_LOG_ERROR, "tag_filter: pluginConfig (the tag) is required");
    return 0;
  }
  return 1;
}

PROXY_WASM_EXPORT(proxy_on_request_headers)
int32_t proxy_on_request_headers(uint32_t context_id, uint32_t headers, uint32_t end_of_stream) {
  if (proxy_has_request_header("x-block")) {
    proxy_reply(403, "blocked by the C filter\n");
    return PROXY_PAUSE;
  }
  proxy_set_request_header("x-c-filter", tag);
  return PROXY_CONTINUE;
}
