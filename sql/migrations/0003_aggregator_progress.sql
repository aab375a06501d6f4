-- The aggregator's checkpoint per source partition, written by the same
-- INSERT that writes rollup_5m (through this view), so rows and checkpoint
-- land together. The offset and watermark only grow, so max() per partition
-- is the latest checkpoint; ReplacingMergeTree keeps the table at one row per
-- partition once merged. Column names differ from rollup_5m's on purpose:
-- older servers resolve a view's aliases against the source block's columns.
CREATE TABLE IF NOT EXISTS {db}.aggregator_progress
(
    topic String,
    partition_id UInt16,
    last_window_start DateTime,
    checkpoint_offset Int64,
    checkpoint_watermark_ms Int64,
    flushed_rows UInt64,
    flushed_at DateTime
)
ENGINE = ReplacingMergeTree(checkpoint_offset)
ORDER BY (topic, partition_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.aggregator_progress_mv TO {db}.aggregator_progress AS
SELECT
    source_topic AS topic,
    source_partition AS partition_id,
    max(window_start) AS last_window_start,
    max(resume_offset) AS checkpoint_offset,
    max(watermark_ms) AS checkpoint_watermark_ms,
    count() AS flushed_rows,
    now() AS flushed_at
FROM {db}.rollup_5m
GROUP BY source_topic, source_partition;
