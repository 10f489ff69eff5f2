//! Reading a directory of rate-card version files into a [`RateBook`].

use crate::book::{
    Condition, ModelPrice, PriceBlock, PriceSet, ProviderInfo, RateBook, RateCard, RateCardVersion, UnitPrice,
};
use crate::contract::{is_contract, parse_contract_file, Contract};
use crate::format::{PriceKey, PriceValue, TierKey, VersionFile};
use crate::matching::MatchRule;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use usage_model::hashing::{StdHashMap, StdHashSet};
use usage_model::{Amount, Currency};

/// Scale limit of a price per single unit. Costs are stored exactly in
/// ClickHouse as `Decimal(38, 24)`, and a cost is a unit price times an
/// integer count, so unit prices must fit 24 decimal places: 18 for a price
/// per million tokens, 21 per thousand requests. Real catalogs need more
/// than 18 per unit: genai-prices has `0.08333333333333334` per million
/// tokens (23 places per token).
pub const UNIT_PRICE_SCALE_MAX: u32 = usage_model::AMOUNT_SCALE;

/// A rate-card file or directory that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct LoadError {
    pub file: PathBuf,
    pub message: String,
}

impl LoadError {
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        Self { file: file.to_owned(), message: message.into() }
    }
}

/// Loads every `*.toml` file under `dir` (recursively, in path order).
/// `default_card` names the card for accounts without an assignment; when
/// `None`, the directory must hold exactly one card.
pub fn load_dir(dir: &Path, default_card: Option<&str>) -> Result<RateBook, LoadError> {
    let documents = read_dir_documents(dir)?;
    if documents.is_empty() {
        return Err(LoadError::new(dir, "no rate-card files (*.toml) found"));
    }
    build_book(dir, documents, default_card)
}

/// A file of a rate-card directory, or a message of the rate-card topic:
/// a rate-card version or a contract version.
#[derive(Clone, Debug)]
pub enum Document {
    Card(Arc<RateCardVersion>),
    Contract(Arc<Contract>),
}

impl Document {
    /// Its identity: `<rate card>/<version>` or `account:<account>/<version>`.
    pub fn key(&self) -> String {
        match self {
            Self::Card(v) => format!("{}/{}", v.rate_card, v.version),
            Self::Contract(c) => format!("account:{}/{}", c.account, c.version),
        }
    }

    pub fn effective_from(&self) -> DateTime<Utc> {
        match self {
            Self::Card(v) => v.effective_from,
            Self::Contract(c) => c.effective_from,
        }
    }
}

/// Parses a rate-card version, or a contract when the file names an `account`.
pub fn parse_document(file: &Path, text: &str) -> Result<Document, LoadError> {
    if is_contract(text) {
        Ok(Document::Contract(Arc::new(parse_contract_file(file, text)?)))
    } else {
        Ok(Document::Card(Arc::new(parse_version_file(file, text)?)))
    }
}

/// Parses every `*.toml` file under `dir`, in path order.
pub fn read_dir_documents(dir: &Path) -> Result<Vec<(PathBuf, Document)>, LoadError> {
    let mut files = Vec::new();
    collect_toml_files(dir, &mut files)?;
    files.sort();
    let mut documents = Vec::with_capacity(files.len());
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| LoadError::new(file, e.to_string()))?;
        documents.push((file.clone(), parse_document(file, &text)?));
    }
    Ok(documents)
}

