//! External authorization, as Envoy's ext_authz filter does it, on the official `proxy-wasm` crate: every request
//! is paused while an HTTP callout asks an authorization service (a mesh service) whether it may pass. The service
//! sees the request's method and path (and the headers named in `forward_headers`); a 2xx answer lets the request
//! through with `x-authz` set (and the headers named in `allowed_headers` copied from the answer), any other answer
//! is returned to the client as is. When the service cannot be reached the request fails with 503, unless
//! `failure_mode_allow` is true.
//!
//! Decisions are also counted: each stream enqueues its decision on a shared queue and the root context, told by
//! `proxy_on_queue_ready`, turns them into the counters `ext_authz.allowed`, `ext_authz.denied` and
//! `ext_authz.failed`. On the response the filter stamps `x-authz-decision` into the trailers when the response
//! has trailers (gRPC), and into the headers otherwise.
//!
//! Configuration (JSON): `{"upstream": "authz", "timeout_ms": 1000, "forward_headers": ["x-user"],
//! "allowed_headers": ["x-user-id"], "failure_mode_allow": false}`.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

const QUEUE: &str = "ext_authz_decisions";

#[derive(Deserialize, Clone, Default)]
#[serde(default)]
struct Config {
    upstream: String,
    timeout_ms: u64,
    forward_headers: Vec<String>,
    allowed_headers: Vec<String>,
    failure_mode_allow: bool,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    config: Config,
    queue: u32,
    /// Counter ids: allowed, denied, failed.
    counters: [u32; 3],
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            proxy_wasm::hostcalls::log(LogLevel::Error, "ext-authz: no configuration").ok();
            return false;
        };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) if !c.upstream.is_empty() => self.config = c,
            Ok(_) => {
                hostcalls::log(LogLevel::Error, "ext-authz: `upstream` is required").ok();
                return false;
            }
            Err(e) => {
                hostcalls::log(LogLevel::Error, &format!("ext-authz: bad configuration: {e}")).ok();
                return false;
            }
        }
        if self.config.timeout_ms == 0 {
            self.config.timeout_ms = 1000;
        }
        self.queue = match hostcalls::register_shared_queue(QUEUE) {
            Ok(id) => id,
            Err(_) => return false,
        };
        for (slot, name) in ["ext_authz.allowed", "ext_authz.denied", "ext_authz.failed"]
            .iter()
            .enumerate()
        {
            match hostcalls::define_metric(MetricType::Counter, name) {
                Ok(id) => self.counters[slot] = id,
                Err(_) => return false,
            }
        }
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            let slot = match item.as_slice() {
                b"allowed" => 0,
                b"denied" => 1,
                _ => 2,
            };
            hostcalls::increment_metric(self.counters[slot], 1).ok();
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Authz {
            config: self.config.clone(),
            decision: "",
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Authz {
    config: Config,
    decision: &'static str,
}

impl Authz {
    fn record(&mut self, decision: &'static str) {
        self.decision = decision;
        if let Ok(Some(queue)) = hostcalls::resolve_shared_queue("", QUEUE) {
            hostcalls::enqueue_shared_queue(queue, Some(decision.as_bytes())).ok();
        }
    }
}

impl Context for Authz {
    fn on_http_call_response(&mut self, _token: u32, headers: usize, body_size: usize, _trailers: usize) {
        if headers == 0 {
            self.record("failed");
            if self.config.failure_mode_allow {
                self.set_http_request_header("x-authz", Some("unavailable; allowed by failure_mode_allow"));
                self.resume_http_request();
            } else {
                self.send_http_response(
                    503,
                    vec![("content-type", "text/plain")],
                    Some(b"ext-authz: the authorization service did not answer\n"),
                );
            }
            return;
        }
        let status: u32 = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        if (200..300).contains(&status) {
            self.record("allowed");
            let answer: Vec<(String, String)> = self.get_http_call_response_headers();
            for name in self.config.allowed_headers.clone() {
                if let Some((_, v)) = answer.iter().find(|(k, _)| k.eq_ignore_ascii_case(&name)) {
                    self.set_http_request_header(&name, Some(v));
                }
            }
            let by = format!("allowed by {}", self.config.upstream);
            self.set_http_request_header("x-authz", Some(&by));
            self.resume_http_request();
        } else {
            self.record("denied");
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            self.send_http_response(status, vec![("x-authz", "denied")], Some(&body));
        }
    }
}

impl HttpContext for Authz {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_else(|| "GET".into());
        let path = self.get_http_request_header(":path").unwrap_or_else(|| "/".into());
        let authority = self.config.upstream.clone();
        let mut headers: Vec<(String, String)> = vec![
            (":method".into(), method),
            (":path".into(), path),
            (":authority".into(), authority),
        ];
        for name in &self.config.forward_headers {
            if let Some(v) = self.get_http_request_header(name) {
                headers.push((name.clone(), v));
            }
        }
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match self.dispatch_http_call(&self.config.upstream.clone(), refs, None, vec![], timeout) {
            Ok(_) => Action::Pause,
            Err(status) => {
                self.record("failed");
                let msg = format!("ext-authz: cannot call {}: {status:?}\n", self.config.upstream);
                self.send_http_response(503, vec![], Some(msg.as_bytes()));
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        // A gRPC response (or any with trailers to come) gets the decision in its trailers instead.
        let grpc = self
            .get_http_response_header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc"));
        if end_of_stream || !grpc {
            let d = self.decision;
            self.set_http_response_header("x-authz-decision", Some(d));
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        let d = self.decision;
        self.add_http_response_trailer("x-authz-decision", d);
        Action::Continue
    }
}
