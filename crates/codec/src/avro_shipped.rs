//! A decoder specialised to the shipped usage-event schema: reads the
//! binary datum field by field, straight into a [`UsageEvent`], borrowing
//! every string until it is kept. apache-avro stays the reference (and the
//! decoder for any other writer schema): a property test decodes random
//! datums and random bytes with both and compares.
//!
//! It reproduces apache-avro 0.21's reading rules where they decide whether
//! a datum is accepted: lengths and block counts above the allocation limit
//! are refused, a long takes at most 10 bytes (bits past the 64th are
//! dropped), a negative block count is followed by the block's byte size, a
//! map key given twice keeps its last value, and the semantic checks run in
//! the reference's order (occurred_at, service_tier, then usage by unit
//! name).

use crate::json::{parse_instant, parse_service_tier};
use crate::DecodeError;
use smallvec::SmallVec;
use usage_model::{Attributes, RejectReason, Rejection, Unit, UsageCounts, UsageEvent};

/// Reads one datum of the shipped schema, all of `bytes`.
pub(crate) fn decode_shipped(bytes: &[u8], allocation_max: usize) -> Result<UsageEvent, DecodeError> {
    let mut r = Reader { bytes, pos: 0, allocation_max };
    let event_id = r.string()?;
    let account_id = r.string()?;
    let occurred_at = r.string()?;
    let provider = r.string()?;
    let model = r.string()?;
    let api_key_id = r.optional_string()?;
    let project_id = r.optional_string()?;
    let service_tier = r.optional_string()?;
    let mut attributes = Attributes::new();
    r.map(|r| {
        let key = r.string()?;
        let value = r.string()?;
        attributes.insert(key, value);
        Ok(())
    })?;
    let usage_at = r.pos;
    let mut usage = UsageCounts::default();
    let mut all_known = true;
    r.map(|r| {
        let name = r.string()?;
        let count = r.long()?;
        match Unit::from_key(name) {
            Some(unit) if count >= 0 => usage.set(unit, count as u64),
            _ => all_known = false,
        }
        Ok(())
    })?;
    if r.pos < bytes.len() {
        return Err(malformed(format!("{} bytes left after the datum", bytes.len() - r.pos)));
    }
    let occurred_at = parse_instant(occurred_at).map_err(DecodeError::Rejected)?;
    let service_tier = parse_service_tier(service_tier).map_err(DecodeError::Rejected)?;
    if !all_known {
        // Rare: a bad unit or count, or a key given twice. Decide, and say
        // what is wrong, exactly as the reference does.
        usage = usage_as_the_reference_reads_it(&mut Reader { bytes, pos: usage_at, allocation_max })?;
    }
    Ok(UsageEvent {
        event_id: event_id.into(),
        account_id: account_id.into(),
        occurred_at,
        provider: provider.into(),
        model: model.into(),
        api_key_id: api_key_id.map(Into::into),
        project_id: project_id.map(Into::into),
        service_tier,
        attributes,
        usage,
    })
}

/// The usage map read as the reference reads it: a key given twice keeps
/// its last count (the reference collects a `HashMap`), then units are
/// checked in name order and the first problem is the answer. Sorted in
/// place instead of hashed: a usage map has a handful of entries.
fn usage_as_the_reference_reads_it(r: &mut Reader<'_>) -> Result<UsageCounts, DecodeError> {
    let mut entries: SmallVec<[(&str, i64); 8]> = SmallVec::new();
    r.map(|r| {
        let name = r.string()?;
        let count = r.long()?;
        entries.push((name, count));
        Ok(())
    })?;
    // Stable: a name given twice keeps its arrival order, the last wins.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut usage = UsageCounts::default();
    for (i, &(name, count)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|next| next.0 == name) {
            continue;
        }
        let Some(unit) = Unit::from_key(name) else {
            let why = Rejection::new(RejectReason::UnknownUnit, format!("usage.{name} is not a known unit"));
            return Err(DecodeError::Rejected(why));
        };
        if count < 0 {
            let why = Rejection::new(RejectReason::CountOutOfRange, format!("usage.{name} = {count} is negative"));
            return Err(DecodeError::Rejected(why));
        }
        usage.set(unit, count as u64);
    }
    Ok(usage)
}

