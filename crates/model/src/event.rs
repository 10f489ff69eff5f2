//! The canonical usage event: one API call's usage, as a platform reports it.

use crate::attributes::Attributes;
use crate::rejection::{RejectReason, Rejection};
use crate::unit::{Unit, UnitSet};
use chrono::{DateTime, Duration, Utc};
use compact_str::CompactString;
use smallvec::SmallVec;
use std::fmt;

/// How the provider served the request; variants can be priced differently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceTier {
    #[default]
    Standard,
    Batch,
    Flex,
    Priority,
}

impl ServiceTier {
    pub const ALL: [ServiceTier; 4] = [Self::Standard, Self::Batch, Self::Flex, Self::Priority];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Batch => "batch",
            Self::Flex => "flex",
            Self::Priority => "priority",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for ServiceTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts by unit. A unit is either reported (possibly as 0) or absent.
///
/// Only reported units take room: their counts in registry order, found by
/// the unit's rank in the reported set. An event reports a handful of units
/// out of the registry's dozens, so the value stays small (it is moved from
/// decoder to pricer to row) and up to [`INLINE_UNITS`] need no allocation.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UsageCounts {
    reported: UnitSet,
    counts: SmallVec<[u64; INLINE_UNITS]>,
}

/// Reported units held without an allocation.
pub const INLINE_UNITS: usize = 6;

impl UsageCounts {
    pub fn set(&mut self, unit: Unit, count: u64) {
        let rank = self.reported.rank(unit);
        if self.reported.contains(unit) {
            self.counts[rank] = count;
        } else {
            self.reported.insert(unit);
            self.counts.insert(rank, count);
        }
    }

    /// The reported count, or `None` when the event did not report the unit.
    pub fn get(&self, unit: Unit) -> Option<u64> {
        self.reported.contains(unit).then(|| self.counts[self.reported.rank(unit)])
    }

    /// The reported count, 0 when absent.
    pub fn count(&self, unit: Unit) -> u64 {
        self.get(unit).unwrap_or(0)
    }

    pub fn reported(&self) -> UnitSet {
        self.reported
    }

    pub fn iter(&self) -> impl Iterator<Item = (Unit, u64)> + '_ {
        self.reported.iter().zip(self.counts.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        self.reported.is_empty()
    }

    /// How many units are reported.
    pub fn len(&self) -> usize {
        self.counts.len()
    }
}

impl fmt::Debug for UsageCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// One API call's usage. Fields are validated: see [`EventLimits::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEvent {
    /// Idempotency key chosen by the producer, 1..=128 characters.
    pub event_id: CompactString,
    pub account_id: CompactString,
    /// When the usage happened, by the producer's clock. Prices in force at
    /// this instant apply, whenever the event is processed.
    pub occurred_at: DateTime<Utc>,
    pub provider: CompactString,
    /// As the provider reports it (`gpt-4o-2024-08-06`).
    pub model: CompactString,
    pub api_key_id: Option<CompactString>,
    pub project_id: Option<CompactString>,
    pub service_tier: ServiceTier,
    pub attributes: Attributes,
    pub usage: UsageCounts,
}

/// Bounds that make an event plausible. Anything outside is rejected, never
/// clamped: a clamped count would be a wrong bill.
#[derive(Clone, Debug)]
pub struct EventLimits {
    pub id_chars_max: usize,
    pub name_chars_max: usize,
    pub attributes_max: usize,
    /// A single API call above this many units of anything is a bug upstream
    /// (the largest context windows are a few million tokens).
    pub count_max: u64,
    /// How far ahead of the pipeline's clock `occurred_at` may be.
    pub future_skew_max: Duration,
    /// Events older than this are refused as implausible (a mistyped year).
    pub occurred_after: DateTime<Utc>,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            id_chars_max: 128,
            name_chars_max: 256,
            attributes_max: 64,
            count_max: 1_000_000_000_000,
            future_skew_max: Duration::minutes(5),
            occurred_after: DateTime::from_timestamp(946_684_800, 0).expect("2000-01-01 is valid"),
        }
    }
}

