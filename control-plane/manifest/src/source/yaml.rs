//! A YAML document tree that remembers the line of every node, built from yaml-rust2's event parser.
//! serde_yaml-style deserialisation loses positions; diagnostics need them.
//!
//! It also owns the limits that keep one hostile file from costing unbounded memory, time or stack: aliases are
//! expanded by copy, so every node and every byte of scalar text a file expands to is counted against
//! [`MAX_NODES`] and [`MAX_TEXT_BYTES`] *before* it is copied (a "billion laughs" file stops at the first alias
//! over budget), and mappings and lists nest at most [`MAX_DEPTH`] levels. The parser is driven one event at a time,
//! not through its recursive loader, so the first error ends the work.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Nodes (mappings, lists, scalars, keys included) one file may hold with its aliases expanded.
pub const MAX_NODES: usize = 1_000_000;
/// Bytes of scalar text one file may hold with its aliases expanded.
pub const MAX_TEXT_BYTES: usize = 16 << 20;
/// How deep mappings and lists may nest.
pub const MAX_DEPTH: usize = 128;

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
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        if ev == Event::StreamEnd {
            break;
        }
        builder.on_event(ev, mark)?;
    }
    Ok(builder
        .docs
        .into_iter()
        .filter(|d| d.kind != Kind::Null)
        .collect())
}

/// What a subtree costs: its nodes and the bytes of its scalars.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    nodes: usize,
    text: usize,
}

/// A mapping or list being built.
struct Frame {
    node: Node,
    /// A mapping's key waiting for its value.
    key: Option<Node>,
    anchor: usize,
    /// `Builder::used` when the frame opened: what it holds is the difference when it closes.
    start: Size,
}

#[derive(Default)]
struct Builder {
    docs: Vec<Node>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, Size)>,
    /// Everything this file has expanded to so far, alias copies included.
    used: Size,
}

impl Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) -> Result<(), YamlError> {
        let line = mark.line();
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                let size = Size {
                    nodes: 1,
                    text: value.len(),
                };
                self.charge(size, line)?;
                let quoted = style != TScalarStyle::Plain;
                let is_null = !quoted
                    && tag.is_none()
                    && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL");
                let kind = if is_null {
                    Kind::Null
                } else {
                    Kind::Scalar { value, quoted }
                };
                self.push_value(Node { line, kind }, anchor, size);
            }
            Event::SequenceStart(anchor, _) => self.open(Kind::Seq(Vec::new()), anchor, line)?,
            Event::MappingStart(anchor, _) => self.open(Kind::Map(Vec::new()), anchor, line)?,
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Alias(id) => self.alias(id, line)?,
            // Anchors belong to one document.
            Event::DocumentStart => self.anchors.clear(),
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Counts `size` against the file's budget, refusing it (before anything is copied) when over.
    fn charge(&mut self, size: Size, line: usize) -> Result<(), YamlError> {
        let nodes = self.used.nodes.saturating_add(size.nodes);
        let text = self.used.text.saturating_add(size.text);
        let limit = if nodes > MAX_NODES {
            format!("{MAX_NODES} YAML nodes")
        } else if text > MAX_TEXT_BYTES {
            format!("{} MiB of scalar text", MAX_TEXT_BYTES >> 20)
        } else {
            self.used = Size { nodes, text };
            return Ok(());
        };
        Err(YamlError {
            line,
            message: format!(
                "this file expands to more than {limit} with its aliases copied: expected at most {limit} \
                 (is it an alias bomb?)"
            ),
        })
    }

    fn open(&mut self, kind: Kind, anchor: usize, line: usize) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError {
                line,
                message: format!(
                    "mappings and lists nest too deep: expected at most {MAX_DEPTH} levels"
                ),
            });
        }
        let start = self.used;
        self.charge(Size { nodes: 1, text: 0 }, line)?;
        self.stack.push(Frame {
            node: Node { line, kind },
            key: None,
            anchor,
            start,
        });
        Ok(())
    }

    fn close(&mut self) {
        if let Some(frame) = self.stack.pop() {
            let size = Size {
                nodes: self.used.nodes - frame.start.nodes,
                text: self.used.text - frame.start.text,
            };
            self.push_value(frame.node, frame.anchor, size);
        }
    }

    fn alias(&mut self, id: usize, line: usize) -> Result<(), YamlError> {
        let Some(size) = self.anchors.get(&id).map(|(_, size)| *size) else {
            return Err(YamlError {
                line,
                message:
                    "unknown alias: expected an anchor (&name) defined earlier in this document"
                        .into(),
            });
        };
        self.charge(size, line)?;
        if let Some((node, _)) = self.anchors.get(&id) {
            let node = Node {
                line,
                ..node.clone()
            };
            self.push_value(node, 0, size);
        }
        Ok(())
    }

    fn push_value(&mut self, node: Node, anchor: usize, size: Size) {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        let Some(parent) = self.stack.last_mut() else {
            self.docs.push(node);
            return;
        };
        match &mut parent.node.kind {
            Kind::Seq(items) => items.push(node),
            Kind::Map(entries) => match parent.key.take() {
                None => parent.key = Some(node),
                Some(key) => entries.push((key, node)),
            },
            Kind::Null | Kind::Scalar { .. } => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
        assert_eq!(entries[1].1.line, 2, "an alias keeps its own line");
    }

    /// `levels` anchors, each a list of `refs` aliases of the one before: `refs^levels` scalars once expanded.
    pub(crate) fn alias_bomb(levels: usize, refs: usize) -> String {
        let mut text = format!("a0: &a0 [{}]\n", vec!["\"lol\""; refs].join(", "));
        for i in 1..levels {
            let prev = vec![format!("*a{}", i - 1); refs].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{prev}]\n"));
        }
        text
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_is_expanded() {
        let started = tokio::time::Instant::now();
        let err = parse_documents(&alias_bomb(9, 9)).unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err.message
                .contains("expands to more than 1000000 YAML nodes"),
            "{err:?}"
        );
        assert!(
            err.line >= 6 && err.line <= 9,
            "the line of the alias over budget: {err:?}"
        );
    }

    #[test]
    fn aliased_text_counts_against_the_budget() {
        let big = "x".repeat(1 << 20);
        let refs = vec!["*t"; 20].join(", ");
        let err = parse_documents(&format!("t: &t '{big}'\nl: [{refs}]\n")).unwrap_err();
        assert!(err.message.contains("16 MiB of scalar text"), "{err:?}");
        assert_eq!(err.line, 2);
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let ok = format!("{}x{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_documents(&ok).is_ok());
        // Block lists nest two bytes a level, so a 4 MiB file could otherwise nest two million deep.
        let deep = format!("{}x\n", "- ".repeat(100_000));
        let err = parse_documents(&deep).unwrap_err();
        assert!(
            err.message.contains("expected at most 128 levels"),
            "{err:?}"
        );
    }

    #[test]
    fn anchors_do_not_cross_documents() {
        let err = parse_documents("a: &x 1\n---\nb: *x\n").unwrap_err();
        assert!(err.message.contains("anchor"), "{err:?}");
        assert_eq!(err.line, 3);
    }
}