fn collect_toml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::new(dir, e.to_string()))?;
    for entry in entries {
        let path = entry.map_err(|e| LoadError::new(dir, e.to_string()))?.path();
        if path.is_dir() {
            collect_toml_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses and validates one version file. `file` names it in errors.
pub fn parse_version_file(file: &Path, text: &str) -> Result<RateCardVersion, LoadError> {
    let raw: VersionFile = toml::from_str(text).map_err(|e| LoadError::new(file, e.to_string()))?;
    let currency: Currency = raw.currency.parse().map_err(|e| LoadError::new(file, format!("currency: {e}")))?;
    if raw.rate_card.is_empty() {
        return Err(LoadError::new(file, "rate_card: must not be empty"));
    }
    let mut seen = StdHashSet::default();
    let mut models = Vec::with_capacity(raw.models.len());
    for (i, m) in raw.models.into_iter().enumerate() {
        let at = |field: &str| format!("models[{i}] ({}/{}).{field}", m.provider, m.id);
        if !seen.insert((m.provider.clone(), m.id.clone())) {
            return Err(LoadError::new(file, format!("{}: duplicate model entry", at("id"))));
        }
        if m.prices.is_empty() {
            return Err(LoadError::new(file, format!("{}: no price", at("prices"))));
        }
        let prices = price_block(&m.prices, &m.service_tiers)
            .map_err(|e| LoadError::new(file, format!("{}.{e}", at("prices"))))?;
        let mut conditional = Vec::with_capacity(m.conditional_prices.len());
        for (j, c) in m.conditional_prices.iter().enumerate() {
            let place = at(&format!("conditional_prices[{j}]"));
            if c.from.is_none() && c.daily.is_none() {
                return Err(LoadError::new(file, format!("{place}: needs `from` or `daily`")));
            }
            let block =
                price_block(&c.prices, &c.service_tiers).map_err(|e| LoadError::new(file, format!("{place}.{e}")))?;
            conditional.push((Condition { from: c.from, daily: c.daily.as_ref().map(|d| (d.from, d.until)) }, block));
        }
        let match_rule = m.match_rule.unwrap_or_else(|| MatchRule::Equals(m.id.clone())).lowercased();
        models.push(ModelPrice {
            provider: m.provider.to_lowercase(),
            id: m.id.into(),
            match_rule,
            prices,
            conditional,
        });
    }
    let providers = raw
        .providers
        .into_iter()
        .map(|p| ProviderInfo {
            id: p.id.to_lowercase(),
            aliases: p.aliases.map(MatchRule::lowercased),
            fallback: p.fallback.iter().map(|f| f.to_lowercase()).collect(),
        })
        .collect();
    Ok(RateCardVersion::new(raw.rate_card, raw.version, raw.effective_from, currency, models, providers))
}

pub(crate) fn price_block(
    standard: &BTreeMap<PriceKey, PriceValue>,
    tiers: &BTreeMap<TierKey, BTreeMap<PriceKey, PriceValue>>,
) -> Result<PriceBlock, String> {
    let mut service_tiers = BTreeMap::new();
    for (tier, prices) in tiers {
        let set = price_set(prices).map_err(|e| format!("service_tiers.{}.{e}", tier.0))?;
        service_tiers.insert(tier.0.as_str(), set);
    }
    Ok(PriceBlock { standard: price_set(standard)?, service_tiers })
}

fn price_set(prices: &BTreeMap<PriceKey, PriceValue>) -> Result<PriceSet, String> {
    let mut out = Vec::with_capacity(prices.len());
    for (key, value) in prices {
        let unit = key.0;
        let per_unit = |price: Decimal| {
            unit_price(price, unit.per()).ok_or_else(|| {
                format!(
                    "{}: {price} per {} is not exact at {UNIT_PRICE_SCALE_MAX} decimal places per unit \
                     (or is above the largest amount, 99,999,999,999,999.99… per unit)",
                    unit.price_key(),
                    unit.per()
                )
            })
        };
        let price = match value {
            PriceValue::Flat(p) => UnitPrice { base: per_unit(*p)?, tiers: Vec::new() },
            PriceValue::Tiered { base, tiers } => UnitPrice {
                base: per_unit(*base)?,
                tiers: tiers.iter().map(|t| Ok((t.start, per_unit(t.price)?))).collect::<Result<_, String>>()?,
            },
        };
        out.push((unit, price));
    }
    Ok(PriceSet::new(out))
}

/// `price / per`, when exact within [`UNIT_PRICE_SCALE_MAX`] places and
/// within the range of an [`Amount`].
pub fn unit_price(price: Decimal, per: u64) -> Option<Amount> {
    Amount::from_decimal_per(price, per)
}

/// Assembles parsed versions (each named by where it came from: a file, a
/// topic key) into a book, checking each card's versions against each other.
pub fn build_book(
    source: &Path,
    documents: Vec<(PathBuf, Document)>,
    default_card: Option<&str>,
) -> Result<RateBook, LoadError> {
    let dir = source;
    let mut cards: BTreeMap<String, (Vec<Arc<RateCardVersion>>, Vec<PathBuf>)> = BTreeMap::new();
    let mut contracts: Vec<(PathBuf, Arc<Contract>)> = Vec::new();
    for (file, document) in documents {
        match document {
            Document::Card(v) => {
                let entry = cards.entry(v.rate_card.clone()).or_default();
                entry.1.push(file);
                entry.0.push(v);
            }
            Document::Contract(c) => contracts.push((file, c)),
        }
    }
    let mut book = BTreeMap::new();
    for (id, (mut versions, files)) in cards {
        let first_file = &files[0];
        let currency = versions[0].currency;
        if let Some(v) = versions.iter().find(|v| v.currency != currency) {
            return Err(LoadError::new(
                first_file,
                format!("rate card {id}: version {} is in {} but others are in {currency}", v.version, v.currency),
            ));
        }
        versions.sort_by_key(|v| (v.effective_from, v.version));
        for pair in versions.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.version >= b.version || a.effective_from == b.effective_from {
                return Err(LoadError::new(
                    first_file,
                    format!(
                        "rate card {id}: versions must have distinct effective_from instants and increase with them \
                         (version {} from {}, version {} from {})",
                        a.version, a.effective_from, b.version, b.effective_from
                    ),
                ));
            }
        }
        book.insert(id.clone(), RateCard { id: id.into(), currency, versions });
    }
    let default_card = match default_card {
        Some(name) if book.contains_key(name) => name.to_owned(),
        Some(name) => {
            return Err(LoadError::new(
                dir,
                format!(
                    "default rate card `{name}` not found; cards here: {}",
                    book.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
        None if book.len() == 1 => book.keys().next().expect("one card").clone(),
        None => {
            return Err(LoadError::new(
                dir,
                format!(
                    "several rate cards ({}); say which is the default",
                    book.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    };
    let mut book = RateBook::new(book, default_card);
    book.contracts = check_contracts(&book, contracts)?;
    Ok(book)
}

/// Each account's contract versions in order, each naming a card and models
/// that exist.
fn check_contracts(
    book: &RateBook,
    contracts: Vec<(PathBuf, Arc<Contract>)>,
) -> Result<StdHashMap<String, Vec<Arc<Contract>>>, LoadError> {
    let mut by_account: StdHashMap<String, Vec<Arc<Contract>>> = StdHashMap::default();
    for (file, c) in contracts {
        let card_id = c.rate_card.as_deref().unwrap_or(book.default_card());
        let Some(card) = book.cards().get(card_id) else {
            return Err(LoadError::new(&file, format!("rate_card: no rate card `{card_id}`")));
        };
        let models = c.discount_models.keys().chain(c.custom_prices.keys());
        for m in models {
            let known =
                card.versions.iter().any(|v| v.models.iter().any(|vm| vm.provider == m.provider && *vm.id == *m.model));
            if !known {
                return Err(LoadError::new(
                    &file,
                    format!("rate card `{card_id}` has no model `{}` of provider `{}`", m.model, m.provider),
                ));
            }
        }
        by_account.entry(c.account.clone()).or_default().push(c);
    }
    for (account, versions) in by_account.iter_mut() {
        versions.sort_by_key(|c| (c.effective_from, c.version));
        for pair in versions.windows(2) {
            if pair[0].version >= pair[1].version || pair[0].effective_from == pair[1].effective_from {
                return Err(LoadError::new(
                    Path::new(account),
                    format!(
                        "contract of {account}: versions must have distinct effective_from instants and increase with them ({} and {})",
                        pair[0].version, pair[1].version
                    ),
                ));
            }
        }
    }
    Ok(by_account)
}

#[cfg(test)]
mod tests {
    use super::*;
    use usage_model::Unit;

    fn parse(text: &str) -> Result<RateCardVersion, LoadError> {
        parse_version_file(Path::new("card.toml"), text)
    }

    const HEADER: &str =
        "rate_card = \"list\"\nversion = 1\neffective_from = 2025-01-01T00:00:00Z\ncurrency = \"USD\"\n";

    #[test]
    fn parses_flat_tiered_and_service_tier_prices() {
        let v = parse(&format!(
            "{HEADER}
[[models]]
provider = \"google\"
id = \"gemini-2.5-pro\"
match = {{ starts_with = \"gemini-2.5-pro\" }}
prices = {{ input_mtok = {{ base = \"1.25\", tiers = [{{ start = 200000, price = \"2.5\" }}] }}, output_mtok = 10 }}
service_tiers.batch = {{ input_mtok = \"0.625\", output_mtok = \"5\" }}
"
        ))
        .unwrap();
        let m = &v.models[0];
        let (unit, input) = &m.prices.standard.prices[0];
        assert_eq!(*unit, Unit::INPUT_TOKENS);
        assert_eq!(input.base, "0.00000125".parse().unwrap());
        assert_eq!(input.for_input_tokens(200_000), "0.00000125".parse().unwrap());
        assert_eq!(input.for_input_tokens(200_001), "0.0000025".parse().unwrap());
        let at = "2025-06-01T00:00:00Z".parse().unwrap();
        assert_eq!(m.prices_at(at, usage_model::ServiceTier::Batch).prices[1].1.base, "0.000005".parse().unwrap());
        assert_eq!(m.prices_at(at, usage_model::ServiceTier::Flex).prices[1].1.base, "0.00001".parse().unwrap());
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let cases = [
            ("prices = { input_mtok = 2.5 }", "float"),
            ("prices = { inptu_mtok = \"2.5\" }", "unknown price key `inptu_mtok`"),
            ("prices = { input_mtok = \"-1\" }", "negative"),
            ("prices = { input_mtok = \"0.0000000000000000001\" }", "not exact at 24 decimal places"),
            ("prices = { input_mtok = \"1\" }\nservice_tiers.cheap = { input_mtok = \"1\" }", "unknown service tier"),
            ("match = { regex = \"(\" }\nprices = { input_mtok = \"1\" }", "invalid regex"),
        ];
        for (model_body, expected) in cases {
            let text = format!("{HEADER}\n[[models]]\nprovider = \"p\"\nid = \"m\"\n{model_body}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(err.starts_with("card.toml"), "{err}");
            if !expected.contains("exact") {
                assert!(err.contains("line"), "{err}");
            }
        }
    }

    #[test]
    fn duplicate_models_are_refused() {
        let m = "[[models]]\nprovider = \"p\"\nid = \"m\"\nprices = { input_mtok = \"1\" }\n";
        let err = parse(&format!("{HEADER}{m}{m}")).unwrap_err().to_string();
        assert!(err.contains("duplicate model"), "{err}");
    }
}
