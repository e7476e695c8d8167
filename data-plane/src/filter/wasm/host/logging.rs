//! Logging: `proxy_log` and `proxy_get_log_level`. A filter's messages go to the proxy's own log, tagged with
//! the plugin's name, so one log level governs host and filters.

use wasmtime::Linker;

use super::{st, HostState, C, R};
use crate::filter::wasm::abi::status;
use crate::filter::wasm::memory::{read_string, write_u32};
use crate::filter::wasm::PluginMeta;

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_log", log)?;
    l.func_wrap("env", "proxy_get_log_level", get_log_level)?;
    Ok(())
}

fn log(mut c: C<'_>, level: i32, p: i32, n: i32) -> R {
    Ok(match read_string(&mut c, p, n) {
        Ok(msg) => log_at(&c.data().meta.clone(), level, &msg),
        Err(s) => s,
    })
}

fn log_at(meta: &PluginMeta, level: i32, msg: &str) -> i32 {
    let plugin = meta.name.as_str();
    match level {
        0 => tracing::trace!(plugin, "{msg}"),
        1 => tracing::debug!(plugin, "{msg}"),
        2 => tracing::info!(plugin, "{msg}"),
        3 => tracing::warn!(plugin, "{msg}"),
        4 | 5 => tracing::error!(plugin, "{msg}"),
        _ => return status::BAD_ARGUMENT,
    }
    status::OK
}

/// The most verbose level the proxy would log, so an SDK can skip formatting messages nobody sees.
fn get_log_level(mut c: C<'_>, out: i32) -> R {
    let level = if tracing::enabled!(tracing::Level::TRACE) {
        0
    } else if tracing::enabled!(tracing::Level::DEBUG) {
        1
    } else if tracing::enabled!(tracing::Level::INFO) {
        2
    } else if tracing::enabled!(tracing::Level::WARN) {
        3
    } else {
        4
    };
    Ok(st(write_u32(&mut c, out, level)))
}
