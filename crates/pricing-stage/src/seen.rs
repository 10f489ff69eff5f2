//! The events a partition has stored within the duplicate window: the
//! duplicate check in memory, so that its cost per event does not depend
//! on how much ClickHouse holds.
//!
//! Per assigned partition, a set of row keys (see
//! `usage_clickhouse::row_key`) of the rows stored from that partition
//! whose `occurred_at` falls within the window, read once when the
//! partition is assigned (`ClickHouseSink::stored_keys`), then kept up to
//! date with every row the partition inserts. Every event of an account is
//! stored from the account's home partition (misrouted events are
//! forwarded there, see `pipeline`), so a partition's set holds every
//! stored event of its accounts within the window.
//!
//! Each entry is one `u64`: the day of `occurred_at` in the top 16 bits
//! (whole days leave the window together) and 48 bits of the key. A hit
//! may be a collision (about one in 2^48 / n for n entries), so it is
//! confirmed by a point lookup; a miss is certain. Events older than the
//! window are looked up too. Bound: `ids_max` entries per partition; past
//! it, the oldest days leave and their events are looked up instead.

use std::collections::{BTreeMap, HashMap};
use usage_clickhouse::StoredKey;

const SECONDS_PER_DAY: u32 = 86_400;
const KEY_BITS: u32 = 48;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;

/// An open-addressing set of non-zero `u64` entries (linear probing).
/// Filled to at most 3/4 and grown by half: between 10.7 and 16 bytes per
/// entry, where a power-of-two table would reach 21 right after it grows.
/// A miss, the common answer, probes about 8 slots: two cache lines.
struct EntrySet {
    slots: Vec<u64>,
    len: usize,
    /// Odd, random per set. Row keys are SipHash with public keys, so a
    /// producer choosing event ids could compute them: with a fixed mix it
    /// could aim many at one run of slots and make every probe long.
    multiplier: u64,
}

const SLOTS_MIN: usize = 1024;

impl EntrySet {
    fn with_capacity(n: usize) -> Self {
        use std::hash::BuildHasher;
        let multiplier = std::collections::hash_map::RandomState::new().hash_one(n) | 1;
        Self::sized(n, multiplier)
    }

    fn sized(n: usize, multiplier: u64) -> Self {
        Self { slots: vec![0; (n + n / 2).max(SLOTS_MIN)], len: 0, multiplier }
    }

    fn home(&self, e: u64) -> usize {
        // Mix, then map onto the table by multiply-shift (any size works).
        let h = (e ^ (e >> 29)).wrapping_mul(self.multiplier);
        ((u128::from(h) * self.slots.len() as u128) >> 64) as usize
    }

    fn contains(&self, e: u64) -> bool {
        let mut i = self.home(e);
        loop {
            match self.slots[i] {
                0 => return false,
                x if x == e => return true,
                _ => i = if i + 1 == self.slots.len() { 0 } else { i + 1 },
            }
        }
    }

    /// Whether `e` was new.
    fn insert(&mut self, e: u64) -> bool {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize(self.slots.len() + self.slots.len() / 2);
        }
        let mut i = self.home(e);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = e;
                    self.len += 1;
                    return true;
                }
                x if x == e => return false,
                _ => i = if i + 1 == self.slots.len() { 0 } else { i + 1 },
            }
        }
    }

    fn resize(&mut self, n_slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0; n_slots.max(SLOTS_MIN)]);
        self.len = 0;
        for e in old.into_iter().filter(|e| *e != 0) {
            self.insert(e);
        }
    }

    /// Keeps the entries `keep` accepts, in a table sized for them.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let kept: Vec<u64> = self.slots.iter().copied().filter(|e| *e != 0 && keep(*e)).collect();
        *self = Self::sized(kept.len(), self.multiplier);
        for e in kept {
            self.insert(e);
        }
    }
}

