//! Header maps: `proxy_get_header_map_pairs`, `proxy_get_header_map_size`, `proxy_set_header_map_pairs`,
//! `proxy_get_header_map_value`, `proxy_add_header_map_value`, `proxy_replace_header_map_value` and
//! `proxy_remove_header_map_value`, on the current stream's request/response headers and trailers and on a
//! callout's response headers and trailers. Every edit sets its map's dirty flag, which the chain checks before
//! applying a map back to the request or response.

use wasmtime::Linker;

use super::{st, HostState, C, R};
use crate::filter::wasm::abi::{deserialize_map, map, status, MAX_MAP_BYTES};
use crate::filter::wasm::memory::{
    guest_and_state, read, read_string, return_bytes, str_at, write_u32,
};
use crate::filter::wasm::stream::HeaderAccess;

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_header_map_pairs", get_pairs)?;
    l.func_wrap("env", "proxy_get_header_map_size", get_size)?;
    l.func_wrap("env", "proxy_set_header_map_pairs", set_pairs)?;
    l.func_wrap("env", "proxy_get_header_map_value", get_value)?;
    l.func_wrap("env", "proxy_add_header_map_value", add_value)?;
    l.func_wrap("env", "proxy_replace_header_map_value", replace_value)?;
    l.func_wrap("env", "proxy_remove_header_map_value", remove_value)?;
    Ok(())
}

/// A header map of the current stream and its changed flag.
type MapRef<'a> = (&'a mut dyn HeaderAccess, &'a mut bool);

fn headers_mut<'a>(c: &'a mut C<'_>, map_type: i32) -> Result<MapRef<'a>, i32> {
    map_of(c.data_mut(), map_type)
}

/// NOT_FOUND for a map that exists in the ABI but not now (no callout answer, response not yet arrived, no
/// trailers, gRPC metadata); BAD_ARGUMENT for a map type the ABI does not have.
fn map_of(d: &mut HostState, map_type: i32) -> Result<MapRef<'_>, i32> {
    if map_type == map::HTTP_CALL_RESPONSE_HEADERS || map_type == map::HTTP_CALL_RESPONSE_TRAILERS {
        let r = d.call_response.as_mut().ok_or(status::NOT_FOUND)?;
        let pairs = if map_type == map::HTTP_CALL_RESPONSE_HEADERS {
            &mut r.headers
        } else {
            &mut r.trailers
        };
        return Ok((pairs, &mut d.call_dirty));
    }
    let s = d.stream.as_mut().ok_or(status::NOT_FOUND)?;
    match map_type {
        map::REQUEST_HEADERS => Ok((&mut s.request_headers, &mut s.request_dirty)),
        map::RESPONSE_HEADERS if s.response_code.is_some() => {
            Ok((&mut s.response_headers, &mut s.response_dirty))
        }
        map::REQUEST_TRAILERS => match s.request_trailers.as_mut() {
            Some(t) => Ok((t, &mut s.trailers_dirty)),
            None => Err(status::NOT_FOUND),
        },
        map::RESPONSE_TRAILERS => match s.response_trailers.as_mut() {
            Some(t) => Ok((t, &mut s.trailers_dirty)),
            None => Err(status::NOT_FOUND),
        },
        map::RESPONSE_HEADERS | 4 | 5 => Err(status::NOT_FOUND),
        _ => Err(status::BAD_ARGUMENT),
    }
}

fn get_pairs(mut c: C<'_>, ty: i32, ptr_out: i32, len_out: i32) -> R {
    let bytes = match headers_mut(&mut c, ty) {
        Ok((h, _)) => h.serialize(),
        Err(s) => return Ok(s),
    };
    Ok(st(return_bytes(&mut c, &bytes, ptr_out, len_out)?))
}

fn get_size(mut c: C<'_>, ty: i32, out: i32) -> R {
    let n = match headers_mut(&mut c, ty) {
        Ok((h, _)) => h.serialize().len(),
        Err(s) => return Ok(s),
    };
    Ok(st(write_u32(&mut c, out, n as u32)))
}

/// Replaces the whole map. Keys are lowercased here, as `add` and `replace` do, because the maps keep names
/// lowercase and look them up that way.
fn set_pairs(mut c: C<'_>, ty: i32, p: i32, n: i32) -> R {
    if n as u32 as usize > MAX_MAP_BYTES {
        return Ok(status::BAD_ARGUMENT);
    }
    let bytes = ok_or_status!(read(&mut c, p, n));
    let Some(pairs) = deserialize_map(&bytes) else {
        return Ok(status::SERIALIZATION_FAILURE);
    };
    Ok(st(headers_mut(&mut c, ty).map(|(h, dirty)| {
        h.set_all(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        );
        *dirty = true;
    })))
}

/// NOT_FOUND for a missing key (0.2.x; 0.1.0 answered OK and an empty value).
fn get_value(mut c: C<'_>, ty: i32, kp: i32, kn: i32, ptr_out: i32, len_out: i32) -> R {
    let key = ok_or_status!(read_string(&mut c, kp, kn));
    let value = match headers_mut(&mut c, ty) {
        Ok((h, _)) => h.value(&key),
        Err(s) => return Ok(s),
    };
    match value {
        Some(v) => Ok(st(return_bytes(&mut c, v.as_bytes(), ptr_out, len_out)?)),
        None => Ok(status::NOT_FOUND),
    }
}

fn add_value(c: C<'_>, ty: i32, kp: i32, kn: i32, vp: i32, vn: i32) -> R {
    set_value(c, ty, kp, kn, vp, vn, false)
}

fn replace_value(c: C<'_>, ty: i32, kp: i32, kn: i32, vp: i32, vn: i32) -> R {
    set_value(c, ty, kp, kn, vp, vn, true)
}

/// Key and value are read in place from guest memory (no intermediate strings): the map makes its own copy once,
/// as a header name and value.
#[inline]
fn set_value(mut c: C<'_>, ty: i32, kp: i32, kn: i32, vp: i32, vn: i32, replace: bool) -> R {
    let (memory, state) = ok_or_status!(guest_and_state(&mut c));
    let key = ok_or_status!(str_at(memory, kp, kn));
    let value = ok_or_status!(str_at(memory, vp, vn));
    Ok(st(map_of(state, ty).map(|(h, dirty)| {
        if replace {
            h.replace(key, value);
        } else {
            h.add(key, value);
        }
        *dirty = true;
    })))
}

/// OK even if the key is absent, as the spec says.
fn remove_value(mut c: C<'_>, ty: i32, kp: i32, kn: i32) -> R {
    let key = ok_or_status!(read_string(&mut c, kp, kn));
    Ok(st(headers_mut(&mut c, ty).map(|(h, dirty)| {
        h.remove(&key);
        *dirty = true;
    })))
}
