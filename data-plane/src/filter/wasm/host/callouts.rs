//! Callouts: `proxy_http_call`, `proxy_get_status`, and the gRPC calls (`proxy_grpc_call`, `proxy_grpc_stream`,
//! `proxy_grpc_send`, `proxy_grpc_cancel`, `proxy_grpc_close`), which are not implemented yet (docs/filters.md).
//! An HTTP call is only recorded here; whoever ran the callback sends it (`filter::wasm::callout`) and delivers
//! the answer in `proxy_on_http_call_response`.

use std::time::Duration;

use wasmtime::{FuncType, Linker, Val, ValType};

use super::{HostState, C, R};
use crate::filter::wasm::abi::{deserialize_map, status, MAX_MAP_BYTES};
use crate::filter::wasm::callout::Callout;
use crate::filter::wasm::memory::{read, read_string, write_u32};
use crate::filter::wasm::stream;

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_http_call", http_call)?;
    l.func_wrap("env", "proxy_get_status", get_status)?;
    // The spec's signatures, answering UNIMPLEMENTED; dynamic (`func_new`) because only the arity differs.
    for (name, params) in [
        ("proxy_grpc_call", 12),
        ("proxy_grpc_stream", 9),
        ("proxy_grpc_send", 4),
        ("proxy_grpc_cancel", 1),
        ("proxy_grpc_close", 1),
    ] {
        let ty = FuncType::new(
            l.engine(),
            std::iter::repeat_n(ValType::I32, params),
            [ValType::I32],
        );
        l.func_new("env", name, ty, |_caller, _params, results| {
            results[0] = Val::I32(status::UNIMPLEMENTED);
            Ok(())
        })?;
    }
    Ok(())
}

/// A callout to a mesh service (`upstream` names a cluster or a service, see docs/filters.md). Envoy's checks: the
/// upstream must be known and the headers must carry :method, :path and :authority, else BAD_ARGUMENT.
#[expect(clippy::too_many_arguments, reason = "the ABI fixes the signature")]
fn http_call(
    mut c: C<'_>,
    up: i32,
    upn: i32,
    hp: i32,
    hn: i32,
    bp: i32,
    bn: i32,
    tp: i32,
    tn: i32,
    timeout_ms: i32,
    token_out: i32,
) -> R {
    if hn as u32 as usize > MAX_MAP_BYTES || tn as u32 as usize > MAX_MAP_BYTES {
        return Ok(status::BAD_ARGUMENT);
    }
    let upstream = ok_or_status!(read_string(&mut c, up, upn));
    let hbytes = ok_or_status!(read(&mut c, hp, hn));
    let body = ok_or_status!(read(&mut c, bp, bn));
    let tbytes = ok_or_status!(read(&mut c, tp, tn));
    let (Some(headers), Some(trailers)) = (deserialize_map(&hbytes), deserialize_map(&tbytes))
    else {
        return Ok(status::SERIALIZATION_FAILURE);
    };
    let has = |k: &str| stream::get(&headers, k).is_some_and(|v| !v.is_empty());
    if !has(":method") || !has(":path") || !has(":authority") {
        return Ok(status::BAD_ARGUMENT);
    }
    let known = c
        .data()
        .shared
        .callouts
        .get()
        .is_some_and(|cs| cs.knows(&upstream));
    if !known {
        return Ok(status::BAD_ARGUMENT);
    }
    // The answer goes to the context that made the call: the stream's, or the root's outside a stream.
    let d = c.data_mut();
    d.next_token = d.next_token.wrapping_add(1).max(1);
    let token = d.next_token;
    let context_id = d.stream.as_ref().map_or(d.root_id, |s| s.context_id);
    if let Err(s) = write_u32(&mut c, token_out, token) {
        return Ok(s);
    }
    c.data_mut().calls.push(Callout {
        token,
        context_id,
        upstream,
        headers,
        body,
        trailers,
        timeout: Duration::from_millis(u64::from(timeout_ms as u32).max(1)),
    });
    Ok(status::OK)
}

/// SDKs read a gRPC call's status with this; there are no gRPC calls yet, so there is never one.
fn get_status(_c: C<'_>, _code_out: i32, _ptr_out: i32, _len_out: i32) -> R {
    Ok(status::NOT_FOUND)
}
