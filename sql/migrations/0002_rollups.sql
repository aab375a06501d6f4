-- Speed layer output: one row per (window, project, event, dimensions,
-- source partition). Users are keyed to one partition, so `users` summed over
-- source partitions is the exact distinct count of the window.
-- hist_values/hist_counts are the HdrHistogram's recorded buckets (values in
-- thousandths of `value`, each the bucket's highest equivalent value), so
-- buckets from many rows merge exactly with sumMap.
-- resume_offset and watermark_ms are the aggregator's checkpoint: where to
-- resume reading the source partition, and its event-time watermark.
CREATE TABLE IF NOT EXISTS {db}.rollup_5m
(
    window_start DateTime,
    project_id {lc_string},
    event {lc_string},
    dimensions String,
    source_topic {lc_string},
    source_partition UInt16,
    events UInt64,
    users UInt64,
    user_hashes Array(UInt64),
    value_count UInt64,
    value_sum Float64,
    value_min Float64,
    value_max Float64,
    p50 Float64,
    p90 Float64,
    p95 Float64,
    p99 Float64,
    hist_values Array(UInt64),
    hist_counts Array(UInt64),
    resume_offset Int64,
    watermark_ms Int64,
    flushed_at DateTime DEFAULT now()
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (project_id, event, window_start, dimensions, source_partition);

-- Hourly and daily rollups hold mergeable states, read through the serving
-- views. Both are fed from rollup_5m directly: materialized views do not
-- cascade on older servers. Column names differ from rollup_5m's (`_state`,
-- `bucket_start`) because older servers resolve a view's aliases against the
-- source block's columns.
CREATE TABLE IF NOT EXISTS {db}.rollup_1h
(
    bucket_start DateTime,
    project_id {lc_string},
    event {lc_string},
    dimensions String,
    events_state AggregateFunction(sum, UInt64),
    users_state AggregateFunction(uniqExactArray, Array(UInt64)),
    value_count_state AggregateFunction(sum, UInt64),
    value_sum_state AggregateFunction(sum, Float64),
    value_min_state AggregateFunction(minIf, Float64, UInt8),
    value_max_state AggregateFunction(maxIf, Float64, UInt8),
    hist_state AggregateFunction(sumMap, Array(UInt64), Array(UInt64))
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(bucket_start)
ORDER BY (project_id, event, bucket_start, dimensions);

CREATE TABLE IF NOT EXISTS {db}.rollup_1d
(
    bucket_start DateTime,
    project_id {lc_string},
    event {lc_string},
    dimensions String,
    events_state AggregateFunction(sum, UInt64),
    users_state AggregateFunction(uniqExactArray, Array(UInt64)),
    value_count_state AggregateFunction(sum, UInt64),
    value_sum_state AggregateFunction(sum, Float64),
    value_min_state AggregateFunction(minIf, Float64, UInt8),
    value_max_state AggregateFunction(maxIf, Float64, UInt8),
    hist_state AggregateFunction(sumMap, Array(UInt64), Array(UInt64))
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(bucket_start)
ORDER BY (project_id, event, bucket_start, dimensions);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollup_1h_mv TO {db}.rollup_1h AS
SELECT
    toStartOfHour(window_start) AS bucket_start,
    project_id,
    event,
    dimensions,
    sumState(events) AS events_state,
    uniqExactArrayState(user_hashes) AS users_state,
    sumState(value_count) AS value_count_state,
    sumState(value_sum) AS value_sum_state,
    minIfState(value_min, value_count > 0) AS value_min_state,
    maxIfState(value_max, value_count > 0) AS value_max_state,
    sumMapState(hist_values, hist_counts) AS hist_state
FROM {db}.rollup_5m
GROUP BY bucket_start, project_id, event, dimensions;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollup_1d_mv TO {db}.rollup_1d AS
SELECT
    toStartOfDay(window_start) AS bucket_start,
    project_id,
    event,
    dimensions,
    sumState(events) AS events_state,
    uniqExactArrayState(user_hashes) AS users_state,
    sumState(value_count) AS value_count_state,
    sumState(value_sum) AS value_sum_state,
    minIfState(value_min, value_count > 0) AS value_min_state,
    maxIfState(value_max, value_count > 0) AS value_max_state,
    sumMapState(hist_values, hist_counts) AS hist_state
FROM {db}.rollup_5m
GROUP BY bucket_start, project_id, event, dimensions;
