//! The host side of the proxy-wasm ABI v0.2.1 (and 0.2.0, which differs only by `proxy_get_log_level`): every
//! `env` function is linked. Calls this host does not implement yet return UNIMPLEMENTED (listed in
//! docs/filters.md), never a trap; statuses are exactly the spec's, because the Rust SDK panics on any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::abi::{buffer, deserialize_map, map, status, stream_type, MAX_MAP_BYTES};
use super::callout::{CallResponse, Callout, Callouts};
use super::memory::{
    guest_and_state, read, read_string, return_bytes, str_at, write_u32, write_u64,
};
use super::stream::{HeaderAccess, LocalResponse, StreamData};
use super::PluginMeta;

/// A shared queue: its items and the plugin that registered it last (whose root context hears
/// `proxy_on_queue_ready`), identified by the address of its `PluginMeta`.
struct Queue {
    name: String,
    items: std::collections::VecDeque<Vec<u8>>,
    owner: usize,
}

/// Process-wide state filters share: shared data (with CAS), shared queues, metrics, and the ways out of the
/// sandbox the proxy installs (callouts, queue-ready notifications).
#[derive(Default)]
pub struct Shared {
    data: Mutex<HashMap<String, (Vec<u8>, u32)>>,
    queues: Mutex<Vec<Queue>>,
    metrics: Mutex<Vec<(String, i32, i64)>>,
    /// Where `proxy_http_call` requests go (installed by the proxy; absent in unit tests = every upstream unknown).
    pub callouts: std::sync::OnceLock<Arc<dyn Callouts>>,
    /// Told (owner, queue id) on every enqueue, so the owner's `proxy_on_queue_ready` runs.
    pub queue_ready: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<(usize, u32)>>,
}

impl Shared {
    pub fn callouts(&self) -> Option<Arc<dyn Callouts>> {
        self.callouts.get().cloned()
    }

