//! Shared data: `proxy_get_shared_data` and `proxy_set_shared_data`, a key-value store every plugin of the proxy
//! sees, with compare-and-swap: each value carries a version (never 0, so a `cas` of 0 means "unconditionally"),
//! and a set with a stale version fails with CAS_MISMATCH.

use std::sync::PoisonError;

use wasmtime::Linker;

use super::{st, HostState, C, R};
use crate::filter::wasm::abi::status;
use crate::filter::wasm::memory::{read, read_string, return_bytes, write_u32};

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_shared_data", get_shared_data)?;
    l.func_wrap("env", "proxy_set_shared_data", set_shared_data)?;
    Ok(())
}

fn get_shared_data(mut c: C<'_>, kp: i32, kn: i32, ptr_out: i32, len_out: i32, cas_out: i32) -> R {
    let key = ok_or_status!(read_string(&mut c, kp, kn));
    // Cloned so the lock is released before `return_bytes` runs the guest's allocator: guest code never runs under
    // a proxy-wide lock (it could call back in and deadlock, or just be slow).
    let found = c
        .data()
        .shared
        .data
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
        .cloned();
    let Some((value, cas)) = found else {
        return Ok(status::NOT_FOUND);
    };
    if let Err(s) = write_u32(&mut c, cas_out, cas) {
        return Ok(s);
    }
    Ok(st(return_bytes(&mut c, &value, ptr_out, len_out)?))
}

fn set_shared_data(mut c: C<'_>, kp: i32, kn: i32, vp: i32, vn: i32, cas: i32) -> R {
    let (key, value) = match (read_string(&mut c, kp, kn), read(&mut c, vp, vn)) {
        (Ok(k), Ok(v)) => (k, v),
        (Err(s), _) | (_, Err(s)) => return Ok(s),
    };
    let shared = c.data().shared.clone();
    let mut data = shared.data.lock().unwrap_or_else(PoisonError::into_inner);
    let current = data.get(&key).map_or(0, |(_, c)| *c);
    if cas != 0 && cas as u32 != current {
        return Ok(status::CAS_MISMATCH);
    }
    data.insert(key, (value, current.wrapping_add(1).max(1)));
    Ok(status::OK)
}
