//! The pricing core on one thread: decode + match + price + build the
//! ClickHouse row, for the JSON and the plain-Avro wire formats, with the
//! whole genai-prices catalog loaded and a realistic event mix.
//! `make bench` turns the estimates into events/s per core.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use usage_clickhouse::PricedRow;
use usage_codec::{Decoder, SchemaResolver, ValueFormat};
use usage_pricing::Pricer;

/// Events per measured iteration.
const BATCH: usize = 10_000;

fn pricing(c: &mut Criterion) {
    let book = usage_bench::genai_prices_book().expect("the genai-prices catalog imports");
    let events = usage_bench::event_mix(&book, BATCH, 7);
    let mut group = c.benchmark_group("pricing");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for (name, format, avro) in [("json", ValueFormat::Json, false), ("avro", ValueFormat::Avro, true)] {
        let payloads = usage_bench::encode(&events, avro);
        let decoder = Decoder::new(format, SchemaResolver::pinned());
        let mut pricer = Pricer::new(book.clone());
        group.bench_function(name, |b| {
            b.iter_batched(
                || (),
                |()| {
                    for (offset, payload) in payloads.iter().enumerate() {
                        let event = decoder.decode(payload).expect("valid event");
                        let priced = pricer.price(event).expect("priceable");
                        black_box(priced.cost);
                        let row = PricedRow::new(priced, "usage.raw", 0, offset as i64).expect("row");
                        black_box(row);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, pricing);
criterion_main!(benches);
