//! Test filter that misbehaves on purpose, to prove the host contains it. Plugin config (a string) picks how:
//! `panic`, `loop` (never returns), `oom` (allocates without end), `reject` (refuses its configuration), or
//! `ok` (adds `x-misbehave: ok`), `redact` (buffers the request body by pausing until its end, then replaces
//! every `secret` with `[hidden]`, and in the response body every `classified` with `[redacted: classified]`;
//! it removes content-length in its headers callbacks first, as an Envoy filter that changes a body's length
//! must), `grow` (appends to the response body but leaves content-length, which the host must refuse to send),
//! or `deny-body` (reads the whole request body and answers 403 itself when it contains `forbidden`), or
//! `ask-then-deny` (lets nothing through: pauses the request on a callout to the `gate` service and answers 403
//! when the answer comes; on paths with `/late` it does so in the response headers instead, and on paths with
//! `/body` it holds the request body to its end and answers 403 then, or on `/body/ask` asks at the body's end and
//! answers 403 when the answer comes; it panics on `/boom`, so tests can make its
//! shared instance trap while other streams wait on it).
//! The misbehaviours fire on requests whose path contains `/boom`.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { mode: String::new() }) });
}}

struct Root {
    mode: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.mode = self
            .get_plugin_configuration()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.mode != "reject"
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            mode: self.mode.clone(),
            late: false,
            ask_at_end: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    mode: String,
    /// `ask-then-deny` asks in the response headers rather than the request headers.
    late: bool,
    /// ... or at the end of the request body (paths with `/body/ask`).
    ask_at_end: bool,
}

impl Filter {
    /// `ask-then-deny`: asks the `gate` service and pauses; its answer, whatever it is, denies the stream.
    fn ask(&self) -> Action {
        let headers = vec![
            (":method", "GET"),
            (":path", "/ask"),
            (":authority", "gate"),
        ];
        if self
            .dispatch_http_call("gate", headers, None, vec![], Duration::from_secs(30))
            .is_err()
        {
            self.send_http_response(500, vec![], Some(b"misbehave: cannot call gate\n"));
        }
        Action::Pause
    }

    fn deny(&self) {
        self.send_http_response(
            403,
            vec![("x-denied-by", "misbehave")],
            Some(b"denied after asking\n"),
        );
    }
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        if self.mode == "ask-then-deny" {
            self.deny();
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.contains("/boom") {
            match self.mode.as_str() {
                "panic" | "ask-then-deny" => panic!("misbehave: panic on purpose"),
                "loop" => {
                    let mut x: u64 = 0;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "oom" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                _ => {}
            }
        }
        if self.mode == "ask-then-deny" {
            self.late = path.contains("/late");
            self.ask_at_end = path.contains("/body/ask");
            if !self.late && !path.contains("/body") {
                return self.ask();
            }
        }
        self.set_http_request_header("x-misbehave", Some("ok"));
        if self.mode == "redact" {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if self.late {
            return self.ask();
        }
        if self.mode == "redact" {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.mode == "ask-then-deny" {
            if end_of_stream {
                if self.ask_at_end {
                    return self.ask();
                }
                self.deny();
            }
            return Action::Pause;
        }
        if self.mode == "deny-body" {
            if !end_of_stream {
                return Action::Pause;
            }
            let body = self.get_http_request_body(0, size).unwrap_or_default();
            if String::from_utf8_lossy(&body).contains("forbidden") {
                self.send_http_response(
                    403,
                    vec![("x-denied-by", "misbehave")],
                    Some(b"blocked by body\n"),
                );
                return Action::Pause;
            }
            return Action::Continue;
        }
        if self.mode != "redact" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause; // buffer until the whole body is here
        }
        if let Some(body) = self.get_http_request_body(0, size) {
            let redacted = String::from_utf8_lossy(&body).replace("secret", "[hidden]");
            self.set_http_request_body(0, size, redacted.as_bytes());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.mode == "grow" && end_of_stream {
            self.set_http_response_body(size, 0, b" and more");
        }
        if self.mode != "redact" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, size) {
            let redacted =
                String::from_utf8_lossy(&body).replace("classified", "[redacted: classified]");
            self.set_http_response_body(0, size, redacted.as_bytes());
        }
        Action::Continue
    }
}
