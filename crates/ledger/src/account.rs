//! One account's money: grants, overage, monthly spend, and the cycles that
//! make each threshold event fire once.
//!
//! Rules (docs/ledger.md has the long form):
//! - balance = Σ grant remainders − overage = granted − used − expired;
//! - prepaid usage burns grants by (priority, expiry, grant time, id); what
//!   no grant covers is overage, paid off first by the next grant;
//! - a grant's remainder leaves the balance at its expiry instant;
//! - every account's spend is kept per calendar month of its time zone and
//!   compared with its budget.

use crate::input::{
    AccountSettings, AutoReloadFailed, BillingMode, CreditGrant, GrantKind, PricedUsage, ACCOUNT_TOTAL_MAX,
};
use crate::output::{Effects, EntryKind, EventKind, LedgerEntry, LedgerEvent};
use crate::settings::StoredSettings;
use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::sync::Arc;
use thin_vec::ThinVec;
use usage_model::{Amount, Currency};

/// Settings versions kept per account (older ones price nothing new).
const SETTINGS_KEPT: usize = 4;
/// Months of spend kept per account: late usage in an older month still
/// lands in ClickHouse, but raises no budget event.
const PERIODS_KEPT: usize = 3;
/// Grant ids remembered after a grant is used up, to ignore one sent twice.
const SPENT_GRANT_IDS_KEPT: usize = 16;
/// The burn rate is never measured over less than this (one early event
/// would otherwise project an absurd rate).
const RATE_WINDOW_MIN_SECONDS: i64 = 300;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantState {
    /// Boxed, not a `String`: a grant is 80 bytes, not 96.
    pub grant_id: Box<str>,
    pub kind: GrantKind,
    pub priority: u32,
    pub granted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub amount: Amount,
    pub remaining: Amount,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodSpend {
    /// `year * 100 + month` in the account's time zone.
    pub period: u32,
    /// What the account is charged this month: usage less the allowance.
    pub spend: Amount,
    /// The part of the monthly allowance used so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub allowance_used: Amount,
    /// Threshold percentages already announced for this period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announced: Vec<u32>,
    /// Per unit, the part of its monthly token allowance used so far.
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub tokens_free_used: ThinVec<(String, u64)>,
}

impl PeriodSpend {
    fn tokens_used(&self, unit: &str) -> u64 {
        self.tokens_free_used.iter().find(|(u, _)| u == unit).map_or(0, |(_, q)| *q)
    }

    fn use_tokens(&mut self, unit: &str, quantity: u64) {
        match self.tokens_free_used.iter_mut().find(|(u, _)| u == unit) {
            Some((_, used)) => *used += quantity,
            None => self.tokens_free_used.push((unit.to_owned(), quantity)),
        }
    }
}

/// Spend per hour of usage time, for the runway projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurnRate {
    /// Hours since the epoch of `this_hour`.
    pub hour: i64,
    pub this_hour: Amount,
    pub previous_hour: Amount,
}

