//! Buffers: `proxy_get_buffer_bytes`, `proxy_get_buffer_status`, `proxy_set_buffer_bytes`, and the 0.1.0
//! `proxy_get_configuration`. Readable: plugin and VM configuration, the request or response body during its body
//! callback, and a callout's response body; writable: the two bodies only.

use wasmtime::Linker;

use super::{st, HostState, C, R};
use crate::filter::wasm::abi::{buffer, status};
use crate::filter::wasm::memory::{read, return_bytes, write_u32};

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_buffer_bytes", get_buffer_bytes)?;
    l.func_wrap("env", "proxy_get_buffer_status", get_buffer_status)?;
    l.func_wrap("env", "proxy_set_buffer_bytes", set_buffer_bytes)?;
    l.func_wrap("env", "proxy_get_configuration", get_configuration)?;
    Ok(())
}

/// A readable buffer: configuration, the body a body callback works on, or a callout's response body.
fn buffer_of(d: &HostState, ty: i32) -> Option<&[u8]> {
    match ty {
        buffer::PLUGIN_CONFIGURATION => Some(&d.meta.config),
        buffer::VM_CONFIGURATION => Some(&[]),
        buffer::REQUEST_BODY => d.stream.as_ref()?.request_body.as_deref(),
        buffer::RESPONSE_BODY => d.stream.as_ref()?.response_body.as_deref(),
        buffer::HTTP_CALL_RESPONSE_BODY => d.call_response.as_ref().map(|r| r.body.as_slice()),
        _ => None,
    }
}

/// Up to `max` bytes from `start`; a `start` past the end is BAD_ARGUMENT, a short buffer a short answer.
fn get_buffer_bytes(mut c: C<'_>, ty: i32, start: i32, max: i32, ptr_out: i32, len_out: i32) -> R {
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    let slice = match buffer_of(c.data(), ty) {
        Some(buf) if start > buf.len() => return Ok(status::BAD_ARGUMENT),
        Some(buf) => buf[start..start.saturating_add(max).min(buf.len())].to_vec(),
        None => return Ok(status::NOT_FOUND),
    };
    Ok(st(return_bytes(&mut c, &slice, ptr_out, len_out)?))
}

fn get_buffer_status(mut c: C<'_>, ty: i32, len_out: i32, flags_out: i32) -> R {
    let Some(len) = buffer_of(c.data(), ty).map(<[u8]>::len) else {
        return Ok(status::NOT_FOUND);
    };
    Ok(st(
        write_u32(&mut c, len_out, len as u32).and_then(|()| write_u32(&mut c, flags_out, 0))
    ))
}

/// Replaces `size` bytes at `start` of the request or response body (start = size = 0 prepends; start >= len
/// appends).
fn set_buffer_bytes(mut c: C<'_>, ty: i32, start: i32, size: i32, p: i32, n: i32) -> R {
    if ty != buffer::REQUEST_BODY && ty != buffer::RESPONSE_BODY {
        return Ok(status::NOT_FOUND);
    }
    let data = ok_or_status!(read(&mut c, p, n));
    let Some(body) = c.data_mut().stream.as_mut().and_then(|s| {
        if ty == buffer::REQUEST_BODY {
            s.request_body.as_mut()
        } else {
            s.response_body.as_mut()
        }
    }) else {
        return Ok(status::NOT_FOUND);
    };
    let start = (start as u32 as usize).min(body.len());
    let end = start.saturating_add(size as u32 as usize).min(body.len());
    let mut next = Vec::with_capacity(body.len() - (end - start) + data.len());
    next.extend_from_slice(&body[..start]);
    next.extend_from_slice(&data);
    next.extend_from_slice(&body[end..]);
    *body = bytes::Bytes::from(next);
    Ok(status::OK)
}

/// 0.1.0: the plugin configuration (0.2 reads it as `buffer::PLUGIN_CONFIGURATION`).
fn get_configuration(mut c: C<'_>, ptr_out: i32, len_out: i32) -> R {
    // A clone of the Arc, not of the bytes: `return_bytes` needs the caller mutably while it reads them.
    let meta = c.data().meta.clone();
    Ok(st(return_bytes(&mut c, &meta.config, ptr_out, len_out)?))
}
