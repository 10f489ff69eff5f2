-- Rollups keyed by the Kafka topic and partition their rows came from, and
-- pipeline offsets written by the pipeline instead of a view.
--
-- ClickHouse writes an INSERT into priced_events first, then into each
-- view's table; nothing makes the whole atomic. When the server dies in
-- between, or a view's INSERT fails, a rollup lacks rows that are stored.
-- With the source in the key, the owner of a partition (the only writer
-- of its rows) can compare a rollup with priced_events for the keys an
-- INSERT touched and add what is missing (usage-clickhouse `rollups.rs`).
-- Analysts still aggregate (sum ... GROUP BY); the source columns only
-- split a key's rows when an account's usage arrives on several partitions.
--
-- Each rollup is rebuilt from priced_events: its view is dropped, the key
-- extended, the table emptied and filled again, the view created again.
-- Applying it twice gives the same tables. Stop the pipelines while it
-- runs (`usage-pipeline setup` applies it): rows inserted meanwhile would
-- miss the rollups.
--
-- pipeline_offsets: the pipeline records a partition's offset once its
-- INSERTs, and any repair, are done; a view would record it as soon as
-- priced_events has the rows, before the rollups are known to have them.

DROP TABLE IF EXISTS {database}.cost_by_account_model_hour_mv;

ALTER TABLE {database}.cost_by_account_model_hour ADD COLUMN kafka_topic String, ADD COLUMN kafka_partition Int32,
    MODIFY ORDER BY (account_id, hour, provider, matched_model, currency, kafka_topic, kafka_partition);

TRUNCATE TABLE {database}.cost_by_account_model_hour;

INSERT INTO {database}.cost_by_account_model_hour (account_id, hour, provider, matched_model, currency, kafka_topic, kafka_partition, events, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, cost)
SELECT
    account_id,
    toStartOfHour(occurred_at) AS hour,
    provider,
    matched_model,
    currency,
    kafka_topic,
    kafka_partition,
    count() AS events,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, hour, provider, matched_model, currency, kafka_topic, kafka_partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.cost_by_account_model_hour_mv
TO {database}.cost_by_account_model_hour
AS SELECT
    account_id,
    toStartOfHour(occurred_at) AS hour,
    provider,
    matched_model,
    currency,
    kafka_topic,
    kafka_partition,
    count() AS events,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, hour, provider, matched_model, currency, kafka_topic, kafka_partition;

DROP TABLE IF EXISTS {database}.cost_by_account_day_mv;

ALTER TABLE {database}.cost_by_account_day ADD COLUMN kafka_topic String, ADD COLUMN kafka_partition Int32,
    MODIFY ORDER BY (account_id, day, currency, kafka_topic, kafka_partition);

TRUNCATE TABLE {database}.cost_by_account_day;

INSERT INTO {database}.cost_by_account_day (account_id, day, currency, kafka_topic, kafka_partition, events, cost)
SELECT
    account_id,
    toDate(occurred_at) AS day,
    currency,
    kafka_topic,
    kafka_partition,
    count() AS events,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, day, currency, kafka_topic, kafka_partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.cost_by_account_day_mv
TO {database}.cost_by_account_day
AS SELECT
    account_id,
    toDate(occurred_at) AS day,
    currency,
    kafka_topic,
    kafka_partition,
    count() AS events,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, day, currency, kafka_topic, kafka_partition;

DROP TABLE IF EXISTS {database}.cost_by_api_key_day_mv;

ALTER TABLE {database}.cost_by_api_key_day ADD COLUMN kafka_topic String, ADD COLUMN kafka_partition Int32,
    MODIFY ORDER BY (account_id, api_key_id, day, currency, kafka_topic, kafka_partition);

TRUNCATE TABLE {database}.cost_by_api_key_day;

INSERT INTO {database}.cost_by_api_key_day (account_id, api_key_id, day, currency, kafka_topic, kafka_partition, events, cost)
SELECT
    account_id,
    api_key_id,
    toDate(occurred_at) AS day,
    currency,
    kafka_topic,
    kafka_partition,
    count() AS events,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, api_key_id, day, currency, kafka_topic, kafka_partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.cost_by_api_key_day_mv
TO {database}.cost_by_api_key_day
AS SELECT
    account_id,
    api_key_id,
    toDate(occurred_at) AS day,
    currency,
    kafka_topic,
    kafka_partition,
    count() AS events,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, api_key_id, day, currency, kafka_topic, kafka_partition;

DROP TABLE IF EXISTS {database}.cost_by_project_day_mv;

ALTER TABLE {database}.cost_by_project_day ADD COLUMN kafka_topic String, ADD COLUMN kafka_partition Int32,
    MODIFY ORDER BY (account_id, project_id, day, currency, kafka_topic, kafka_partition);

TRUNCATE TABLE {database}.cost_by_project_day;

INSERT INTO {database}.cost_by_project_day (account_id, project_id, day, currency, kafka_topic, kafka_partition, events, cost)
SELECT
    account_id,
    project_id,
    toDate(occurred_at) AS day,
    currency,
    kafka_topic,
    kafka_partition,
    count() AS events,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, project_id, day, currency, kafka_topic, kafka_partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.cost_by_project_day_mv
TO {database}.cost_by_project_day
AS SELECT
    account_id,
    project_id,
    toDate(occurred_at) AS day,
    currency,
    kafka_topic,
    kafka_partition,
    count() AS events,
    sum(cost) AS cost
FROM {database}.priced_events
GROUP BY account_id, project_id, day, currency, kafka_topic, kafka_partition;

DROP TABLE IF EXISTS {database}.pipeline_offsets_mv;
