//! Synthetic usage streams: realistic enough to exercise every pricing path
//! (several providers, cache reads and writes, tiers, service tiers, audio,
//! per-request prices), skewed across hundreds of accounts like real
//! traffic, and deterministic: the same seed and start give the same bytes.
//!
//! A share of events is deliberately bad, one kind after another, each
//! labelled with the rejection it must cause, so tests can check the
//! dead-letter path message by message.

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use usage_codec::{encode_avro, encode_json, AvroWire, PINNED_SCHEMA_ID};
use usage_model::{RejectReason, ServiceTier, Unit, UsageCounts, UsageEvent};

/// `(provider, model as reported, weight)`. Every model is priced by the
/// shipped `rate-cards/list-prices`.
const MODELS: &[(&str, &str, u32)] = &[
    ("openai", "gpt-4o-2024-08-06", 14),
    ("openai", "gpt-4o-mini", 22),
    ("openai", "gpt-4.1-2025-04-14", 8),
    ("openai", "o3", 4),
    ("openai", "gpt-4o-audio-preview-2024-12-17", 2),
    ("anthropic", "claude-sonnet-4-20250514", 14),
    ("anthropic", "claude-opus-4-20250514", 2),
    ("anthropic", "claude-3-5-haiku-20241022", 6),
    ("google", "gemini-2.5-pro", 8),
    ("google", "gemini-2.5-flash", 10),
    ("deepseek", "deepseek-chat", 5),
    ("deepseek", "deepseek-reasoner", 2),
    ("mistral", "mistral-large-latest", 2),
    ("perplexity", "sonar", 1),
];

/// How generated events are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Avro,
    Confluent,
    /// JSON, Avro and Confluent in turn: exercises every decoder.
    Mixed,
}

#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub seed: u64,
    /// Events occur in the `spread` before `end` (24 hours by default)...
    pub end: DateTime<Utc>,
    pub spread: Duration,
    /// ...except `late_per_mille` of them, which occurred up to `late_max`
    /// earlier still (usage reported late).
    pub late_per_mille: u32,
    pub late_max: Duration,
    pub accounts: u32,
    /// One event in `bad_every` is bad (0: none).
    pub bad_every: u32,
    pub encoding: Encoding,
    /// Event ids are `{id_prefix}-{index}`.
    pub id_prefix: String,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            end: Utc::now(),
            spread: Duration::hours(24),
            late_per_mille: 0,
            late_max: Duration::days(3),
            accounts: 300,
            bad_every: 500,
            encoding: Encoding::Json,
            id_prefix: "synthetic".into(),
        }
    }
}

/// One generated message.
#[derive(Clone, Debug)]
pub struct SynthMessage {
    /// The account id: the partitioning key.
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// The event, when the message is a valid one.
    pub event: Option<UsageEvent>,
    /// For a bad message, the rejection it must cause.
    pub expected_rejection: Option<RejectReason>,
}

/// The kinds of bad events, in the order they are generated.
pub const BAD_KINDS: [RejectReason; 8] = [
    RejectReason::MalformedPayload,
    RejectReason::MissingField,
    RejectReason::UnknownUnit,
    RejectReason::CountOutOfRange,
    RejectReason::TimestampOutOfRange,
    RejectReason::UnknownModel,
    RejectReason::InconsistentUsage,
    RejectReason::InvalidField,
];

pub struct Generator {
    config: SynthConfig,
    rng: ChaCha8Rng,
    index: u64,
    n_bad: u64,
    weight_total: u32,
}

