//! Time: `proxy_get_current_time_nanoseconds` (wall clock; deprecated by the spec in favour of WASI
//! `clock_time_get`, which `wasi.rs` provides) and `proxy_set_tick_period_milliseconds` (the plugin's tick timer,
//! run by `spawn_ticker` in `filter/wasm/mod.rs`).

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::Linker;

use super::{st, HostState, C, R};
use crate::filter::wasm::abi::status;
use crate::filter::wasm::memory::write_u64;

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        get_current_time_nanoseconds,
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        set_tick_period_milliseconds,
    )?;
    Ok(())
}

fn get_current_time_nanoseconds(mut c: C<'_>, out: i32) -> R {
    Ok(st(write_u64(&mut c, out, now_nanos())))
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Only recorded: the plugin reads it once, from its first instance after `proxy_on_configure`, and runs one timer
/// for all its instances (0 = off).
fn set_tick_period_milliseconds(mut c: C<'_>, ms: i32) -> R {
    c.data_mut().tick_ms = ms as u32;
    Ok(status::OK)
}
