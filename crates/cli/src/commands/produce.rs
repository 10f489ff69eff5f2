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
    let producer = Producer::new(&settings.kafka, "produce")?;
    let progress = ProgressBar::new(args.synthetic.unwrap_or(0));
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} events {per_sec} [{elapsed_precise}] {wide_bar}")
            .expect("valid template"),
    );
    let mut sent = 0u64;
    let mut bad_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(CHUNK_MESSAGES);

    let send_chunk = |chunk: &mut Vec<(Vec<u8>, Vec<u8>)>| {
        let batch = std::mem::take(chunk);
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let n = batch.len() as u64;
            producer
                .send_all(
                    batch
                        .iter()
                        .map(|(k, v)| Outgoing {
                            topic: &topic,
                            key: (!k.is_empty()).then_some(k.as_slice()),
                            payload: v,
                            headers: None,
                            partition: None,
                        })
                        .collect(),
                )
                .await
                .context("publishing to the raw topic")?;
            anyhow::Ok(n)
        }
    };

    if let Some(n) = args.synthetic {
        let encoding = match args.encoding {
            EncodingArg::Json => Encoding::Json,
            EncodingArg::Avro => Encoding::Avro,
            EncodingArg::Confluent => Encoding::Confluent,
            EncodingArg::Mixed => Encoding::Mixed,
        };
        let config = SynthConfig {
            seed: args.seed,
            accounts: args.accounts,
            bad_every: args.bad_every,
            encoding,
            id_prefix: args.id_prefix.clone().unwrap_or_else(|| format!("synthetic-{}", args.seed)),
            ..SynthConfig::default()
        };
        for message in Generator::new(config).take(n as usize) {
            if let Some(kind) = message.expected_rejection {
                *bad_by_kind.entry(kind.code()).or_default() += 1;
            }
            chunk.push((message.key, message.payload));
            if chunk.len() == CHUNK_MESSAGES {
                sent += send_chunk(&mut chunk).await?;
                progress.set_position(sent);
            }
        }
    } else {
        let reader: Box<dyn BufRead> = match args.input.as_deref() {
            None => Box::new(std::io::stdin().lock()),
            Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
            Some(p) => Box::new(std::io::BufReader::new(
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
            )),
        };
        for line in reader.lines() {
            let line = line.context("reading input")?;
            if line.trim().is_empty() {
                continue;
            }
            // Keyed by account so that one account's events stay in order on
            // one partition; a line that does not decode is sent unkeyed and
            // the pipeline dead-letters it.
            let key =
                usage_codec::decode_json(line.as_bytes()).map(|e| e.account_id.as_bytes().to_vec()).unwrap_or_default();
            chunk.push((key, line.into_bytes()));
            if chunk.len() == CHUNK_MESSAGES {
                sent += send_chunk(&mut chunk).await?;
                progress.set_position(sent);
            }
        }
    }
    if !chunk.is_empty() {
        sent += send_chunk(&mut chunk).await?;
    }
    progress.finish_and_clear();
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
