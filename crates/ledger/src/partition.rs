//! The accounts of one ledger partition: applies inputs in offset order,
//! skips what was applied before (replays after a restart or a pricing
//! retry), remembers which accounts changed, and expires grants when due.

use crate::account::{AccountState, LedgerError};
use crate::input::{AccountCommand, PricedUsage};
use crate::output::Effects;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Which input of the ledger a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Priced(i64),
    Commands(i64),
}

/// What became of one input.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied before (its offset or its pricing origin is behind the
    /// account's): nothing changes.
    Skipped,
    Done(Effects),
    /// Cannot be applied (currency mismatch, overflow): dead-letter it.
    Refused(LedgerError),
}

#[derive(Default)]
pub struct PartitionLedger {
    accounts: HashMap<String, AccountState>,
    /// Accounts changed since the last `take_dirty`.
    dirty: HashSet<String>,
    /// (next grant expiry, account), so that idle accounts' grants expire
    /// without scanning every account.
    expiries: BTreeSet<(DateTime<Utc>, String)>,
}

impl PartitionLedger {
    /// A partition rebuilt from its changelog (the latest state per account).
    pub fn restore(states: impl IntoIterator<Item = AccountState>) -> Self {
        let mut ledger = Self::default();
        for state in states {
            if let Some(at) = state.next_expiry() {
                ledger.expiries.insert((at, state.account_id.clone()));
            }
            ledger.accounts.insert(state.account_id.clone(), state);
        }
        ledger
    }

    pub fn account(&self, account_id: &str) -> Option<&AccountState> {
        self.accounts.get(account_id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountState> {
        self.accounts.values()
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    pub fn apply_usage(&mut self, offset: i64, usage: &PricedUsage) -> Applied {
        self.apply(&usage.account_id, Position::Priced(offset), |account| {
            if !account.first_time_from_origin(&usage.origin_topic, usage.origin_partition, usage.origin_offset) {
                return Ok(None);
            }
            account.apply_usage(usage).map(Some)
        })
    }

    pub fn apply_command(&mut self, offset: i64, command: &AccountCommand) -> Applied {
        self.apply(command.account_id(), Position::Commands(offset), |account| {
            Ok(Some(match command {
                AccountCommand::AccountSettings(s) => account.apply_settings(s.clone()),
                AccountCommand::CreditGrant(g) => account.apply_grant(g)?,
                AccountCommand::AutoReloadFailed(f) => account.apply_reload_failed(f),
            }))
        })
    }

    /// Expires the grants due at `now` (wall clock) on idle accounts.
    pub fn expire_due(&mut self, now: DateTime<Utc>) -> Effects {
        let mut effects = Effects::default();
        while let Some((at, account_id)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let Some(account) = self.accounts.get_mut(&account_id) else { continue };
            if account.next_expiry() != Some(at) {
                continue; // Stale index entry: the grant was used up or re-indexed.
            }
            match account.expire_until(now) {
                Ok(e) => {
                    account.outbox.extend(e.events.iter().cloned());
                    effects.extend(e);
                }
                Err(error) => tracing::error!(account = %account_id, %error, "cannot expire grants"),
            }
            if let Some(next) = account.next_expiry() {
                self.expiries.insert((next, account_id.clone()));
            }
            self.dirty.insert(account_id);
        }
        effects
    }

    /// The accounts changed since the last call, for the changelog.
    pub fn take_dirty(&mut self) -> Vec<&AccountState> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.iter().filter_map(|id| self.accounts.get(id)).collect()
    }

    /// Clears the outboxes once their events are acknowledged; the next
    /// changelog write of each account records it.
    pub fn clear_outboxes(&mut self) {
        for account in self.accounts.values_mut() {
            account.outbox.clear();
        }
    }

    /// Events still to send (after a restore: those never acknowledged).
    pub fn outbox(&self) -> impl Iterator<Item = &crate::output::LedgerEvent> {
        self.accounts.values().flat_map(|a| a.outbox.iter())
    }

    fn apply(
        &mut self,
        account_id: &str,
        position: Position,
        f: impl FnOnce(&mut AccountState) -> Result<Option<Effects>, LedgerError>,
    ) -> Applied {
        let account = self.accounts.entry(account_id.to_owned()).or_insert_with(|| AccountState::new(account_id));
        let (last, offset) = match position {
            Position::Priced(o) => (&mut account.priced_offset, o),
            Position::Commands(o) => (&mut account.commands_offset, o),
        };
        if offset <= *last {
            return Applied::Skipped;
        }
        *last = offset;
        let expiry_before = account.next_expiry();
        let outcome = f(account);
        self.dirty.insert(account_id.to_owned());
        let expiry_after = account.next_expiry();
        if expiry_after != expiry_before {
            if let Some(at) = expiry_after {
                self.expiries.insert((at, account_id.to_owned()));
            }
        }
        match outcome {
            Ok(Some(effects)) => {
                account.outbox.extend(effects.events.iter().cloned());
                Applied::Done(effects)
            }
            Ok(None) => Applied::Skipped,
            Err(e) => Applied::Refused(e),
        }
    }
}
