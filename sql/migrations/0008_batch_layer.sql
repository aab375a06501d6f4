-- The batch layer (`hourglass batch`): every closed hour recomputed from the
-- raw record, replacing the speed layer's numbers for the hours it covers.

-- The configured dimensions of each event as the aggregator keys them (its
-- canonical JSON object), written by the loader and by replay, so the batch
-- groups exactly as the speed layer does without parsing `properties` in SQL.
-- Rows loaded before this column existed read '' and batch under empty
-- dimension values.
ALTER TABLE {db}.events ADD COLUMN dimensions String DEFAULT '';

-- One batch pass over an hour, per 5-minute window and key: mergeable
-- distinct-user states, so the hour's and the day's rows (and their
-- all-dimensions totals) derive from these small rows instead of another
-- scan of `events`. `version` is the pass.
CREATE TABLE IF NOT EXISTS {db}.batch_states
(
    version UInt64,
    hour DateTime,
    window_start DateTime,
    project_id {lc_string},
    event {lc_string},
    dimensions String,
    events UInt64,
    users_state AggregateFunction(uniqExact, String),
    value_count UInt64,
    value_sum Float64,
    value_min Float64,
    value_max Float64,
    hist_values Array(UInt64),
    hist_counts Array(UInt64)
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, version, project_id, event, window_start, dimensions);

-- Finalized batch output: plain numbers per period (300, 3600 or 86400
-- seconds), key and pass, plus one all-dimensions total row per (period,
-- project, event) with dimensions '*'. Only passes named in batch_commits are
-- ever read; a pass killed before its commit leaves rows nobody reads.
CREATE TABLE IF NOT EXISTS {db}.batch_rollups
(
    period_secs UInt32,
    bucket_start DateTime,
    project_id {lc_string},
    event {lc_string},
    dimensions String,
    version UInt64,
    events UInt64,
    users UInt64,
    value_count UInt64,
    value_sum Float64,
    value_min Float64,
    value_max Float64,
    p50 Float64,
    p90 Float64,
    p95 Float64,
    p99 Float64,
    hist_values Array(UInt64),
    hist_counts Array(UInt64)
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(bucket_start)
ORDER BY (project_id, event, period_secs, bucket_start, dimensions, version);

-- Which pass serves which period: a row (3600, hour) covers that hour's 5m
-- and 1h buckets, (86400, day) that day's 1d bucket. One single-row INSERT
-- after the pass's rows have landed is the atomic switch; the latest
-- version wins. A commit counts only from `visible_from` (a few seconds after
-- it is written, by the server's clock), and readers compare it with now(),
-- which ClickHouse fixes once per query: every subquery of one read sees
-- the same commits, so no read sees an hour from both layers or from none.
CREATE TABLE IF NOT EXISTS {db}.batch_commits
(
    period_secs UInt32,
    bucket_start DateTime,
    version UInt64,
    source String,
    raw_as_of DateTime,
    visible_from DateTime,
    events UInt64,
    committed_at DateTime DEFAULT now()
)
ENGINE = MergeTree()
ORDER BY (period_secs, bucket_start, version);

-- Per event hour, how many rows were loaded into `events` and when last:
-- written by the insert itself, so the batch finds hours that changed after
-- their pass (late arrivals, imports, replays) without scanning `events`,
-- and reconciliation knows how many copies the loader saw.
CREATE TABLE IF NOT EXISTS {db}.event_hours
(
    hour DateTime,
    project_id String,
    event String,
    copies UInt64,
    inserted_at DateTime
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, project_id, event);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_hours_mv TO {db}.event_hours AS
SELECT
    toStartOfHour(timestamp) AS hour,
    project_id,
    event,
    count() AS copies,
    now() AS inserted_at
FROM {db}.events
GROUP BY hour, project_id, event;

-- Events removed by a user deletion, per event hour, counted before the
-- delete: those hours are recomputed, and reconciliation explains the drop.
CREATE TABLE IF NOT EXISTS {db}.deleted_events
(
    hour DateTime,
    project_id String,
    event String,
    user String,
    events UInt64,
    requested_at DateTime
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, project_id, event, user);

-- Events the aggregator counted late (their window had closed), one row per
-- Kafka record: rewritten rows after a restart collapse on the key, and
-- uniqExact over it counts each once.
CREATE TABLE IF NOT EXISTS {db}.late_events
(
    hour DateTime,
    project_id String,
    event String,
    source_topic String,
    source_partition UInt16,
    source_offset Int64,
    seen_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, project_id, event, source_topic, source_partition, source_offset);

-- Speed against batch per hour and event, written by each batch pass and by
-- `hourglass reconcile`.
CREATE TABLE IF NOT EXISTS {db}.reconciliation
(
    hour DateTime,
    project_id String,
    event String,
    version UInt64,
    speed_events UInt64,
    batch_events UInt64,
    speed_users UInt64,
    batch_users UInt64,
    copies_loaded UInt64,
    duplicates_removed Int64,
    late_added UInt64,
    deleted_removed UInt64,
    unexplained Int64,
    drift Float64,
    checked_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree(checked_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, project_id, event, version);

-- Which `hourglass batch` runs against this database: one holder at a time.
CREATE TABLE IF NOT EXISTS {db}.batch_lease
(
    holder String,
    acquired_at DateTime,
    renewed_at DateTime
)
ENGINE = MergeTree()
ORDER BY (acquired_at, holder);

-- Serving views: batch rows for the periods a visible commit covers, speed
-- rows for the rest, each with the layer that answered. Total rows
-- (dimensions '*') are left out: a sum over dimensions must not count twice.
DROP TABLE IF EXISTS {db}.metrics_5m;

CREATE VIEW IF NOT EXISTS {db}.metrics_5m AS
SELECT
    window_start, project_id, event, dimensions,
    sum(n) AS events,
    sum(u) AS users,
    sum(vc) AS value_count,
    sum(vs) AS value_sum,
    minIf(vmin, vc > 0) AS value_min,
    maxIf(vmax, vc > 0) AS value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    sumMap(hv, hc) AS hist,
    tupleElement(hist, 1) AS hist_values,
    tupleElement(hist, 2) AS hist_counts,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.50 * value_count)), hist_counts))) / 1000 AS p50,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.90 * value_count)), hist_counts))) / 1000 AS p90,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.95 * value_count)), hist_counts))) / 1000 AS p95,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.99 * value_count)), hist_counts))) / 1000 AS p99,
    'speed' AS layer
