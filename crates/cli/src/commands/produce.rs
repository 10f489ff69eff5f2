//! `produce`: publish usage events to the raw topic, every one acknowledged.

use crate::cli::{EncodingArg, ProduceArgs};
use crate::config::Settings;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;
use usage_kafka::{ensure_topics, Outgoing, Producer, TopicSpec};
use usage_synth::{Encoding, Generator, SynthConfig};

/// Messages handed to the producer per round of delivery reports: bounds the
/// memory of a run of any size.
const CHUNK_MESSAGES: usize = 10_000;

pub async fn produce(settings: Settings, args: ProduceArgs) -> Result<ExitCode> {
    let topic = settings.stream.raw_topic.clone();
    ensure_topics(
        &settings.kafka,
        &[TopicSpec::new(&topic, settings.stream.topic_partitions)],
        Duration::from_secs(30),
    )
    .await
    .context("creating the raw topic")?;
    let progress = ProgressBar::new(args.synthetic.unwrap_or(0));
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} events {per_sec} [{elapsed_precise}] {wide_bar}")
            .expect("valid template"),
    );
    let mut sender = ChunkedSender {
        producer: Producer::new(&settings.kafka, "produce")?,
        topic: topic.clone(),
        chunk: Vec::with_capacity(CHUNK_MESSAGES),
        sent: 0,
        progress,
    };
    let mut bad_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    if let Some(n) = args.synthetic {
        for message in Generator::new(synth_config(&args)).take(n as usize) {
            if let Some(kind) = message.expected_rejection {
                *bad_by_kind.entry(kind.code()).or_default() += 1;
            }
            sender.push(message.key, message.payload).await?;
        }
    } else {
        for line in input(&args)?.lines() {
            let line = line.context("reading input")?;
            if line.trim().is_empty() {
                continue;
            }
            // Keyed by account so that one account's events stay in order on
            // one partition; a line that does not decode is sent unkeyed and
            // the pipeline dead-letters it.
            let key =
                usage_codec::decode_json(line.as_bytes()).map(|e| e.account_id.as_bytes().to_vec()).unwrap_or_default();
            sender.push(key, line.into_bytes()).await?;
        }
    }
    let sent = sender.finish().await?;
    let bad: u64 = bad_by_kind.values().sum();
    println!("produced {sent} events to {topic} on {} (every one acknowledged)", settings.kafka.brokers);
    if args.synthetic.is_some() {
        println!("  of which deliberately bad: {bad}");
        for (kind, n) in &bad_by_kind {
            println!("    {kind:<24} {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn synth_config(args: &ProduceArgs) -> SynthConfig {
    let encoding = match args.encoding {
        EncodingArg::Json => Encoding::Json,
        EncodingArg::Avro => Encoding::Avro,
        EncodingArg::Confluent => Encoding::Confluent,
        EncodingArg::Mixed => Encoding::Mixed,
    };
    SynthConfig {
        seed: args.seed,
        accounts: args.accounts,
        bad_every: args.bad_every,
        encoding,
        id_prefix: args.id_prefix.clone().unwrap_or_else(|| format!("synthetic-{}", args.seed)),
        ..SynthConfig::default()
    }
}

/// The NDJSON input: the file named, else (or for `-`) stdin.
fn input(args: &ProduceArgs) -> Result<Box<dyn BufRead>> {
    Ok(match args.input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
    })
}

/// Messages sent `CHUNK_MESSAGES` at a time, each chunk acknowledged
/// before the next is gathered.
struct ChunkedSender {
    producer: Producer,
    topic: String,
    /// Key (empty: none) and payload.
    chunk: Vec<(Vec<u8>, Vec<u8>)>,
    sent: u64,
    progress: ProgressBar,
}

impl ChunkedSender {
    async fn push(&mut self, key: Vec<u8>, payload: Vec<u8>) -> Result<()> {
        self.chunk.push((key, payload));
        if self.chunk.len() == CHUNK_MESSAGES {
            self.send_chunk().await?;
            self.progress.set_position(self.sent);
        }
        Ok(())
    }

    /// Sends what is left; how many were sent in all.
    async fn finish(mut self) -> Result<u64> {
        if !self.chunk.is_empty() {
            self.send_chunk().await?;
        }
        self.progress.finish_and_clear();
        Ok(self.sent)
    }

    async fn send_chunk(&mut self) -> Result<()> {
        let messages = self
            .chunk
            .iter()
            .map(|(k, v)| Outgoing {
                topic: &self.topic,
                key: (!k.is_empty()).then_some(k.as_slice()),
                payload: v,
                headers: None,
                partition: None,
            })
            .collect();
        self.producer.send_all(messages).await.context("publishing to the raw topic")?;
        self.sent += self.chunk.len() as u64;
        self.chunk.clear();
        Ok(())
    }
}
