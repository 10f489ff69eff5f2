//! Configuration: defaults, then the config file, then the environment,
//! then flags. Validated once into [`Settings`].
//!
//! ```toml
//! [kafka]
//! brokers = "127.0.0.1:9092"          # KAFKA_BROKERS
//! client_id = "usage-pipeline"
//! group_instance_id = "pipeline-0"    # KAFKA_GROUP_INSTANCE_ID: static membership, one per instance
//! fetch_wait_max_ms = 100             # KAFKA_FETCH_WAIT_MAX_MS: an empty fetch's wait (10 on tansu for latency)
//! [kafka.librdkafka]                  # any librdkafka property
//! "security.protocol" = "SASL_SSL"
//!
//! [topics]
//! raw = "usage.raw"                   # USAGE_RAW_TOPIC
//! dead_letter = "usage.dead-letter"   # USAGE_DEAD_LETTER_TOPIC
//! rate_cards = "usage.rate-cards"     # USAGE_RATE_CARDS_TOPIC (compacted)
//! partitions = 4                      # for topics the pipeline creates
//!
//! [clickhouse]
//! url = "http://127.0.0.1:8123"       # CLICKHOUSE_URL
//! database = "usage"                  # CLICKHOUSE_DATABASE
//! user = "default"                    # CLICKHOUSE_USER
//! password = ""                       # CLICKHOUSE_PASSWORD
//! compression = "lz4"                 # CLICKHOUSE_COMPRESSION: lz4 | none (none pays on one host)
//! ca_file = "/etc/ssl/ch-ca.pem"      # CLICKHOUSE_CA_FILE: trusted for https:// besides the public roots
//! insert_timeout_ms = 60000           # CLICKHOUSE_INSERT_TIMEOUT_MS: one INSERT, sent and answered
//!
//! [pipeline]
//! group_id = "usage-pipeline"         # USAGE_GROUP_ID
//! rate_cards = "rate-cards"           # USAGE_RATE_CARDS
//! default_rate_card = "list-prices"
//! value_format = "auto"               # auto | json | avro | confluent
//! schema_registry_url = "http://..."  # SCHEMA_REGISTRY_URL
//! batch_events_max = 50000
//! batch_linger_ms = 2000             # a batch closes this long after its first message
//! dedup_window_days = 35              # duplicates checked in memory; older events looked up
//! dedup_ids_max = 16000000            # row keys held per partition (8-16 bytes each)
//! stall_after_s = 120                 # lag and no progress this long: stalled (unready); as long again: rejoin
//!
//! [ledger]
//! priced_topic = "usage.priced"       # USAGE_PRICED_TOPIC ("" : no ledger feed)
//! commands_topic = "billing.commands" # BILLING_COMMANDS_TOPIC
//! state_topic = "billing.ledger-state"# BILLING_STATE_TOPIC (compacted)
//! events_topic = "billing.events"     # BILLING_EVENTS_TOPIC
//! group_id = "usage-ledger"           # LEDGER_GROUP_ID
//! event_format = "json"               # json | avro
//! transactional_id = "ledger-1"       # LEDGER_TRANSACTIONAL_ID (brokers with transactions)
//! batch_linger_ms = 2                # a batch of priced usage closes this long after its first record
//! changelog_interval_ms = 5000        # LEDGER_CHANGELOG_INTERVAL_MS: changed accounts to the changelog, offsets committed
//! write_entries = true                # ledger entries into ClickHouse
//! pending_entries_max = 500000        # LEDGER_PENDING_ENTRIES_MAX: entries waiting for ClickHouse past which input pauses
//!
//! [observability]
//! metrics_addr = "127.0.0.1:9464"     # USAGE_METRICS_ADDR (or --metrics-addr): /healthz, /readyz, /metrics
//! unready_after_s = 60                # USAGE_UNREADY_AFTER_S: a step failing this long makes /readyz fail
//! ```

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use usage_clickhouse::ClickHouseSettings;
use usage_codec::ValueFormat;
use usage_kafka::KafkaSettings;
use usage_ledger_stage::{EventFormat, LedgerConfig};
use usage_pricing_stage::StreamConfig;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    kafka: KafkaSection,
    topics: TopicsSection,
    clickhouse: ClickHouseSection,
    pipeline: PipelineSection,
    ledger: LedgerSection,
    observability: ObservabilitySection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ObservabilitySection {
    metrics_addr: Option<String>,
    unready_after_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct LedgerSection {
    priced_topic: Option<String>,
    commands_topic: Option<String>,
    state_topic: Option<String>,
    events_topic: Option<String>,
    group_id: Option<String>,
    event_format: Option<String>,
    transactional_id: Option<String>,
    batch_linger_ms: Option<u64>,
    changelog_interval_ms: Option<u64>,
    write_entries: Option<bool>,
    pending_entries_max: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct KafkaSection {
    brokers: Option<String>,
    client_id: Option<String>,
    group_instance_id: Option<String>,
    fetch_wait_max_ms: Option<u32>,
    librdkafka: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct TopicsSection {
    raw: Option<String>,
    dead_letter: Option<String>,
    rate_cards: Option<String>,
    partitions: Option<i32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ClickHouseSection {
    url: Option<String>,
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    compression: Option<String>,
    ca_file: Option<String>,
    insert_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct PipelineSection {
    group_id: Option<String>,
    rate_cards: Option<PathBuf>,
    default_rate_card: Option<String>,
    value_format: Option<String>,
    schema_registry_url: Option<String>,
    batch_events_max: Option<usize>,
    batch_linger_ms: Option<u64>,
    dedup_window_days: Option<u64>,
    dedup_ids_max: Option<usize>,
    stall_after_s: Option<u64>,
}

/// Everything a command needs, validated.
pub struct Settings {
    pub kafka: KafkaSettings,
    pub clickhouse: ClickHouseSettings,
    pub stream: StreamConfig,
    pub rate_cards: PathBuf,
    /// Whether `rate_cards` was set (file or environment) rather than defaulted.
    pub rate_cards_explicit: bool,
    pub default_rate_card: Option<String>,
    pub schema_registry_url: Option<String>,
    pub ledger: LedgerConfig,
    /// Whether the ledger writes its entries to ClickHouse.
    pub ledger_writes_entries: bool,
    /// Where `run` and `ledger` serve their probes (`None`: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// How long a retriable failure may last before `/readyz` fails.
    pub unready_after: Duration,
}

/// Upper bound on `batch_events_max`: one INSERT must stay below
/// ClickHouse's `max_insert_block_size` (1,048,576) to stay one block.
const BATCH_EVENTS_MAX_LIMIT: usize = 1_000_000;

/// Upper bound on `ledger.pending_entries_max`: a waiting entry holds a few
/// hundred bytes, so past this the bound no longer bounds memory usefully
/// (a typo's extra zeros are caught instead).
const PENDING_ENTRIES_MAX_BOUND: usize = 20_000_000;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Settings {
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let file: FileConfig = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("in {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let p = file.pipeline;
        let mut stream = stream_config(file.topics, &p)?;
        let ledger_writes_entries = file.ledger.write_entries.unwrap_or(true);
        let ledger = ledger_config(file.ledger, &mut stream)?;
        let metrics_addr = match env("USAGE_METRICS_ADDR").or(file.observability.metrics_addr) {
            Some(a) => Some(parse_addr(&a).context("observability.metrics_addr (USAGE_METRICS_ADDR)")?),
            None => None,
        };
        let unready_after = number("USAGE_UNREADY_AFTER_S", file.observability.unready_after_s)?
            .map(Duration::from_secs)
            .unwrap_or(usage_runtime::FAILING_GRACE_DEFAULT);
        Ok(Self {
            metrics_addr,
            unready_after,
            kafka: kafka_settings(file.kafka)?,
            clickhouse: clickhouse_settings(file.clickhouse)?,
            stream,
            rate_cards_explicit: env("USAGE_RATE_CARDS").is_some() || p.rate_cards.is_some(),
            rate_cards: env("USAGE_RATE_CARDS")
                .map(PathBuf::from)
                .or(p.rate_cards)
                .unwrap_or_else(|| "rate-cards".into()),
            default_rate_card: p.default_rate_card,
            schema_registry_url: env("SCHEMA_REGISTRY_URL").or(p.schema_registry_url),
            ledger,
            ledger_writes_entries,
        })
    }
}

/// A number from the environment variable `var` when it is set (an error
/// naming it when it does not parse), else from the file.
fn number<T: std::str::FromStr>(var: &str, file: Option<T>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match env(var) {
        Some(text) => match text.parse() {
            Ok(v) => Ok(Some(v)),
            Err(e) => bail!("{var}: {e}"),
        },
        None => Ok(file),
    }
}

fn kafka_settings(k: KafkaSection) -> Result<KafkaSettings> {
    Ok(KafkaSettings {
        brokers: env("KAFKA_BROKERS").or(k.brokers).unwrap_or_else(|| "127.0.0.1:9092".into()),
        client_id: k.client_id.unwrap_or_else(|| "usage-pipeline".into()),
        group_instance_id: env("KAFKA_GROUP_INSTANCE_ID").or(k.group_instance_id),
        fetch_wait_max_ms: match number("KAFKA_FETCH_WAIT_MAX_MS", k.fetch_wait_max_ms)? {
            Some(ms) if (1..=60_000).contains(&ms) => ms,
            Some(ms) => bail!("kafka.fetch_wait_max_ms must be within 1..=60000, is {ms}"),
            None => usage_kafka::FETCH_WAIT_MAX_MS_DEFAULT,
        },
        overrides: k.librdkafka,
    })
}

fn clickhouse_settings(c: ClickHouseSection) -> Result<ClickHouseSettings> {
    Ok(ClickHouseSettings {
        url: env("CLICKHOUSE_URL").or(c.url).unwrap_or_else(|| "http://127.0.0.1:8123".into()),
        database: env("CLICKHOUSE_DATABASE").or(c.database).unwrap_or_else(|| "usage".into()),
        user: env("CLICKHOUSE_USER").or(c.user),
        password: env("CLICKHOUSE_PASSWORD").or(c.password),
        compress_inserts: match env("CLICKHOUSE_COMPRESSION").or(c.compression).as_deref() {
            None | Some("lz4") => true,
            Some("none") => false,
            Some(other) => bail!("clickhouse.compression must be lz4 or none, is {other:?}"),
        },
        ca_file: env("CLICKHOUSE_CA_FILE").or(c.ca_file).map(PathBuf::from),
        insert_timeout: match number("CLICKHOUSE_INSERT_TIMEOUT_MS", c.insert_timeout_ms)? {
            Some(0) => bail!("clickhouse.insert_timeout_ms must be positive"),
            Some(ms) => Duration::from_millis(ms),
            None => ClickHouseSettings::default().insert_timeout,
        },
    })
}

/// The pricing stage's settings (its priced topic comes with the ledger's).
fn stream_config(topics: TopicsSection, p: &PipelineSection) -> Result<StreamConfig> {
    let defaults = StreamConfig::default();
    let value_format: ValueFormat = match &p.value_format {
        Some(f) => f.parse().map_err(anyhow::Error::msg).context("pipeline.value_format")?,
        None => ValueFormat::Auto,
    };
    let batch_events_max = p.batch_events_max.unwrap_or(defaults.batch_events_max);
    if batch_events_max == 0 || batch_events_max > BATCH_EVENTS_MAX_LIMIT {
        bail!("pipeline.batch_events_max must be 1..={BATCH_EVENTS_MAX_LIMIT}, is {batch_events_max}");
    }
    let stream = StreamConfig {
        raw_topic: env("USAGE_RAW_TOPIC").or(topics.raw).unwrap_or(defaults.raw_topic),
        dead_letter_topic: env("USAGE_DEAD_LETTER_TOPIC").or(topics.dead_letter).unwrap_or(defaults.dead_letter_topic),
        rate_cards_topic: env("USAGE_RATE_CARDS_TOPIC").or(topics.rate_cards).unwrap_or(defaults.rate_cards_topic),
        group_id: env("USAGE_GROUP_ID").or(p.group_id.clone()).unwrap_or(defaults.group_id),
        topic_partitions: topics.partitions.unwrap_or(defaults.topic_partitions),
        batch_events_max,
        batch_linger: p.batch_linger_ms.map(Duration::from_millis).unwrap_or(defaults.batch_linger),
        batch_idle: p
            .batch_linger_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.batch_idle)
            .min(defaults.batch_idle),
        value_format,
        dedup_window: p.dedup_window_days.map(|d| Duration::from_secs(d * 86_400)).unwrap_or(defaults.dedup_window),
        dedup_ids_max: p.dedup_ids_max.unwrap_or(defaults.dedup_ids_max),
        stall_after: number("USAGE_STALL_AFTER_S", p.stall_after_s)?
            .map(Duration::from_secs)
            .unwrap_or(defaults.stall_after),
        ..defaults
    };
    let names = [&stream.raw_topic, &stream.dead_letter_topic, &stream.rate_cards_topic];
    if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
        bail!("topics.raw, topics.dead_letter and topics.rate_cards must differ (they are {names:?})");
    }
    if stream.topic_partitions < 1 {
        bail!("topics.partitions must be at least 1");
    }
    Ok(stream)
}

/// The ledger's settings; sets the pricing stage's feed to the ledger's
/// priced topic (none when `USAGE_PRICED_TOPIC` is set and empty).
fn ledger_config(l: LedgerSection, stream: &mut StreamConfig) -> Result<LedgerConfig> {
    let defaults = LedgerConfig::default();
    let priced_topic = match std::env::var("USAGE_PRICED_TOPIC") {
        Ok(v) => v,
        Err(_) => l.priced_topic.unwrap_or(defaults.priced_topic.clone()),
    };
    stream.priced_topic = (!priced_topic.is_empty()).then(|| priced_topic.clone());
    Ok(LedgerConfig {
        priced_topic,
        commands_topic: env("BILLING_COMMANDS_TOPIC").or(l.commands_topic).unwrap_or(defaults.commands_topic),
        state_topic: env("BILLING_STATE_TOPIC").or(l.state_topic).unwrap_or(defaults.state_topic),
        events_topic: env("BILLING_EVENTS_TOPIC").or(l.events_topic).unwrap_or(defaults.events_topic),
        dead_letter_topic: stream.dead_letter_topic.clone(),
        group_id: env("LEDGER_GROUP_ID").or(l.group_id).unwrap_or(defaults.group_id),
        topic_partitions: stream.topic_partitions,
        batch_linger: l.batch_linger_ms.map(Duration::from_millis).unwrap_or(defaults.batch_linger),
        changelog_interval: match number("LEDGER_CHANGELOG_INTERVAL_MS", l.changelog_interval_ms)? {
            None => defaults.changelog_interval,
            Some(ms @ 10..=600_000) => Duration::from_millis(ms),
            Some(ms) => bail!("ledger.changelog_interval_ms must be within 10..=600000, is {ms}"),
        },
        event_format: match l.event_format.as_deref() {
            None | Some("json") => EventFormat::Json,
            Some("avro") => EventFormat::Avro,
            Some(other) => bail!("ledger.event_format must be json or avro, is {other:?}"),
        },
        transactional_id: env("LEDGER_TRANSACTIONAL_ID").or(l.transactional_id),
        pending_entries_max: match number("LEDGER_PENDING_ENTRIES_MAX", l.pending_entries_max)? {
            None => defaults.pending_entries_max,
            Some(n @ 1..=PENDING_ENTRIES_MAX_BOUND) => n,
            Some(n) => bail!("ledger.pending_entries_max must be within 1..={PENDING_ENTRIES_MAX_BOUND}, is {n}"),
        },
        ..defaults
    })
}

/// `host:port`, e.g. `127.0.0.1:9464` or `0.0.0.0:9464`.
pub fn parse_addr(text: &str) -> Result<SocketAddr> {
    text.parse().with_context(|| format!("{text:?} is not an address and port such as 127.0.0.1:9464"))
}
