//! Domain types of the usage-billing pipeline, shared by every other crate.
//!
//! This crate does no I/O. It defines what a usage event is ([`UsageEvent`]),
//! the units usage is counted in ([`Unit`], named as pydantic's genai-prices
//! names them), exact money ([`Amount`], [`Money`], [`Currency`]), what pricing produces
//! ([`PricedEvent`]) and why an event can be refused ([`Rejection`]).

mod amount;
mod attributes;
mod event;
pub mod hashing;
mod money;
mod priced;
mod rejection;
mod unit;
mod units_table;

pub use amount::{Amount, AmountError, PackedAmount, AMOUNT_SCALE};
pub use attributes::Attributes;
/// The inline string of an event's ids and names (up to 24 bytes without an allocation).
pub use compact_str::CompactString;
pub use event::{unsafe_characters, ClockReading, EventLimits, ServiceTier, UsageCounts, UsageEvent};
pub use money::{round_for_display, Currency, CurrencyError, Money, MoneyError};
pub use priced::{CostLine, PricedEvent, Quote};
pub use rejection::{RejectReason, Rejection};
pub use unit::{Unit, UnitDef, UnitSet, UNIT_COUNT};
