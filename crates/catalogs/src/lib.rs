//! Importers of public AI price catalogs into rate-card files.
//!
//! - [`genai_prices`]: pydantic's genai-prices v2 data (`genai-prices-data.json`);
//! - [`litellm`]: LiteLLM's model price map (`model_prices_and_context_window.json`).
//!
//! Both write one rate-card version ([`output::VersionOut`], the TOML format
//! of `usage-pricing`) and an [`ImportReport`] that lists, with counts,
//! everything the catalog says that the rate card does not carry. Nothing is
//! dropped silently. Numbers are read from the JSON text exactly (never
//! through a binary float).

pub mod genai_prices;
pub mod litellm;

pub mod output;
mod report;

pub use report::ImportReport;

use chrono::{DateTime, Utc};

/// What to call the imported rate card and from when it is in force.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub rate_card: String,
    pub version: u32,
    /// A catalog without dates is in force from the beginning of time
    /// unless told otherwise.
    pub effective_from: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the catalog is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

/// An exact decimal from the text of a JSON number (`3e-06` → `0.000003`).
pub(crate) fn exact_decimal(text: &str) -> Result<rust_decimal::Decimal, String> {
    let t = text.trim();
    let d = if t.contains(['e', 'E']) {
        rust_decimal::Decimal::from_scientific(t)
    } else {
        rust_decimal::Decimal::from_str_exact(t)
    }
    .map_err(|e| format!("{t}: {e}"))?;
    Ok(d.normalize())
}

/// `a × b`, exactly, or `None`: `rust_decimal` rounds a product that needs
/// more than 28 places or 96 bits, and a catalog price must not be rounded.
pub(crate) fn exact_mul(a: rust_decimal::Decimal, b: rust_decimal::Decimal) -> Option<rust_decimal::Decimal> {
    let scale = a.scale() + b.scale();
    match a.checked_mul(b) {
        // The product keeps the sum of the scales unless it was rounded;
        // zero may come back with any scale.
        Some(p) if p.scale() == scale || (p.is_zero() && scale <= 28) => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{exact_decimal, exact_mul};

    #[test]
    fn exact_mul_refuses_to_round() {
        let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
        assert_eq!(exact_mul(d("0.0000025"), d("1234567")), Some(d("3.0864175")));
        assert_eq!(exact_mul(d("0.00000000000001"), d("0.000000000000001")), None);
        assert_eq!(exact_mul(rust_decimal::Decimal::MAX, d("2")), None);
    }

    #[test]
    fn json_numbers_become_exact_decimals_by_their_text() {
        assert_eq!(exact_decimal("3e-06").unwrap().to_string(), "0.000003");
        assert_eq!(exact_decimal("1.25E-7").unwrap().to_string(), "0.000000125");
        assert_eq!(exact_decimal("0.30000000000000004").unwrap().to_string(), "0.30000000000000004");
        assert_eq!(exact_decimal("15").unwrap().to_string(), "15");
        assert!(exact_decimal("abc").is_err());
    }
}
