//! The binding of a [`Filter`](crate::Filter) to the proxy-wasm ABI (v0.2.1), used by [`register!`](crate::register).
//!
//! Written against the ABI directly rather than through the `proxy-wasm` crate's dispatcher, for what a header
//! filter costs per request: the module exports only the callbacks a header filter has (context create, request
//! and response headers, delete), so the host makes four guest calls per stream instead of seven and never wraps
//! the body to offer it to a filter that does not read it; and a stream's filter is found by its context id in a
//! small map with an identity hash instead of SipHash lookups in several maps per callback. Measured in
//! docs/benchmarks.md. Filters built on the `proxy-wasm` crate keep working in Meshwork unchanged; this is only what
//! our SDK's filters export.
//!
//! Exports: `proxy_abi_version_0_2_1`, `proxy_on_memory_allocate`, `proxy_on_context_create`, `proxy_on_configure`,
//! `proxy_on_request_headers`, `proxy_on_response_headers`, `proxy_on_delete`, and with `register!(F, with_bodies)`
//! `proxy_on_request_body`, `proxy_on_response_body`. Imports (module `env`): `proxy_log`, `proxy_get_buffer_bytes`,
//! `proxy_set_buffer_bytes`, `proxy_get_header_map_value`, `proxy_replace_header_map_value`,
//! `proxy_add_header_map_value`, `proxy_remove_header_map_value`, `proxy_send_local_response`.

// The ABI is raw pointers and exported C functions: the unsafe code of the SDK is here and only here.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use crate::{parse_config, serialize_map, BufferedBody, Decision, Filter, Headers};

/// `Action` of the ABI.
pub const CONTINUE: u32 = 0;
pub const PAUSE: u32 = 1;

/// `MapType` of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
}

const STATUS_OK: u32 = 0;
const BUFFER_REQUEST_BODY: u32 = 0;
const BUFFER_RESPONSE_BODY: u32 = 1;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const LOG_ERROR: u32 = 4;

/// The host functions, as Envoy and Meshwork provide them.
mod host {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer: u32,
            start: usize,
            size: usize,
            data: *const u8,
            data_size: usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }
}

/// `proxy_on_memory_allocate`: memory the host fills with what it returns (a header value, the configuration);
/// the SDK takes ownership of it back as a `Vec` of exactly that capacity.
pub fn allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

/// Takes back bytes the host returned through `allocate`.
fn returned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into memory it got from `allocate(size)`, which is a `Vec` of capacity
    // `size` forgotten there; ownership comes back here exactly once.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Logs at error level to the proxy's log.
pub fn log_error(message: &str) {
    // SAFETY: the pointer and length describe `message`, alive for the call.
    unsafe { host::proxy_log(LOG_ERROR, message.as_ptr(), message.len()) };
}

fn plugin_configuration() -> Vec<u8> {
    buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, i32::MAX as usize)
}

/// Up to `max` bytes of a host buffer (empty if the host has none).
fn buffer_bytes(buffer: u32, max: usize) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers to locals; on OK the host returns memory from `allocate`.
    let status = unsafe { host::proxy_get_buffer_bytes(buffer, 0, max, &mut data, &mut size) };
    if status == STATUS_OK {
        returned(data, size)
    } else {
        Vec::new()
    }
}

/// A header map of the current stream, through the host.
pub struct HostHeaders(pub Map);

