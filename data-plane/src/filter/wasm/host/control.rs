//! Stream and context control: `proxy_send_local_response`, `proxy_continue_stream`, `proxy_close_stream`,
//! `proxy_set_effective_context`, `proxy_done`, and the 0.1.0 `proxy_continue_request`,
//! `proxy_continue_response` and `proxy_clear_route_cache`. These only record what the filter asked for; the
//! chain acts on it when the callback returns.

use wasmtime::Linker;

use super::{HostState, C, R};
use crate::filter::wasm::abi::{deserialize_map, status, stream_type};
use crate::filter::wasm::memory::{read, read_string};
use crate::filter::wasm::stream::LocalResponse;

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_send_local_response", send_local_response)?;
    l.func_wrap("env", "proxy_continue_stream", continue_stream)?;
    l.func_wrap("env", "proxy_close_stream", close_stream)?;
    l.func_wrap("env", "proxy_continue_request", continue_current)?;
    l.func_wrap("env", "proxy_continue_response", continue_current)?;
    l.func_wrap("env", "proxy_clear_route_cache", clear_route_cache)?;
    l.func_wrap("env", "proxy_set_effective_context", set_effective_context)?;
    l.func_wrap("env", "proxy_done", done)?;
    Ok(())
}

#[expect(clippy::too_many_arguments, reason = "the ABI fixes the signature")]
fn send_local_response(
    mut c: C<'_>,
    code: i32,
    dp: i32,
    dn: i32,
    bp: i32,
    bn: i32,
    hp: i32,
    hn: i32,
    _grpc: i32,
) -> R {
    let details = read_string(&mut c, dp, dn).unwrap_or_default();
    let body = ok_or_status!(read(&mut c, bp, bn));
    let hbytes = ok_or_status!(read(&mut c, hp, hn));
    let Some(headers) = deserialize_map(&hbytes) else {
        return Ok(status::SERIALIZATION_FAILURE);
    };
    let Ok(status_code) = u16::try_from(code) else {
        return Ok(status::BAD_ARGUMENT);
    };
    if !(200..=599).contains(&status_code) {
        return Ok(status::BAD_ARGUMENT);
    }
    match c.data_mut().stream.as_mut() {
        Some(s) => {
            s.local_response = Some(LocalResponse {
                status: status_code,
                headers,
                body,
                details,
            });
            Ok(status::OK)
        }
        None => Ok(status::NOT_FOUND),
    }
}

/// Resumes the current stream if its request or response is paused (the chain checks the flag after the
/// callback, typically `proxy_on_http_call_response`). The other two stream types (downstream and upstream TCP)
/// are valid but have nothing to resume here.
fn continue_stream(mut c: C<'_>, ty: i32) -> R {
    if !(0..=3).contains(&ty) {
        return Ok(status::BAD_ARGUMENT);
    }
    if ty == stream_type::REQUEST || ty == stream_type::RESPONSE {
        if let Some(s) = c.data_mut().stream.as_mut() {
            s.resumed = true;
        }
    }
    Ok(status::OK)
}

fn close_stream(mut c: C<'_>, ty: i32) -> R {
    if !(0..=3).contains(&ty) {
        return Ok(status::BAD_ARGUMENT);
    }
    c.data_mut().closed = true;
    Ok(status::OK)
}

/// 0.1.0 `proxy_continue_request` and `proxy_continue_response`: one flag resumes either side.
fn continue_current(mut c: C<'_>) -> R {
    if let Some(s) = c.data_mut().stream.as_mut() {
        s.resumed = true;
    }
    Ok(status::OK)
}

/// 0.1.0: the route is picked once, before the filters run, and never re-evaluated, so there is no cache to clear.
fn clear_route_cache(_c: C<'_>) -> R {
    Ok(status::OK)
}

/// Only the root context and the running stream's context are known; SDKs call this before a callout's callback
/// and need OK for those.
fn set_effective_context(c: C<'_>, id: i32) -> R {
    let d = c.data();
    let known =
        id as u32 == d.root_id || d.stream.as_ref().is_some_and(|s| s.context_id == id as u32);
    Ok(if known {
        status::OK
    } else {
        status::BAD_ARGUMENT
    })
}

/// No context ever waits for `proxy_done` (a `false` from `proxy_on_done` is not honoured), so none is found.
fn done(_c: C<'_>) -> R {
    Ok(status::NOT_FOUND)
}
