//! Model-name match rules, as real catalogs need them: `gpt-4o-2024-08-06`
//! is priced as `gpt-4o`. Rule names follow genai-prices' clauses.

use regex::Regex;
use serde::Deserialize;

/// A rule on a name as events report it (a model, a provider). Matching is
/// case-insensitive, as in genai-prices: names and rule strings are compared
/// in lower case, and `regex` runs on the lower-cased name, matching
/// anywhere in it unless anchored.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MatchRule {
    Equals(String),
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    Regex(#[serde(with = "serde_regex")] Regex),
    Or(Vec<MatchRule>),
    And(Vec<MatchRule>),
}

impl MatchRule {
    /// The rule with its strings in lower case; [`MatchRule::is_match`]
    /// expects this form and a lower-cased name.
    pub fn lowercased(self) -> Self {
        match self {
            Self::Equals(s) => Self::Equals(s.to_lowercase()),
            Self::StartsWith(s) => Self::StartsWith(s.to_lowercase()),
            Self::EndsWith(s) => Self::EndsWith(s.to_lowercase()),
            Self::Contains(s) => Self::Contains(s.to_lowercase()),
            Self::Regex(r) => Self::Regex(r),
            Self::Or(rules) => Self::Or(rules.into_iter().map(Self::lowercased).collect()),
            Self::And(rules) => Self::And(rules.into_iter().map(Self::lowercased).collect()),
        }
    }

    /// Whether the lower-cased `model` matches (see [`MatchRule::lowercased`]).
    pub fn is_match(&self, model: &str) -> bool {
        match self {
            Self::Equals(s) => model == s,
            Self::StartsWith(s) => model.starts_with(s.as_str()),
            Self::EndsWith(s) => model.ends_with(s.as_str()),
            Self::Contains(s) => model.contains(s.as_str()),
            Self::Regex(r) => r.is_match(model),
            Self::Or(rules) => rules.iter().any(|r| r.is_match(model)),
            Self::And(rules) => rules.iter().all(|r| r.is_match(model)),
        }
    }
}

mod serde_regex {
    use regex::Regex;
    use serde::{de::Error, Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Regex, D::Error> {
        let pattern = String::deserialize(d)?;
        // Bounded so that a hostile rate card cannot make matching explode.
        regex::RegexBuilder::new(&pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| D::Error::custom(format!("invalid regex {pattern:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> MatchRule {
        #[derive(Deserialize)]
        struct W {
            r#match: MatchRule,
        }
        toml::from_str::<W>(toml_text).unwrap().r#match
    }

    #[test]
    fn every_rule_kind() {
        assert!(rule(r#"match = { equals = "gpt-4o" }"#).is_match("gpt-4o"));
        assert!(!rule(r#"match = { equals = "gpt-4o" }"#).is_match("gpt-4o-mini"));
        assert!(rule(r#"match = { starts_with = "gpt-4o" }"#).is_match("gpt-4o-2024-08-06"));
        assert!(rule(r#"match = { ends_with = "-latest" }"#).is_match("mistral-large-latest"));
        assert!(rule(r#"match = { contains = "sonnet" }"#).is_match("claude-3-5-sonnet-20241022"));
        assert!(rule(r#"match = { regex = "^o[134](-mini)?$" }"#).is_match("o3-mini"));
        let or = rule(r#"match = { or = [{ equals = "a" }, { equals = "b" }] }"#);
        assert!(or.is_match("b") && !or.is_match("c"));
        let and = rule(r#"match = { and = [{ starts_with = "gpt-4o" }, { contains = "mini" }] }"#);
        assert!(and.is_match("gpt-4o-mini") && !and.is_match("gpt-4o"));
    }
}
