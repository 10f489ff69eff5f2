//! `occurred_at` as RFC 3339. The common form, `YYYY-MM-DDTHH:MM:SS`, up
//! to nine fraction digits, then `Z` or `±HH:MM`, is read by hand; chrono
//! reads everything else and says what is wrong. chrono's general parser
//! costs several hundred instructions per event; the common form is read in
//! a few dozen. A property test holds the two to the same instant on every
//! string the fast reader accepts.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

/// The instant `text` names, if it has the common form and is valid; `None`
/// leaves the verdict to chrono.
pub(crate) fn parse_common_form(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    let [year, month, day, hour, minute, second] = calendar_fields(b.first_chunk::<19>()?)?;
    // Year 0, leap seconds and the rest are chrono's to judge.
    if year == 0 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some((b'.', fraction)) = rest.split_first() {
        let n = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = fraction[..n].iter().fold(0, |v, &d| v * 10 + u32::from(d - b'0')) * 10u32.pow(9 - n as u32);
        rest = &fraction[n..];
    }
    let offset_seconds = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let seconds = h * 3600 + m * 60;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    // From the calendar fields straight to chrono's own (ordinal date and
    // time of day): a day count would be split back into them.
    let local = NaiveDate::from_ymd_opt(year as i32, month, day)?.and_hms_nano_opt(hour, minute, second, nanos)?;
    if offset_seconds == 0 {
        return Some(local.and_utc());
    }
    local.checked_sub_signed(TimeDelta::seconds(offset_seconds)).map(|t| t.and_utc())
}

/// `YYYY-MM-DDTHH:MM:SS`'s six numbers, if the bytes have that shape. The
/// bytes as three overlapping words, each XORed with the shape (digits as
/// `0`): a digit becomes its value, a right separator zero, so one test per
/// word settles every byte (high nibble zero, low nibble at most 9,
/// separators zero), where byte-by-byte checks cost ten times as much.
fn calendar_fields(b: &[u8; 19]) -> Option<[u32; 6]> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // (first byte, the shape's eight bytes from there, its separators).
    const WORDS: [(usize, u64, u64); 3] = [
        (0, u64::from_le_bytes(*b"0000-00-"), 0xff00_00ff_0000_0000),
        (8, u64::from_le_bytes(*b"00T00:00"), 0x0000_ff00_00ff_0000),
        (11, u64::from_le_bytes(*b"00:00:00"), 0x0000_ff00_00ff_0000),
    ];
    let mut values = [0u64; 3];
    let mut bad = 0u64;
    for (value, (at, shape, separators)) in values.iter_mut().zip(WORDS) {
        let t = u64::from_le_bytes(*b[at..].first_chunk::<8>()?) ^ shape;
        // A carry out of a byte with its high nibble set can only add to
        // what that byte already flags.
        bad |= (t & (ONES * 0xf0)) | (t.wrapping_add(ONES * 0x06) & (ONES * 0x10)) | (t & separators);
        *value = t;
    }
    if bad != 0 {
        return None;
    }
    let digit = |w: u64, i: usize| (w >> (8 * i)) as u32 & 0x0f;
    let pair = |w: u64, i: usize| digit(w, i) * 10 + digit(w, i + 1);
    let [date, day_time, time] = values;
    Some([
        pair(date, 0) * 100 + pair(date, 2),
        pair(date, 5),
        pair(day_time, 0),
        pair(day_time, 3),
        pair(day_time, 6),
        pair(time, 6),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
    }

    /// Strings near the common form: each part drawn from valid values,
    /// edge values and a few wrong ones.
    fn near_common_form() -> impl Strategy<Value = String> {
        let year =
            prop_oneof![Just(0u32), Just(1), Just(1969), Just(1970), Just(2000), Just(2024), Just(2100), 1u32..10_000];
        let two = |max: u32| prop_oneof![0u32..=max, Just(0), Just(max), Just(max + 1), 0u32..100];
        let sep = |want: &'static str| prop_oneof![8 => Just(want.to_owned()), 1 => "[-:Tt _/]".prop_map(|s| s)];
        let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{0,12}", "\\.[0-9a]{1,3}"];
        let offset = prop_oneof![
            Just("Z".to_owned()),
            Just("z".to_owned()),
            "[+-][0-2][0-9]:[0-6][0-9]",
            "[+-][0-9]{2}[0-9]{2}",
            Just("+24:00".to_owned()),
            Just("-00:00".to_owned()),
            "[A-Z ]{0,2}",
        ];
        (year, two(12), two(31), two(23), two(59), two(60), sep("-"), sep("T"), sep(":"), fraction, offset).prop_map(
            |(y, mo, d, h, mi, s, dash, t, colon, fraction, offset)| {
                format!("{y:04}{dash}{mo:02}{dash}{d:02}{t}{h:02}{colon}{mi:02}{colon}{s:02}{fraction}{offset}")
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// What the fast reader accepts, chrono reads as the same instant.
        #[test]
        fn the_common_form_reads_as_chrono_reads_it(text in near_common_form()) {
            if let Some(fast) = parse_common_form(&text) {
                prop_assert_eq!(Some(fast), chrono(&text), "{}", text);
            }
        }

        /// And on any string at all.
        #[test]
        fn any_string_reads_as_chrono_reads_it_or_is_left_to_chrono(text in "\\PC{0,40}") {
            if let Some(fast) = parse_common_form(&text) {
                prop_assert_eq!(Some(fast), chrono(&text), "{}", text);
            }
        }
    }

    proptest! {
        /// The word-wise reader of the calendar fields agrees with reading
        /// digit by digit, on the shape with every byte disturbed at times.
        #[test]
        fn calendar_fields_read_as_digit_by_digit(
            fields in (0u32..10_000, 0u32..100, 0u32..100, 0u32..100, 0u32..100, 0u32..100),
            damage in prop::collection::vec((0usize..19, any::<u8>()), 0..3),
        ) {
            let (y, mo, d, h, mi, s) = fields;
            let mut text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}").into_bytes();
            for (at, byte) in damage {
                text[at] = byte;
            }
            let bytes: &[u8; 19] = text.as_slice().try_into().unwrap();
            // Digit by digit: a number ends at each separator.
            let one_by_one = || -> Option<[u32; 6]> {
                let mut numbers = [0u32; 6];
                let mut k = 0;
                for (&c, &want) in bytes.iter().zip(b"0000-00-00T00:00:00") {
                    if want == b'0' {
                        numbers[k] = numbers[k] * 10 + u32::from(c.is_ascii_digit().then(|| c - b'0')?);
                    } else if c == want {
                        k += 1;
                    } else {
                        return None;
                    }
                }
                Some(numbers)
            };
            prop_assert_eq!(calendar_fields(bytes), one_by_one());
        }
    }

    #[test]
    fn the_usual_forms_take_the_fast_path() {
        for text in [
            "2026-11-25T09:41:07Z",
            "2026-11-25T09:41:07.250+01:00",
            "2026-11-25T09:41:07.123456789-05:30",
            "2024-02-29T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999+23:59",
        ] {
            assert_eq!(parse_common_form(text), chrono(text), "{text}");
            assert!(parse_common_form(text).is_some(), "{text}");
        }
        for text in ["2023-02-29T00:00:00Z", "2026-11-25T24:00:00Z", "2026-11-25t09:41:07Z", "2026-11-25T09:41:60Z"] {
            assert_eq!(parse_common_form(text), None, "{text}");
        }
    }
}