/// An account's whole ledger state: what the changelog stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub account_id: String,
    /// Set by the settings, else by the first grant or usage (`""` on the
    /// wire until then).
    #[serde(with = "account_currency")]
    pub currency: Option<Currency>,
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub settings: ThinVec<StoredSettings>,
    /// Grants with something left, in burn order.
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub grants: ThinVec<GrantState>,
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub spent_grant_ids: ThinVec<Box<str>>,
    pub overage: Amount,
    pub granted: Amount,
    /// Prepaid usage charged (costs less allowances), exact.
    pub used: Amount,
    /// Usage that monthly allowances (money and tokens) made free, exact
    /// (every billing mode):
    /// Σ priced cost = charged + this.
    #[serde(default)]
    pub allowance_applied: Amount,
    pub expired: Amount,
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub periods: ThinVec<PeriodSpend>,
    pub depleted: bool,
    /// Depletions so far: the id of the next `balance.depleted`.
    pub depletion_cycle: u32,
    pub reload_cycle: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_open: Option<Box<str>>,
    /// A reload failed: none is requested again until the balance is back
    /// above the threshold or the settings change.
    pub reload_suppressed: bool,
    /// Boxed, and absent until the account's first charged usage: an idle
    /// account pays a pointer for it, not the whole rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn: Option<Box<BurnRate>>,
    pub runway_cycle: u32,
    pub runway_announced: bool,
    /// Per origin topic partition of the pricing stage, the last offset
    /// applied: a pricing replay re-sends records, this drops them. The
    /// topic is shared: the partition's ledger holds one copy of each name
    /// (a few topics, a million accounts), so a record reads no line of its
    /// own for it.
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub origins: ThinVec<(Arc<str>, i32, i64)>,
    /// Last offsets applied from the ledger's own inputs.
    pub priced_offset: i64,
    pub commands_offset: i64,
    /// Events emitted but not known to be sent: re-sent after a restore.
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub outbox: ThinVec<LedgerEvent>,
    /// Entries not known to be in ClickHouse: written again after a restore.
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub pending_entries: ThinVec<LedgerEntry>,
}

/// Where a thin vector's heap block (its header, then its items) starts,
/// read from the vector itself: `ThinVec::as_ptr` reads the header first.
fn heap<T>(v: &ThinVec<T>) -> *const u8 {
    const { assert!(std::mem::size_of::<ThinVec<u8>>() == std::mem::size_of::<*const u8>()) };
    // SAFETY: a ThinVec is one pointer to its header (a static empty header
    // when it holds nothing), as the assertion checks; the pointer is only
    // prefetched, never dereferenced.
    unsafe { std::mem::transmute_copy::<ThinVec<T>, *const u8>(v) }
}

fn is_zero(a: &Amount) -> bool {
    a.is_zero()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    #[error("usage in {usage} cannot be charged to account {account} billed in {account_currency}")]
    CurrencyMismatch { account: String, usage: String, account_currency: String },
    #[error("account {account}: {detail} would pass the largest account total, {ACCOUNT_TOTAL_MAX}")]
    Overflow { account: String, detail: String },
    #[error("priced usage refused: {0}")]
    InvalidUsage(String),
    #[error("settings refused: {0}")]
    InvalidSettings(#[from] crate::settings::SettingsError),
}

impl LedgerError {
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::CurrencyMismatch { .. } => "currency_mismatch",
            LedgerError::Overflow { .. } => "ledger_overflow",
            LedgerError::InvalidUsage(_) => "invalid_priced_usage",
            LedgerError::InvalidSettings(_) => "invalid_command",
        }
    }
}

/// `total + more`, if the sum stays within [`ACCOUNT_TOTAL_MAX`]. Totals
/// and what is added to them are never negative, and the checks before an
/// input is applied keep every total within the bound: these sums cannot
/// fail once an input is accepted (the error is for a broken invariant).
fn add(total: Amount, more: Amount, account: &str) -> Result<Amount, LedgerError> {
    match total.checked_add(more) {
        Ok(sum) if sum <= ACCOUNT_TOTAL_MAX => Ok(sum),
        _ => Err(LedgerError::Overflow { account: account.to_owned(), detail: format!("{total} + {more}") }),
    }
}

/// `a − b` for amounts within the account totals' bound.
fn sub(a: Amount, b: Amount, account: &str) -> Result<Amount, LedgerError> {
    a.checked_sub(b).map_err(|_| LedgerError::Overflow { account: account.to_owned(), detail: format!("{a} − {b}") })
}

impl AccountState {
    pub fn new(account_id: &str) -> Self {
        Self {
            account_id: account_id.to_owned(),
            currency: None,
            settings: ThinVec::new(),
            grants: ThinVec::new(),
            spent_grant_ids: ThinVec::new(),
            overage: Amount::ZERO,
            granted: Amount::ZERO,
            used: Amount::ZERO,
            allowance_applied: Amount::ZERO,
            expired: Amount::ZERO,
            periods: ThinVec::new(),
            depleted: false,
            depletion_cycle: 1,
            reload_cycle: 0,
            reload_open: None,
            reload_suppressed: false,
            burn: None,
            runway_cycle: 1,
            runway_announced: false,
            origins: ThinVec::new(),
            priced_offset: -1,
            commands_offset: -1,
            outbox: ThinVec::new(),
            pending_entries: ThinVec::new(),
        }
    }