/// A reading of the pipeline's clock and the latest `occurred_at` it lets
/// through (`now` + the allowed skew): the sum made once per reading, so
/// that each event costs a comparison, not date arithmetic (a hundred-odd
/// instructions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockReading {
    pub now: DateTime<Utc>,
    latest_allowed: DateTime<Utc>,
}

impl ClockReading {
    /// Whether usage at `occurred_at` is further ahead of this reading than
    /// the allowed skew: the future limit of [`EventLimits::check`].
    pub fn is_ahead(&self, occurred_at: DateTime<Utc>) -> bool {
        occurred_at > self.latest_allowed
    }
}

impl EventLimits {
    /// `now` as the clock reading events are judged against.
    pub fn reading(&self, now: DateTime<Utc>) -> ClockReading {
        // Past chrono's last instant nothing can be ahead.
        let latest_allowed = now.checked_add_signed(self.future_skew_max).unwrap_or(DateTime::<Utc>::MAX_UTC);
        ClockReading { now, latest_allowed }
    }

    /// Checks an event against the limits, `now` being the pipeline's clock.
    pub fn check(&self, event: &UsageEvent, now: DateTime<Utc>) -> Result<(), Rejection> {
        self.check_at(event, &self.reading(now))
    }

    /// [`Self::check`] against a reading made before.
    pub fn check_at(&self, event: &UsageEvent, clock: &ClockReading) -> Result<(), Rejection> {
        if !has_chars_within(&event.event_id, self.id_chars_max) {
            let id_len = event.event_id.chars().count();
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("event_id must have 1..={} characters, has {id_len}", self.id_chars_max),
            ));
        }
        self.check_name("account_id", &event.account_id, self.id_chars_max)?;
        self.check_name("provider", &event.provider, self.name_chars_max)?;
        self.check_name("model", &event.model, self.name_chars_max)?;
        for (field, value) in [("api_key_id", &event.api_key_id), ("project_id", &event.project_id)] {
            if let Some(v) = value {
                self.check_name(field, v, self.id_chars_max)?;
            }
        }
        if event.attributes.len() > self.attributes_max {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("attributes has {} entries, at most {} allowed", event.attributes.len(), self.attributes_max),
            ));
        }
        if event.usage.is_empty() {
            return Err(Rejection::new(RejectReason::InvalidField, "usage reports no unit"));
        }
        for (unit, count) in event.usage.iter() {
            if count > self.count_max {
                return Err(Rejection::new(
                    RejectReason::CountOutOfRange,
                    format!("usage.{unit} = {count} exceeds the plausible maximum {}", self.count_max),
                ));
            }
        }
        // A part never exceeds its whole (cache reads are part of input
        // tokens), whatever the rate card prices.
        for (whole, whole_count) in event.usage.iter() {
            for part in whole.descendants().intersection(event.usage.reported()).iter() {
                let part_count = event.usage.count(part);
                if part_count > whole_count {
                    return Err(Rejection::new(
                        RejectReason::InconsistentUsage,
                        format!("usage.{part} = {part_count} exceeds usage.{whole} = {whole_count}, which includes it"),
                    ));
                }
            }
        }
        if clock.is_ahead(event.occurred_at) {
            return Err(Rejection::new(
                RejectReason::TimestampOutOfRange,
                format!(
                    "occurred_at {} is more than {}s ahead of the pipeline clock {}",
                    event.occurred_at.to_rfc3339(),
                    self.future_skew_max.num_seconds(),
                    clock.now.to_rfc3339()
                ),
            ));
        }
        if event.occurred_at < self.occurred_after {
            return Err(Rejection::new(
                RejectReason::TimestampOutOfRange,
                format!(
                    "occurred_at {} is before {}",
                    event.occurred_at.to_rfc3339(),
                    self.occurred_after.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }

    fn check_name(&self, field: &str, value: &str, chars_max: usize) -> Result<(), Rejection> {
        if !has_chars_within(value, chars_max) {
            let len = value.chars().count();
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("{field} must have 1..={chars_max} characters, has {len}"),
            ));
        }
        match unsafe_characters(value) {
            Some(kind) => {
                Err(Rejection::new(RejectReason::InvalidField, format!("{field} contains {kind} characters")))
            }
            None => Ok(()),
        }
    }
}

