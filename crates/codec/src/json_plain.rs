//! A reader for the plain shape of a JSON usage event, the one nearly every
//! producer sends: an object of the known fields, strings without escapes,
//! counts as plain non-negative integers. It reads such a payload in one
//! pass without serde's machinery, and gives up (`None`) on anything else:
//! an escape, an unknown or repeated field, a number of another form, a
//! missing field, a bad instant or tier, trailing text. The serde-based
//! decoder then gives the verdict and its message, so the two always agree
//! (a property test compares them on random and damaged payloads).

use crate::json::{parse_instant, parse_service_tier};
use std::collections::BTreeMap;
use usage_model::{Unit, UsageCounts, UsageEvent};

/// The event, if `text` has the plain shape and is valid.
pub(crate) fn decode_plain_shape(text: &str) -> Option<UsageEvent> {
    let mut r = Scanner { text, pos: 0 };
    let mut fields = Fields::default();
    r.expect(b'{')?;
    if r.peek()? == b'}' {
        return None; // Nothing is there: the full decoder says what is missing.
    }
    loop {
        let key = r.string()?;
        r.expect(b':')?;
        fields.read(key, &mut r)?;
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
    attributes: Option<BTreeMap<String, String>>,
    usage: Option<UsageCounts>,
}

impl<'a> Fields<'a> {
    fn read(&mut self, key: &str, r: &mut Scanner<'a>) -> Option<()> {
        fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
            match slot {
                Some(_) => None,
                None => {
                    *slot = Some(value);
                    Some(())
                }
            }
        }
        match key {
            "event_id" => once(&mut self.event_id, r.string()?),
            "account_id" => once(&mut self.account_id, r.string()?),
            "occurred_at" => once(&mut self.occurred_at, r.string()?),
            "provider" => once(&mut self.provider, r.string()?),
            "model" => once(&mut self.model, r.string()?),
            "api_key_id" => once(&mut self.api_key_id, r.optional_string()?),
            "project_id" => once(&mut self.project_id, r.optional_string()?),
            "service_tier" => once(&mut self.service_tier, r.optional_string()?),
            "attributes" => once(&mut self.attributes, r.attributes()?),
            "usage" => once(&mut self.usage, r.usage()?),
            _ => None,
        }
    }

    fn into_event(self) -> Option<UsageEvent> {
        let occurred_at = parse_instant(self.occurred_at?).ok()?;
        let usage = self.usage?;
        let service_tier = parse_service_tier(self.service_tier.flatten()).ok()?;
        Some(UsageEvent {
            event_id: self.event_id?.to_owned(),
            account_id: self.account_id?.to_owned(),
            occurred_at,
            provider: self.provider?.to_owned(),
            model: self.model?.to_owned(),
            api_key_id: self.api_key_id.flatten().map(str::to_owned),
            project_id: self.project_id.flatten().map(str::to_owned),
            service_tier,
            attributes: self.attributes.unwrap_or_default(),
            usage,
        })
    }
}

/// The index of the first byte that ends a plain string (a quote, a
/// backslash or a control character), if any. Eight bytes at a time: a
/// string's scan is most of the reader's work. In each word, a byte's high
/// bit is flagged where the byte matches; a borrow can only flag bytes
/// above a true match, so the lowest flag is exact.
fn plain_string_len(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let mut at = 0;
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

    /// The next byte that is not JSON whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
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
    fn attributes(&mut self) -> Option<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(out);
        }
        self.members(|r, key| {
            let value = r.string()?;
            out.insert(key.to_owned(), value.to_owned());
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
    use super::plain_string_len;
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
                0..40,
            ),
            plain_prefix in 0usize..24,
        ) {
            let mut input = vec![b'a'; plain_prefix];
            input.extend(&bytes);
            prop_assert_eq!(plain_string_len(&input), byte_by_byte(&input));
        }
    }

    #[test]
    fn every_position_of_every_ending_byte_is_found() {
        for len in 0..20 {
            for at in 0..len {
                for end in [b'"', b'\\', 0x00, 0x1f] {
                    let mut input = vec![0xffu8; len];
                    input.iter_mut().take(at).for_each(|b| *b = b' ');
                    input[at] = end;
                    assert_eq!(plain_string_len(&input), Some(at), "{input:?}");
                }
            }
            assert_eq!(plain_string_len(&vec![0x20u8; len]), None);
        }
    }
}