fn day_of(occurred_at: u32) -> u16 {
    // u32 seconds reach 2106: 49,710 days fit a u16.
    (occurred_at / SECONDS_PER_DAY) as u16
}

/// Never 0 (the empty slot): days start in 1970, and day 0 is forced to 1.
fn entry(key: u64, occurred_at: u32) -> u64 {
    ((u64::from(day_of(occurred_at)) << KEY_BITS) | (key & KEY_MASK)).max(1)
}

/// What the in-memory check says of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not stored: certain.
    New,
    /// Stored from this very Kafka position by an earlier attempt (found
    /// past the recorded offset when the partition was assigned).
    StoredHere,
    /// Possibly stored (a hit), or older than the window: look it up.
    Unsure,
}

/// One partition's stored keys within the window.
pub(crate) struct SeenIds {
    entries: EntrySet,
    /// Entries per day, to know what leaves when the window moves.
    per_day: BTreeMap<u16, usize>,
    /// Days before this one are not held.
    first_day: u16,
    ids_max: usize,
    /// Rows stored past the offset recorded when the partition was
    /// assigned (a crashed attempt): offset → entry.
    stored_past: HashMap<i64, u64>,
}

impl SeenIds {
    /// The set for a partition: `stored` holds the keys of its rows since
    /// `since` (seconds), `recorded` the last offset recorded as complete.
    pub(crate) fn rebuild(stored: &[StoredKey], since: u32, recorded: Option<i64>, ids_max: usize) -> Self {
        let mut seen = Self {
            entries: EntrySet::with_capacity(stored.len()),
            per_day: BTreeMap::new(),
            first_day: day_of(since),
            ids_max,
            stored_past: HashMap::new(),
        };
        for s in stored {
            seen.insert(s.key, s.occurred_at);
            if recorded.is_none_or(|r| s.kafka_offset > r) {
                seen.stored_past.insert(s.kafka_offset, entry(s.key, s.occurred_at));
            }
        }
        seen
    }

    pub(crate) fn check(&self, key: u64, occurred_at: u32, offset: i64) -> Seen {
        let e = entry(key, occurred_at);
        if self.stored_past.get(&offset) == Some(&e) {
            return Seen::StoredHere;
        }
        if day_of(occurred_at) < self.first_day || self.entries.contains(e) {
            Seen::Unsure
        } else {
            Seen::New
        }
    }

    /// A row of this partition is stored.
    pub(crate) fn insert(&mut self, key: u64, occurred_at: u32) {
        let day = day_of(occurred_at);
        if day < self.first_day {
            return;
        }
        if self.entries.insert(entry(key, occurred_at)) {
            *self.per_day.entry(day).or_default() += 1;
            if self.entries.len > self.ids_max {
                // Over the bound: the oldest day leaves (its events are
                // looked up from now on).
                let oldest = *self.per_day.keys().next().expect("an entry was just counted");
                self.forget_before(oldest.saturating_add(1));
            }
        }
    }

    /// Moves the window's start to `since` (seconds): older days leave.
    pub(crate) fn advance(&mut self, since: u32) {
        let day = day_of(since);
        if day > self.first_day {
            self.forget_before(day);
        }
    }

    fn forget_before(&mut self, day: u16) {
        self.first_day = self.first_day.max(day);
        let leaving: usize = self.per_day.range(..day).map(|(_, n)| *n).sum();
        if leaving == 0 {
            return;
        }
        self.per_day = self.per_day.split_off(&day);
        let first = u64::from(day) << KEY_BITS;
        self.entries.retain(|e| e >= first);
        self.stored_past.retain(|_, e| *e >= first);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len
    }

