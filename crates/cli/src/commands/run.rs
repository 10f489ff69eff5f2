//! `run` and `setup`.

use crate::cli::{RatesArg, RunArgs};
use crate::config::Settings;
use crate::summary::print_run_summary;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use usage_clickhouse::ClickHouseSink;
use usage_codec::{Decoder, SchemaResolver};
use usage_pricing::Pricer;
use usage_pricing_stage::{
    prepare, read_dir_texts, Pipeline, PipelineMetrics, Processor, RateFeed, Shutdown, StopWhen, SystemClock,
};

/// Bound on reading the rate-card topic at start.
const RATE_FEED_TIMEOUT: Duration = Duration::from_secs(30);

pub fn schema_resolver(settings: &Settings) -> SchemaResolver {
    match &settings.schema_registry_url {
        Some(url) => SchemaResolver::registry(url.clone()),
        None => SchemaResolver::pinned(),
    }
}

/// Local rate-card files: the directory of `--rate-cards` or the settings;
/// a default directory that does not exist means "the topic only".
fn local_rate_cards(settings: &Settings, rates: &RatesArg) -> Result<Vec<(PathBuf, String)>> {
    let (dir, explicit) = match &rates.rate_cards {
        Some(d) => (d.clone(), true),
        None => (settings.rate_cards.clone(), settings.rate_cards_explicit),
    };
    if !dir.exists() {
        if explicit {
            bail!("rate-card directory {} does not exist", dir.display());
        }
        return Ok(Vec::new());
    }
    read_dir_texts(&dir).with_context(|| format!("reading rate cards from {}", dir.display()))
}

/// The rate cards of `run` and `backfill`: local files, then the rate-card
/// topic, followed for new versions.
pub(crate) async fn start_rate_feed(settings: &Settings, rates: &RatesArg) -> Result<RateFeed> {
    let local = local_rate_cards(settings, rates)?;
    let (kafka, topic, default_card) =
        (settings.kafka.clone(), settings.stream.rate_cards_topic.clone(), settings.default_rate_card.clone());
    tokio::task::spawn_blocking(move || RateFeed::start(&kafka, &topic, local, default_card, RATE_FEED_TIMEOUT))
        .await?
        .context("loading rate cards (local files and the rate-card topic)")
}

pub async fn setup(settings: Settings, _rates: RatesArg) -> Result<ExitCode> {
    let sink = ClickHouseSink::new(settings.clickhouse.clone())?;
    prepare(&settings.stream, &settings.kafka, &sink).await.context("preparing topics and ClickHouse")?;
    usage_ledger_stage::prepare_ledger(&settings.ledger, &settings.kafka)
        .await
        .context("preparing the ledger's topics")?;
    println!(
        "topics {}, {} and {} ready on {}; ClickHouse {} database {} migrated",
        settings.stream.raw_topic,
        settings.stream.dead_letter_topic,
        settings.stream.rate_cards_topic,
        settings.kafka.brokers,
        settings.clickhouse.url,
        sink.database()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(mut settings: Settings, args: RunArgs) -> Result<ExitCode> {
    if args.until_caught_up {
        settings.stream.stop_when = StopWhen::CaughtUp { idle: Duration::from_millis(args.idle_ms) };
    }
    let mut registry = super::registry();
    let metrics = PipelineMetrics::new(&mut registry);
    let health = super::serve_probes_if_asked(&settings, args.metrics_addr.as_deref(), registry).await?;
    let sink = ClickHouseSink::new(settings.clickhouse.clone())?;
    prepare(&settings.stream, &settings.kafka, &sink).await.context("preparing topics and ClickHouse")?;
    let feed = start_rate_feed(&settings, &args.rates).await?;
    let decoder = Decoder::new(settings.stream.value_format, schema_resolver(&settings));
    let processor =
        Processor::new(decoder, Pricer::new(feed.current()), settings.stream.limits.clone(), Arc::new(SystemClock));
    let mut pipeline = Pipeline::new(settings.stream.clone(), settings.kafka.clone(), sink.clone(), processor)?
        .with_rate_updates(feed.subscribe())
        .with_health(health)
        .with_metrics(metrics);
    tracing::info!(
        brokers = %settings.kafka.brokers,
        clickhouse = %settings.clickhouse.url,
        database = %sink.database(),
        "pipeline starting"
    );
    let (stop, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: finishing the batch in flight");
        let _ = stop.send(true);
    });
    let report = pipeline.run(shutdown).await?;
    drop(feed);
    let consistent = if args.json {
        crate::summary::print_run_summary_json(&report, &sink).await?
    } else {
        print_run_summary(&report, &sink).await?
    };
    Ok(if consistent { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the pipeline");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
