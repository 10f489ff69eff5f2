//! The criterion bench's work, a fixed number of passes, for profilers and
//! instruction counts (`perf stat -e instructions:u`), which are steadier
//! than times on a shared machine:
//! `cargo run --release -p usage-bench --example pricing_passes -- json 20`
//! (`LAPS=1`: the rate of every ten passes too, to see the machine's pace move).

use std::sync::Arc;
use std::time::Instant;
use usage_codec::{AvroWire, Decoder, SchemaResolver, ValueFormat, PINNED_SCHEMA_ID};
use usage_pricing::Pricer;
use usage_pricing_stage::{Processor, SystemClock};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let format = args.next().unwrap_or_else(|| "json".into());
    let passes: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);
    let wire = match format.as_str() {
        "json" => None,
        "avro" => Some(AvroWire::Plain),
        "confluent" => Some(AvroWire::Confluent(PINNED_SCHEMA_ID)),
        other => {
            eprintln!("unknown format {other:?}: json, avro or confluent");
            std::process::exit(2);
        }
    };
    let book = usage_bench::genai_prices_book().expect("the genai-prices catalog imports");
    let payloads = usage_bench::encode(&usage_bench::event_mix(&book, 20_000, 7), wire);
    let decoder = Decoder::new(ValueFormat::Auto, SchemaResolver::pinned());
    let limits = usage_model::EventLimits::default();
    let mut processor = Processor::new(decoder, Pricer::new(book), limits, Arc::new(SystemClock));
    let started = Instant::now();
    let laps = std::env::var_os("LAPS").is_some();
    let mut lap = Instant::now();
    for pass in 0..passes {
        usage_bench::price_all(&mut processor, &payloads);
        if laps && pass % 10 == 9 {
            eprintln!(
                "passes {}..{}: {:.0} events/s",
                pass - 9,
                pass + 1,
                10.0 * payloads.len() as f64 / lap.elapsed().as_secs_f64()
            );
            lap = Instant::now();
        }
    }
    let n = passes * payloads.len();
    println!("{format}: {n} events, {:.0} events/s", n as f64 / started.elapsed().as_secs_f64());
}
