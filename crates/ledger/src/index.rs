//! The partition's account index: an id's hash → the account's position.
//!
//! A table of our own rather than a general hash map, for one reason: the
//! ledger looks up a whole message's accounts at once, and with a million
//! accounts every lookup is a trip to memory. Here the cache line a lookup
//! reads follows from the hash alone, so the lines of every record can be
//! asked for first ([`AccountIndex::prefetch`]) and read once they are in.
//!
//! Open addressing over buckets of one cache line (eight slots). A slot
//! holds 32 bits of the hash (its tag) and the account's position + 1 (0:
//! empty). The tag also places the slot: its bucket is the tag scaled to
//! the number of buckets, so growing the table needs no account's id, and
//! the slots of a bucket share its leading bits. Accounts are never
//! removed, so the first empty slot ends a probe.

/// Eight slots, one cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([u64; SLOTS]);

const SLOTS: usize = 8;

#[derive(Default)]
pub(crate) struct AccountIndex {
    /// Empty, or a power of two buckets.
    buckets: Vec<Bucket>,
    len: usize,
}

/// The 32 bits of a hash the table keeps.
pub(crate) fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl AccountIndex {
    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.buckets.len() as u64) >> 32) as usize
    }

    /// Asks for the cache line a lookup of `hash` reads first.
    pub(crate) fn prefetch(&self, hash: u64) {
        if !self.buckets.is_empty() {
            crate::partition::prefetch((&self.buckets[self.home(tag(hash))] as *const Bucket).cast());
        }
    }

    /// The first position stored under `hash` for which `is` holds.
    pub(crate) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let tag = tag(hash);
        let mask = self.buckets.len() - 1;
        let mut b = self.home(tag);
        // The table is never full (see `insert`): an empty slot ends every probe.
        loop {
            for &slot in &self.buckets[b].0 {
                if slot == 0 {
                    return None;
                }
                if (slot >> 32) as u32 == tag && is(slot as u32 - 1) {
                    return Some(slot as u32 - 1);
                }
            }
            b = (b + 1) & mask;
        }
    }

    /// Stores `position` (below `u32::MAX`) under `hash`; the caller knows
    /// it is not there yet.
    pub(crate) fn insert(&mut self, hash: u64, position: u32) {
        // At most seven eighths full: probes stay short, and one slot at
        // least is always empty.
        if (self.len + 1) * 8 > self.buckets.len() * SLOTS * 7 {
            self.grow();
        }
        self.place((u64::from(tag(hash)) << 32) | (u64::from(position) + 1));
        self.len += 1;
    }

    fn place(&mut self, slot: u64) {
        let mask = self.buckets.len() - 1;
        let mut b = self.home((slot >> 32) as u32);
        loop {
            if let Some(free) = self.buckets[b].0.iter_mut().find(|s| **s == 0) {
                *free = slot;
                return;
            }
            b = (b + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let n = (self.buckets.len() * 2).max(1);
        let old = std::mem::replace(&mut self.buckets, vec![Bucket::default(); n]);
        for slot in old.iter().flat_map(|b| b.0).filter(|&s| s != 0) {
            self.place(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Against a map: every stored position found under its hash,
        /// nothing found that was not stored, through every growth; hashes
        /// drawn from a small range so tags collide and probes run long.
        #[test]
        fn finds_what_was_stored(hashes in prop::collection::vec(0u64..4096, 0..2000), probes in prop::collection::vec(0u64..4096, 0..200)) {
            let mut index = AccountIndex::default();
            let mut stored: HashMap<u32, u64> = HashMap::new();
            for (position, &h) in hashes.iter().enumerate() {
                // Spread the small numbers over the tag's bits, and keep collisions.
                let hash = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                index.insert(hash, position as u32);
                stored.insert(position as u32, hash);
            }
            for (&position, &hash) in &stored {
                prop_assert_eq!(index.find(hash, |p| p == position), Some(position));
            }
            for p in probes {
                let hash = p.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let found = index.find(hash, |_| true);
                let expected = stored.iter().any(|(_, &h)| tag(h) == tag(hash));
                prop_assert_eq!(found.is_some(), expected);
                if let Some(position) = found {
                    prop_assert_eq!(tag(stored[&position]), tag(hash));
                }
            }
        }
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = AccountIndex::default();
        index.prefetch(7);
        assert_eq!(index.find(7, |_| true), None);
    }
}
