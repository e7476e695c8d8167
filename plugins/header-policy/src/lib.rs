//! Header policy filter: adds, sets, removes and renames request and response headers, from JSON configuration:
//! `{"request": {"set": {"k": "v"}, "add": {"k": "v"}, "remove": ["k"], "rename": {"old": "new"}}, "response": {...}}`.

use std::collections::BTreeMap;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Edits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Edits,
    #[serde(default)]
    response: Edits,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    config: Config,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else { return true };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) => {
                self.config = c;
                true
            }
            Err(e) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("header-policy: bad configuration: {e}")).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { config: self.config.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Config,
}

impl Context for Filter {}

fn apply(e: &Edits, get: impl Fn(&str) -> Option<String>, mut set: impl FnMut(&str, Option<&str>), mut add: impl FnMut(&str, &str)) {
    for (from, to) in &e.rename {
        if let Some(v) = get(from) {
            set(from, None);
            set(to, Some(&v));
        }
    }
    for name in &e.remove {
        set(name, None);
    }
    for (k, v) in &e.set {
        set(k, Some(v));
    }
    for (k, v) in &e.add {
        add(k, v);
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let edits = self.config.request.clone();
        apply(
            &edits,
            |k| self.get_http_request_header(k),
            |k, v| self.set_http_request_header(k, v),
            |k, v| self.add_http_request_header(k, v),
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let edits = self.config.response.clone();
        apply(
            &edits,
            |k| self.get_http_response_header(k),
            |k, v| self.set_http_response_header(k, v),
            |k, v| self.add_http_response_header(k, v),
        );
        Action::Continue
    }
}
