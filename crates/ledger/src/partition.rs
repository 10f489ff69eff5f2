//! The accounts of one ledger partition: applies inputs in offset order,
//! skips what was applied before (replays after a restart or a pricing
//! retry), remembers which accounts changed, and expires grants when due.

use crate::account::{AccountState, LedgerError};
use crate::chunked::ChunkedVec;
use crate::index::AccountIndex;
use crate::input::{AccountCommand, PricedUsage};
use crate::output::{Effects, LedgerEntry, LedgerEvent};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::Arc;
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
    /// Applied: the events it emitted (also in the account's outbox). Its
    /// ledger entries are moved to the account's pending entries
    /// ([`PartitionLedger::unsent_entries`]), not returned: nothing reads
    /// them here, and a copy cost four strings per usage.
    Done(Effects),
    /// Cannot be applied (currency mismatch, overflow): dead-letter it.
    Refused(LedgerError),
}

/// The accounts of a partition. Each lives at a fixed index (accounts are
/// never removed); the id → index table holds indices only, so an account
/// id is stored once, in its state, and the change sets are lists of
/// indices with a flag per account: applying an event hashes its account id
/// once and allocates nothing for the bookkeeping.
#[derive(Default)]
pub struct PartitionLedger {
    accounts: ChunkedVec<AccountState>,
    /// Hash of the account id → index into `accounts`.
    index: AccountIndex,
    hasher: usage_model::hashing::FastHashState,
    /// Per account, [`DIRTY`], [`EVENTS`] and [`ENTRIES`].
    flags: Vec<u8>,
    /// Accounts changed since the last `take_dirty`.
    dirty: Vec<u32>,
    /// (next grant expiry, account), so that idle accounts' grants expire
    /// without scanning every account.
    expiries: BTreeSet<(DateTime<Utc>, u32)>,
    /// Accounts with events not yet acknowledged as sent: few (threshold
    /// events are rare), and apart from `with_entries` (nearly every
    /// account that used the service) so that acknowledging events visits
    /// only them, not every account's state far in memory.
    with_events: Vec<u32>,
    /// Accounts with ledger entries not yet in ClickHouse.
    with_entries: Vec<u32>,
    /// Entries the accounts of `with_entries` hold, all told: asked for on
    /// every turn of the ledger's loop, counted as they come and go.
    n_pending_entries: usize,
    /// The pricing origins' topic names, one copy each, shared by the
    /// accounts' origins (at most [`SHARED_TOPICS_MAX`]).
    topics: Vec<Arc<str>>,
}

/// Topic names shared: a deployment prices one topic or a few. Past this
/// many, a name is kept per account (correct, only larger), so a feed of
/// odd names cannot make the lookup long.
const SHARED_TOPICS_MAX: usize = 16;

/// Listed in `dirty`.
const DIRTY: u8 = 1;
/// Listed in `with_events`.
const EVENTS: u8 = 2;
/// Listed in `with_entries`.
const ENTRIES: u8 = 4;

impl PartitionLedger {
    /// A partition rebuilt from its changelog (the latest state per account).
    pub fn restore(states: impl IntoIterator<Item = AccountState>) -> Self {
        let mut ledger = Self::default();
        for mut state in states {
            for origin in state.origins.iter_mut() {
                origin.0 = ledger.shared_topic(&origin.0);
            }
            let i = match ledger.find(&state.account_id) {
                Some(i) => {
                    ledger.accounts[i as usize] = state;
                    i
                }
                None => ledger.push(state),
            };
            if let Some(at) = ledger.accounts[i as usize].next_expiry() {
                ledger.expiries.insert((at, i));
            }
        }
        // Once every state is in (an account restored twice keeps its last).
        for i in 0..ledger.accounts.len() as u32 {
            ledger.note_outputs(i);
        }
        ledger
    }

    /// Lists account `i` under what it holds unsent (its events, its
    /// entries); its entries are counted once, when first listed.
    fn note_outputs(&mut self, i: u32) {
        let state = &self.accounts[i as usize];
        self.list_outputs(i, !state.outbox.is_empty(), state.pending_entries.len());
    }

    /// Lists account `i` as having events (if `events`) and counts its
    /// `new_entries` (listing it as having entries, if any).
    fn list_outputs(&mut self, i: u32, events: bool, new_entries: usize) {
        if events {
            self.mark(i, EVENTS);
        }
        if new_entries > 0 {
            self.n_pending_entries += new_entries;
            self.mark(i, ENTRIES);
        }
    }