    /// Σ grant remainders − overage; equals granted − used − expired.
    /// Within range whenever the totals are (each part is at most one).
    pub fn balance(&self) -> Result<Amount, LedgerError> {
        let overflow = |detail: &str| LedgerError::Overflow { account: self.account_id.clone(), detail: detail.into() };
        let remaining =
            Amount::checked_sum(self.grants.iter().map(|g| g.remaining)).map_err(|_| overflow("the grants' sum"))?;
        remaining.checked_sub(self.overage).map_err(|_| overflow("the balance"))
    }

    /// The settings in force at `at`, if any were ever given.
    pub fn settings_at(&self, at: DateTime<Utc>) -> Option<&StoredSettings> {
        self.settings.iter().rev().find(|s| s.effective_from <= at).or_else(|| self.settings.first())
    }

    /// Accounts without settings are postpaid, without a budget.
    pub fn mode_at(&self, at: DateTime<Utc>) -> BillingMode {
        match self.settings.iter().rev().find(|s| s.effective_from <= at) {
            Some(s) => s.billing_mode,
            None => BillingMode::Postpaid,
        }
    }

    /// Refuses a currency other than the account's (if it has one yet).
    /// A currency that is no code at all is refused as the usage's fault.
    fn check_currency(&self, currency: &str) -> Result<Currency, LedgerError> {
        let code: Currency = currency.parse().map_err(|_| {
            LedgerError::InvalidUsage(format!("currency must be three capital letters, got {currency:?}"))
        })?;
        match self.currency {
            Some(own) if own != code => Err(LedgerError::CurrencyMismatch {
                account: self.account_id.clone(),
                usage: currency.to_owned(),
                account_currency: own.to_string(),
            }),
            _ => Ok(code),
        }
    }

    /// The account's currency code, `""` while it has none.
    pub fn currency_code(&self) -> &str {
        self.currency.as_ref().map_or("", Currency::as_str)
    }

    /// Refuses usage that would take a total of the account past
    /// [`ACCOUNT_TOTAL_MAX`], before anything changes: every total it
    /// adds to grows by at most its cost (expiries only move what grants
    /// already count, and overage is part of what is used).
    fn check_headroom(&self, usage: &PricedUsage) -> Result<(), LedgerError> {
        let spend = self.spend_in(self.period_of(usage.occurred_at));
        let burn = self.burn.as_deref().map_or(Amount::ZERO, |b| b.this_hour.max(b.previous_hour));
        for (name, total) in [
            ("used", self.used),
            ("overage", self.overage),
            ("allowances applied", self.allowance_applied),
            ("this month's spend", spend),
            ("the hour's spend", burn),
        ] {
            add(total, usage.cost, &self.account_id).map_err(|_| LedgerError::Overflow {
                account: self.account_id.clone(),
                detail: format!("{name} {total} + usage {} of {}", usage.cost, usage.event_id),
            })?;
        }
        Ok(())
    }

    pub fn spend_in(&self, period: u32) -> Amount {
        self.periods.iter().find(|p| p.period == period).map_or(Amount::ZERO, |p| p.spend)
    }

    /// The period of `at` in the account's time zone (as of `at`).
    pub fn period_of(&self, at: DateTime<Utc>) -> u32 {
        let tz = self.settings_at(at).map_or(chrono_tz::Tz::UTC, |s| s.time_zone);
        let local = at.with_timezone(&tz);
        local.year() as u32 * 100 + local.month()
    }

