//! Header policy filter: adds, sets, removes and renames request and response headers, from JSON configuration:
//! `{"request": {"set": {"k": "v"}, "add": {"k": "v"}, "remove": ["k"], "rename": {"old": "new"}}, "response": {...}}`.
//! Written with meshwork-plugin-sdk.

use std::collections::BTreeMap;

use meshwork_plugin_sdk::{Decision, Filter, Headers};
use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
}

impl Edits {
    fn apply(&self, h: &mut dyn Headers) {
        for (from, to) in &self.rename {
            h.rename(from, to);
        }
        for name in &self.remove {
            h.remove(name);
        }
        for (k, v) in &self.set {
            h.set(k, v);
        }
        for (k, v) in &self.add {
            h.add(k, v);
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    request: Edits,
    #[serde(default)]
    response: Edits,
}

pub struct HeaderPolicy {
    config: std::rc::Rc<Config>,
}

impl Filter for HeaderPolicy {
    type Config = Config;

    fn new(config: &std::rc::Rc<Config>) -> Self {
        HeaderPolicy {
            config: std::rc::Rc::clone(config),
        }
    }

    fn on_request(&mut self, h: &mut dyn Headers) -> Decision {
        self.config.request.apply(h);
        Decision::Continue
    }

    fn on_response(&mut self, h: &mut dyn Headers) -> Decision {
        self.config.response.apply(h);
        Decision::Continue
    }
}

meshwork_plugin_sdk::register!(HeaderPolicy);
