-- Serving views, flattened: every output column is computed in one SELECT
-- level. The first version (0004) computed percentiles over a subquery, and
-- older servers prune a subquery's columns by the outer select list: a
-- query selecting `p95` without `value_count` failed with "Unknown
-- identifier". Nor may a lambda capture a column (`value_count`): older
-- servers do not see the dependency; the threshold goes in as a second
-- array instead. Percentiles are read from the merged histogram exactly as
-- HdrHistogram's value_at_quantile does (first bucket whose cumulative count
-- reaches ceil(q * total)), converted back from thousandths.

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
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.99 * value_count)), hist_counts))) / 1000 AS p99
FROM
(
    -- Renamed so the aliases above cannot shadow source columns.
    SELECT window_start, project_id, event, dimensions, events AS n, users AS u,
           value_count AS vc, value_sum AS vs, value_min AS vmin, value_max AS vmax,
           hist_values AS hv, hist_counts AS hc
    FROM {db}.rollup_5m
)
GROUP BY window_start, project_id, event, dimensions;

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
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.99 * value_count)), hist_counts))) / 1000 AS p99
FROM {db}.rollup_1h
GROUP BY bucket_start, project_id, event, dimensions;

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
    arrayElement(hist_values, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hist_counts), replicate(greatest(1, ceil(0.99 * value_count)), hist_counts))) / 1000 AS p99
FROM {db}.rollup_1d
GROUP BY bucket_start, project_id, event, dimensions;
