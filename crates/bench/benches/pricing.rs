//! The pricing core on one thread, as the pipeline runs it per message:
//! format detection and decoding, the event limits, pricing, the ClickHouse
//! row and its duplicate-check key. The whole genai-prices catalog is
//! loaded; the stream has thousands of distinct model names (reported in
//! mixed case, as proxies do) and of accounts, API keys and projects, so
//! the caches and maps are as large as in production. JSON, plain Avro and
//! Confluent Avro. `make bench` turns the estimates into events/s per core.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;
use usage_codec::{AvroWire, Decoder, SchemaResolver, ValueFormat, PINNED_SCHEMA_ID};
use usage_pricing::Pricer;
use usage_pricing_stage::{Processor, SystemClock};

/// The pipeline's allocator: allocation is a good part of the cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per measured iteration.
const BATCH: usize = 20_000;

fn pricing(c: &mut Criterion) {
    let book = usage_bench::genai_prices_book().expect("the genai-prices catalog imports");
    let events = usage_bench::event_mix(&book, BATCH, 7);
    let mut group = c.benchmark_group("pricing");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for (name, wire) in
        [("json", None), ("avro", Some(AvroWire::Plain)), ("confluent", Some(AvroWire::Confluent(PINNED_SCHEMA_ID)))]
    {
        let payloads = usage_bench::encode(&events, wire);
        let limits = usage_model::EventLimits::default();
        let decoder = Decoder::new(ValueFormat::Auto, SchemaResolver::pinned());
        let mut processor = Processor::new(decoder, Pricer::new(book.clone()), limits, Arc::new(SystemClock));
        group.bench_function(name, |b| {
            b.iter_batched(|| (), |()| usage_bench::price_all(&mut processor, &payloads), BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, pricing);
criterion_main!(benches);
