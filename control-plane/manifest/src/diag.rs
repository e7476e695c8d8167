//! Diagnostics: every manifest error names the file, the line, the field path and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One problem found in a manifest set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: Arc<Path>,
    pub line: usize,
    /// Field path from the document root, e.g. `spec.rules[0].backendRefs[1].weight`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if self.field.is_empty() {
            write!(f, "{file}:{}: {}", self.line, self.message)
        } else {
            write!(f, "{file}:{}: {}: {}", self.line, self.field, self.message)
        }
    }
}

/// The errors of a rejected manifest set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file.
#[derive(Debug)]
pub struct Sink {
    pub file: Arc<Path>,
    pub diags: Vec<Diagnostic>,
}

impl Sink {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Sink {
            file: Arc::from(file.into()),
            diags: Vec::new(),
        }
    }

    pub fn error(&mut self, line: usize, field: impl Into<String>, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }
}