/// Which kind of character an id or name must not hold, if `text` has one:
/// control characters, and bidirectional controls, which make an id display
/// as another one in dashboards and invoices ("Trojan Source").
pub fn unsafe_characters(text: &str) -> Option<&'static str> {
    // Printable ASCII (nearly every name) holds neither; only other text
    // is decoded to look.
    if is_printable_ascii(text.as_bytes()) {
        return None;
    }
    if text.chars().any(char::is_control) {
        Some("control")
    } else if text.chars().any(is_bidi_control) {
        Some("bidirectional control")
    } else {
        None
    }
}

/// Whether every byte is printable ASCII (0x20 to 0x7e), eight at a time:
/// in each word a byte's high bit is flagged if the byte is at or above
/// 0x80 (itself), at or above 0x7f (plus one) or below 0x20 (a borrow).
/// A borrow or carry can only flag a byte next to one flagged already, so
/// the verdict is exact. The last word overlaps the one before it; text
/// shorter than a word is padded with spaces (printable) to one: no loop
/// over its bytes, whose unrolled branches (one per length and position)
/// the fuzzers kept finding, one at a time.
fn is_printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let unprintable = |v: u64| (v | v.wrapping_add(ONES) | v.wrapping_sub(ONES * 0x20)) & HIGHS != 0;
    let Some(last) = bytes.last_chunk::<8>() else {
        let mut word = [b' '; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        return !unprintable(u64::from_le_bytes(word));
    };
    let (words, _) = bytes.as_chunks::<8>();
    !words.iter().chain([last]).any(|w| unprintable(u64::from_le_bytes(*w)))
}

