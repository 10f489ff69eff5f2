-- The last Kafka offset stored, per topic and partition, kept by a
-- materialized view from priced_events. This is where the pipeline resumes
-- (Kafka commits only report progress): rows and the offsets they came from
-- are in the same store, so they can never disagree by more than what the
-- duplicate check absorbs (a view is filled after its source table; a
-- lagging offset only makes the pipeline re-read rows it then finds stored).
-- ReplacingMergeTree keeps the largest offset per key once merged; readers
-- take max(last_offset), which is exact before merges too.
CREATE TABLE IF NOT EXISTS {database}.pipeline_offsets
(
    kafka_topic String,
    kafka_partition Int32,
    last_offset Int64
)
ENGINE = ReplacingMergeTree(last_offset)
ORDER BY (kafka_topic, kafka_partition);

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.pipeline_offsets_mv
TO {database}.pipeline_offsets
AS SELECT kafka_topic, kafka_partition, max(kafka_offset) AS last_offset
FROM {database}.priced_events
GROUP BY kafka_topic, kafka_partition;
