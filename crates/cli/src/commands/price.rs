//! `price`: NDJSON usage events in, NDJSON priced rows out, in input order.
//! The same decoder, checks and engine as the stream.

use super::load_rate_book;
use crate::cli::PriceArgs;
use crate::config::Settings;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use usage_codec::{priced_to_json, rejection_to_json, Decoder, SchemaResolver, ValueFormat};
use usage_model::{RejectReason, Rejection};
use usage_pricing::Pricer;
use usage_pricing_stage::{Clock, MessageOutcome, Processor, SystemClock};

struct FixedClock(DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

pub fn price(settings: Settings, args: PriceArgs) -> Result<ExitCode> {
    let book = load_rate_book(&settings, &args.rates)?;
    let clock: Arc<dyn Clock> = match &args.now {
        Some(t) => Arc::new(FixedClock(
            DateTime::parse_from_rfc3339(t).context("--now must be RFC 3339 with an offset")?.with_timezone(&Utc),
        )),
        None => Arc::new(SystemClock),
    };
    let decoder = Decoder::new(ValueFormat::Json, SchemaResolver::pinned());
    let mut processor = Processor::new(decoder, Pricer::new(book), settings.stream.limits.clone(), clock);

    let reader: Box<dyn BufRead> = match args.input.as_deref() {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        _ => Box::new(std::io::stdin().lock()),
    };
    let mut writer: Box<dyn Write> = match args.output.as_deref() {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        _ => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let (mut priced, mut failed) = (0u64, 0u64);
    for line in reader.lines() {
        let line = line.context("reading input")?;
        if line.trim().is_empty() {
            continue;
        }
        let out = match processor.evaluate(line.as_bytes()) {
            MessageOutcome::Priced(p) => {
                priced += 1;
                priced_to_json(&p)
            }
            MessageOutcome::Rejected(r) => {
                failed += 1;
                rejection_to_json(loose_event_id(&line).as_deref(), &r)
            }
            MessageOutcome::Unavailable(why) => {
                // JSON needs no schema registry; kept total for safety.
                failed += 1;
                rejection_to_json(loose_event_id(&line).as_deref(), &Rejection::new(RejectReason::UnknownSchema, why))
            }
        };
        writeln!(writer, "{out}").context("writing output")?;
    }
    writer.flush().context("writing output")?;
    tracing::info!(priced, failed, "priced");
    Ok(ExitCode::SUCCESS)
}

/// The `event_id` of a line that may not be a valid event, for error rows.
fn loose_event_id(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get("event_id")?.as_str().map(str::to_owned)
}
