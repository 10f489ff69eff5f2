//! Every value a priced row can hold, ClickHouse stores: the row's types
//! are the columns' (strings are bytes, counts `UInt64`, amounts bounded to
//! `Decimal(38, 24)` by `Amount` itself, instants `DateTime`'s `UInt32`,
//! the nested arrays built together), so there is no row ClickHouse would
//! refuse for its value, and none to dead-letter for it. A refusal could
//! only come from the server's own rules (a constraint an operator adds):
//! a permanent error, which stops the partitions loudly
//! (`tests/permanent_errors.rs`). Rows at every bound, through the
//! pipeline's own INSERT (RowBinary), read back exactly.

use usage_clickhouse::{quote, PricedRow};
use usage_model::{Amount, CostLine, Currency, ServiceTier, Unit, UsageCounts};

fn extreme_row(event_id: String, occurred_at: u32, cost: Amount, edge: Amount) -> PricedRow {
    // The limits' bounds: ids of 128 characters, names of 256, 64
    // attributes; characters of four bytes, quotes and backslashes.
    let name = "模\"'\\🦀".repeat(51) + "x";
    assert_eq!(name.chars().count(), 256);
    // Every unit of the registry reported at the largest count (but cache
    // writes, at 0), and 40 lines at the largest quantities.
    let mut usage = UsageCounts::default();
    for unit in Unit::all() {
        usage.set(unit, if unit == Unit::CACHE_WRITE_TOKENS { 0 } else { u64::MAX });
    }
    let lines = Unit::all()
        .take(40)
        .map(|unit| CostLine { unit, quantity: u64::MAX, priced_quantity: u64::MAX, unit_price: edge, cost })
        .collect();
    PricedRow {
        event_id: event_id.into(),
        account_id: "𝄞".repeat(128).into(),
        api_key_id: name.as_str().into(),
        project_id: name.as_str().into(),
        provider: name.as_str().into(),
        model: name.as_str().into(),
        matched_model: name.as_str().into(),
        service_tier: ServiceTier::Flex,
        rate_card: name.as_str().into(),
        rate_card_version: u32::MAX,
        contract_version: u32::MAX,
        occurred_at,
        currency: Currency::USD,
        cost,
        lines,
        attributes: (0..64)
            .map(|i| (format!("{i:02}{}", name.chars().skip(2).collect::<String>()), name.clone()))
            .collect(),
        kafka_topic: "t".repeat(249).into(),
        kafka_partition: i32::MAX,
        kafka_offset: i64::MAX,
        usage,
    }
}

fn array<T: ToString>(items: &[T], each: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(each).collect::<Vec<_>>().join(","))
}

#[tokio::test]
async fn rows_at_every_bound_of_their_values_are_stored_and_read_back_exactly() {
    let database = usage_integration_tests::unique("extreme");
    let sink = usage_integration_tests::clickhouse(&database);
    sink.migrate().await.unwrap();
    let tiny = Amount::const_scaled(1);
    let rows = [
        extreme_row("🦀".repeat(128), u32::MAX, Amount::MAX, tiny),
        extreme_row("e".into(), 0, Amount::MIN, Amount::MAX),
        extreme_row("'\\\"".repeat(42), 1_767_225_600, Amount::ZERO, tiny),
    ];
    sink.insert_with_id(&rows.iter().collect::<Vec<_>>(), &usage_integration_tests::unique("q")).await.unwrap();

    let table = sink.table("priced_events");
    for row in &rows {
        let lines = &row.lines;
        let amount = |a: &Amount| format!("toDecimal128({}, 24)", quote(&a.to_string()));
        let strings = |v: &[String]| array(v, |s| quote(s));
        let statics = |v: &[&str]| array(v, |s| quote(s));
        let numbers = |v: &[u64]| array(v, |n| n.to_string());
        let condition = [
            format!("event_id = {}", quote(&row.event_id)),
            format!("account_id = {}", quote(&row.account_id)),
            format!("api_key_id = {0} AND project_id = {0} AND provider = {0}", quote(&row.provider)),
            format!("model = {0} AND matched_model = {0} AND rate_card = {0}", quote(&row.model)),
            format!("service_tier = 'flex' AND rate_card_version = {0} AND contract_version = {0}", u32::MAX),
            format!("toUInt32(occurred_at) = {}", row.occurred_at),
            format!("input_tokens = {0} AND cache_read_tokens = {0} AND output_tokens = {0}", u64::MAX),
            format!("cache_write_tokens = 0 AND cost = {}", amount(&row.cost)),
            format!("`lines.unit` = {}", statics(&lines.iter().map(|l| l.unit.key()).collect::<Vec<_>>())),
            format!("`lines.quantity` = {}", numbers(&lines.iter().map(|l| l.quantity).collect::<Vec<_>>())),
            format!(
                "`lines.priced_quantity` = {}",
                numbers(&lines.iter().map(|l| l.priced_quantity).collect::<Vec<_>>())
            ),
            format!(
                "arrayMap(x -> toString(x), `lines.unit_price`) = {}",
                strings(&lines.iter().map(|l| l.unit_price.to_string()).collect::<Vec<_>>())
            ),
            format!("`lines.cost` = {}", array(&lines.iter().map(|l| l.cost).collect::<Vec<_>>(), amount)),
            format!("`attributes.key` = {}", strings(&row.attributes.keys().map(str::to_owned).collect::<Vec<_>>())),
            format!(
                "`attributes.value` = {}",
                strings(&row.attributes.values().map(str::to_owned).collect::<Vec<_>>())
            ),
            format!(
                "kafka_topic = {} AND kafka_partition = {} AND kafka_offset = {}",
                quote(&row.kafka_topic),
                i32::MAX,
                i64::MAX
            ),
            format!(
                "`usage.unit` = {} AND `usage.quantity` = {}",
                statics(&row.usage.iter().map(|(u, _)| u.key()).collect::<Vec<_>>()),
                numbers(&row.usage.iter().map(|(_, q)| q).collect::<Vec<_>>())
            ),
        ]
        .join(" AND ");
        let found = sink.query_tsv(&format!("SELECT count() FROM {table} WHERE {condition}")).await.unwrap();
        assert_eq!(
            found.concat().concat(),
            "1",
            "row {:?} at {} for {}",
            &row.event_id[..4.min(row.event_id.len())],
            row.occurred_at,
            row.cost
        );
    }
    let all = sink.query_tsv(&format!("SELECT count() FROM {table}")).await.unwrap();
    assert_eq!(all.concat().concat(), "3");
    // The rollups took them too (their sums of the largest amounts included).
    for rollup in usage_clickhouse::ROLLUPS {
        let n = sink.query_tsv(&format!("SELECT sum(events) FROM {}", sink.table(rollup.table))).await.unwrap();
        assert_eq!(n.concat().concat(), "3", "{}", rollup.table);
    }
    sink.execute(&format!("DROP DATABASE {database}")).await.unwrap();
}