impl Headers for HostHeaders {
    fn get(&self, name: &str) -> Option<String> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: `name` is alive for the call; out-pointers to locals; on OK the host returns memory from
        // `allocate`.
        let status = unsafe {
            host::proxy_get_header_map_value(
                self.0 as u32,
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            )
        };
        if status != STATUS_OK {
            return None;
        }
        let bytes = returned(data, size);
        Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }

    fn set(&mut self, name: &str, value: &str) {
        // SAFETY: both slices are alive for the call.
        unsafe {
            host::proxy_replace_header_map_value(
                self.0 as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
    }

    fn add(&mut self, name: &str, value: &str) {
        // SAFETY: both slices are alive for the call.
        unsafe {
            host::proxy_add_header_map_value(
                self.0 as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
    }

    fn remove(&mut self, name: &str) {
        // SAFETY: `name` is alive for the call.
        unsafe { host::proxy_remove_header_map_value(self.0 as u32, name.as_ptr(), name.len()) };
    }
}

/// Carries out a decision: `Continue`, or a local reply (the stream pauses; the host answers).
fn act(decision: Decision) -> u32 {
    match decision {
        Decision::Continue => CONTINUE,
        Decision::Reply {
            status,
            headers,
            body,
        } => {
            let headers = serialize_map(&headers);
            let details = "meshwork_plugin_sdk";
            // SAFETY: every slice is alive for the call.
            unsafe {
                host::proxy_send_local_response(
                    u32::from(status),
                    details.as_ptr(),
                    details.len(),
                    body.as_ptr(),
                    body.len(),
                    headers.as_ptr(),
                    headers.len(),
                    -1,
                )
            };
            PAUSE
        }
    }
}

/// Context ids are small integers the host hands out: they are their own hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// Everything a module's filter keeps: the configuration (set by the root context's configure) and one filter per
/// live stream, by context id.
pub struct State<F: Filter> {
    config: Rc<F::Config>,
    roots: Vec<u32>,
    streams: HashMap<u32, F, BuildHasherDefault<IdHasher>>,
}

impl<F: Filter> Default for State<F> {
    fn default() -> Self {
        State {
            config: Rc::new(F::Config::default()),
            roots: Vec::new(),
            streams: HashMap::default(),
        }
    }
}

impl<F: Filter> State<F> {
    /// `proxy_on_context_create`: a root context (parent 0) or a stream.
    pub fn context_create(&mut self, id: u32, parent: u32) {
        if parent == 0 {
            self.roots.push(id);
        } else {
            self.streams.insert(id, F::new(&self.config));
        }
    }

    /// `proxy_on_configure`: parses the plugin configuration; false (the host rejects the plugin) if it does not
    /// parse, with the reason logged.
    pub fn configure(&mut self) -> bool {
        match parse_config::<F::Config>(&plugin_configuration()) {
            Ok(c) => {
                self.config = Rc::new(c);
                true
            }
            Err(e) => {
                log_error(&e);
                false
            }
        }
    }

    /// `proxy_on_request_headers` / `proxy_on_response_headers`.
    pub fn headers(&mut self, id: u32, response: bool, end_of_stream: bool) -> u32 {
        let Some(filter) = self.streams.get_mut(&id) else {
            return CONTINUE;
        };
        let mut headers = HostHeaders(if response {
            Map::ResponseHeaders
        } else {
            Map::RequestHeaders
        });
        let decision = if response {
            filter.on_response(&mut headers)
        } else {
            filter.on_request(&mut headers)
        };
        if F::REWRITES_BODY && !end_of_stream && decision == Decision::Continue {
            headers.remove("content-length");
        }
        act(decision)
    }

    /// `proxy_on_request_body` / `proxy_on_response_body` (exported by `register!(F, with_bodies)`): until the end
    /// of the body, pause (the proxy keeps the chunks and offers all of them again with the next one); at the end,
    /// the filter gets the whole body once.
    pub fn body(&mut self, id: u32, size: usize, end_of_stream: bool, response: bool) -> u32 {
        if !end_of_stream {
            return PAUSE;
        }
        let Some(filter) = self.streams.get_mut(&id) else {
            return CONTINUE;
        };
        let buffer = if response {
            BUFFER_RESPONSE_BODY
        } else {
            BUFFER_REQUEST_BODY
        };
        let mut body = BufferedBody::new(buffer_bytes(buffer, size));
        let decision = if response {
            filter.on_response_body(&mut body)
        } else {
            filter.on_request_body(&mut body)
        };
        if body.replaced() {
            let new = body.bytes();
            // SAFETY: `new` is alive for the call.
            unsafe { host::proxy_set_buffer_bytes(buffer, 0, size, new.as_ptr(), new.len()) };
        }
        act(decision)
    }

    /// `proxy_on_delete`: the context is gone.
    pub fn delete(&mut self, id: u32) {
        if self.streams.remove(&id).is_none() {
            self.roots.retain(|r| *r != id);
        }
    }
}
