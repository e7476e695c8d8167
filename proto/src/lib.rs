//! The control-plane <-> proxy API: protobuf messages and the tonic client/server for `meshwork.v1.Discovery`,
//! plus the demo app's `meshwork.demo.v1.Echo` service. Generated at build time from `proto/` by protox and
//! tonic-prost-build (no system `protoc`).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("meshwork.v1");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod demo {
    tonic::include_proto!("meshwork.demo.v1");
}

pub use v1::*;

/// The largest push a proxy takes (snapshot and the module bytes it carries): Wasm modules are at most 16 MiB each
/// (WasmPlugin validation), so this fits a snapshot with a dozen new modules; a larger one fails the stream.
pub const MAX_PUSH_BYTES: usize = 256 << 20;
