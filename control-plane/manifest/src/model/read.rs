//! Typed reading of YAML nodes with diagnostics: unknown fields are rejected by name, wrong types say what was
//! expected and what was found.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::Sink;
use crate::source::yaml::{Kind, Node};

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A mapping whose keys were checked against the supported set.
pub struct Obj<'a> {
    pub line: usize,
    pub path: String,
    entries: &'a [(Node, Node)],
}

impl<'a> Obj<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_scalar() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| v.kind != Kind::Null)
    }

    pub fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

pub struct Reader<'s> {
    pub sink: &'s mut Sink,
}

impl Reader<'_> {
    pub fn error(&mut self, line: usize, field: impl Into<String>, message: impl Into<String>) {
        self.sink.error(line, field, message);
    }

    /// Reads a mapping, reporting every key not in `allowed` (and `unsupported` keys with their own reason).
    pub fn obj<'a>(&mut self, node: &'a Node, path: &str, allowed: &[&str]) -> Option<Obj<'a>> {
        let Kind::Map(entries) = &node.kind else {
            self.error(
                node.line,
                path,
                format!("expected a mapping, got {}", node.describe()),
            );
            return None;
        };
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in entries {
            let Some(key) = k.as_scalar() else {
                self.error(
                    k.line,
                    path,
                    format!("expected string keys, got {}", k.describe()),
                );
                continue;
            };
            if seen.contains(&key) {
                self.error(k.line, join(path, key), "duplicate field");
            }
            seen.push(key);
            if !allowed.contains(&key) {
                self.error(
                    k.line,
                    join(path, key),
                    format!(
                        "unknown or unsupported field (supported here: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Obj {
            line: node.line,
            path: path.to_string(),
            entries,
        })
    }

    pub fn required<'a>(&mut self, obj: &Obj<'a>, key: &str, expected: &str) -> Option<&'a Node> {
        let v = obj.get(key);
        if v.is_none() {
            self.error(
                obj.line,
                obj.field(key),
                format!("required field is missing: expected {expected}"),
            );
        }
        v
    }

    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.kind {
            Kind::Scalar { value, .. } => Some(value.clone()),
            _ => {
                self.error(
                    node.line,
                    path,
                    format!("expected a string, got {}", node.describe()),
                );
                None
            }
        }
    }

    pub fn opt_string(&mut self, obj: &Obj<'_>, key: &str) -> Option<String> {
        obj.get(key).and_then(|n| self.string(n, &obj.field(key)))
    }

    pub fn req_string(&mut self, obj: &Obj<'_>, key: &str, expected: &str) -> Option<String> {
        self.required(obj, key, expected)
            .and_then(|n| self.string(n, &obj.field(key)))
    }

    /// An integer in `min..=max`.
    pub fn int(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        let parsed = match &node.kind {
            Kind::Scalar {
                value,
                quoted: false,
            } => value.parse::<i64>().ok(),
            _ => None,
        };
        let expected = match parsed {
            None if min == 0 => "a non-negative integer".to_string(),
            _ => format!("an integer from {min} to {max}"),
        };
        match parsed {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                self.error(
                    node.line,
                    path,
                    format!("expected {expected}, got {}", node.describe()),
                );
                None
            }
        }
    }

    pub fn list<'a>(&mut self, node: &'a Node, path: &str) -> Option<&'a [Node]> {
        match &node.kind {
            Kind::Seq(items) => Some(items),
            _ => {
                self.error(
                    node.line,
                    path,
                    format!("expected a list, got {}", node.describe()),
                );
                None
            }
        }
    }

    pub fn string_list(&mut self, node: &Node, path: &str) -> Vec<String> {
        let Some(items) = self.list(node, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.string(n, &index(path, i)))
            .collect()
    }

    /// A mapping of strings to strings (labels, env).
    pub fn string_map(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Kind::Map(entries) = &node.kind else {
            self.error(
                node.line,
                path,
                format!("expected a mapping of strings, got {}", node.describe()),
            );
            return out;
        };
        for (k, v) in entries {
            let Some(key) = k.as_scalar() else {
                self.error(
                    k.line,
                    path,
                    format!("expected string keys, got {}", k.describe()),
                );
                continue;
            };
            let field = join(path, key);
            if let Some(value) = self.string(v, &field) {
                if out.insert(key.to_string(), value).is_some() {
                    self.error(k.line, field, "duplicate key");
                }
            }
        }
        out
    }

    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.string(node, path)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    node.line,
                    path,
                    format!(
                        "expected a duration like \"250ms\" or \"1m30s\", got {text:?} ({why})"
                    ),
                );
                None
            }
        }
    }

    /// One of `choices` (exact spelling, as Kubernetes enums are).
    pub fn choice(&mut self, node: &Node, path: &str, choices: &[&str]) -> Option<String> {
        let text = self.string(node, path)?;
        if choices.contains(&text.as_str()) {
            Some(text)
        } else {
            self.error(
                node.line,
                path,
                format!("expected one of {}, got {text:?}", choices.join(", ")),
            );
            None
        }
    }
}

/// Durations as the Gateway API writes them (GEP-2257): one to four `<number><unit>` parts, units h, m, s, ms.
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err("empty");
    }
    let mut total = Duration::ZERO;
    let mut i = 0;
    let mut parts = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err("expected a number");
        }
        if i - start > 5 {
            return Err("at most 5 digits per part");
        }
        let n: u64 = text[start..i].parse().map_err(|_| "bad number")?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        total += match &text[unit_start..i] {
            "h" => Duration::from_secs(n * 3600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "" => return Err("missing unit (h, m, s or ms)"),
            _ => return Err("unknown unit (use h, m, s or ms)"),
        };
        parts += 1;
        if parts > 4 {
            return Err("at most 4 parts");
        }
    }
    Ok(total)
}

/// Kubernetes object names: DNS-1123 subdomains.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// `16Mi`, `512Ki`, `1Gi`, or plain bytes (Kubernetes quantities, binary suffixes).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let (num, mult) = match s {
        _ if s.ends_with("Ki") => (&s[..s.len() - 2], 1u64 << 10),
        _ if s.ends_with("Mi") => (&s[..s.len() - 2], 1 << 20),
        _ if s.ends_with("Gi") => (&s[..s.len() - 2], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1s1s1s1s1s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("backend-v2"));
        assert!(!valid_name("Backend"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
    }
}
