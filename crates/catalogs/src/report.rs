//! The import report: what the catalog says that the rate card does not.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Default)]
pub struct ImportReport {
    pub source: String,
    pub models_in_catalog: usize,
    pub models_imported: usize,
    /// reason → (count, a few examples).
    pub not_represented: BTreeMap<String, (usize, Vec<String>)>,
}

/// Examples kept per reason.
const EXAMPLES_MAX: usize = 5;

impl ImportReport {
    pub fn note(&mut self, reason: impl Into<String>, example: impl Into<String>) {
        let entry = self.not_represented.entry(reason.into()).or_default();
        entry.0 += 1;
        if entry.1.len() < EXAMPLES_MAX {
            entry.1.push(example.into());
        }
    }

    /// Count of notes for a reason (for tests).
    pub fn count(&self, reason: &str) -> usize {
        self.not_represented.get(reason).map_or(0, |e| e.0)
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "import report: {}", self.source)?;
        writeln!(f, "models in the catalog: {}", self.models_in_catalog)?;
        writeln!(f, "models imported:       {}", self.models_imported)?;
        if self.not_represented.is_empty() {
            return writeln!(f, "everything in the catalog is represented");
        }
        writeln!(f, "not represented (count, reason, examples):")?;
        for (reason, (count, examples)) in &self.not_represented {
            writeln!(f, "{count:>7}  {reason}")?;
            for e in examples {
                writeln!(f, "           e.g. {e}")?;
            }
        }
        Ok(())
    }
}
