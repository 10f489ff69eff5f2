//! An event's attributes: free-form string pairs the producer adds (region,
//! team, feature), stored with the row for analysts.

use compact_str::CompactString;
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fmt;

/// String keys to string values, in key order, each key once (inserting a
/// key again keeps the last value, as a JSON object read into a map does).
///
/// A sorted vector of inline strings, not a `BTreeMap`: an event carries
/// none or a handful, and a B-tree allocates a node of half a kilobyte for
/// the first (three allocations per attribute with its `String`s; here one
/// for all of them when keys and values fit 24 bytes).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Attributes(Vec<(CompactString, CompactString)>);

impl Attributes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing the value it had.
    pub fn insert(&mut self, key: impl Into<CompactString>, value: impl Into<CompactString>) {
        let key = key.into();
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(key.as_str())) {
            Ok(at) => self.0[at].1 = value.into(),
            Err(at) => {
                // Most events carry one attribute if any: room for one first
                // (a vector's first growth would make room for four).
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(at, (key, value.into()))
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(self.0[at].1.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.into_iter()
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.0.iter().map(|(_, v)| v.as_str())
    }
}

impl<K: Into<CompactString>, V: Into<CompactString>> FromIterator<(K, V)> for Attributes {
    /// Pairs in any order; of a key given twice, the later value stays.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut out = Self::new();
        pairs.into_iter().for_each(|(k, v)| out.insert(k, v));
        out
    }
}

impl<K: Into<CompactString>, V: Into<CompactString>, const N: usize> From<[(K, V); N]> for Attributes {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (CompactString, CompactString)>,
        fn(&'a (CompactString, CompactString)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map (a JSON object).
impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::Attributes;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Whatever the order and repeats, the pairs are a `BTreeMap`'s:
        /// keys in order, each key's last value.
        #[test]
        fn inserts_keep_what_a_map_keeps(pairs in prop::collection::vec(("[a-e]{0,3}", "[a-z]{0,30}"), 0..40)) {
            let map: BTreeMap<String, String> = pairs.iter().cloned().collect();
            let attributes: Attributes = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(attributes.len(), map.len());
            prop_assert!(attributes.iter().eq(map.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
            for (k, v) in &map {
                prop_assert_eq!(attributes.get(k), Some(v.as_str()));
            }
            prop_assert_eq!(serde_json::to_string(&attributes).unwrap(), serde_json::to_string(&map).unwrap());
        }
    }
}
