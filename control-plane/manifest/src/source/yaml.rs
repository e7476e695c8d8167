//! A YAML document tree that remembers the line of every node, built from yaml-rust2's event parser.
//! serde_yaml-style deserialisation loses positions; diagnostics need them.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    /// `quoted` is true for quoted and block scalars: they are always strings.
    Scalar {
        value: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// How the node reads in an error message: `a mapping`, `"ten"`, ...
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing (null)".to_string(),
            Kind::Scalar { value, .. } => format!("{value:?}"),
            Kind::Seq(_) => "a list".to_string(),
            Kind::Map(_) => "a mapping".to_string(),
        }
    }

    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// A parse error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub message: String,
}

/// Parses every document of a YAML stream. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder
        .docs
        .into_iter()
        .filter(|d| d.kind != Kind::Null)
        .collect())
}

#[derive(Default)]
struct Builder {
    docs: Vec<Node>,
    stack: Vec<Node>,
    /// Pending mapping keys, parallel to `stack` entries that are maps.
    keys: Vec<Option<Node>>,
    anchors: HashMap<usize, Node>,
    anchor_stack: Vec<usize>,
    error: Option<YamlError>,
}

impl Builder {
    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some(parent) = self.stack.last_mut() else {
            self.docs.push(node);
            return;
        };
        match &mut parent.kind {
            Kind::Seq(items) => items.push(node),
            Kind::Map(entries) => {
                let slot = self.keys.last_mut().expect("map has a key slot");
                match slot.take() {
                    None => *slot = Some(node),
                    Some(key) => entries.push((key, node)),
                }
            }
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                let quoted = style != TScalarStyle::Plain;
                let is_null = !quoted
                    && tag.is_none()
                    && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL");
                let kind = if is_null {
                    Kind::Null
                } else {
                    Kind::Scalar { value, quoted }
                };
                self.push_value(Node { line, kind }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Node {
                    line,
                    kind: Kind::Seq(Vec::new()),
                });
                self.keys.push(None);
                self.anchor_stack.push(anchor);
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Node {
                    line,
                    kind: Kind::Map(Vec::new()),
                });
                self.keys.push(None);
                self.anchor_stack.push(anchor);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(node) = self.stack.pop() {
                    self.keys.pop();
                    let anchor = self.anchor_stack.pop().unwrap_or(0);
                    self.push_value(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push_value(Node { line, ..node }, 0),
                None => {
                    self.error.get_or_insert(YamlError {
                        line,
                        message: "unknown alias".into(),
                    });
                }
            },
            Event::DocumentStart
            | Event::DocumentEnd
            | Event::StreamStart
            | Event::StreamEnd
            | Event::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_documents() {
        let docs = parse_documents("a: 1\nb:\n  - x\n  - 'y'\n---\n---\nc: ~\n").unwrap();
        assert_eq!(docs.len(), 2);
        let Kind::Map(entries) = &docs[0].kind else {
            panic!("map")
        };
        assert_eq!(entries[1].0.as_scalar(), Some("b"));
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!("seq")
        };
        assert_eq!(items[1].line, 4);
        assert_eq!(
            items[1].kind,
            Kind::Scalar {
                value: "y".into(),
                quoted: true
            }
        );
        let Kind::Map(entries) = &docs[1].kind else {
            panic!("map")
        };
        assert_eq!(entries[0].1.kind, Kind::Null);
    }

    #[test]
    fn syntax_error_has_line() {
        let err = parse_documents("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
    }

    #[test]
    fn aliases_resolve() {
        let docs = parse_documents("a: &x {k: v}\nb: *x\n").unwrap();
        let Kind::Map(entries) = &docs[0].kind else {
            panic!("map")
        };
        assert_eq!(entries[0].1.kind, entries[1].1.kind);
    }
}
