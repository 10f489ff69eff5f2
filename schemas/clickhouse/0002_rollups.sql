-- Rollups for the questions analysts ask most, kept by materialized views.
--
-- SummingMergeTree: rows with the same key are summed when parts merge, so
-- a key may have several rows until then; analysts always aggregate
-- (sum(cost) ... GROUP BY key), which is exact with or without merges, and
-- never need FINAL. A view sees each INSERT into priced_events once, so the
-- rollups are exact as long as every priced event is inserted once, which
-- the pipeline guarantees (README, "Guarantees").
-- Each rollup keeps the currency in its key: costs in different currencies
-- are never summed together.

CREATE TABLE IF NOT EXISTS {database}.cost_by_account_model_hour
(
    account_id String,
    hour DateTime('UTC'),
    provider String,
    matched_model String,
    currency String,
    events UInt64,
    input_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    output_tokens UInt64,
    cost Decimal(38, 24)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (account_id, hour, provider, matched_model, currency);

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.cost_by_account_model_hour_mv
TO {database}.cost_by_account_model_hour
AS SELECT
    account_id,
    toStartOfHour(occurred_at) AS hour,
    provider,
    matched_model,
    currency,
    count() AS events,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, hour, provider, matched_model, currency;

CREATE TABLE IF NOT EXISTS {database}.cost_by_account_day
(
    account_id String,
    day Date,
    currency String,
    events UInt64,
    cost Decimal(38, 24)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, day, currency);

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.cost_by_account_day_mv
TO {database}.cost_by_account_day
AS SELECT account_id, toDate(occurred_at) AS day, currency, count() AS events, sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, day, currency;

CREATE TABLE IF NOT EXISTS {database}.cost_by_api_key_day
(
    account_id String,
    api_key_id String,
    day Date,
    currency String,
    events UInt64,
    cost Decimal(38, 24)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, api_key_id, day, currency);

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.cost_by_api_key_day_mv
TO {database}.cost_by_api_key_day
AS SELECT account_id, api_key_id, toDate(occurred_at) AS day, currency, count() AS events, sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, api_key_id, day, currency;

CREATE TABLE IF NOT EXISTS {database}.cost_by_project_day
(
    account_id String,
    project_id String,
    day Date,
    currency String,
    events UInt64,
    cost Decimal(38, 24)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, project_id, day, currency);

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.cost_by_project_day_mv
TO {database}.cost_by_project_day
AS SELECT account_id, project_id, toDate(occurred_at) AS day, currency, count() AS events, sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, project_id, day, currency;
