-- The loader's progress per Kafka partition, written by the same INSERT that
-- writes `events` (through this view): on every assignment the loader resumes
-- after the highest offset already loaded, read from this small table rather
-- than from `events`. Offsets only grow, so max() per partition is current.
CREATE TABLE IF NOT EXISTS {db}.loader_progress
(
    partition_id UInt16,
    last_offset Int64,
    loaded_rows UInt64,
    loaded_at DateTime
)
ENGINE = ReplacingMergeTree(last_offset)
ORDER BY partition_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.loader_progress_mv TO {db}.loader_progress AS
SELECT
    kafka_partition AS partition_id,
    max(kafka_offset) AS last_offset,
    count() AS loaded_rows,
    now() AS loaded_at
FROM {db}.events
GROUP BY kafka_partition;
