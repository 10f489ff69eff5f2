//! The hash state of the maps on the pricing and ledger paths.
//!
//! Seeded at random per process in production, so no input can be made to
//! collide on purpose. Fixed when built for fuzzing (`--cfg fuzzing`, which
//! cargo fuzz sets): libFuzzer assumes one input always takes the same
//! paths, and a random seed makes hash-probe paths come and go between runs,
//! which looks like new coverage where there is none.

/// For `std::collections::HashMap`/`HashSet` (SipHash).
#[cfg(not(fuzzing))]
pub type StdHashState = std::hash::RandomState;
#[cfg(fuzzing)]
pub type StdHashState = std::hash::BuildHasherDefault<std::hash::DefaultHasher>;

/// For `hashbrown` maps and hashes of our own (foldhash, hashbrown's default).
#[cfg(not(fuzzing))]
pub type FastHashState = foldhash::fast::RandomState;
#[cfg(fuzzing)]
pub type FastHashState = foldhash::fast::FixedState;

/// A `std` map with [`StdHashState`]: made with `StdHashMap::default()`.
pub type StdHashMap<K, V> = std::collections::HashMap<K, V, StdHashState>;
/// A `std` set with [`StdHashState`].
pub type StdHashSet<T> = std::collections::HashSet<T, StdHashState>;
