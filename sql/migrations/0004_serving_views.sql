-- Serving views: one row per (window, project, event, dimensions), summed over
-- source partitions, with percentiles read from the merged histogram exactly
-- as HdrHistogram's value_at_quantile does (first bucket whose cumulative
-- count reaches ceil(q * total)), converted back from thousandths.
CREATE VIEW IF NOT EXISTS {db}.metrics_5m AS
SELECT
    window_start, project_id, event, dimensions, events, users,
    value_count, value_sum, value_min, value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.50 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p50,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.90 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p90,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.95 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p95,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.99 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p99,
    hist_values,
    hist_counts
FROM
(
    SELECT
        window_start, project_id, event, dimensions,
        sum(n) AS events,
        sum(u) AS users,
        sum(vc) AS value_count,
        sum(vs) AS value_sum,
        minIf(vmin, vc > 0) AS value_min,
        maxIf(vmax, vc > 0) AS value_max,
        sumMap(hv, hc) AS hist,
        tupleElement(hist, 1) AS hist_values,
        tupleElement(hist, 2) AS hist_counts
    FROM
    (
        SELECT window_start, project_id, event, dimensions, events AS n, users AS u,
               value_count AS vc, value_sum AS vs, value_min AS vmin, value_max AS vmax,
               hist_values AS hv, hist_counts AS hc
        FROM {db}.rollup_5m
    )
    GROUP BY window_start, project_id, event, dimensions
);

CREATE VIEW IF NOT EXISTS {db}.metrics_1h AS
SELECT
    window_start, project_id, event, dimensions, events, users,
    value_count, value_sum, value_min, value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.50 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p50,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.90 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p90,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.95 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p95,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.99 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p99,
    hist_values,
    hist_counts
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
        sumMapMerge(hist_state) AS merged_hist,
        tupleElement(merged_hist, 1) AS hist_values,
        tupleElement(merged_hist, 2) AS hist_counts
    FROM {db}.rollup_1h
    GROUP BY bucket_start, project_id, event, dimensions
);

CREATE VIEW IF NOT EXISTS {db}.metrics_1d AS
SELECT
    window_start, project_id, event, dimensions, events, users,
    value_count, value_sum, value_min, value_max,
    if(value_count > 0, value_sum / value_count, 0) AS value_avg,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.50 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p50,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.90 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p90,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.95 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p95,
    arrayElement(hist_values, arrayFirstIndex(c -> c >= greatest(1, ceil(0.99 * value_count)), arrayCumSum(hist_counts))) / 1000 AS p99,
    hist_values,
    hist_counts
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
        sumMapMerge(hist_state) AS merged_hist,
        tupleElement(merged_hist, 1) AS hist_values,
        tupleElement(merged_hist, 2) AS hist_counts
    FROM {db}.rollup_1d
    GROUP BY bucket_start, project_id, event, dimensions
);