    /// Prefetches the heap parts a usage record touches (see
    /// [`crate::partition::prefetch`]), from the pointers in the state
    /// alone: reading a part to find its address would wait for it.
    pub(crate) fn prefetch_parts(&self) {
        use crate::partition::prefetch;
        prefetch(self.account_id.as_ptr());
        for at in [heap(&self.settings), heap(&self.grants), heap(&self.periods)] {
            prefetch(at);
            prefetch(at.wrapping_add(64));
        }
        prefetch(heap(&self.origins));
        if let Some(burn) = &self.burn {
            prefetch((&**burn as *const BurnRate).cast());
        }
    }

    /// Prefetches the entries not yet written (what a sweep after their
    /// writing frees).
    pub(crate) fn prefetch_entries(&self) {
        crate::partition::prefetch(heap(&self.pending_entries));
    }

    /// Whether the origin of a priced record was applied already; records
    /// it as applied otherwise. `topic` is the partition's shared copy of
    /// the name (see [`Self::origins`]): the same name is mostly the same
    /// pointer.
    pub(crate) fn first_time_from_origin(&mut self, topic: &Arc<str>, partition: i32, offset: i64) -> bool {
        let same = |t: &Arc<str>| Arc::ptr_eq(t, topic) || **t == **topic;
        match self.origins.iter_mut().find(|(t, p, _)| same(t) && *p == partition) {
            Some((_, _, last)) if offset <= *last => false,
            Some((_, _, last)) => {
                *last = offset;
                true
            }
            None => {
                self.origins.push((Arc::clone(topic), partition, offset));
                self.origins.shrink_to_fit();
                true
            }
        }
    }

    /// New settings; the latest ones' currency becomes the account's.
    pub fn apply_settings(&mut self, settings: &AccountSettings) -> Result<Effects, LedgerError> {
        let settings = StoredSettings::try_from(settings)?;
        self.currency = Some(settings.currency);
        self.settings.retain(|s| s.effective_from != settings.effective_from);
        let at = self.settings.partition_point(|s| s.effective_from < settings.effective_from);
        self.settings.insert(at, settings);
        if self.settings.len() > SETTINGS_KEPT {
            self.settings.remove(0);
        }
        // Most accounts hold one or two of everything: no spare capacity
        // (memory per idle account is what a million accounts cost).
        self.settings.shrink_to_fit();
        self.reload_suppressed = false;
        Ok(Effects::default())
    }

    pub fn apply_grant(&mut self, grant: &CreditGrant) -> Result<Effects, LedgerError> {
        let known = self.grants.iter().any(|g| *g.grant_id == *grant.grant_id)
            || self.spent_grant_ids.iter().any(|id| **id == *grant.grant_id);
        if known {
            return self.expire_until(grant.granted_at);
        }
        // Refused before anything changes (expiries included).
        let currency = self.check_currency(&grant.currency)?;
        let granted = add(self.granted, grant.amount, &self.account_id)?;
        let mut effects = self.expire_until(grant.granted_at)?;
        self.currency = Some(currency);
        self.granted = granted;
        let paid_off = grant.amount.min(self.overage);
        self.overage = sub(self.overage, paid_off, &self.account_id)?;
        let remaining = sub(grant.amount, paid_off, &self.account_id)?;
        let state = GrantState {
            grant_id: grant.grant_id.as_str().into(),
            kind: grant.kind,
            priority: grant.priority,
            granted_at: grant.granted_at,
            expires_at: grant.expiry(),
            amount: grant.amount,
            remaining,
        };
        if remaining > Amount::ZERO {
            let key = burn_order(&state);
            let at = self.grants.partition_point(|g| burn_order(g) < key);
            self.grants.insert(at, state);
            self.grants.shrink_to_fit();
        } else {
            self.remember_spent(grant.grant_id.as_str().into());
        }
        effects.entries.push(LedgerEntry {
            entry_id: format!("grant:{}", grant.grant_id),
            account_id: self.account_id.clone(),
            kind: EntryKind::Grant,
            amount: grant.amount,
            currency: grant.currency.clone(),
            at: grant.granted_at,
            reference: grant.grant_id.clone(),
        });
        if grant.reload_key.is_some() && grant.reload_key.as_deref() == self.reload_open.as_deref() {
            self.reload_open = None;
        }
        let balance = self.balance()?;
        let reload_threshold =
            self.settings_at(grant.granted_at).and_then(|s| s.auto_reload.as_ref()).map(|r| r.threshold);
        if reload_threshold.is_some_and(|threshold| balance >= threshold) {
            self.reload_suppressed = false;
        }
        if self.runway_announced {
            self.runway_announced = false;
            self.runway_cycle += 1;
        }
        if self.depleted && balance > Amount::ZERO {
            self.depleted = false;
            let mut event = self.event(EventKind::BalanceRestored, &self.depletion_cycle.to_string(), grant.granted_at);
            event.balance = Some(balance);
            event.grant_id = Some(grant.grant_id.clone());
            self.depletion_cycle += 1;
            effects.events.push(event);
        }
        Ok(effects)
    }

