//! # meshwork-plugin-sdk
//!
//! Write HTTP filters for Meshwork (and any proxy-wasm host, Envoy included) as a plain Rust type: a typed
//! configuration parsed from the WasmPlugin's `pluginConfig` JSON, header helpers, and local replies as return
//! values. Filter logic runs against the small [`Headers`] trait, so it can be unit-tested natively with
//! [`MemoryHeaders`]; [`register!`] binds it to the proxy-wasm ABI in the `.wasm` build (the same ABI Envoy runs).
//! The binding is written against the ABI directly, lean enough that a header filter costs four guest calls per
//! request and no body handling; whole-body helpers are opt-in (`register!(F, with_bodies)`, [`BufferedBody`]).
//! Filters that need more of the ABI (streaming bodies, callouts, shared data, timers) can use the official
//! `proxy-wasm` crate, which Meshwork runs unchanged.
//!
//! ```
//! use std::rc::Rc;
//! use meshwork_plugin_sdk::{Decision, Filter, Headers, MemoryHeaders};
//!
//! #[derive(Default, Clone, serde::Deserialize)]
//! struct Config { required_header: String }
//!
//! struct RequireHeader { config: Rc<Config> }
//!
//! impl Filter for RequireHeader {
//!     type Config = Config;
//!     fn new(config: &Rc<Config>) -> Self { RequireHeader { config: Rc::clone(config) } }
//!     fn on_request(&mut self, headers: &mut dyn Headers) -> Decision {
//!         if headers.get(&self.config.required_header).is_none() {
//!             return Decision::reply(400, format!("missing {}\n", self.config.required_header));
//!         }
//!         headers.set("x-checked", "yes");
//!         Decision::Continue
//!     }
//! }
//! // In the filter crate: meshwork_plugin_sdk::register!(RequireHeader);
//!
//! // Natively, in a unit test:
//! let config = Rc::new(meshwork_plugin_sdk::parse_config::<Config>(br#"{"required_header": "x-user"}"#).unwrap());
//! let mut filter = RequireHeader::new(&config);
//! let mut headers = MemoryHeaders::from(&[(":path", "/")]);
//! assert!(matches!(filter.on_request(&mut headers), Decision::Reply { status: 400, .. }));
//! let mut headers = MemoryHeaders::from(&[("x-user", "ann")]);
//! assert!(matches!(filter.on_request(&mut headers), Decision::Continue));
//! assert_eq!(headers.get("x-checked").as_deref(), Some("yes"));
//! ```

use serde::de::DeserializeOwned;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod abi;

/// What a callback decides: go on, or answer the client now (the request never reaches the upstream; on the
/// response side the upstream's answer is replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl Decision {
    /// A local reply with a text body.
    pub fn reply(status: u16, body: impl Into<String>) -> Decision {
        Decision::Reply {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// A local reply with extra headers.
    pub fn reply_with(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Decision {
        Decision::Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            body: body.into(),
        }
    }
}

/// A header map (request or response). Names are case-insensitive; pseudo-headers (`:path`, `:method`,
/// `:authority`, `:status`) are readable like any other.
pub trait Headers {
    fn get(&self, name: &str) -> Option<String>;
    /// Sets (replacing every existing value).
    fn set(&mut self, name: &str, value: &str);
    /// Appends a value.
    fn add(&mut self, name: &str, value: &str);
    fn remove(&mut self, name: &str);

    /// Moves a header to a new name, keeping its value. Returns whether it existed.
    fn rename(&mut self, from: &str, to: &str) -> bool {
        match self.get(from) {
            Some(v) => {
                self.remove(from);
                self.set(to, &v);
                true
            }
            None => false,
        }
    }
}

/// An HTTP filter. One value per request; `new` gets the plugin's parsed configuration, shared (an `Rc`), so a
/// filter keeps it without copying it for every request.
pub trait Filter: Sized + 'static {
    /// Parsed from `pluginConfig` (JSON); an empty configuration is `Default`. A configuration that does not
    /// parse is rejected, so the control plane's push is NACKed with the reason.
    type Config: DeserializeOwned + Default + Clone + 'static;

    fn new(config: &std::rc::Rc<Self::Config>) -> Self;

    fn on_request(&mut self, _headers: &mut dyn Headers) -> Decision {
        Decision::Continue
    }

    fn on_response(&mut self, _headers: &mut dyn Headers) -> Decision {
        Decision::Continue
    }

    /// Set to `true` if `on_request_body` / `on_response_body` may change a body's length: the SDK then removes
    /// `content-length` from the headers before they go on (the message is sent chunked), which is what a proxy
    /// needs before a body's length changes (Meshwork refuses to send a body that disagrees with its
    /// content-length; Envoy would send a malformed message).
    const REWRITES_BODY: bool = false;

    /// The whole request body, buffered by the SDK (only with `register!(F, with_bodies)`): the proxy holds the
    /// chunks until the body is complete (up to the plugin's `limits.bodyBuffer`, beyond which it answers 413), then
    /// this runs once. Replace the body with [`BufferedBody::replace`]; a [`Decision::Reply`] answers the request
    /// instead of the upstream.
    fn on_request_body(&mut self, _body: &mut BufferedBody) -> Decision {
        Decision::Continue
    }

    /// The whole response body, likewise (beyond `limits.bodyBuffer` the response is cut off). The response's
    /// headers are already on their way, so a `Decision::Reply` here is not possible: the proxy ignores it (and logs
    /// it).
    fn on_response_body(&mut self, _body: &mut BufferedBody) -> Decision {
        Decision::Continue
    }
}