/// Unicode's bidirectional formatting characters (UAX #9): marks,
/// embeddings, overrides and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `text` has 1 to `chars_max` characters. Counted only when its
/// byte length could exceed the maximum (a character takes at least a byte).
fn has_chars_within(text: &str, chars_max: usize) -> bool {
    !text.is_empty() && (text.len() <= chars_max || text.chars().count() <= chars_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::UNIT_COUNT;
    use proptest::prelude::*;

    /// Shorter than a word, one or two words: each byte at the printable
    /// range's edges, at every position.
    #[test]
    fn printable_ascii_agrees_with_bytes_at_every_length_and_position() {
        for len in 0..=17 {
            for at in 0..len {
                for byte in [0x00, 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xff] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    let expected = (0x20..0x7f).contains(&byte);
                    assert_eq!(is_printable_ascii(&bytes), expected, "{bytes:?}");
                }
            }
            assert!(is_printable_ascii(&vec![b'~'; len]));
        }
    }

    proptest! {
        /// The word-wise check agrees with a byte-by-byte one, on bytes
        /// mostly printable, with the range's edges and others mixed in.
        #[test]
        fn printable_ascii_by_words_agrees_with_bytes(
            bytes in prop::collection::vec(
                prop_oneof![
                    100 => 0x20u8..0x7f,
                    1 => Just(0x1f),
                    1 => Just(0x7f),
                    1 => Just(0x80),
                    1 => Just(0xff),
                    1 => Just(0),
                    1 => any::<u8>(),
                ],
                0..40,
            )
        ) {
            prop_assert_eq!(is_printable_ascii(&bytes), bytes.iter().all(|b| (0x20..0x7f).contains(b)));
        }

        /// Counts set in any order, over and again, read back as a plain
        /// map of the last count per unit says.
        #[test]
        fn counts_behave_as_a_map_of_the_last_count_set(
            sets in prop::collection::vec((0..UNIT_COUNT, any::<u64>()), 0..40)
        ) {
            let mut counts = UsageCounts::default();
            let mut reference = std::collections::BTreeMap::new();
            for (index, count) in sets {
                let unit = Unit::all().nth(index).unwrap();
                counts.set(unit, count);
                reference.insert(unit, count);
            }
            prop_assert_eq!(counts.iter().collect::<Vec<_>>(), reference.iter().map(|(u, c)| (*u, *c)).collect::<Vec<_>>());
            for unit in Unit::all() {
                prop_assert_eq!(counts.get(unit), reference.get(&unit).copied());
                prop_assert_eq!(counts.count(unit), reference.get(&unit).copied().unwrap_or(0));
            }
            prop_assert_eq!(counts.is_empty(), reference.is_empty());
        }
    }

    fn event() -> UsageEvent {
        let mut usage = UsageCounts::default();
        usage.set(Unit::INPUT_TOKENS, 100);
        UsageEvent {
            event_id: "e-1".into(),
            account_id: "acct".into(),
            occurred_at: "2025-06-01T00:00:00Z".parse().unwrap(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            api_key_id: None,
            project_id: None,
            service_tier: ServiceTier::Standard,
            attributes: Attributes::new(),
            usage,
        }
    }

    fn now() -> DateTime<Utc> {
        "2025-06-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_plausible_event_passes() {
        EventLimits::default().check(&event(), now()).unwrap();
    }

    #[test]
    fn limits_reject_with_the_right_reason() {
        let limits = EventLimits::default();
        type Mutation = Box<dyn Fn(&mut UsageEvent)>;
        let cases: Vec<(Mutation, RejectReason)> = vec![
            (Box::new(|e| e.event_id = CompactString::default()), RejectReason::InvalidField),
            (Box::new(|e| e.event_id = "x".repeat(129).into()), RejectReason::InvalidField),
            (Box::new(|e| e.account_id = "a\nb".into()), RejectReason::InvalidField),
            (Box::new(|e| e.account_id = "acct-\u{202e}1337".into()), RejectReason::InvalidField),
            (Box::new(|e| e.model = "gpt\u{2066}-4o".into()), RejectReason::InvalidField),
            (Box::new(|e| e.usage = UsageCounts::default()), RejectReason::InvalidField),
            (Box::new(|e| e.usage.set(Unit::OUTPUT_TOKENS, u64::MAX)), RejectReason::CountOutOfRange),
            (Box::new(|e| e.occurred_at = now() + Duration::hours(1)), RejectReason::TimestampOutOfRange),
            (Box::new(|e| e.occurred_at = "1970-01-01T00:00:00Z".parse().unwrap()), RejectReason::TimestampOutOfRange),
        ];
        for (mutate, reason) in cases {
            let mut e = event();
            mutate(&mut e);
            assert_eq!(limits.check(&e, now()).unwrap_err().reason, reason, "{e:?}");
        }
    }

    /// The skew is allowed to its last nanosecond and not one past it; a
    /// reading at chrono's last instant lets everything through.
    #[test]
    fn the_future_limit_is_exact_at_the_skew() {
        let limits = EventLimits::default();
        let reading = limits.reading(now());
        assert!(!reading.is_ahead(now() + limits.future_skew_max));
        assert!(reading.is_ahead(now() + limits.future_skew_max + Duration::nanoseconds(1)));
        let mut e = event();
        e.occurred_at = now() + limits.future_skew_max;
        limits.check_at(&e, &reading).unwrap();
        assert!(!limits.reading(DateTime::<Utc>::MAX_UTC).is_ahead(DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn the_event_id_limit_counts_characters_not_bytes() {
        let mut e = event();
        e.event_id = "é".repeat(128).into();
        EventLimits::default().check(&e, now()).unwrap();
    }
}