#[cold]
fn malformed(detail: String) -> DecodeError {
    DecodeError::Rejected(Rejection::new(RejectReason::MalformedPayload, format!("Avro: {detail}")))
}

/// `bytes` as text. Nearly every id and name is ASCII, which a word-at-a-
/// time check settles; the full validation, which costs a few hundred
/// instructions even on a short string, is for the rest.
fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes)
}

/// Avro's zig-zag encoding undone: 0, 1, 2, 3... are 0, -1, 1, -2...
fn zigzag_decode(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    allocation_max: usize,
}

impl<'a> Reader<'a> {
    /// A zig-zag varint of at most 10 bytes.
    // A one-byte number (a length, count or index under 64: most of a
    // datum's) is read inline, as `string` is: a dozen calls per datum, and
    // a call returns its `Result`, whose error is large, through memory.
    // Longer ones are read out of line: inlined at every call site, the
    // loop was a dozen copies of a branch per length.
    #[inline(always)]
    fn long(&mut self) -> Result<i64, DecodeError> {
        match self.bytes.get(self.pos) {
            Some(&byte) if byte & 0x80 == 0 => {
                self.pos += 1;
                Ok(zigzag_decode(u64::from(byte)))
            }
            _ => self.long_multibyte(),
        }
    }

    #[inline(never)]
    fn long_multibyte(&mut self) -> Result<i64, DecodeError> {
        let mut z = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(malformed("the datum ends inside a number".to_owned()));
            };
            self.pos += 1;
            z |= u64::from(byte & 0x7f).wrapping_shl(7 * i);
            if byte & 0x80 == 0 {
                return Ok(zigzag_decode(z));
            }
        }
        Err(malformed("a number longer than 10 bytes".to_owned()))
    }

    /// A length: not negative, within the allocation limit.
    #[inline(always)]
    fn length(&mut self, what: &str) -> Result<usize, DecodeError> {
        let n = self.long()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.allocation_max => Ok(n),
            Ok(n) => Err(malformed(format!("{what} of {n} exceeds the {} allowed", self.allocation_max))),
            Err(_) => Err(malformed(format!("negative {what} {n}"))),
        }
    }

    #[inline(always)]
    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.length("string length")?;
        let end = self.pos.checked_add(len).filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(malformed(format!("a string of {len} bytes runs past the datum")));
        };
        let text = utf8(&self.bytes[self.pos..end]).map_err(|e| malformed(format!("a string is not UTF-8: {e}")))?;
        self.pos = end;
        Ok(text)
    }

    /// `["null", "string"]`.
    fn optional_string(&mut self) -> Result<Option<&'a str>, DecodeError> {
        match self.long()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            other => Err(malformed(format!("union branch {other} of [\"null\", \"string\"]"))),
        }
    }

    /// A map's blocks, each entry read by `entry`, until the empty block.
    fn map(&mut self, mut entry: impl FnMut(&mut Self) -> Result<(), DecodeError>) -> Result<(), DecodeError> {
        loop {
            let raw = self.long()?;
            let n = if raw < 0 {
                let _block_bytes = self.long()?;
                raw.checked_neg().ok_or_else(|| malformed("a block count out of range".to_owned()))?
            } else {
                raw
            };
            if n == 0 {
                return Ok(());
            }
            if n as u64 > self.allocation_max as u64 {
                return Err(malformed(format!("a block of {n} entries exceeds the {} allowed", self.allocation_max)));
            }
            for _ in 0..n {
                entry(self)?;
            }
        }
    }
}