    pub fn apply_reload_failed(&mut self, failed: &AutoReloadFailed) -> Effects {
        if self.reload_open.as_deref() == Some(failed.reload_key.as_str()) {
            self.reload_open = None;
            self.reload_suppressed = true;
        }
        Effects::default()
    }

    pub fn apply_usage(&mut self, usage: &PricedUsage) -> Result<Effects, LedgerError> {
        let at = usage.occurred_at;
        // Refused before anything changes (expiries included).
        usage.validate().map_err(|e| LedgerError::InvalidUsage(e.to_string()))?;
        let currency = self.check_currency(&usage.currency)?;
        self.check_headroom(usage)?;
        self.currency = Some(currency);
        let mut effects = self.expire_until(at)?;
        let charged = self.add_spend(usage, &mut effects)?;
        match self.mode_at(at) {
            BillingMode::Prepaid => {
                self.used = add(self.used, charged, &self.account_id)?;
                let mut rest = charged;
                for grant in &mut self.grants {
                    let burnt = rest.min(grant.remaining);
                    grant.remaining = sub(grant.remaining, burnt, &self.account_id)?;
                    rest = sub(rest, burnt, &self.account_id)?;
                    if rest.is_zero() {
                        break;
                    }
                }
                self.overage = add(self.overage, rest, &self.account_id)?;
                self.drop_spent_grants();
                effects.entries.push(LedgerEntry {
                    entry_id: format!("usage:{}", usage.event_id),
                    account_id: self.account_id.clone(),
                    kind: EntryKind::Usage,
                    amount: -charged,
                    currency: usage.currency.clone(),
                    at,
                    reference: usage.event_id.clone(),
                });
                self.track_burn(at, charged)?;
                self.after_balance_fell(at, Some(&usage.event_id), &mut effects)?;
            }
            BillingMode::Postpaid => {
                // Switched from prepaid: the gateway may serve it again.
                if self.depleted {
                    self.depleted = false;
                    let mut event = self.event(EventKind::BalanceRestored, &self.depletion_cycle.to_string(), at);
                    event.balance = Some(self.balance()?);
                    event.triggering_event_id = Some(usage.event_id.clone());
                    self.depletion_cycle += 1;
                    effects.events.push(event);
                }
            }
        }
        Ok(effects)
    }

