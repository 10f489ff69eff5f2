//! The accounts of one ledger partition: applies inputs in offset order,
//! skips what was applied before (replays after a restart or a pricing
//! retry), remembers which accounts changed, and expires grants when due.

use crate::account::{AccountState, LedgerError};
use crate::input::{AccountCommand, PricedUsage};
use crate::output::{Effects, LedgerEntry, LedgerEvent};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap, HashSet};
use thin_vec::ThinVec;

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
    /// Boxed: the map's spare slots then cost a pointer, not a whole state.
    accounts: HashMap<String, Box<AccountState>>,
    /// Accounts changed since the last `take_dirty`.
    dirty: HashSet<String>,
    /// (next grant expiry, account), so that idle accounts' grants expire
    /// without scanning every account.
    expiries: BTreeSet<(DateTime<Utc>, String)>,
    /// Accounts with events or entries not yet acknowledged as sent.
    unsent: HashSet<String>,
}

impl PartitionLedger {
    /// A partition rebuilt from its changelog (the latest state per account).
    pub fn restore(states: impl IntoIterator<Item = AccountState>) -> Self {
        let mut ledger = Self::default();
        for state in states {
            if let Some(at) = state.next_expiry() {
                ledger.expiries.insert((at, state.account_id.clone()));
            }
            if !state.outbox.is_empty() || !state.pending_entries.is_empty() {
                ledger.unsent.insert(state.account_id.clone());
            }
            ledger.accounts.insert(state.account_id.clone(), Box::new(state));
        }
        ledger
    }

    pub fn account(&self, account_id: &str) -> Option<&AccountState> {
        self.accounts.get(account_id).map(|a| &**a)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountState> {
        self.accounts.values().map(|a| &**a)
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
                    if !e.is_empty() {
                        account.outbox.extend(e.events.iter().cloned());
                        account.pending_entries.extend(e.entries.iter().cloned());
                        self.unsent.insert(account_id.clone());
                    }
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

    /// Whether accounts changed since the last `take_dirty`.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The accounts changed since the last call, for the changelog.
    pub fn take_dirty(&mut self) -> Vec<&AccountState> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.iter().filter_map(|id| self.accounts.get(id).map(|a| &**a)).collect()
    }

    /// Events not yet acknowledged (after a restore, also those a previous
    /// owner emitted but may not have sent).
    pub fn unsent_events(&self) -> Vec<LedgerEvent> {
        self.unsent.iter().filter_map(|id| self.accounts.get(id)).flat_map(|a| a.outbox.iter().cloned()).collect()
    }

    /// Entries awaiting ClickHouse, per account, in order: what a write in
    /// the background takes (see [`Self::entries_written_upto`]).
    pub fn unsent_entries_by_account(&self) -> impl Iterator<Item = (&str, &[LedgerEntry])> {
        self.unsent
            .iter()
            .filter_map(|id| self.accounts.get(id))
            .filter(|a| !a.pending_entries.is_empty())
            .map(|a| (a.account_id.as_str(), a.pending_entries.as_slice()))
    }

    /// The first `n` pending entries of each listed account are in
    /// ClickHouse (entries added since stay pending), except those
    /// `unwritable` says could not be sent: they stay, never dropped.
    pub fn entries_written_upto(&mut self, written: &[(String, usize)], unwritable: impl Fn(&LedgerEntry) -> bool) {
        for (account_id, n) in written {
            let Some(a) = self.accounts.get_mut(account_id) else { continue };
            let n = (*n).min(a.pending_entries.len());
            let mut i = 0;
            a.pending_entries.retain(|e| {
                i += 1;
                i > n || unwritable(e)
            });
            if a.pending_entries.is_empty() {
                a.pending_entries = ThinVec::new();
                if a.outbox.is_empty() {
                    self.unsent.remove(account_id);
                }
            }
        }
    }

    /// Entries not yet acknowledged by ClickHouse.
    pub fn unsent_entries(&self) -> Vec<LedgerEntry> {
        self.unsent
            .iter()
            .filter_map(|id| self.accounts.get(id))
            .flat_map(|a| a.pending_entries.iter().cloned())
            .collect()
    }

    pub fn has_unsent_events(&self) -> bool {
        self.unsent.iter().filter_map(|id| self.accounts.get(id)).any(|a| !a.outbox.is_empty())
    }

    /// Number of entries awaiting ClickHouse (bounds memory).
    pub fn n_unsent_entries(&self) -> usize {
        self.unsent.iter().filter_map(|id| self.accounts.get(id)).map(|a| a.pending_entries.len()).sum()
    }

    /// The events returned by `unsent_events` were acknowledged. The next
    /// changelog write of each account records it (until then a restore
    /// sends them again: at least once, same ids).
    pub fn events_sent(&mut self) {
        // Not `clear`: an idle account keeps no spare capacity.
        self.forget_unsent(|a| a.outbox = ThinVec::new());
    }

    /// The entries returned by `unsent_entries` are in ClickHouse, except
    /// those `unwritable` says could not be sent: they stay pending (an
    /// entry is never dropped).
    pub fn entries_written(&mut self, unwritable: impl Fn(&LedgerEntry) -> bool) {
        self.forget_unsent(|a| {
            if a.pending_entries.iter().any(&unwritable) {
                a.pending_entries.retain(|e| unwritable(e));
            } else {
                a.pending_entries = ThinVec::new();
            }
        });
    }

    fn forget_unsent(&mut self, clear: impl Fn(&mut AccountState)) {
        let accounts = &mut self.accounts;
        self.unsent.retain(|id| match accounts.get_mut(id) {
            Some(a) => {
                clear(a);
                !a.outbox.is_empty() || !a.pending_entries.is_empty()
            }
            None => false,
        });
        if self.unsent.is_empty() {
            // A burst of work (a restore, a backlog) leaves no capacity behind.
            self.unsent = HashSet::new();
        }
    }

    fn apply(
        &mut self,
        account_id: &str,
        position: Position,
        f: impl FnOnce(&mut AccountState) -> Result<Option<Effects>, LedgerError>,
    ) -> Applied {
        let account =
            self.accounts.entry(account_id.to_owned()).or_insert_with(|| Box::new(AccountState::new(account_id)));
        // A priced message carries many records, several per account: a
        // record at the account's last priced offset may be new, and its
        // origin decides. Commands are one per message.
        let (seen, last, offset) = match position {
            Position::Priced(o) => (o < account.priced_offset, &mut account.priced_offset, o),
            Position::Commands(o) => (o <= account.commands_offset, &mut account.commands_offset, o),
        };
        if seen {
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
                if !effects.is_empty() {
                    account.outbox.extend(effects.events.iter().cloned());
                    account.pending_entries.extend(effects.entries.iter().cloned());
                    self.unsent.insert(account_id.to_owned());
                }
                Applied::Done(effects)
            }
            Ok(None) => Applied::Skipped,
            Err(e) => Applied::Refused(e),
        }
    }
}
