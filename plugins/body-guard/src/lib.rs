//! Body guard filter: refuses requests whose body contains a denied word (a local 403) and redacts words in request
//! and response bodies. Config: `{"deny": ["word"], "redact": {"word": "replacement"}}`. Written with
//! meshwork-plugin-sdk's body helpers: the SDK buffers each body and hands it over whole, and removes
//! content-length from the headers because the redaction may change a body's length.

use std::collections::BTreeMap;
use std::rc::Rc;

use meshwork_plugin_sdk::{BufferedBody, Decision, Filter};
use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    redact: BTreeMap<String, String>,
}

pub struct BodyGuard {
    config: Rc<Config>,
}

impl BodyGuard {
    fn redact(&self, body: &mut BufferedBody) {
        if self.config.redact.is_empty() {
            return;
        }
        let mut text = body.text().into_owned();
        let mut changed = false;
        for (word, replacement) in &self.config.redact {
            if !word.is_empty() && text.contains(word.as_str()) {
                text = text.replace(word.as_str(), replacement);
                changed = true;
            }
        }
        if changed {
            body.replace(text);
        }
    }
}

impl Filter for BodyGuard {
    type Config = Config;
    const REWRITES_BODY: bool = true;

    fn new(config: &Rc<Config>) -> Self {
        BodyGuard {
            config: Rc::clone(config),
        }
    }

    fn on_request_body(&mut self, body: &mut BufferedBody) -> Decision {
        let text = body.text();
        if let Some(word) = self.config.deny.iter().find(|w| text.contains(w.as_str())) {
            return Decision::reply(403, format!("request body refused: it contains \"{word}\"\n"));
        }
        self.redact(body);
        Decision::Continue
    }

    fn on_response_body(&mut self, body: &mut BufferedBody) -> Decision {
        self.redact(body);
        Decision::Continue
    }
}

meshwork_plugin_sdk::register!(BodyGuard, with_bodies);
