-- One switch per bucket. Each serving view used to ask `batch_commits`
-- twice, once for the speed half (buckets without a visible commit) and once
-- for the batch half (buckets with one), each subquery with its own `now()`;
-- ClickHouse 18.16 evaluates them apart, so a reading whose halves straddle
-- the second a commit becomes visible counted that bucket in both layers
-- (seen once in `batch_end_to_end`: a day read as speed + batch). Now both
-- halves' rows carry their version (speed rows 0) and the bucket the switch
-- is decided for, and one subquery says which version each bucket shows:
-- the largest visible one, or 0 (speed) when none is visible yet.
DROP TABLE IF EXISTS {db}.metrics_5m;

CREATE VIEW IF NOT EXISTS {db}.metrics_5m AS
SELECT window_start, project_id, event, dimensions, events, users, value_count, value_sum,
    value_min, value_max, value_avg, hist, hist_values, hist_counts, p50, p90, p95, p99, layer
FROM
(
    SELECT
        window_start, project_id, event, dimensions,
        n AS events, u AS users, vc AS value_count, vs AS value_sum,
        vmin AS value_min, vmax AS value_max,
        if(value_count > 0, value_sum / value_count, 0) AS value_avg,
        h AS hist,
        tupleElement(hist, 1) AS hist_values,
        tupleElement(hist, 2) AS hist_counts,
        arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.50 * value_count)), hist_counts))) / 1000 AS p50,
        arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.90 * value_count)), hist_counts))) / 1000 AS p90,
        arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.95 * value_count)), hist_counts))) / 1000 AS p95,
        arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.99 * value_count)), hist_counts))) / 1000 AS p99,
        layer, switch_bucket, version
    FROM
    (
        SELECT
            window_start, project_id, event, dimensions,
            sum(events) AS n,
            sum(users) AS u,
            sum(value_count) AS vc,
            sum(value_sum) AS vs,
            minIf(value_min, value_count > 0) AS vmin,
            maxIf(value_max, value_count > 0) AS vmax,
            sumMap(hist_values, hist_counts) AS h,
            'speed' AS layer,
            toStartOfHour(window_start) AS switch_bucket, toUInt64(0) AS version
        FROM {db}.rollup_5m
        GROUP BY window_start, project_id, event, dimensions
    )
    UNION ALL
    SELECT
        bucket_start AS window_start, project_id, event, dimensions, events, users,
        value_count, value_sum, value_min, value_max,
        if(value_count > 0, value_sum / value_count, 0) AS value_avg,
        (hist_values, hist_counts) AS hist, hist_values, hist_counts,
        p50, p90, p95, p99,
        'batch' AS layer,
        toStartOfHour(bucket_start) AS switch_bucket, version
    FROM {db}.batch_rollups
    WHERE period_secs = 300 AND dimensions != '*'
) AS layered
ANY LEFT JOIN
(
    SELECT bucket_start AS switch_bucket, max(version) AS visible_version
    FROM {db}.batch_commits
    WHERE period_secs = 3600 AND visible_from <= now()
    GROUP BY bucket_start
) AS visible USING switch_bucket
WHERE version = visible_version;

DROP TABLE IF EXISTS {db}.metrics_1h;

CREATE VIEW IF NOT EXISTS {db}.metrics_1h AS
SELECT window_start, project_id, event, dimensions, events, users, value_count, value_sum,
    value_min, value_max, value_avg, hist, hist_values, hist_counts, p50, p90, p95, p99, layer
FROM
(
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
        'speed' AS layer,
        bucket_start AS switch_bucket, toUInt64(0) AS version
    FROM {db}.rollup_1h
    GROUP BY bucket_start, project_id, event, dimensions
    UNION ALL
    SELECT
        bucket_start AS window_start, project_id, event, dimensions, events, users,
        value_count, value_sum, value_min, value_max,
        if(value_count > 0, value_sum / value_count, 0) AS value_avg,
        (hist_values, hist_counts) AS hist, hist_values, hist_counts,
        p50, p90, p95, p99,
        'batch' AS layer,
        bucket_start AS switch_bucket, version
    FROM {db}.batch_rollups
    WHERE period_secs = 3600 AND dimensions != '*'
) AS layered
ANY LEFT JOIN
(
    SELECT bucket_start AS switch_bucket, max(version) AS visible_version
    FROM {db}.batch_commits
    WHERE period_secs = 3600 AND visible_from <= now()
    GROUP BY bucket_start
) AS visible USING switch_bucket
WHERE version = visible_version;

DROP TABLE IF EXISTS {db}.metrics_1d;

CREATE VIEW IF NOT EXISTS {db}.metrics_1d AS
SELECT window_start, project_id, event, dimensions, events, users, value_count, value_sum,
    value_min, value_max, value_avg, hist, hist_values, hist_counts, p50, p90, p95, p99, layer
FROM
(
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
        'speed' AS layer,
        bucket_start AS switch_bucket, toUInt64(0) AS version
    FROM {db}.rollup_1d
    GROUP BY bucket_start, project_id, event, dimensions
    UNION ALL
    SELECT
        bucket_start AS window_start, project_id, event, dimensions, events, users,
        value_count, value_sum, value_min, value_max,
        if(value_count > 0, value_sum / value_count, 0) AS value_avg,
        (hist_values, hist_counts) AS hist, hist_values, hist_counts,
        p50, p90, p95, p99,
        'batch' AS layer,
        bucket_start AS switch_bucket, version
    FROM {db}.batch_rollups
    WHERE period_secs = 86400 AND dimensions != '*'
) AS layered
ANY LEFT JOIN
(
    SELECT bucket_start AS switch_bucket, max(version) AS visible_version
    FROM {db}.batch_commits
    WHERE period_secs = 86400 AND visible_from <= now()
    GROUP BY bucket_start
) AS visible USING switch_bucket
WHERE version = visible_version;