    /// Expires every grant whose expiry is at or before `now`.
    pub fn expire_until(&mut self, now: DateTime<Utc>) -> Result<Effects, LedgerError> {
        let mut effects = Effects::default();
        // Every usage asks; almost never is a grant due.
        if self.grants.iter().all(|g| g.expires_at > now) {
            return Ok(effects);
        }
        let mut expired_any = false;
        let mut kept = ThinVec::with_capacity(self.grants.len());
        for grant in std::mem::take(&mut self.grants) {
            if grant.expires_at > now {
                kept.push(grant);
                continue;
            }
            expired_any = true;
            self.expired = add(self.expired, grant.remaining, &self.account_id)?;
            effects.entries.push(LedgerEntry {
                entry_id: format!("expiry:{}", grant.grant_id),
                account_id: self.account_id.clone(),
                kind: EntryKind::Expiry,
                amount: -grant.remaining,
                currency: self.currency_code().to_owned(),
                at: grant.expires_at,
                reference: grant.grant_id.to_string(),
            });
            let mut event = self.event(EventKind::CreditsExpired, &grant.grant_id, grant.expires_at);
            event.amount = Some(grant.remaining);
            event.grant_id = Some(grant.grant_id.to_string());
            effects.events.push(event);
            self.remember_spent(grant.grant_id);
        }
        kept.shrink_to_fit();
        self.grants = kept;
        if expired_any {
            let balance = self.balance()?;
            for event in &mut effects.events {
                event.balance = Some(balance);
            }
            let at = effects.events.iter().map(|e| e.at).max().unwrap_or(now);
            self.after_balance_fell(at, None, &mut effects)?;
        }
        Ok(effects)
    }

