//! The unit registry: every kind of usage the pipeline can count and price.
//!
//! Units carry dimensions (`family`, `direction`, `modality`, `token_type`...).
//! A unit whose dimensions are a superset of another's is a *descendant* of
//! it: `cache_read_tokens` is a part of `input_tokens`. Pricing uses this to
//! split a reported count into disjoint parts (see `usage-pricing`).

use crate::units_table::UNIT_TABLE;
use std::fmt;
use std::sync::OnceLock;

/// Number of units in the registry. Units fit a `u64` bit set.
pub const UNIT_COUNT: usize = 59;
const _: () = assert!(UNIT_COUNT <= 64, "UnitSet is a u64 bit set");

/// Static description of one unit.
#[derive(Debug)]
pub struct UnitDef {
    /// Name in usage events (`input_tokens`).
    pub key: &'static str,
    /// Name of its price in rate cards (`input_mtok`).
    pub price_key: &'static str,
    /// How many units one price is for (1,000,000 for `_mtok`).
    pub per: u64,
    pub dimensions: &'static [(&'static str, &'static str)],
}

/// One unit of the registry, as a small index.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unit(u8);

/// A set of units.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct UnitSet(u64);

impl Unit {
    pub const INPUT_TOKENS: Unit = Unit(0);
    pub const OUTPUT_TOKENS: Unit = Unit(1);
    pub const CACHE_READ_TOKENS: Unit = Unit(2);
    pub const CACHE_WRITE_TOKENS: Unit = Unit(3);
    pub const REQUESTS: Unit = Unit(58);

    pub fn all() -> impl Iterator<Item = Unit> {
        (0..UNIT_COUNT as u8).map(Unit)
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub fn def(self) -> &'static UnitDef {
        &UNIT_TABLE[self.index()]
    }

    pub fn key(self) -> &'static str {
        self.def().key
    }

    pub fn price_key(self) -> &'static str {
        self.def().price_key
    }

    pub fn per(self) -> u64 {
        self.def().per
    }

    /// Looks a unit up by its usage-event name: among the few units whose
    /// name has its length (per event and unit, so no scan of the table).
    pub fn from_key(key: &str) -> Option<Unit> {
        static BY_LENGTH: OnceLock<Vec<Vec<Unit>>> = OnceLock::new();
        let by_length = BY_LENGTH.get_or_init(|| {
            let longest = UNIT_TABLE.iter().map(|d| d.key.len()).max().unwrap_or(0);
            let mut table = vec![Vec::new(); longest + 1];
            for unit in Unit::all() {
                table[unit.key().len()].push(unit);
            }
            table
        });
        by_length.get(key.len())?.iter().copied().find(|unit| unit.key() == key)
    }

    /// Looks a unit up by its rate-card price name.
    pub fn from_price_key(price_key: &str) -> Option<Unit> {
        UNIT_TABLE.iter().position(|d| d.price_key == price_key).map(|i| Unit(i as u8))
    }

    /// Units whose dimensions strictly include this unit's: its parts.
    pub fn descendants(self) -> UnitSet {
        static DESCENDANTS: OnceLock<[UnitSet; UNIT_COUNT]> = OnceLock::new();
        DESCENDANTS.get_or_init(|| {
            let mut table = [UnitSet::default(); UNIT_COUNT];
            for ancestor in Unit::all() {
                for unit in Unit::all() {
                    if unit != ancestor && is_dimension_subset(ancestor.def(), unit.def()) {
                        table[ancestor.index()].insert(unit);
                    }
                }
            }
            table
        })[self.index()]
    }

    /// Number of dimensions: more means more specific.
    pub fn specificity(self) -> usize {
        self.def().dimensions.len()
    }

    pub fn dimension(self, name: &str) -> Option<&'static str> {
        self.def().dimensions.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

fn is_dimension_subset(ancestor: &UnitDef, unit: &UnitDef) -> bool {
    ancestor.dimensions.iter().all(|d| unit.dimensions.contains(d))
}

impl fmt::Debug for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl UnitSet {
    pub fn insert(&mut self, unit: Unit) {
        self.0 |= 1 << unit.0;
    }

    pub fn contains(self, unit: Unit) -> bool {
        self.0 & (1 << unit.0) != 0
    }

    pub fn intersection(self, other: UnitSet) -> UnitSet {
        UnitSet(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The units in registry order, one step per unit in the set (not per
    /// unit in the registry).
    pub fn iter(self) -> impl Iterator<Item = Unit> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let index = bits.trailing_zeros();
            bits &= bits - 1;
            Some(Unit(index as u8))
        })
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// How many members come before `unit` in registry order.
    pub fn rank(self, unit: Unit) -> usize {
        let below = (1u64 << unit.0) - 1;
        (self.0 & below).count_ones() as usize
    }
}

impl fmt::Debug for UnitSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_iterates_its_units_in_registry_order() {
        let mut set = UnitSet::default();
        let members = [Unit(0), Unit::OUTPUT_TOKENS, Unit::INPUT_TOKENS, Unit((UNIT_COUNT - 1) as u8)];
        for unit in members {
            set.insert(unit);
        }
        let mut expected: Vec<Unit> = members.to_vec();
        expected.sort();
        expected.dedup();
        assert_eq!(set.iter().collect::<Vec<_>>(), expected);
        assert_eq!(set.len(), expected.len());
        assert_eq!(UnitSet::default().iter().count(), 0);
    }

    #[test]
    fn every_unit_is_found_by_its_key_and_nothing_else_is() {
        for unit in Unit::all() {
            assert_eq!(Unit::from_key(unit.key()), Some(unit), "{}", unit.key());
            let longer = format!("{}s", unit.key());
            assert!(Unit::from_key(&longer).is_none_or(|u| u.key() == longer), "{longer}");
        }
        for unknown in ["", "input", "input_token", "INPUT_TOKENS", "input_tokens ", &"x".repeat(500)] {
            assert_eq!(Unit::from_key(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn table_size_and_named_constants_agree() {
        assert_eq!(UNIT_TABLE.len(), UNIT_COUNT);
        assert_eq!(Unit::INPUT_TOKENS.key(), "input_tokens");
        assert_eq!(Unit::OUTPUT_TOKENS.key(), "output_tokens");
        assert_eq!(Unit::CACHE_READ_TOKENS.key(), "cache_read_tokens");
        assert_eq!(Unit::CACHE_WRITE_TOKENS.key(), "cache_write_tokens");
        assert_eq!(Unit::REQUESTS.key(), "requests");
    }

    #[test]
    fn keys_and_price_keys_are_unique() {
        for a in Unit::all() {
            assert_eq!(Unit::from_key(a.key()), Some(a));
            assert_eq!(Unit::from_price_key(a.price_key()), Some(a));
        }
    }

    #[test]
    fn cache_reads_are_part_of_input_but_not_of_output() {
        let input = Unit::INPUT_TOKENS.descendants();
        assert!(input.contains(Unit::CACHE_READ_TOKENS));
        assert!(input.contains(Unit::from_key("cache_audio_read_tokens").unwrap()));
        assert!(!input.contains(Unit::OUTPUT_TOKENS));
        assert!(!input.contains(Unit::INPUT_TOKENS));
        assert!(Unit::OUTPUT_TOKENS.descendants().contains(Unit::from_key("output_reasoning_tokens").unwrap()));
    }
}