impl Generator {
    pub fn new(config: SynthConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            weight_total: MODELS.iter().map(|m| m.2).sum(),
            config,
            index: 0,
            n_bad: 0,
        }
    }

    fn pick_model(&mut self) -> (&'static str, &'static str) {
        let mut x = self.rng.random_range(0..self.weight_total);
        for (provider, model, weight) in MODELS {
            if x < *weight {
                return (provider, model);
            }
            x -= weight;
        }
        unreachable!("x < total weight")
    }

    /// A valid event.
    pub fn event(&mut self) -> UsageEvent {
        let i = self.index;
        // Squaring a uniform skews traffic to the low account numbers, as a
        // few big customers dominate real usage.
        let u: u64 = self.rng.random_range(0..1_000_000);
        let account = (u * u * self.config.accounts as u64 / 1_000_000_000_000) as u32 + 1;
        let (provider, model) = self.pick_model();
        let mut seconds_back = self.rng.random_range(0..self.config.spread.num_seconds().max(1));
        // Drawn only when asked for: older streams keep their bytes.
        if self.config.late_per_mille > 0 && self.rng.random_range(0..1000) < self.config.late_per_mille {
            seconds_back += self.rng.random_range(0..self.config.late_max.num_seconds().max(1));
        }
        let occurred_at =
            self.config.end - Duration::seconds(seconds_back) - Duration::milliseconds(self.rng.random_range(0..1000));

        let mut usage = UsageCounts::default();
        // Input sizes spread over orders of magnitude (log-uniform).
        let mut input = log_uniform(&mut self.rng, 20, 120_000);
        if provider == "google" && self.rng.random_bool(0.05) {
            input = self.rng.random_range(200_001..600_000); // long-context tier
        }
        usage.set(Unit::INPUT_TOKENS, input);
        if provider != "mistral" && provider != "perplexity" && self.rng.random_bool(0.4) {
            usage.set(Unit::CACHE_READ_TOKENS, self.rng.random_range(0..=input));
        }
        if provider == "anthropic" && self.rng.random_bool(0.15) {
            let room = input - usage.count(Unit::CACHE_READ_TOKENS);
            usage.set(Unit::CACHE_WRITE_TOKENS, self.rng.random_range(0..=room));
        }
        let output = log_uniform(&mut self.rng, 1, 8_000);
        usage.set(Unit::OUTPUT_TOKENS, output);
        if model == "o3" || model == "deepseek-reasoner" {
            let reasoning = Unit::from_key("output_reasoning_tokens").expect("registered unit");
            usage.set(reasoning, self.rng.random_range(0..=output));
        }
        if model.starts_with("gpt-4o-audio") {
            let audio_in = self.rng.random_range(0..=input);
            usage.set(Unit::from_key("input_audio_tokens").expect("registered unit"), audio_in);
            usage.set(Unit::from_key("output_audio_tokens").expect("registered unit"), output / 2);
        }
        let service_tier = match (provider, self.rng.random_range(0..20)) {
            ("openai" | "anthropic", 0..=2) => ServiceTier::Batch,
            ("openai", 3) => ServiceTier::Flex,
            ("openai", 4) => ServiceTier::Priority,
            _ => ServiceTier::Standard,
        };
        let n_keys = 1 + account % 3;
        let key = self.rng.random_range(0..n_keys);
        let mut attributes = usage_model::Attributes::new();
        if self.rng.random_bool(0.3) {
            attributes.insert("region", ["us-east", "eu-west", "ap-south"][account as usize % 3]);
        }
        UsageEvent {
            event_id: format!("{}-{i}", self.config.id_prefix).into(),
            account_id: format!("acct-{account:04}").into(),
            occurred_at,
            provider: provider.into(),
            model: model.into(),
            api_key_id: Some(format!("key-{account:04}-{key}").into()),
            project_id: (!account.is_multiple_of(4)).then(|| format!("proj-{account:04}-{}", key % 2).into()),
            service_tier,
            attributes,
            usage,
        }
    }

    fn encode(&self, event: &UsageEvent) -> Vec<u8> {
        let encoding = match self.config.encoding {
            Encoding::Mixed => [Encoding::Json, Encoding::Avro, Encoding::Confluent][(self.index % 3) as usize],
            e => e,
        };
        match encoding {
            Encoding::Json | Encoding::Mixed => encode_json(event),
            Encoding::Avro => encode_avro(event, AvroWire::Plain),
            Encoding::Confluent => encode_avro(event, AvroWire::Confluent(PINNED_SCHEMA_ID)),
        }
    }

    fn bad(&mut self) -> SynthMessage {
        let kind = BAD_KINDS[(self.n_bad % BAD_KINDS.len() as u64) as usize];
        self.n_bad += 1;
        let mut event = self.event();
        let key = event.account_id.as_bytes().to_vec();
        let json = String::from_utf8(encode_json(&event)).expect("JSON is UTF-8");
        let payload = match kind {
            RejectReason::MalformedPayload => json[..json.len() / 2].to_owned(),
            RejectReason::MissingField => json.replacen(&format!("\"model\":\"{}\",", event.model), "", 1),
            RejectReason::UnknownUnit => json.replacen("\"output_tokens\"", "\"completion_tokens\"", 1),
            RejectReason::CountOutOfRange => json.replacen("\"input_tokens\":", "\"input_tokens\":-", 1),
            RejectReason::TimestampOutOfRange => {
                // Far enough ahead of any clock a test runs with, `end` being in the past or not.
                event.occurred_at = self.config.end + Duration::days(3650);
                String::from_utf8(encode_json(&event)).expect("JSON is UTF-8")
            }
            RejectReason::UnknownModel => {
                event.model = "gpt-7-ultra".into();
                String::from_utf8(encode_json(&event)).expect("JSON is UTF-8")
            }
            RejectReason::InconsistentUsage => {
                let input = event.usage.count(Unit::INPUT_TOKENS);
                event.usage.set(Unit::CACHE_READ_TOKENS, input + 1);
                String::from_utf8(encode_json(&event)).expect("JSON is UTF-8")
            }
            RejectReason::InvalidField => {
                json.replacen(&format!("\"service_tier\":\"{}\"", event.service_tier), "\"service_tier\":\"turbo\"", 1)
            }
            other => unreachable!("{other:?} is not a generated kind"),
        };
        SynthMessage { key, payload: payload.into_bytes(), event: None, expected_rejection: Some(kind) }
    }
}

