//! The specialised Avro decoder against apache-avro, the reference: the
//! same answer (event, or rejection reason) for random datums of the
//! shipped schema (blocks split at random, negative block counts, keys
//! given twice, unknown units, negative counts, bad instants and tiers),
//! for those datums damaged, and for random bytes; and never a panic.

use proptest::prelude::*;
use usage_codec::{decode_plain_with_apache_avro, DecodeError, Decoder, SchemaResolver, ValueFormat};

/// A datum written field by field, with the freedom Avro allows.
#[derive(Debug, Clone)]
struct Datum {
    strings: [String; 5],
    optionals: [Option<String>; 3],
    attributes: Vec<(String, String)>,
    usage: Vec<(String, i64)>,
    /// How map entries are cut into blocks, and which blocks carry a
    /// negative count with their byte size.
    blocks: Vec<(usize, bool)>,
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn put_map<T>(out: &mut Vec<u8>, entries: &[T], blocks: &[(usize, bool)], put: impl Fn(&mut Vec<u8>, &T)) {
    let mut rest = entries;
    let mut cuts = blocks.iter().cycle();
    while !rest.is_empty() {
        let &(size, negative) = cuts.next().expect("cycled");
        let n = size.clamp(1, rest.len());
        let mut block = Vec::new();
        for entry in &rest[..n] {
            put(&mut block, entry);
        }
        if negative {
            put_long(out, -(n as i64));
            put_long(out, block.len() as i64);
        } else {
            put_long(out, n as i64);
        }
        out.extend_from_slice(&block);
        rest = &rest[n..];
    }
    put_long(out, 0);
}

impl Datum {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in &self.strings {
            put_string(&mut out, s);
        }
        for o in &self.optionals {
            match o {
                None => put_long(&mut out, 0),
                Some(s) => {
                    put_long(&mut out, 1);
                    put_string(&mut out, s);
                }
            }
        }
        let blocks = if self.blocks.is_empty() { vec![(usize::MAX, false)] } else { self.blocks.clone() };
        put_map(&mut out, &self.attributes, &blocks, |out, (k, v)| {
            put_string(out, k);
            put_string(out, v);
        });
        put_map(&mut out, &self.usage, &blocks, |out, (k, v)| {
            put_string(out, k);
            put_long(out, *v);
        });
        out
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z0-9_.-]{1,24}", 1 => "\\PC{0,12}"]
}

fn instant() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (2000i32..2100, 1u32..13, 1u32..29, 0u32..24, 0u32..60, 0u32..1000)
            .prop_map(|(y, mo, d, h, mi, ms)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:07.{ms:03}Z")),
        1 => Just("2025-06-01T12:00:00+02:00".to_owned()),
        1 => "[0-9T:Z+-]{0,25}",
    ]
}

fn unit_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "requests",
            "input_audio_tokens", "output_audio_tokens",
        ]).prop_map(str::to_owned),
        1 => "[a-z_]{1,20}",
    ]
}

fn count() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..2_000_000, 1 => any::<i64>(), 1 => Just(i64::MAX)]
}

fn datum() -> impl Strategy<Value = Datum> {
    let tier = prop_oneof![
        Just(None),
        Just(Some("batch".to_owned())),
        Just(Some("priority".to_owned())),
        Just(Some("cheap".to_owned()))
    ];
    (
        (text(), text(), instant(), text(), text()),
        (prop::option::of(text()), prop::option::of(text()), tier),
        prop::collection::vec((text(), text()), 0..4),
        prop::collection::vec((unit_name(), count()), 0..7),
        prop::collection::vec((1usize..4, any::<bool>()), 0..3),
    )
        .prop_map(|((a, b, c, d, e), (f, g, h), attributes, usage, blocks)| Datum {
            strings: [a, b, c, d, e],
            optionals: [f, g, h],
            attributes,
            usage,
            blocks,
        })
}

/// The verdicts agree: the same event, or a rejection for the same reason.
fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let decoder = Decoder::new(ValueFormat::Avro, SchemaResolver::pinned());
    let fast = decoder.decode(bytes);
    let reference = decode_plain_with_apache_avro(bytes);
    match (&fast, &reference) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(DecodeError::Rejected(a)), Err(DecodeError::Rejected(b))) => {
            prop_assert_eq!(a.reason, b.reason, "specialised: {}; apache-avro: {}", a, b)
        }
        _ => prop_assert!(false, "specialised {:?}, apache-avro {:?}", fast, reference),
    }
    // The Confluent framing of the pinned id takes the same path.
    let mut framed = vec![0, 0, 0, 0, 1];
    framed.extend_from_slice(bytes);
    let confluent = Decoder::new(ValueFormat::Confluent, SchemaResolver::pinned()).decode(&framed);
    prop_assert_eq!(format!("{confluent:?}"), format!("{fast:?}"));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn datums_of_the_shipped_schema_get_the_reference_verdict(d in datum()) {
        agree(&d.encode())?;
    }

    #[test]
    fn damaged_datums_get_the_reference_verdict(
        d in datum(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = d.encode();
        for (at, byte) in damage {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        agree(&bytes)?;
    }

    #[test]
    fn random_bytes_get_the_reference_verdict(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        agree(&bytes)?;
    }
}

/// Every length a number's varint can have (1 to 10 bytes), the datum cut
/// inside it at each, and one byte too many: the reference's verdict each
/// time, and the count read back where the datum is whole and accepted.
#[test]
fn numbers_of_every_varint_length_get_the_reference_verdict() {
    let datum = |count: i64| Datum {
        strings: ["e-1", "acct-1", "2026-03-01T00:00:00Z", "openai", "gpt-4o"].map(str::to_owned),
        optionals: [None, None, None],
        attributes: Vec::new(),
        usage: vec![("input_tokens".to_owned(), count)],
        blocks: Vec::new(),
    };
    let decoder = Decoder::new(ValueFormat::Avro, SchemaResolver::pinned());
    let (mut lengths, mut accepted) = (std::collections::BTreeSet::new(), 0);
    for bits in 0..64 {
        let power = 1u64 << bits;
        for count in [power.wrapping_sub(1) as i64, power as i64, (power as i64).wrapping_neg()] {
            let whole = datum(count).encode();
            let mut varint = Vec::new();
            put_long(&mut varint, count);
            lengths.insert(varint.len());
            // The count is the last thing before the map's closing zero.
            let count_start = whole.len() - 1 - varint.len();
            assert_eq!(whole[count_start..whole.len() - 1], varint[..]);
            agree(&whole).unwrap();
            if let Ok(event) = decoder.decode(&whole) {
                assert_eq!(event.usage.iter().map(|(_, n)| n as i64).collect::<Vec<_>>(), [count]);
                accepted += 1;
            }
            for cut in count_start + 1..whole.len() - 1 {
                agree(&whole[..cut]).unwrap();
            }
        }
    }
    assert_eq!(lengths, (1..=10).collect(), "every varint length was written");
    assert!(accepted >= 40, "only {accepted} counts were within the limits");
    // Eleven bytes: ten with the continuation bit, then one.
    let mut overlong = datum(0).encode();
    let at = overlong.len() - 2;
    overlong.splice(at..at + 1, [0x80u8; 10].into_iter().chain([0x01]));
    agree(&overlong).unwrap();
    assert!(decoder.decode(&overlong).is_err());
}
