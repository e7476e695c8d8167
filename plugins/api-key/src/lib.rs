//! API-key authorization filter: a request without the key header gets a local 401, one with an unknown key a
//! local 403; a known key passes, and the filter tells the upstream who the caller is.
//! Config: `{"header": "x-api-key", "keys": {"KEY": "client-name"}}`.

use std::collections::BTreeMap;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: BTreeMap<String, String>,
}

fn default_header() -> String {
    "x-api-key".into()
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

struct Root {
    config: Option<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parsed = self.get_plugin_configuration().map(|b| serde_json::from_slice::<Config>(&b));
        match parsed {
            Some(Ok(c)) => {
                self.config = Some(c);
                true
            }
            Some(Err(e)) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("api-key: bad configuration: {e}")).ok();
                false
            }
            None => {
                proxy_wasm::hostcalls::log(LogLevel::Error, "api-key: configuration with `keys` is required").ok();
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        self.config.clone().map(|config| Box::new(Filter { config }) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Config,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        match self.get_http_request_header(&self.config.header) {
            None => {
                self.send_http_response(401, vec![("www-authenticate", "ApiKey"), ("content-type", "text/plain")], Some(b"missing API key\n"));
                Action::Pause
            }
            Some(key) => match self.config.keys.get(&key).cloned() {
                Some(client) => {
                    self.set_http_request_header(&self.config.header.clone(), None);
                    self.set_http_request_header("x-client", Some(&client));
                    Action::Continue
                }
                None => {
                    self.send_http_response(403, vec![("content-type", "text/plain")], Some(b"API key not allowed\n"));
                    Action::Pause
                }
            },
        }
    }
}
