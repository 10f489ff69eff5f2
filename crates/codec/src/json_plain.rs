//! A reader for the plain shape of a JSON usage event, the one nearly every
//! producer sends: an object of the known fields, strings without escapes,
//! counts as plain non-negative integers. It reads such a payload in one
//! pass without serde's machinery, and gives up (`None`) on anything else:
//! an escape, an unknown or repeated field, a number of another form, a
//! missing field, a bad instant or tier, trailing text. The serde-based
//! decoder then gives the verdict and its message, so the two always agree
//! (a property test compares them on random and damaged payloads).

use crate::json::{parse_instant, parse_service_tier};
use usage_model::{Attributes, Unit, UsageCounts, UsageEvent};

/// The event, if `text` has the plain shape and is valid.
pub(crate) fn decode_plain_shape(text: &str) -> Option<UsageEvent> {
    let mut r = Scanner { text, pos: 0 };
    let mut fields = Fields::default();
    r.expect(b'{')?;
    if r.peek()? == b'}' {
        return None; // Nothing is there: the full decoder says what is missing.
    }
    loop {
        let field = r.field()?;
        r.expect(b':')?;
        fields.read(field, &mut r)?;
        match r.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    if r.peek().is_some() {
        return None; // Trailing text.
    }
    fields.into_event()
}

/// A field of the event, by name.
#[derive(Clone, Copy)]
enum Field {
    EventId,
    AccountId,
    OccurredAt,
    Provider,
    Model,
    ApiKeyId,
    ProjectId,
    ServiceTier,
    Attributes,
    Usage,
}

impl Field {
    /// The name as written, with its closing quote (so that a longer
    /// name never matches).
    const fn quoted(self) -> &'static [u8] {
        match self {
            Field::EventId => b"event_id\"",
            Field::AccountId => b"account_id\"",
            Field::ApiKeyId => b"api_key_id\"",
            Field::Attributes => b"attributes\"",
            Field::OccurredAt => b"occurred_at\"",
            Field::Provider => b"provider\"",
            Field::ProjectId => b"project_id\"",
            Field::Model => b"model\"",
            Field::ServiceTier => b"service_tier\"",
            Field::Usage => b"usage\"",
        }
    }
}

/// Each field at most once (serde refuses a field given twice).
#[derive(Default)]
struct Fields<'a> {
    event_id: Option<&'a str>,
    account_id: Option<&'a str>,
    occurred_at: Option<&'a str>,
    provider: Option<&'a str>,
    model: Option<&'a str>,
    api_key_id: Option<Option<&'a str>>,
    project_id: Option<Option<&'a str>>,
    service_tier: Option<Option<&'a str>>,
    attributes: Option<Attributes>,
    usage: Option<UsageCounts>,
}

impl<'a> Fields<'a> {
    fn read(&mut self, field: Field, r: &mut Scanner<'a>) -> Option<()> {
        fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
            match slot {
                Some(_) => None,
                None => {
                    *slot = Some(value);
                    Some(())
                }
            }
        }
        match field {
            Field::EventId => once(&mut self.event_id, r.string()?),
            Field::AccountId => once(&mut self.account_id, r.string()?),
            Field::OccurredAt => once(&mut self.occurred_at, r.string()?),
            Field::Provider => once(&mut self.provider, r.string()?),
            Field::Model => once(&mut self.model, r.string()?),
            Field::ApiKeyId => once(&mut self.api_key_id, r.optional_string()?),
            Field::ProjectId => once(&mut self.project_id, r.optional_string()?),
            Field::ServiceTier => once(&mut self.service_tier, r.optional_string()?),
            Field::Attributes => once(&mut self.attributes, r.attributes()?),
            Field::Usage => once(&mut self.usage, r.usage()?),
        }
    }

    fn into_event(self) -> Option<UsageEvent> {
        let occurred_at = parse_instant(self.occurred_at?).ok()?;
        let usage = self.usage?;
        let service_tier = parse_service_tier(self.service_tier.flatten()).ok()?;
        Some(UsageEvent {
            event_id: self.event_id?.into(),
            account_id: self.account_id?.into(),
            occurred_at,
            provider: self.provider?.into(),
            model: self.model?.into(),
            api_key_id: self.api_key_id.flatten().map(Into::into),
            project_id: self.project_id.flatten().map(Into::into),
            service_tier,
            attributes: self.attributes.unwrap_or_default(),
            usage,
        })
    }
}