    /// (name, type, value) of every metric filters defined, for the admin endpoint.
    pub fn metrics(&self) -> Vec<(String, i32, i64)> {
        self.metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Caps an instance's linear memory, and remembers when it said no, so a failure after a refused grow is reported
/// as out-of-memory rather than as whatever trap the guest's allocator turns it into.
#[derive(Debug, Default)]
pub struct MemoryCap {
    pub limit: usize,
    pub refused: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allow = desired <= self.limit;
        self.refused |= !allow;
        Ok(allow)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

pub struct HostState {
    pub limits: MemoryCap,
    /// The guest's memory and allocator, looked up once per instance (a lookup by name costs more than a call).
    pub memory: Option<wasmtime::Memory>,
    pub alloc: Option<wasmtime::TypedFunc<i32, i32>>,
    pub meta: Arc<PluginMeta>,
    pub shared: Arc<Shared>,
    /// The stream whose callback is running (None during root-context calls).
    pub stream: Option<Box<StreamData>>,
    pub root_id: u32,
    /// Set by a callback that resets the stream (`proxy_close_stream`).
    pub closed: bool,
    /// Requested with `proxy_set_tick_period_milliseconds` (0 = off).
    pub tick_ms: u32,
    /// `proxy_http_call`s made during the running callback, for its caller to send.
    pub calls: Vec<Callout>,
    pub next_token: u32,
    /// During `proxy_on_http_call_response`: the answer the filter reads.
    pub call_response: Option<CallResponse>,
    /// Edits to a callout's response are allowed and go nowhere.
    pub call_dirty: bool,
}

type C<'a> = Caller<'a, HostState>;

/// The value of a guest-memory read, or return its status to the guest.
macro_rules! ok_or_status {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return Ok(status),
        }
    };
}
/// A header map of the current stream and its changed flag.
type MapRef<'a> = (&'a mut dyn HeaderAccess, &'a mut bool);
type R = wasmtime::Result<i32>;

fn st(r: Result<(), i32>) -> i32 {
    match r {
        Ok(()) => status::OK,
        Err(s) => s,
    }
}

fn headers_mut<'a>(c: &'a mut C<'_>, map_type: i32) -> Result<MapRef<'a>, i32> {
    map_of(c.data_mut(), map_type)
}

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

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A property's bytes, as Envoy encodes them: strings raw, integers 8-byte little-endian.
fn property(c: &C<'_>, path: &[&str]) -> Option<Vec<u8>> {
    let d = c.data();
    let meta = &d.meta;
    let joined = path.join(".");
    if let Some(s) = &d.stream {
        if let Some((_, v)) = s.custom.iter().find(|(k, _)| *k == joined) {
            return Some(v.clone());
        }
    }
    let text = |s: &str| Some(s.as_bytes().to_vec());
    let int = |v: i64| Some(v.to_le_bytes().to_vec());
    match joined.as_str() {
        "plugin_name" => return text(&meta.name),
        "plugin_root_id" => return text(&meta.root_id),
        "plugin_vm_id" => return text(""),
        "node.id" => return text(&meta.node_id),
        _ => {}
    }
    let s = d.stream.as_ref()?;
    let req = |k: &str| s.request_headers.value(k).map(String::into_bytes);
    match joined.as_str() {
        "request.path" => req(":path"),
        "request.url_path" => {
            req(":path").map(|p| p.split(|b| *b == b'?').next().unwrap_or_default().to_vec())
        }
        "request.host" => req(":authority"),
        "request.method" => req(":method"),
        "request.scheme" => req(":scheme"),
        "request.id" => req("x-request-id"),
        "request.protocol" => text(s.protocol),
        "request.useragent" => req("user-agent"),
        "request.referer" => req("referer"),
        "request.headers" => Some(s.request_headers.serialize()),
        "response.code" => s.response_code.and_then(|code| int(i64::from(code))),
        "response.headers" if s.response_code.is_some() => Some(s.response_headers.serialize()),
        "source.address" => s.source.map(|a| a.to_string().into_bytes()),
        "source.port" => s.source.and_then(|a| int(i64::from(a.port()))),
        "connection.mtls" => Some(vec![0]),
        "route_name" | "xds.route_name" => s.route_name.as_deref().and_then(text),
        "cluster_name" | "xds.cluster_name" => s.cluster_name.as_deref().and_then(text),
        _ => None,
    }
}

/// Links every `env` function of ABI 0.2.1 (plus the 0.1.0 names, harmless for newer modules).
pub fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, p: i32, n: i32| -> R {
            Ok(match read_string(&mut c, p, n) {
                Ok(msg) => log_at(&c.data().meta.clone(), level, &msg),
                Err(s) => s,
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, out: i32| -> R {
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
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, out: i32| -> R { Ok(st(write_u64(&mut c, out, now_nanos()))) },
    )?;

    // Buffers: plugin and VM configuration, and the request body during `proxy_on_request_body` (the chunk, or
    // everything buffered so far). The response body is not exposed yet: NOT_FOUND.
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, ty: i32, start: i32, max: i32, ptr_out: i32, len_out: i32| -> R {
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            let slice = match buffer_of(c.data(), ty) {
                Some(buf) if start > buf.len() => return Ok(status::BAD_ARGUMENT),
                Some(buf) => buf[start..start.saturating_add(max).min(buf.len())].to_vec(),
                None => return Ok(status::NOT_FOUND),
            };
            Ok(st(return_bytes(&mut c, &slice, ptr_out, len_out)?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, ty: i32, len_out: i32, flags_out: i32| -> R {
            let Some(len) = buffer_of(c.data(), ty).map(<[u8]>::len) else {
                return Ok(status::NOT_FOUND);
            };
            Ok(st(write_u32(&mut c, len_out, len as u32)
                .and_then(|()| write_u32(&mut c, flags_out, 0))))
        },
    )?;
    // Replaces `size` bytes at `start` of the request body (start = size = 0 prepends; start >= len appends).
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, ty: i32, start: i32, size: i32, p: i32, n: i32| -> R {
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
        },
    )?;

    // Header maps.
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, ty: i32, ptr_out: i32, len_out: i32| -> R {
            let bytes = match headers_mut(&mut c, ty) {
                Ok((h, _)) => h.serialize(),
                Err(s) => return Ok(s),
            };
            Ok(st(return_bytes(&mut c, &bytes, ptr_out, len_out)?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, ty: i32, out: i32| -> R {
            let n = match headers_mut(&mut c, ty) {
                Ok((h, _)) => h.serialize().len(),
                Err(s) => return Ok(s),
            };
            Ok(st(write_u32(&mut c, out, n as u32)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, ty: i32, p: i32, n: i32| -> R {
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
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, ty: i32, kp: i32, kn: i32, ptr_out: i32, len_out: i32| -> R {
            let key = ok_or_status!(read_string(&mut c, kp, kn));
            let value = match headers_mut(&mut c, ty) {
                Ok((h, _)) => h.value(&key),
                Err(s) => return Ok(s),
            };
            match value {
                Some(v) => Ok(st(return_bytes(&mut c, v.as_bytes(), ptr_out, len_out)?)),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    for name in [
        "proxy_add_header_map_value",
        "proxy_replace_header_map_value",
    ] {
        let replace = name.contains("replace");
        l.func_wrap(
            "env",
            name,
            move |mut c: C<'_>, ty: i32, kp: i32, kn: i32, vp: i32, vn: i32| -> R {
                // Key and value are read in place from guest memory (no intermediate strings): the map makes
                // its own copy once, as a header name and value.
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
            },
        )?;
    }
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, ty: i32, kp: i32, kn: i32| -> R {
            let key = ok_or_status!(read_string(&mut c, kp, kn));
            Ok(st(headers_mut(&mut c, ty).map(|(h, dirty)| {
                h.remove(&key);
                *dirty = true;
            })))
        },
    )?;

    // Stream control.
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dp: i32,
         dn: i32,
         bp: i32,
         bn: i32,
         hp: i32,
         hn: i32,
         _grpc: i32|
         -> R {
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
        },
    )?;
    // Resumes the current stream if its request or response is paused (the chain checks the flag after the
    // callback, typically `proxy_on_http_call_response`).
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, ty: i32| -> R {
            if !(0..=3).contains(&ty) {
                return Ok(status::BAD_ARGUMENT);
            }
            if ty == stream_type::REQUEST || ty == stream_type::RESPONSE {
                if let Some(s) = c.data_mut().stream.as_mut() {
                    s.resumed = true;
                }
            }
            Ok(status::OK)
        },
    )?;
    l.func_wrap("env", "proxy_close_stream", |mut c: C<'_>, ty: i32| -> R {
        if !(0..=3).contains(&ty) {
            return Ok(status::BAD_ARGUMENT);
        }
        c.data_mut().closed = true;
        Ok(status::OK)
    })?;
    for name in ["proxy_continue_request", "proxy_continue_response"] {
        l.func_wrap("env", name, |mut c: C<'_>| -> R {
            if let Some(s) = c.data_mut().stream.as_mut() {
                s.resumed = true;
            }
            Ok(status::OK)
        })?;
    }
    l.func_wrap("env", "proxy_clear_route_cache", |_c: C<'_>| -> R {
        Ok(status::OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_configuration",
        |mut c: C<'_>, ptr_out: i32, len_out: i32| -> R {
            let meta = c.data().meta.clone();
            Ok(st(return_bytes(&mut c, &meta.config, ptr_out, len_out)?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |c: C<'_>, id: i32| -> R {
            let d = c.data();
            let known = id as u32 == d.root_id
                || d.stream.as_ref().is_some_and(|s| s.context_id == id as u32);
            Ok(if known {
                status::OK
            } else {
                status::BAD_ARGUMENT
            })
        },
    )?;
    l.func_wrap("env", "proxy_done", |_c: C<'_>| -> R {
        Ok(status::NOT_FOUND)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |_c: C<'_>, _a: i32, _b: i32, _d: i32| -> R { Ok(status::NOT_FOUND) },
    )?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_c: C<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32| -> R {
            Ok(status::NOT_FOUND)
        },
    )?;

    // Properties.
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pn: i32, ptr_out: i32, len_out: i32| -> R {
            let raw = ok_or_status!(read(&mut c, pp, pn));
            let text = String::from_utf8_lossy(&raw).into_owned();
            let segments: Vec<&str> = text.split('\0').filter(|s| !s.is_empty()).collect();
            match property(&c, &segments) {
                Some(v) => Ok(st(return_bytes(&mut c, &v, ptr_out, len_out)?)),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pn: i32, vp: i32, vn: i32| -> R {
            let (path, value) = match (read(&mut c, pp, pn), read(&mut c, vp, vn)) {
                (Ok(p), Ok(v)) => (p, v),
                (Err(s), _) | (_, Err(s)) => return Ok(s),
            };
            let key = String::from_utf8_lossy(&path)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(".");
            match c.data_mut().stream.as_mut() {
                Some(s) => {
                    s.custom.retain(|(k, _)| *k != key);
                    s.custom.push((key, value));
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;

    // Shared data with compare-and-swap.
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kn: i32, ptr_out: i32, len_out: i32, cas_out: i32| -> R {
            let key = ok_or_status!(read_string(&mut c, kp, kn));
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
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kn: i32, vp: i32, vn: i32, cas: i32| -> R {
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
        },
    )?;

    // Shared queues: an enqueue tells the registering plugin's root context (`proxy_on_queue_ready`).
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nn: i32, out: i32| -> R {
            let name = ok_or_status!(read_string(&mut c, np, nn));
            let id = {
                let shared = c.data().shared.clone();
                let owner = Arc::as_ptr(&c.data().meta) as usize;
                let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
                match q.iter().position(|e| e.name == name) {
                    Some(i) => {
                        q[i].owner = owner;
                        i
                    }
                    None => {
                        q.push(Queue {
                            name,
                            items: Default::default(),
                            owner,
                        });
                        q.len() - 1
                    }
                }
            };
            Ok(st(write_u32(&mut c, out, id as u32 + 1)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, _vp: i32, _vn: i32, np: i32, nn: i32, out: i32| -> R {
            let name = ok_or_status!(read_string(&mut c, np, nn));
            let found = c
                .data()
                .shared
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .position(|e| e.name == name);
            match found {
                Some(i) => Ok(st(write_u32(&mut c, out, i as u32 + 1))),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, vp: i32, vn: i32| -> R {
            let value = ok_or_status!(read(&mut c, vp, vn));
            let shared = c.data().shared.clone();
            let owner = {
                let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
                match (id as u32 as usize)
                    .checked_sub(1)
                    .and_then(|i| q.get_mut(i))
                {
                    Some(e) => {
                        e.items.push_back(value);
                        e.owner
                    }
                    None => return Ok(status::NOT_FOUND),
                }
            };
            if let Some(tx) = shared.queue_ready.get() {
                let _ = tx.send((owner, id as u32));
            }
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ptr_out: i32, len_out: i32| -> R {
            let item = {
                let shared = c.data().shared.clone();
                let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
                match (id as u32 as usize)
                    .checked_sub(1)
                    .and_then(|i| q.get_mut(i))
                {
                    Some(e) => e.items.pop_front(),
                    None => return Ok(status::NOT_FOUND),
                }
            };
            match item {
                Some(v) => Ok(st(return_bytes(&mut c, &v, ptr_out, len_out)?)),
                None => Ok(status::EMPTY),
            }
        },
    )?;

    // Metrics: counters, gauges, histograms (histograms keep the last value; exported on the admin /metrics).
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, ty: i32, np: i32, nn: i32, out: i32| -> R {
            if !(0..=2).contains(&ty) {
                return Ok(status::BAD_ARGUMENT);
            }
            let name = ok_or_status!(read_string(&mut c, np, nn));
            let id = {
                let shared = c.data().shared.clone();
                let mut m = shared
                    .metrics
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match m.iter().position(|(n, t, _)| *n == name && *t == ty) {
                    Some(i) => i,
                    None => {
                        m.push((name, ty, 0));
                        m.len() - 1
                    }
                }
            };
            Ok(st(write_u32(&mut c, out, id as u32 + 1)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, delta: i64| -> R {
            let shared = c.data().shared.clone();
            let mut m = shared
                .metrics
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match (id as u32 as usize)
                .checked_sub(1)
                .and_then(|i| m.get_mut(i))
            {
                Some((_, 0, _)) if delta < 0 => Ok(status::BAD_ARGUMENT),
                Some((_, _, v)) => {
                    *v = v.saturating_add(delta);
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> R {
            let shared = c.data().shared.clone();
            let mut m = shared
                .metrics
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match (id as u32 as usize)
                .checked_sub(1)
                .and_then(|i| m.get_mut(i))
            {
                Some((_, _, v)) => {
                    *v = value;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, out: i32| -> R {
            let value = {
                let m = c
                    .data()
                    .shared
                    .metrics
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match (id as u32 as usize).checked_sub(1).and_then(|i| m.get(i)) {
                    Some((_, _, v)) => *v,
                    None => return Ok(status::NOT_FOUND),
                }
            };
            Ok(st(write_u64(&mut c, out, value as u64)))
        },
    )?;

    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> R {
            c.data_mut().tick_ms = ms as u32;
            Ok(status::OK)
        },
    )?;
    // An HTTP callout to a mesh service (`upstream` names a cluster or a service, see docs/filters.md). Envoy's
    // checks: the upstream must be known and the headers must carry :method, :path and :authority, else
    // BAD_ARGUMENT. The caller of the callback sends it; the answer comes in `proxy_on_http_call_response`.
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         upn: i32,
         hp: i32,
         hn: i32,
         bp: i32,
         bn: i32,
         tp: i32,
         tn: i32,
         timeout_ms: i32,
         token_out: i32|
         -> R {
            if hn as u32 as usize > MAX_MAP_BYTES || tn as u32 as usize > MAX_MAP_BYTES {
                return Ok(status::BAD_ARGUMENT);
            }
            let upstream = ok_or_status!(read_string(&mut c, up, upn));
            let hbytes = ok_or_status!(read(&mut c, hp, hn));
            let body = ok_or_status!(read(&mut c, bp, bn));
            let tbytes = ok_or_status!(read(&mut c, tp, tn));
            let (Some(headers), Some(trailers)) =
                (deserialize_map(&hbytes), deserialize_map(&tbytes))
            else {
                return Ok(status::SERIALIZATION_FAILURE);
            };
            let has = |k: &str| super::stream::get(&headers, k).is_some_and(|v| !v.is_empty());
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
                timeout: std::time::Duration::from_millis(u64::from(timeout_ms as u32).max(1)),
            });
            Ok(status::OK)
        },
    )?;
    // Not implemented yet (docs/filters.md): the spec's signatures, answering UNIMPLEMENTED.
    for (name, params) in [
        ("proxy_grpc_call", 12),
        ("proxy_grpc_stream", 9),
        ("proxy_grpc_send", 4),
        ("proxy_grpc_cancel", 1),
        ("proxy_grpc_close", 1),
    ] {
        let ty = wasmtime::FuncType::new(
            l.engine(),
            std::iter::repeat_n(wasmtime::ValType::I32, params),
            [wasmtime::ValType::I32],
        );
        l.func_new("env", name, ty, |_caller, _params, results| {
            results[0] = wasmtime::Val::I32(status::UNIMPLEMENTED);
            Ok(())
        })?;
    }
    Ok(())
}
