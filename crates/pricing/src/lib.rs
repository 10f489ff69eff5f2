//! Rate cards and the pricing engine.
//!
//! A *rate card* is a named price list in one currency. It has immutable
//! *versions*, each in force from its `effective_from` instant until the next
//! version's. An event is priced by the version in force at its
//! `occurred_at`, so late events get the prices of their time.
//!
//! Files: one TOML file per rate-card version (see `format.rs` and the
//! README); [`load_dir`] reads a directory of them into a [`RateBook`].
//! [`Pricer`] prices [`usage_model::UsageEvent`]s against a book. The stream
//! and the offline `price` command share it, so they agree to the digit.

mod book;
mod contract;
mod format;
mod load;
mod matching;
mod pricer;

pub use book::{
    Condition, ModelPrice, PriceBlock, PriceSet, ProviderInfo, RateBook, RateCard, RateCardVersion, UnitPrice,
};
pub use contract::{parse_contract_file, Contract, ModelRef, PriceFactor};
pub use load::{
    build_book, load_dir, parse_document, parse_version_file, read_dir_documents, unit_price, Document, LoadError,
    UNIT_PRICE_SCALE_MAX,
};
pub use matching::MatchRule;
pub use pricer::Pricer;