FROM
(
    SELECT window_start, project_id, event, dimensions, events AS n, users AS u,
           value_count AS vc, value_sum AS vs, value_min AS vmin, value_max AS vmax,
           hist_values AS hv, hist_counts AS hc
    FROM {db}.rollup_5m
    WHERE toStartOfHour(window_start) NOT IN
        (SELECT bucket_start FROM {db}.batch_commits WHERE period_secs = 3600 AND visible_from <= now())
)
GROUP BY window_start, project_id, event, dimensions
UNION ALL
SELECT
    bucket_start AS window_start, project_id, event, dimensions, events, users,
    value_count, value_sum, value_min, value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    (hist_values, hist_counts) AS hist, hist_values, hist_counts,
    p50, p90, p95, p99,
    'batch' AS layer
FROM {db}.batch_rollups
WHERE period_secs = 300 AND dimensions != '*'
  AND (toStartOfHour(bucket_start), version) IN
      (SELECT bucket_start, max(version) FROM {db}.batch_commits
       WHERE period_secs = 3600 AND visible_from <= now() GROUP BY bucket_start);

DROP TABLE IF EXISTS {db}.metrics_1h;

CREATE VIEW IF NOT EXISTS {db}.metrics_1h AS
SELECT
    bucket_start AS window_start, project_id, event, dimensions,
    sumMerge(events_state) AS events,
    uniqExactArrayMerge(users_state) AS users,
    sumMerge(value_count_state) AS value_count,
    sumMerge(value_sum_state) AS value_sum,
    minIfMerge(value_min_state) AS value_min,
    maxIfMerge(value_max_state) AS value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    sumMapMerge(hist_state) AS hist,
    tupleElement(hist, 1) AS hist_values,
    tupleElement(hist, 2) AS hist_counts,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.50 * value_count)), hist_counts))) / 1000 AS p50,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.90 * value_count)), hist_counts))) / 1000 AS p90,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.95 * value_count)), hist_counts))) / 1000 AS p95,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.99 * value_count)), hist_counts))) / 1000 AS p99,
    'speed' AS layer
FROM {db}.rollup_1h
WHERE bucket_start NOT IN
    (SELECT bucket_start FROM {db}.batch_commits WHERE period_secs = 3600 AND visible_from <= now())
GROUP BY bucket_start, project_id, event, dimensions
UNION ALL
SELECT
    bucket_start AS window_start, project_id, event, dimensions, events, users,
    value_count, value_sum, value_min, value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    (hist_values, hist_counts) AS hist, hist_values, hist_counts,
    p50, p90, p95, p99,
    'batch' AS layer
FROM {db}.batch_rollups
WHERE period_secs = 3600 AND dimensions != '*'
  AND (bucket_start, version) IN
      (SELECT bucket_start, max(version) FROM {db}.batch_commits
       WHERE period_secs = 3600 AND visible_from <= now() GROUP BY bucket_start);

DROP TABLE IF EXISTS {db}.metrics_1d;

CREATE VIEW IF NOT EXISTS {db}.metrics_1d AS
SELECT
    bucket_start AS window_start, project_id, event, dimensions,
    sumMerge(events_state) AS events,
    uniqExactArrayMerge(users_state) AS users,
    sumMerge(value_count_state) AS value_count,
    sumMerge(value_sum_state) AS value_sum,
    minIfMerge(value_min_state) AS value_min,
    maxIfMerge(value_max_state) AS value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    sumMapMerge(hist_state) AS hist,
    tupleElement(hist, 1) AS hist_values,
    tupleElement(hist, 2) AS hist_counts,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.50 * value_count)), hist_counts))) / 1000 AS p50,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.90 * value_count)), hist_counts))) / 1000 AS p90,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.95 * value_count)), hist_counts))) / 1000 AS p95,
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.99 * value_count)), hist_counts))) / 1000 AS p99,
    'speed' AS layer
FROM {db}.rollup_1d
WHERE bucket_start NOT IN
    (SELECT bucket_start FROM {db}.batch_commits WHERE period_secs = 86400 AND visible_from <= now())
GROUP BY bucket_start, project_id, event, dimensions
UNION ALL
SELECT
    bucket_start AS window_start, project_id, event, dimensions, events, users,
    value_count, value_sum, value_min, value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    (hist_values, hist_counts) AS hist, hist_values, hist_counts,
    p50, p90, p95, p99,
    'batch' AS layer
FROM {db}.batch_rollups
WHERE period_secs = 86400 AND dimensions != '*'
  AND (bucket_start, version) IN
      (SELECT bucket_start, max(version) FROM {db}.batch_commits
       WHERE period_secs = 86400 AND visible_from <= now() GROUP BY bucket_start);