impl Iterator for Generator {
    type Item = SynthMessage;

    fn next(&mut self) -> Option<SynthMessage> {
        let bad = self.config.bad_every > 0
            && self.index % self.config.bad_every as u64 == (self.config.bad_every as u64 - 1);
        let message = if bad {
            self.bad()
        } else {
            let event = self.event();
            SynthMessage {
                key: event.account_id.as_bytes().to_vec(),
                payload: self.encode(&event),
                event: Some(event),
                expected_rejection: None,
            }
        };
        self.index += 1;
        Some(message)
    }
}

fn log_uniform(rng: &mut ChaCha8Rng, low: u64, high: u64) -> u64 {
    // Integer-only: pick a power of two band, then a value inside it.
    let low_bits = 64 - low.leading_zeros();
    let high_bits = 64 - high.leading_zeros();
    let bits = rng.random_range(low_bits..=high_bits);
    let band_low = (1u64 << (bits - 1)).max(low);
    let band_high = ((1u64 << bits) - 1).min(high);
    rng.random_range(band_low..=band_high.max(band_low))
}

#[cfg(test)]
mod tests {
    use super::*;
    use usage_codec::{Decoder, SchemaResolver, ValueFormat};
    use usage_model::EventLimits;

    fn config() -> SynthConfig {
        SynthConfig {
            seed: 7,
            end: "2026-06-15T12:00:00Z".parse().unwrap(),
            bad_every: 10,
            encoding: Encoding::Mixed,
            ..Default::default()
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let a: Vec<_> = Generator::new(config()).take(200).map(|m| m.payload).collect();
        let b: Vec<_> = Generator::new(config()).take(200).map(|m| m.payload).collect();
        assert!(a == b, "payloads differ between two runs with one seed");
    }

    #[test]
    fn good_events_decode_and_pass_limits_and_bad_ones_cover_every_kind() {
        let decoder = Decoder::new(ValueFormat::Auto, SchemaResolver::pinned());
        let limits = EventLimits::default();
        let now = config().end;
        let mut kinds = std::collections::BTreeSet::new();
        for m in Generator::new(config()).take(1000) {
            match (&m.event, m.expected_rejection) {
                (Some(e), None) => {
                    let decoded = decoder.decode(&m.payload).unwrap_or_else(|err| panic!("{err:?}"));
                    assert_eq!(&decoded, e);
                    limits.check(e, now).unwrap();
                }
                (None, Some(kind)) => {
                    kinds.insert(kind);
                }
                _ => panic!("a message is either good or bad"),
            }
        }
        assert_eq!(kinds.len(), BAD_KINDS.len());
    }
}