    pub fn account(&self, account_id: &str) -> Option<&AccountState> {
        self.find(account_id).map(|i| &self.accounts[i as usize])
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountState> {
        self.accounts.iter()
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    fn find(&self, account_id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(account_id);
        self.index.find(hash, |i| self.accounts[i as usize].account_id == account_id)
    }

    /// Adds an account not yet held; its index.
    fn push(&mut self, state: AccountState) -> u32 {
        // Four billion accounts in one partition is past any memory.
        let i = u32::try_from(self.accounts.len()).unwrap_or(u32::MAX - 1);
        self.index.insert(self.hasher.hash_one(state.account_id.as_str()), i);
        self.accounts.push(state);
        self.flags.push(0);
        i
    }

    /// Lists account `i` as dirty, with events or with entries, once.
    fn mark(&mut self, i: u32, flag: u8) {
        let flags = &mut self.flags[i as usize];
        if *flags & flag == 0 {
            *flags |= flag;
            match flag {
                DIRTY => self.dirty.push(i),
                EVENTS => self.with_events.push(i),
                _ => self.with_entries.push(i),
            }
        }
    }

    pub fn apply_usage(&mut self, offset: i64, usage: &PricedUsage) -> Applied {
        let i = self.index_of(&usage.account_id);
        self.apply_priced_at(i, offset, usage)
    }

    /// Applies the records of one priced message (`offset`), in order: the
    /// same as [`Self::apply_usage`] on each. With many accounts, each
    /// record's state is far in memory, and a record applied alone would
    /// wait for each step of reaching it in turn: the index's line, the
    /// state, its parts.
    /// So the steps run as a pipeline, each `STEP` records behind the one
    /// before, each asking memory for what the next one reads: while record
    /// `j` is applied, the lines of the records after it are on their way.
    pub fn apply_usages(&mut self, offset: i64, records: &[PricedUsage]) -> Vec<Applied> {
        /// Records between two steps of the pipeline.
        const STEP: usize = 2;
        /// Records in flight. Too few would only cost speed: a candidate
        /// is confirmed against the record's id before it is used.
        const RING: usize = 16;
        const { assert!(RING.is_power_of_two() && RING > 3 * STEP) };
        let mut hashes = [0u64; RING];
        // By hash alone (tags agreeing in 32 bits): confirmed against the
        // id when applied.
        let mut found: [Option<u32>; RING] = [None; RING];
        // The record `steps` steps behind record `j`, if there is one.
        let behind = |j: usize, steps: usize| j.checked_sub(steps * STEP).filter(|&k| k < records.len());
        let mut applied = Vec::with_capacity(records.len());
        for j in 0..records.len() + 3 * STEP {
            if let Some(k) = behind(j, 0) {
                hashes[k % RING] = self.hasher.hash_one(records[k].account_id.as_str());
                self.index.prefetch(hashes[k % RING]);
            }
            if let Some(k) = behind(j, 1) {
                found[k % RING] = self.index.find(hashes[k % RING], |_| true);
                if let Some(i) = found[k % RING] {
                    self.prefetch_state(i);
                }
            }
            if let Some(i) = behind(j, 2).and_then(|k| found[k % RING]) {
                self.accounts[i as usize].prefetch_parts();
            }
            let Some(k) = behind(j, 3) else { continue };
            let record = &records[k];
            // An account new to this message is created by its first
            // record; a candidate that is another account (tags agreeing)
            // is looked up again, exactly.
            let i = match found[k % RING] {
                Some(i) if self.accounts[i as usize].account_id == record.account_id => i,
                _ => self.index_of(&record.account_id),
            };
            applied.push(self.apply_priced_at(i, offset, record));
        }
        applied
    }

    /// The partition's copy of topic name `name`.
    fn shared_topic(&mut self, name: &str) -> Arc<str> {
        if let Some(topic) = self.topics.iter().find(|t| ***t == *name) {
            return Arc::clone(topic);
        }
        let topic: Arc<str> = name.into();
        if self.topics.len() < SHARED_TOPICS_MAX {
            self.topics.push(Arc::clone(&topic));
        }
        topic
    }

    fn apply_priced_at(&mut self, i: u32, offset: i64, usage: &PricedUsage) -> Applied {
        let topic = self.shared_topic(&usage.origin_topic);
        self.apply_at(i, Position::Priced(offset), |account| {
            if !account.first_time_from_origin(&topic, usage.origin_partition, usage.origin_offset) {
                return Ok(None);
            }
            account.apply_usage(usage).map(Some)
        })
    }

    pub fn apply_command(&mut self, offset: i64, command: &AccountCommand) -> Applied {
        self.apply(command.account_id(), Position::Commands(offset), |account| {
            Ok(Some(match command {
                AccountCommand::AccountSettings(s) => account.apply_settings(s)?,
                AccountCommand::CreditGrant(g) => account.apply_grant(g)?,
                AccountCommand::AutoReloadFailed(f) => account.apply_reload_failed(f),
            }))
        })
    }

    /// Expires the grants due at `now` (wall clock) on idle accounts.
    pub fn expire_due(&mut self, now: DateTime<Utc>) -> Effects {
        let mut effects = Effects::default();
        while let Some(&(at, i)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let account = &mut self.accounts[i as usize];
            if account.next_expiry() != Some(at) {
                continue; // Stale index entry: the grant was used up or re-indexed.
            }
            match account.expire_until(now) {
                Ok(e) => {
                    self.hold_outputs(i, &e.events, e.entries.iter().cloned());
                    effects.extend(e);
                }
                Err(error) => tracing::error!(account = %account.account_id, %error, "cannot expire grants"),
            }
            if let Some(next) = self.accounts[i as usize].next_expiry() {
                self.expiries.insert((next, i));
            }
            self.mark(i, DIRTY);
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
        for (n, &i) in dirty.iter().enumerate() {
            if let Some(&ahead) = dirty.get(n + 16) {
                prefetch(&self.flags[ahead as usize]);
            }
            self.flags[i as usize] &= !DIRTY;
        }
        dirty.iter().map(|&i| &self.accounts[i as usize]).collect()
    }

    /// Events not yet acknowledged (after a restore, also those a previous
    /// owner emitted but may not have sent).
    pub fn unsent_events(&self) -> Vec<LedgerEvent> {
        self.listed(&self.with_events).flat_map(|a| a.outbox.iter().cloned()).collect()
    }

    fn listed<'a>(&'a self, list: &'a [u32]) -> impl Iterator<Item = &'a AccountState> {
        list.iter().map(|&i| &self.accounts[i as usize])
    }

    /// Holds what applying an input of account `i` emitted until it is
    /// acknowledged as sent (events) or written (entries).
    fn hold_outputs(&mut self, i: u32, events: &[LedgerEvent], entries: impl ExactSizeIterator<Item = LedgerEntry>) {
        let account = &mut self.accounts[i as usize];
        let n_entries = entries.len();
        account.outbox.extend(events.iter().cloned());
        account.pending_entries.extend(entries);
        self.list_outputs(i, !events.is_empty(), n_entries);
    }

    /// Entries awaiting ClickHouse, per account, in order: what a write in
    /// the background takes (see [`Self::entries_written_upto`]).
    pub fn unsent_entries_by_account(&self) -> impl Iterator<Item = (&str, &[LedgerEntry])> {
        self.listed(&self.with_entries)
            .filter(|a| !a.pending_entries.is_empty())
            .map(|a| (a.account_id.as_str(), a.pending_entries.as_slice()))
    }

    /// The first `n` pending entries of each listed account are in
    /// ClickHouse (entries added since stay pending), except those
    /// `unwritable` says could not be sent: they stay, never dropped.
    pub fn entries_written_upto(&mut self, written: &[(String, usize)], unwritable: impl Fn(&LedgerEntry) -> bool) {
        let mut emptied = false;
        for (account_id, n) in written {
            let Some(i) = self.find(account_id) else { continue };
            let a = &mut self.accounts[i as usize];
            let (before, n) = (a.pending_entries.len(), (*n).min(a.pending_entries.len()));
            let mut k = 0;
            a.pending_entries.retain(|e| {
                k += 1;
                k > n || unwritable(e)
            });
            emptied |= self.entries_gone(i, before);
        }
        if emptied {
            // By the flags alone: no state is visited again.
            let flags = &self.flags;
            self.with_entries.retain(|&i| flags[i as usize] & ENTRIES != 0);
        }
    }

    /// Entries not yet acknowledged by ClickHouse.
    pub fn unsent_entries(&self) -> Vec<LedgerEntry> {
        self.listed(&self.with_entries).flat_map(|a| a.pending_entries.iter().cloned()).collect()
    }

    pub fn has_unsent_events(&self) -> bool {
        !self.with_events.is_empty()
    }

    /// Number of entries awaiting ClickHouse (bounds memory).
    pub fn n_unsent_entries(&self) -> usize {
        self.n_pending_entries
    }

    /// The events returned by `unsent_events` were acknowledged. The next
    /// changelog write of each account records it (until then a restore
    /// sends them again: at least once, same ids).
    pub fn events_sent(&mut self) {
        // Not kept: a burst of events leaves no capacity behind.
        for i in std::mem::take(&mut self.with_events) {
            // Not `clear`: an idle account keeps no spare capacity.
            self.accounts[i as usize].outbox = ThinVec::new();
            self.flags[i as usize] &= !EVENTS;
        }
    }

    /// The entries returned by `unsent_entries` are in ClickHouse, except
    /// those `unwritable` says could not be sent: they stay pending (an
    /// entry is never dropped).
    pub fn entries_written(&mut self, unwritable: impl Fn(&LedgerEntry) -> bool) {
        let listed = std::mem::take(&mut self.with_entries);
        let mut kept = Vec::new();
        for (n, &i) in listed.iter().enumerate() {
            self.prefetch_sweep(&listed, n);
            let a = &mut self.accounts[i as usize];
            let before = a.pending_entries.len();
            a.pending_entries.retain(|e| unwritable(e));
            if !self.entries_gone(i, before) {
                kept.push(i);
            }
        }
        // Not kept from `listed`: a burst of work (a restore, a backlog)
        // leaves no capacity behind.
        self.with_entries = kept;
    }

    /// Account `i` held `before` pending entries and some were written:
    /// uncounts them and, if none is left, unlists it (no spare capacity
    /// kept). Whether none is left.
    fn entries_gone(&mut self, i: u32, before: usize) -> bool {
        let a = &mut self.accounts[i as usize];
        self.n_pending_entries -= before - a.pending_entries.len();
        if !a.pending_entries.is_empty() {
            return false;
        }
        a.pending_entries = ThinVec::new();
        self.flags[i as usize] &= !ENTRIES;
        true
    }

    /// A sweep over the accounts `list` names is at its `n`th: asks memory
    /// for what the sweep reads some accounts ahead, a step at a time (the
    /// state's line with its entries and the account's flags, then the
    /// entries), as [`Self::apply_usages`] does for a message's records.
    fn prefetch_sweep(&self, list: &[u32], n: usize) {
        const STEP: usize = 8;
        if let Some(&i) = list.get(n + 2 * STEP) {
            // Only the state's line the sweep reads, not all of it.
            prefetch((&self.accounts[i as usize].pending_entries as *const ThinVec<LedgerEntry>).cast());
            prefetch(&self.flags[i as usize]);
        }
        if let Some(&i) = list.get(n + STEP) {
            self.accounts[i as usize].prefetch_entries();
        }
    }

    /// Prefetches account `i`'s state, every line of it, and its flags.
    fn prefetch_state(&self, i: u32) {
        prefetch(&self.flags[i as usize]);
        let at = (&self.accounts[i as usize] as *const AccountState).cast::<u8>();
        // Every line the state overlaps (it need not start on one).
        let lines = (at as usize % 64 + std::mem::size_of::<AccountState>()).div_ceil(64);
        for line in 0..lines {
            prefetch(at.wrapping_add(line * 64));
        }
    }

    /// The account's index, holding it from now on if it is new.
    fn index_of(&mut self, account_id: &str) -> u32 {
        match self.find(account_id) {
            Some(i) => i,
            None => self.push(AccountState::new(account_id)),
        }
    }

    fn apply(
        &mut self,
        account_id: &str,
        position: Position,
        f: impl FnOnce(&mut AccountState) -> Result<Option<Effects>, LedgerError>,
    ) -> Applied {
        let i = self.index_of(account_id);
        self.apply_at(i, position, f)
    }

    fn apply_at(
        &mut self,
        i: u32,
        position: Position,
        f: impl FnOnce(&mut AccountState) -> Result<Option<Effects>, LedgerError>,
    ) -> Applied {
        let account = &mut self.accounts[i as usize];
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
        let expiry_after = account.next_expiry();
        if expiry_after != expiry_before {
            if let Some(at) = expiry_after {
                self.expiries.insert((at, i));
            }
        }
        let applied = match outcome {
            Ok(Some(mut effects)) => {
                let entries = std::mem::take(&mut effects.entries);
                self.hold_outputs(i, &effects.events, entries.into_iter());
                Applied::Done(effects)
            }
            Ok(None) => Applied::Skipped,
            Err(e) => Applied::Refused(e),
        };
        self.mark(i, DIRTY);
        applied
    }
}

/// Asks the processor to bring the cache line at `p` in, without waiting
/// for it: the lookups of a message's records find their accounts' states
/// scattered over memory, and fetched one after another each costs a trip
/// to memory; asked for together, the trips overlap.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address,
    // and changes nothing the program can observe but timing.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
