//! The ledger: what priced usage and billing commands do to an account's
//! money. Prepaid accounts burn credit grants and may run into overage;
//! every account accumulates monthly spend against its budget; crossing a
//! line (depletion, a budget threshold, a low runway, a reload threshold,
//! a grant's expiry) emits one event with an id derived from what it is
//! about, so replays and restarts repeat ids, never alerts.
//!
//! Pure and deterministic: no clock, no I/O. The caller (usage-ledger-stage's
//! ledger loop) feeds inputs in partition order, persists the state of
//! accounts it changed, and sends what [`Effects`] holds.

mod account;
mod chunked;
mod index;
mod input;
mod output;
mod partition;
mod settings;

pub use account::{AccountState, BurnRate, GrantState, LedgerError, PeriodSpend};
pub use input::{
    instant_accepted, AccountCommand, AccountSettings, AutoReload, AutoReloadFailed, BillingMode, CommandError,
    CreditGrant, GrantKind, PricedUsage, TokenAllowance, UsageLine, ACCOUNT_TOTAL_MAX, COMMAND_AMOUNT_MAX,
};
pub use output::{Effects, EntryKind, EventKind, LedgerEntry, LedgerEvent, LEDGER_EVENT_AVRO_SCHEMA};
pub use partition::{Applied, PartitionLedger, Position};
pub use settings::{SettingsError, StoredSettings, DEFAULT_THRESHOLDS};