/// A complete message body handed to a filter's body callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferedBody {
    bytes: Vec<u8>,
    replaced: bool,
}

impl BufferedBody {
    pub fn new(bytes: Vec<u8>) -> Self {
        BufferedBody {
            bytes,
            replaced: false,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }

    /// Sends `bytes` on instead of the original body.
    pub fn replace(&mut self, bytes: impl Into<Vec<u8>>) {
        self.bytes = bytes.into();
        self.replaced = true;
    }

    /// Whether the body was replaced.
    pub fn replaced(&self) -> bool {
        self.replaced
    }
}

/// Parses a configuration buffer: empty means `Default`, otherwise JSON.
pub fn parse_config<C: DeserializeOwned + Default>(bytes: &[u8]) -> Result<C, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(C::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))
}

/// A header map in the ABI's wire format (a local reply's headers): the count, then each key's and value's length,
/// then each key and value NUL-terminated; integers are little-endian u32.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn serialize_map(pairs: &[(String, String)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Headers in memory, for unit tests of filter logic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryHeaders(pub Vec<(String, String)>);

impl<const N: usize> From<&[(&str, &str); N]> for MemoryHeaders {
    fn from(pairs: &[(&str, &str); N]) -> Self {
        MemoryHeaders(
            pairs
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_string()))
                .collect(),
        )
    }
}

impl Headers for MemoryHeaders {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }
    fn add(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }
    fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

/// Makes `$filter` the module's HTTP filter: expands to the proxy-wasm exports (in the `.wasm` build only; natively
/// it expands to nothing, so a filter crate's unit tests build). `register!(F)` exports the header callbacks only, so
/// the proxy never holds a body for the filter; `register!(F, with_bodies)` adds the body callbacks
/// (`Filter::on_request_body`, `Filter::on_response_body`, each with the whole body).
#[macro_export]
macro_rules! register {
    ($filter:ty) => {
        $crate::__register!($filter, {});
    };
    ($filter:ty, with_bodies) => {
        $crate::__register!($filter, {
            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_request_body(id: u32, size: usize, end: u32) -> u32 {
                with(|s| s.body(id, size, end != 0, false))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_response_body(id: u32, size: usize, end: u32) -> u32 {
                with(|s| s.body(id, size, end != 0, true))
            }
        });
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __register {
    ($filter:ty, { $($extra:item)* }) => {
        #[cfg(target_arch = "wasm32")]
        mod __meshwork_plugin {
            #[allow(unused_imports)]
            use super::*;
            use $crate::abi::{allocate, State};

            std::thread_local! {
                static STATE: std::cell::RefCell<State<$filter>> = std::cell::RefCell::new(State::default());
            }

            fn with<T>(f: impl FnOnce(&mut State<$filter>) -> T) -> T {
                STATE.with(|s| f(&mut s.borrow_mut()))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_abi_version_0_2_1() {}

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
                allocate(size)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_context_create(id: u32, parent: u32) {
                with(|s| s.context_create(id, parent))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_configure(_root: u32, _size: usize) -> u32 {
                u32::from(with(|s| s.configure()))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_request_headers(id: u32, _headers: usize, end: u32) -> u32 {
                with(|s| s.headers(id, false, end != 0))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_response_headers(id: u32, _headers: usize, end: u32) -> u32 {
                with(|s| s.headers(id, true, end != 0))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_delete(id: u32) {
                with(|s| s.delete(id))
            }

            $($extra)*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_headers() {
        let mut h = MemoryHeaders::from(&[("X-A", "1"), ("x-a", "2")]);
        assert_eq!(h.get("x-a").as_deref(), Some("1"));
        h.set("x-a", "3");
        assert_eq!(h.0, vec![("x-a".to_string(), "3".to_string())]);
        assert!(h.rename("x-a", "x-b"));
        assert_eq!(h.get("x-b").as_deref(), Some("3"));
        assert!(!h.rename("x-a", "x-c"));
    }

    #[test]
    fn local_reply_headers_in_the_abi_wire_format() {
        let bytes = serialize_map(&[("a".into(), "bc".into()), ("k".into(), String::new())]);
        let mut want = Vec::new();
        for n in [2u32, 1, 2, 1, 0] {
            want.extend_from_slice(&n.to_le_bytes());
        }
        want.extend_from_slice(b"a\0bc\0k\0\0");
        assert_eq!(bytes, want);
        assert_eq!(serialize_map(&[]), 0u32.to_le_bytes().to_vec());
    }

    #[test]
    fn buffered_bodies() {
        let mut b = BufferedBody::new(b"a secret".to_vec());
        assert_eq!(b.text(), "a secret");
        assert!(!b.replaced());
        b.replace("a [hidden]");
        assert!(b.replaced());
        assert_eq!(b.bytes(), b"a [hidden]");
    }

    #[test]
    fn configs() {
        #[derive(Default, serde::Deserialize, PartialEq, Debug)]
        struct C {
            n: u32,
        }
        assert_eq!(parse_config::<C>(b""), Ok(C::default()));
        assert_eq!(parse_config::<C>(br#"{"n": 3}"#), Ok(C { n: 3 }));
        assert!(parse_config::<C>(b"{")
            .unwrap_err()
            .contains("invalid configuration"));
    }
}