    /// Bytes of the set's table, for the memory figures.
    pub(crate) fn table_bytes(&self) -> usize {
        self.entries.slots.len() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u32 = SECONDS_PER_DAY;

    fn key(k: u64, at: u32, offset: i64) -> StoredKey {
        StoredKey { kafka_partition: 0, key: k, occurred_at: at, kafka_offset: offset }
    }

    #[test]
    fn hits_are_unsure_misses_new_old_events_unsure_and_rows_past_the_recorded_offset_stored_here() {
        let now = 20_000 * DAY;
        let stored = [key(1, now, 10), key(2, now - DAY, 11), key(3, now, 12)];
        let seen = SeenIds::rebuild(&stored, now - 35 * DAY, Some(11), 1_000);
        assert_eq!(seen.check(1, now, 99), Seen::Unsure, "a hit is confirmed by a lookup");
        assert_eq!(seen.check(1, now + DAY, 99), Seen::New, "same key, another day: another event");
        assert_eq!(seen.check(4, now, 99), Seen::New);
        assert_eq!(seen.check(4, now - 36 * DAY, 99), Seen::Unsure, "older than the window");
        assert_eq!(seen.check(3, now, 12), Seen::StoredHere, "past the recorded offset, same row");
        assert_eq!(seen.check(2, now - DAY, 11), Seen::Unsure, "at the recorded offset: an ordinary hit");
    }

    /// The longest run of occupied slots (probes wrap around): what a
    /// probe may have to walk.
    fn longest_run(set: &EntrySet) -> usize {
        let (mut longest, mut run) = (0, 0);
        for slot in set.slots.iter().chain(&set.slots) {
            run = if *slot == 0 { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        longest
    }

    #[test]
    fn entries_aimed_at_one_run_of_one_set_spread_out_in_another() {
        let mut aimed_at = EntrySet::with_capacity(0);
        let target = aimed_at.home(1);
        // Entries as the pipeline makes them: a day and 48 bits of a row key.
        let aimed: Vec<u64> = (0u32..)
            .map(|i| entry(usage_clickhouse::row_key("a", &i.to_string(), 1_767_225_600), 1_767_225_600))
            .filter(|e| aimed_at.home(*e) == target)
            .take(200)
            .collect();
        let mut other = EntrySet::with_capacity(0);
        for e in &aimed {
            aimed_at.insert(*e);
            other.insert(*e);
        }
        assert!(longest_run(&aimed_at) >= 200);
        assert!(longest_run(&other) < 40, "a run of {} slots", longest_run(&other));
        assert!(aimed.iter().all(|e| other.contains(*e) && aimed_at.contains(*e)));
    }

    #[test]
    fn whole_days_leave_with_the_window_and_past_the_bound() {
        let now = 20_000 * DAY;
        let mut seen = SeenIds::rebuild(&[], now - 3 * DAY, None, 4);
        for (k, at) in [(1, now - 3 * DAY), (2, now - 2 * DAY), (3, now - 2 * DAY), (4, now)] {
            seen.insert(k, at);
        }
        assert_eq!(seen.len(), 4);
        seen.advance(now - 2 * DAY);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.check(1, now - 3 * DAY, 0), Seen::Unsure, "left the window: looked up");
        // A fifth entry passes the bound of four: the oldest day leaves.
        seen.insert(5, now);
        seen.insert(6, now);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.check(2, now - 2 * DAY, 0), Seen::Unsure);
        assert_eq!(seen.check(6, now, 0), Seen::Unsure, "held: a hit");
        assert_eq!(seen.check(7, now, 0), Seen::New);
    }

    #[test]
    fn an_entry_costs_at_most_sixteen_bytes_of_table_at_every_size() {
        let mut seen = SeenIds::rebuild(&[], 0, None, usize::MAX);
        let mut worst: f64 = 0.0;
        for k in 1..=300_000u64 {
            seen.insert(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), 20_000 * DAY);
            if k >= 10_000 {
                worst = worst.max(seen.table_bytes() as f64 / seen.len() as f64);
            }
        }
        assert_eq!(seen.len(), 300_000);
        assert!(worst <= 16.0, "{worst} bytes per id");
        for k in 1..=300_000u64 {
            assert_eq!(seen.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), 20_000 * DAY, -1), Seen::Unsure);
        }
    }
}
