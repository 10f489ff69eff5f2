-- Priced usage events: one row per usage event, as priced by the pipeline.
-- Works on ClickHouse 18.16 and current releases (no DateTime64, no TTL).
--
-- PARTITION BY month: analysts filter by time, and old months can be
-- detached or dropped whole. ORDER BY starts with the account, then time:
-- "spend of account X this month" reads one narrow range.
-- `cost` and every price are exact Decimal(38, 24); never Float64.
-- `lines.*` hold one entry per priced unit (ARRAY JOIN lines for detail).
-- `contract_version` is the account's contract version that applied (0: none).
-- `kafka_*` say where the event came from: the delivery guarantees build on it.
CREATE TABLE IF NOT EXISTS {database}.priced_events
(
    event_id String,
    account_id String,
    api_key_id String,
    project_id String,
    provider String,
    model String,
    matched_model String,
    service_tier String,
    rate_card String,
    rate_card_version UInt32,
    contract_version UInt32,
    occurred_at DateTime('UTC'),
    currency String,
    input_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    output_tokens UInt64,
    cost Decimal(38, 24),
    lines Nested(
        unit String,
        quantity UInt64,
        priced_quantity UInt64,
        unit_price Decimal(38, 24),
        cost Decimal(38, 24)
    ),
    attributes Nested(
        key String,
        value String
    ),
    kafka_topic String,
    kafka_partition Int32,
    kafka_offset Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at, event_id);
