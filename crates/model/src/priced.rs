//! What pricing makes of a usage event.

use crate::amount::Amount;
use crate::event::UsageEvent;
use crate::money::Currency;
use crate::unit::Unit;
use std::sync::Arc;

/// The cost of one unit of usage in a priced event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostLine {
    pub unit: Unit,
    /// The count the event reported (0 when it reported none).
    pub quantity: u64,
    /// The part of `quantity` priced at this unit's price, once the more
    /// specific priced units are taken out (input tokens less cache reads).
    pub priced_quantity: u64,
    /// Price of one unit, exact.
    pub unit_price: Amount,
    /// `priced_quantity × unit_price`, exact, never rounded.
    pub cost: Amount,
}

/// What pricing finds for an event: its model, card and cost. Priced by
/// reference, the event then moves once, into [`PricedEvent::new`] (each
/// move of an event is a copy of a few hundred bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// The model entry of the rate card that matched the event's model
    /// (shared with the rate card: no copy per event).
    pub matched_model: Arc<str>,
    pub rate_card: Arc<str>,
    pub rate_card_version: u32,
    /// The account's contract version that applied, if any.
    pub contract_version: Option<u32>,
    pub currency: Currency,
    /// One line per priced unit, in unit-registry order.
    pub lines: Vec<CostLine>,
    /// Sum of the lines' costs, exact.
    pub cost: Amount,
}

/// A usage event and its exact cost under one rate-card version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedEvent {
    pub event: UsageEvent,
    pub quote: Quote,
}

impl PricedEvent {
    pub fn new(event: UsageEvent, quote: Quote) -> Self {
        Self { event, quote }
    }
}