    /// The earliest expiry among the grants, for the expiry index.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.grants.iter().map(|g| g.expires_at).min()
    }

    /// Adds usage to its month: the allowance first, then the spend, then
    /// the budget thresholds. Returns what is charged (cost less allowance).
    fn add_spend(&mut self, usage: &PricedUsage, effects: &mut Effects) -> Result<Amount, LedgerError> {
        let period = self.period_of(usage.occurred_at);
        let idx = match self.periods.iter().position(|p| p.period == period) {
            Some(i) => i,
            None => {
                if self.periods.len() >= PERIODS_KEPT && self.periods.iter().all(|p| p.period > period) {
                    // Too late to alert on (ClickHouse still has it), and its
                    // month's allowance is no longer known: charged in full.
                    return Ok(usage.cost);
                }
                self.periods.push(PeriodSpend {
                    period,
                    spend: Amount::ZERO,
                    allowance_used: Amount::ZERO,
                    announced: Vec::new(),
                    tokens_free_used: ThinVec::new(),
                });
                self.periods.sort_by_key(|p| p.period);
                if self.periods.len() > PERIODS_KEPT {
                    self.periods.remove(0);
                }
                self.periods.shrink_to_fit();
                self.periods.iter().position(|p| p.period == period).expect("just inserted")
            }
        };
        let (allowance, token_allowances, budget, mut thresholds) = match self.settings_at(usage.occurred_at) {
            Some(s) => (
                s.monthly_allowance().unwrap_or(Amount::ZERO),
                s.monthly_token_allowances.clone(),
                s.monthly_budget(),
                // Only read with a budget: no copy per usage otherwise.
                if s.monthly_budget().is_some() { s.alert_thresholds().to_vec() } else { Vec::new() },
            ),
            None => (Amount::ZERO, ThinVec::new(), None, Vec::new()),
        };
        // Free tokens first, unit by unit, valued at this event's prices;
        // then the money allowance on what is left.
        let mut tokens_free = Amount::ZERO;
        for a in &token_allowances {
            let remaining = a.quantity.saturating_sub(self.periods[idx].tokens_used(&a.unit));
            let Some(line) = usage.lines.iter().find(|l| l.unit == a.unit) else { continue };
            let quantity = remaining.min(line.quantity);
            if quantity == 0 {
                continue;
            }
            // Capped at the event's cost (below): a value past it, or past
            // the range, frees the whole cost.
            let value = line.unit_price.checked_mul_count(quantity).unwrap_or(Amount::MAX).min(usage.cost);
            tokens_free = tokens_free.checked_add(value).unwrap_or(Amount::MAX).min(usage.cost);
            self.periods[idx].use_tokens(&a.unit, quantity);
        }
        // Lines never cost more than the event; a record whose lines do
        // is not trusted beyond its cost.
        let tokens_free = tokens_free.min(usage.cost);
        let after_tokens = sub(usage.cost, tokens_free, &self.account_id)?;
        let allowance_left = sub(allowance, self.periods[idx].allowance_used, &self.account_id)?.max(Amount::ZERO);
        let money_free = after_tokens.min(allowance_left);
        let charged = sub(after_tokens, money_free, &self.account_id)?;
        if !money_free.is_zero() {
            self.periods[idx].allowance_used = add(self.periods[idx].allowance_used, money_free, &self.account_id)?;
        }
        let free = add(tokens_free, money_free, &self.account_id)?;
        if !free.is_zero() {
            self.allowance_applied = add(self.allowance_applied, free, &self.account_id)?;
        }
        let spend = add(self.periods[idx].spend, charged, &self.account_id)?;
        self.periods[idx].spend = spend;
        let Some(budget) = budget else { return Ok(charged) };
        thresholds.sort_unstable();
        for pct in thresholds {
            // spend ≥ budget × pct / 100, exactly, without a division.
            let reached = spend.cmp_scaled_by(100, budget, pct) != Ordering::Less;
            if !reached || self.periods[idx].announced.contains(&pct) {
                continue;
            }
            self.periods[idx].announced.push(pct);
            let label = format!("{}-{:02}", period / 100, period % 100);
            let mut event = self.event(EventKind::BudgetThresholdCrossed, &format!("{label}/{pct}"), usage.occurred_at);
            event.period = Some(label);
            event.threshold_percent = Some(pct);
            event.budget = Some(budget);
            event.spend = Some(spend);
            event.triggering_event_id = Some(usage.event_id.clone());
            effects.events.push(event);
        }
        Ok(charged)
    }

    /// After usage or an expiry: depletion, auto-reload, runway.
    fn after_balance_fell(
        &mut self,
        at: DateTime<Utc>,
        trigger: Option<&str>,
        effects: &mut Effects,
    ) -> Result<(), LedgerError> {
        if self.mode_at(at) != BillingMode::Prepaid {
            return Ok(());
        }
        let balance = self.balance()?;
        if !self.depleted && balance <= Amount::ZERO {
            self.depleted = true;
            let mut event = self.event(EventKind::BalanceDepleted, &self.depletion_cycle.to_string(), at);
            event.balance = Some(balance);
            event.overage = Some(self.overage);
            event.triggering_event_id = trigger.map(str::to_owned);
            effects.events.push(event);
        }
        let reload = self.settings_at(at).and_then(|s| s.auto_reload.as_deref().copied()).filter(|r| r.enabled);
        if let Some(reload) = reload {
            if self.reload_open.is_none() && !self.reload_suppressed && balance < reload.threshold {
                self.reload_cycle += 1;
                let key = format!("{}/reload/{}", self.account_id, self.reload_cycle);
                // One reload covers the whole shortfall, overage included:
                // settings ≤ COMMAND_AMOUNT_MAX and |balance| ≤ the totals'
                // bound keep it an amount.
                let amount = match (reload.target_balance, reload.amount) {
                    (Some(target), _) => sub(target, balance, &self.account_id)?,
                    (None, Some(amount)) => amount.max(sub(reload.threshold, balance, &self.account_id)?),
                    // Validated away (exactly one of them): nothing to ask for.
                    (None, None) => return Ok(()),
                };
                let mut event = self.event(EventKind::AutoReloadRequested, &self.reload_cycle.to_string(), at);
                event.amount = Some(amount);
                event.balance = Some(balance);
                event.reload_key = Some(key.clone());
                event.triggering_event_id = trigger.map(str::to_owned);
                self.reload_open = Some(key.into());
                effects.events.push(event);
            }
        }
        // Seconds first: the instant (calendar arithmetic, slow for a far
        // one, as an account's sparse usage makes it) only when announced.
        if !self.runway_announced {
            let within_runway = self.seconds_to_depletion(at).filter(|&seconds| {
                let runway_hours = self.settings_at(at).map(|s| s.low_runway_hours).unwrap_or(72);
                seconds < i64::from(runway_hours) * 3600
            });
            let projected = within_runway.and_then(|seconds| at.checked_add_signed(Duration::seconds(seconds)));
            if let Some(projected) = projected {
                self.runway_announced = true;
                let mut event = self.event(EventKind::BalanceLowRunway, &self.runway_cycle.to_string(), at);
                event.balance = Some(balance);
                event.projected_depletion_at = Some(projected);
                event.triggering_event_id = trigger.map(str::to_owned);
                effects.events.push(event);
            }
        }
        Ok(())
    }

    fn track_burn(&mut self, at: DateTime<Utc>, cost: Amount) -> Result<(), LedgerError> {
        let hour = at.timestamp().div_euclid(3600);
        let account = &self.account_id;
        let burn = self.burn.get_or_insert_with(Box::default);
        if hour == burn.hour {
            burn.this_hour = add(burn.this_hour, cost, account)?;
        } else if hour == burn.hour + 1 {
            burn.previous_hour = burn.this_hour;
            burn.this_hour = cost;
            burn.hour = hour;
        } else if hour > burn.hour {
            **burn = BurnRate { hour, this_hour: cost, previous_hour: Amount::ZERO };
        } else if hour == burn.hour - 1 {
            burn.previous_hour = add(burn.previous_hour, cost, account)?;
        }
        Ok(())
    }

    /// When the balance runs out at the recent spend rate (usage time):
    /// spend of the previous and current hour over the time they span.
    pub fn projected_depletion(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        at.checked_add_signed(Duration::seconds(self.seconds_to_depletion(at)?))
    }

    /// [`Self::projected_depletion`] as seconds after `at` (at most a century).
    fn seconds_to_depletion(&self, at: DateTime<Utc>) -> Option<i64> {
        let balance = self.balance().ok()?;
        let burn = self.burn.as_deref()?;
        if balance <= Amount::ZERO || burn.hour != at.timestamp().div_euclid(3600) {
            return None;
        }
        let into_hour = i64::from(at.minute() * 60 + at.second());
        let window = into_hour.max(RATE_WINDOW_MIN_SECONDS) + if burn.previous_hour.is_zero() { 0 } else { 3600 };
        let spent = burn.this_hour.checked_add(burn.previous_hour).ok()?;
        if spent <= Amount::ZERO {
            return None;
        }
        // A projection, not money: the division truncates.
        let seconds = balance.ratio_times(spent, window)?;
        i64::try_from(seconds.min(100 * 365 * 86_400)).ok()
    }

    fn drop_spent_grants(&mut self) {
        let spent: Vec<Box<str>> =
            self.grants.iter().filter(|g| g.remaining.is_zero()).map(|g| g.grant_id.clone()).collect();
        self.grants.retain(|g| !g.remaining.is_zero());
        self.grants.shrink_to_fit();
        for id in spent {
            self.remember_spent(id);
        }
    }

    fn remember_spent(&mut self, grant_id: Box<str>) {
        self.spent_grant_ids.push(grant_id);
        if self.spent_grant_ids.len() > SPENT_GRANT_IDS_KEPT {
            self.spent_grant_ids.remove(0);
        }
        self.spent_grant_ids.shrink_to_fit();
    }

    fn event(&self, kind: EventKind, about: &str, at: DateTime<Utc>) -> LedgerEvent {
        LedgerEvent::new(kind, &self.account_id, about, at, self.currency_code())
    }
}

fn burn_order(g: &GrantState) -> (u32, DateTime<Utc>, DateTime<Utc>, &str) {
    (g.priority, g.expires_at, g.granted_at, &g.grant_id)
}

/// An account's currency, `""` on the wire while it has none (the form
/// changelogs have always had).
mod account_currency {
    use serde::{Deserialize, Deserializer, Serializer};
    use usage_model::Currency;

    pub fn serialize<S: Serializer>(currency: &Option<Currency>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(currency.as_ref().map_or("", Currency::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Currency>, D::Error> {
        let code = String::deserialize(deserializer)?;
        if code.is_empty() {
            return Ok(None);
        }
        code.parse().map(Some).map_err(serde::de::Error::custom)
    }
}
