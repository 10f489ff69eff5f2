//! `run` and `setup`.

use super::load_rate_book;
use crate::cli::{RatesArg, RunArgs};
use crate::config::Settings;
use crate::summary::print_run_summary;
use anyhow::{Context, Result};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use usage_clickhouse::ClickHouseSink;
use usage_codec::{Decoder, SchemaResolver};
use usage_pricing::Pricer;
use usage_stream::{Pipeline, Processor, Shutdown, StopWhen, SystemClock};

pub fn schema_resolver(settings: &Settings) -> SchemaResolver {
    match &settings.schema_registry_url {
        Some(url) => SchemaResolver::registry(url.clone()),
        None => SchemaResolver::pinned(),
    }
}

fn build(settings: &Settings, rates: &RatesArg) -> Result<(Pipeline, ClickHouseSink)> {
    let book = load_rate_book(settings, rates)?;
    let decoder = Decoder::new(settings.stream.value_format, schema_resolver(settings));
    let processor = Processor::new(decoder, Pricer::new(book), settings.stream.limits.clone(), Arc::new(SystemClock));
    let sink = ClickHouseSink::new(settings.clickhouse.clone())?;
    let pipeline = Pipeline::new(settings.stream.clone(), settings.kafka.clone(), sink.clone(), processor)?;
    Ok((pipeline, sink))
}

pub async fn setup(settings: Settings, rates: RatesArg) -> Result<ExitCode> {
    let (pipeline, sink) = build(&settings, &rates)?;
    pipeline.prepare().await.context("preparing topics and ClickHouse")?;
    println!(
        "topics {} and {} ready on {}; ClickHouse {} database {} migrated",
        settings.stream.raw_topic,
        settings.stream.dead_letter_topic,
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
    let (mut pipeline, sink) = build(&settings, &args.rates)?;
    pipeline.prepare().await.context("preparing topics and ClickHouse")?;
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
    let consistent = print_run_summary(&report, &sink).await?;
    Ok(if consistent { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

async fn wait_for_signal() {
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