/// The index of the first byte that ends a plain string (a quote, a
/// backslash or a control character), if any. Sixteen bytes at a time where
/// SSE2 is there (all of x86-64), then eight: a string's scan is most of the
/// reader's work, and nearly every string ends within its first sixteen.
fn plain_string_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
        if let Some(i) = first_ending_of_16(chunk) {
            return Some(at + i);
        }
        at += 16;
    }
    plain_string_len_by_words(bytes, at)
}

/// The first ending byte among sixteen: each comparison sets a lane to all
/// ones where it matches, the movemask gathers the lanes' high bits.
#[cfg(target_arch = "x86_64")]
fn first_ending_of_16(chunk: &[u8; 16]) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86-64 target (the intrinsics are
    // unsafe only for that); the load reads the 16 bytes of `chunk`, and
    // unaligned loads are allowed.
    let found = unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20, unsigned: the byte is its own minimum with 0x1f.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
    };
    (found != 0).then(|| found.trailing_zeros() as usize)
}

/// [`plain_string_len`] from `at` on, eight bytes at a time. In each word,
/// a byte's high bit is flagged where the byte matches; a borrow can only
/// flag bytes above a true match, so the lowest flag is exact.
fn plain_string_len_by_words(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    while let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let v = u64::from_le_bytes(*word);
        let quote = zero_byte(v ^ (ONES * u64::from(b'"')));
        let backslash = zero_byte(v ^ (ONES * u64::from(b'\\')));
        let control = v.wrapping_sub(ONES * 0x20) & !v;
        let found = (quote | backslash | control) & HIGHS;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).map(|i| at + i)
}

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte that is not JSON whitespace, not consumed. This runs
    /// before every token: in compact JSON (nearly every producer's) the
    /// byte is right here, and nothing above the space is whitespace.
    fn peek(&mut self) -> Option<u8> {
        match self.bytes().get(self.pos) {
            Some(&b) if b > b' ' => Some(b),
            _ => self.skip_whitespace(),
        }
    }

    /// [`Self::peek`] past whitespace, kept out of line.
    #[cold]
    fn skip_whitespace(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes().get(self.pos) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.pos;
        let end = start + plain_string_len(self.bytes().get(start..)?)?;
        if self.bytes()[end] != b'"' {
            return None;
        }
        self.pos = end + 1;
        self.text.get(start..end)
    }

    /// A field's name, matched against the known names in place instead
    /// of scanned as a string first: the names are most of an event's
    /// strings. Any other name (or one written with escapes) is `None`.
    fn field(&mut self) -> Option<Field> {
        self.expect(b'"')?;
        let rest = self.bytes().get(self.pos..)?;
        // Compared as constants: a few word compares each.
        let field = match rest.first()? {
            b'e' if rest.starts_with(Field::EventId.quoted()) => Field::EventId,
            b'a' if rest.starts_with(Field::AccountId.quoted()) => Field::AccountId,
            b'a' if rest.starts_with(Field::ApiKeyId.quoted()) => Field::ApiKeyId,
            b'a' if rest.starts_with(Field::Attributes.quoted()) => Field::Attributes,
            b'o' if rest.starts_with(Field::OccurredAt.quoted()) => Field::OccurredAt,
            b'p' if rest.starts_with(Field::Provider.quoted()) => Field::Provider,
            b'p' if rest.starts_with(Field::ProjectId.quoted()) => Field::ProjectId,
            b'm' if rest.starts_with(Field::Model.quoted()) => Field::Model,
            b's' if rest.starts_with(Field::ServiceTier.quoted()) => Field::ServiceTier,
            b'u' if rest.starts_with(Field::Usage.quoted()) => Field::Usage,
            _ => return None,
        };
        self.pos += field.quoted().len();
        Some(field)
    }

    fn optional_string(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(None);
        }
        self.string().map(Some)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let rest = self.bytes().get(self.pos..)?;
        rest.starts_with(word.as_bytes()).then(|| self.pos += word.len())
    }

    /// `null`, or an object of strings (a key given twice keeps its last
    /// value, as the full decoder's map does).
    fn attributes(&mut self) -> Option<Attributes> {
        let mut out = Attributes::new();
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(out);
        }
        self.members(|r, key| {
            let value = r.string()?;
            out.insert(key, value);
            Some(())
        })?;
        Some(out)
    }

    /// An object of known unit names to plain integers.
    fn usage(&mut self) -> Option<UsageCounts> {
        let mut usage = UsageCounts::default();
        self.members(|r, key| {
            let unit = Unit::from_key(key)?;
            // A unit given twice is refused by the full decoder.
            if usage.get(unit).is_some() {
                return None;
            }
            usage.set(unit, r.count()?);
            Some(())
        })?;
        Some(usage)
    }

    /// The members of an object, each read by `value` after its key.
    fn members(&mut self, mut value: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            value(self, key)?;
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// `0`, or up to 19 digits without a leading zero (always within u64);
    /// anything else (sign, fraction, exponent, more digits) is left to
    /// the full decoder.
    fn count(&mut self) -> Option<u64> {
        self.peek()?;
        let digits = self.bytes()[self.pos..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 || (digits > 1 && self.bytes()[self.pos] == b'0') {
            return None;
        }
        if matches!(self.bytes().get(self.pos + digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut n = 0u64;
        for &b in &self.bytes()[self.pos..self.pos + digits] {
            n = n * 10 + u64::from(b - b'0');
        }
        self.pos += digits;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::{plain_string_len, plain_string_len_by_words};
    use proptest::prelude::*;

    fn byte_by_byte(bytes: &[u8]) -> Option<usize> {
        bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    }

    proptest! {
        /// The word-at-a-time scan finds what a byte-by-byte scan finds, on
        /// bytes biased towards the ones that matter (and their neighbours).
        #[test]
        fn the_word_scan_agrees_with_a_byte_scan(
            bytes in prop::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), 0x00u8..0x21, 0x21u8..0x23, 0x5bu8..0x5e, 0x7fu8..=0xff, any::<u8>()
                ],
                0..72,
            ),
            plain_prefix in 0usize..40,
        ) {
            let mut input = vec![b'a'; plain_prefix];
            input.extend(&bytes);
            prop_assert_eq!(plain_string_len(&input), byte_by_byte(&input));
            prop_assert_eq!(plain_string_len_by_words(&input, 0), byte_by_byte(&input));
        }
    }

    /// Every field, in the order producers write them and reversed, is read
    /// by the plain reader itself (not left to serde), to the same event.
    #[test]
    fn the_plain_reader_reads_every_field_itself() {
        let fields = [
            r#""event_id":"e-1""#,
            r#""account_id":"acct-7""#,
            r#""occurred_at":"2026-03-01T10:00:00.250Z""#,
            r#""provider":"openai""#,
            r#""model":"gpt-4o""#,
            r#""api_key_id":"key-1""#,
            r#""project_id":null"#,
            r#""service_tier":"batch""#,
            r#""attributes":{"region":"eu-west-1"}"#,
            r#""usage":{"input_tokens":1000,"cache_read_tokens":200,"output_tokens":20}"#,
        ];
        for order in [fields.to_vec(), fields.iter().rev().copied().collect()] {
            let text = format!("{{{}}}", order.join(","));
            let plain = super::decode_plain_shape(&text).unwrap_or_else(|| panic!("not read as plain: {text}"));
            assert_eq!(plain, crate::json::decode_json_with_serde(text.as_bytes()).unwrap());
        }
    }

    /// A name that only starts like a field's is not taken for it.
    #[test]
    fn a_longer_or_shorter_name_is_not_a_field() {
        for name in ["models", "mode", "usages", "event_idx", "provide", "account_i"] {
            let text = format!(
                r#"{{"{name}":"x","event_id":"e","account_id":"a","occurred_at":"2026-03-01T10:00:00Z","provider":"p","model":"m","usage":{{"input_tokens":1}}}}"#
            );
            assert!(super::decode_plain_shape(&text).is_none(), "{text}");
        }
    }

    #[test]
    fn every_position_of_every_ending_byte_is_found() {
        for len in 0..40 {
            for at in 0..len {
                for end in [b'"', b'\\', 0x00, 0x1f] {
                    let mut input = vec![0xffu8; len];
                    input.iter_mut().take(at).for_each(|b| *b = b' ');
                    input[at] = end;
                    assert_eq!(plain_string_len(&input), Some(at), "{input:?}");
                    assert_eq!(plain_string_len_by_words(&input, 0), Some(at), "{input:?}");
                }
            }
            assert_eq!(plain_string_len(&vec![0x20u8; len]), None);
            assert_eq!(plain_string_len_by_words(&vec![0x20u8; len], 0), None);
        }
    }
}
