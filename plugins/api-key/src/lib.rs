//! API-key authorization filter: a request without the key header gets a local 401, one with an unknown key a
//! local 403; a known key passes, and the filter tells the upstream who the caller is (and drops the key).
//! Config: `{"header": "x-api-key", "keys": {"KEY": "client-name"}}`. Written with meshwork-plugin-sdk.

use std::collections::BTreeMap;

use meshwork_plugin_sdk::{Decision, Filter, Headers};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: BTreeMap<String, String>,
}

fn default_header() -> String {
    "x-api-key".into()
}

pub struct ApiKey {
    config: std::rc::Rc<Config>,
}

impl Filter for ApiKey {
    type Config = Config;

    fn new(config: &std::rc::Rc<Config>) -> Self {
        ApiKey {
            config: std::rc::Rc::clone(config),
        }
    }

    fn on_request(&mut self, h: &mut dyn Headers) -> Decision {
        let header = if self.config.header.is_empty() {
            "x-api-key"
        } else {
            self.config.header.as_str()
        };
        match h.get(header) {
            None => Decision::reply_with(
                401,
                &[
                    ("www-authenticate", "ApiKey"),
                    ("content-type", "text/plain"),
                ],
                "missing API key\n",
            ),
            Some(key) => match self.config.keys.get(&key) {
                Some(client) => {
                    h.remove(header);
                    h.set("x-client", client);
                    Decision::Continue
                }
                None => Decision::reply_with(
                    403,
                    &[("content-type", "text/plain")],
                    "API key not allowed\n",
                ),
            },
        }
    }
}

meshwork_plugin_sdk::register!(ApiKey);
