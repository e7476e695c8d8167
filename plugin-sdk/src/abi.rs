//! The binding of a [`Filter`](crate::Filter) to the proxy-wasm ABI (used by `register!`).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::{parse_config, Decision, Filter, Headers};

pub struct Root<F: Filter> {
    config: std::rc::Rc<F::Config>,
}

impl<F: Filter> Default for Root<F> {
    fn default() -> Self {
        Root {
            config: std::rc::Rc::new(F::Config::default()),
        }
    }
}

impl<F: Filter> Context for Root<F> {}

impl<F: Filter> RootContext for Root<F> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match parse_config::<F::Config>(&bytes) {
            Ok(c) => {
                self.config = std::rc::Rc::new(c);
                true
            }
            Err(e) => {
                let _ = proxy_wasm::hostcalls::log(LogLevel::Error, &e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            filter: F::new(&self.config),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream<F> {
    filter: F,
}

impl<F> Context for Stream<F> {}

struct HostHeaders {
    map: proxy_wasm::types::MapType,
}

impl Headers for HostHeaders {
    fn get(&self, name: &str) -> Option<String> {
        proxy_wasm::hostcalls::get_map_value(self.map, name)
            .ok()
            .flatten()
    }
    fn set(&mut self, name: &str, value: &str) {
        let _ = proxy_wasm::hostcalls::set_map_value(self.map, name, Some(value));
    }
    fn add(&mut self, name: &str, value: &str) {
        let _ = proxy_wasm::hostcalls::add_map_value(self.map, name, value);
    }
    fn remove(&mut self, name: &str) {
        let _ = proxy_wasm::hostcalls::set_map_value(self.map, name, None);
    }
}

fn act(decision: Decision) -> Action {
    match decision {
        Decision::Continue => Action::Continue,
        Decision::Reply {
            status,
            headers,
            body,
        } => {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let _ =
                proxy_wasm::hostcalls::send_http_response(u32::from(status), headers, Some(&body));
            Action::Pause
        }
    }
}

impl<F: Filter> HttpContext for Stream<F> {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        act(self.filter.on_request(&mut HostHeaders {
            map: proxy_wasm::types::MapType::HttpRequestHeaders,
        }))
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        act(self.filter.on_response(&mut HostHeaders {
            map: proxy_wasm::types::MapType::HttpResponseHeaders,
        }))
    }
}
