//! Authorization by AuthorizationPolicy (Istio's semantics), evaluated per request before anything else spends
//! work: on a sidecar's inbound listener with the verified caller's identity, and on a gateway's listeners with
//! what a gateway can see (a client of a gateway has no mesh identity).
//!
//! Order, as Istio's: if any DENY policy matches, 403; AUDIT policies that match are logged and counted; if any
//! ALLOW policy applies and none matches, 403; otherwise the request goes on. A value list matches if any of its
//! values does (exact, `prefix*`, `*suffix`, or `*` for any non-empty value); a `not` list if none does. A request
//! without a verified identity has an empty principal and namespace: `principals: ["*"]` does not match it,
//! `notPrincipals: ["*"]` does (Istio's way of requiring mTLS). A header sent more than once matches if one of
//! its values does, and fails a `not` list if one of its values is in it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::header::HeaderName;
use http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value.
    Present,
}

impl Pattern {
    pub fn parse(text: &str) -> Pattern {
        if text == "*" {
            Pattern::Present
        } else if let Some(p) = text.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(s) = text.strip_prefix('*') {
            Pattern::Suffix(s.to_string())
        } else {
            Pattern::Exact(text.to_string())
        }
    }

    fn matches(&self, v: &str, fold_case: bool) -> bool {
        let eq = |a: &str, b: &str| {
            if fold_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            Pattern::Present => !v.is_empty(),
            Pattern::Exact(e) => eq(e, v),
            Pattern::Prefix(p) => {
                v.len() >= p.len() && v.is_char_boundary(p.len()) && eq(p, &v[..p.len()])
            }
            Pattern::Suffix(s) => {
                v.len() >= s.len()
                    && v.is_char_boundary(v.len() - s.len())
                    && eq(s, &v[v.len() - s.len()..])
            }
        }
    }
}

/// Values that must match (any of them; none given: anything) and values that must not (none of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    pub any_of: Vec<Pattern>,
    pub none_of: Vec<Pattern>,
}

impl Values {
    fn matches(&self, v: &str, fold_case: bool) -> bool {
        (self.any_of.is_empty() || self.any_of.iter().any(|p| p.matches(v, fold_case)))
            && !self.none_of.iter().any(|p| p.matches(v, fold_case))
    }

    /// For a header sent any number of times: some value matches `any_of`, and no value matches `none_of`, so a
    /// value sent twice cannot hide behind a first, different one. An absent header is one empty value.
    fn matches_header(&self, values: &[&str]) -> bool {
        let values = if values.is_empty() { &[""][..] } else { values };
        let hit = |p: &Pattern| values.iter().any(|v| p.matches(v, false));
        (self.any_of.is_empty() || self.any_of.iter().any(hit)) && !self.none_of.iter().any(hit)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    pub principals: Values,
    pub namespaces: Values,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operation {
    pub methods: Values,
    pub paths: Values,
    pub hosts: Values,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub header: HeaderName,
    pub values: Values,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `<namespace>/<name>`
    pub name: Arc<str>,
    pub action: Action,
    pub rules: Vec<Rule>,
}

/// What a policy sees of a request.
pub struct Subject<'a> {
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    /// Without a port.
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    /// The verified caller, in Istio's principal form (`cluster.local/ns/default/sa/frontend`); "" without one.
    pub principal: &'a str,
    /// The verified caller's namespace; "" without one.
    pub namespace: &'a str,
}

impl Rule {
    fn matches(&self, s: &Subject<'_>) -> bool {
        let from = self.from.is_empty()
            || self.from.iter().any(|f| {
                f.principals.matches(s.principal, false) && f.namespaces.matches(s.namespace, false)
            });
        let to = self.to.is_empty()
            || self.to.iter().any(|o| {
                o.methods.matches(s.method, false)
                    && o.paths.matches(s.path, false)
                    && o.hosts.matches(s.host, true)
            });
        let when = self.when.iter().all(|c| {
            let values: Vec<&str> = s
                .headers
                .get_all(&c.header)
                .iter()
                .map(|v| v.to_str().unwrap_or("\u{fffd}"))
                .collect();
            c.values.matches_header(&values)
        });
        from && to && when
    }
}

impl Policy {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(s))
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by this DENY policy, or (None) because ALLOW policies apply and none matched.
    Deny(Option<Arc<str>>),
}

/// Decides `s` under `policies`; AUDIT policies that match are returned to be logged and counted.
pub fn decide<'p>(policies: &'p [Policy], s: &Subject<'_>) -> (Decision, Vec<&'p Arc<str>>) {
    let audited = policies
        .iter()
        .filter(|p| p.action == Action::Audit && p.matches(s))
        .map(|p| &p.name)
        .collect();
    if let Some(p) = policies
        .iter()
        .find(|p| p.action == Action::Deny && p.matches(s))
    {
        return (Decision::Deny(Some(p.name.clone())), audited);
    }
    let mut allows = policies
        .iter()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    if allows.peek().is_some() && !allows.any(|p| p.matches(s)) {
        return (Decision::Deny(None), audited);
    }
    (Decision::Allow, audited)
}

/// Denials and audits per policy, for `/metrics`. Keys come from snapshots (bounded by them); a request denied
/// for want of a matching ALLOW policy counts under "(no ALLOW policy matched)".
#[derive(Default)]
pub struct Stats {
    counts: Mutex<HashMap<(Arc<str>, &'static str), u64>>,
    /// The second being logged (seconds since the epoch) and how many decisions were logged in it.
    log_second: std::sync::atomic::AtomicU64,
    logged: std::sync::atomic::AtomicU32,
}

/// Decisions logged per second at most (they are all counted): a client cannot flood the log with denied
/// requests.
pub const LOG_PER_SECOND: u32 = 20;

pub const NO_ALLOW_MATCHED: &str = "(no ALLOW policy matched)";

impl Stats {
    pub fn count(&self, policy: &Arc<str>, outcome: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((policy.clone(), outcome)).or_default() += 1;
    }

    /// Whether this decision may be logged (at most `LOG_PER_SECOND` a second; the rest are only counted).
    pub fn may_log(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.log_second.swap(now, Relaxed) != now {
            self.logged.store(0, Relaxed);
        }
        self.logged.fetch_add(1, Relaxed) < LOG_PER_SECOND
    }

    /// (policy, outcome, count), sorted.
    pub fn snapshot(&self) -> Vec<(Arc<str>, &'static str, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = counts
            .iter()
            .map(|((p, o), n)| (p.clone(), *o, *n))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests;
