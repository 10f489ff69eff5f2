//! Prints every record of a topic (partition, offset, key, value): a
//! debugging aid for the integration tests' topics.
//! `cargo run -p usage-integration-tests --example dump_topic -- TOPIC [PARTITIONS]`

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let topic = args.next().expect("usage: dump_topic TOPIC [PARTITIONS]");
    let partitions: i32 = args.next().map(|p| p.parse().expect("a number")).unwrap_or(4);
    let settings = usage_integration_tests::kafka_settings();
    for p in 0..partitions {
        let records = usage_kafka::read_partition(&settings, &topic, p, Duration::from_secs(120)).expect("readable");
        for (i, (key, value)) in records.iter().enumerate() {
            let text = |b: &Option<Vec<u8>>| b.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            println!("{p}\t{i}\t{}\t{}", text(key), text(value));
        }
    }
}
