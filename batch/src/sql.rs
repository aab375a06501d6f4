//! The statements of a batch pass. Every number is computed inside
//! ClickHouse (`INSERT … SELECT`), so a pass moves no event through this
//! process, and on a cluster the scan runs on the shards that hold the data.
//!
//! The speed layer's rules, restated in SQL: an event is in the 5-minute
//! window `floor(timestamp_ms / window) * window`; its user is `user_id`, or
//! `anonymous_id` when that is empty; its dimensions are the loader's copy of
//! the aggregator's key (`events.dimensions`); its value's bucket is
//! [`hourglass_core::histogram::sql_bucket`]. One event per `event_id`: the
//! earliest received copy (then the lowest partition and offset). A user's
//! events received up to their deletion request are left out.

use hourglass_core::histogram::sql_bucket;

/// What one statement's recompute of a run of consecutive hours needs to know.
#[derive(Debug, Clone)]
pub struct HourSpec<'a> {
    /// Table holding the raw record (`events`, or a staging table of the lake's rows).
    pub source: &'a str,
    pub version: u64,
    /// Start of the first hour, Unix seconds.
    pub hour: i64,
    /// End of the last hour (exclusive), Unix seconds.
    pub end: i64,
    pub window_secs: u32,
    pub dedup_margin_secs: u32,
    pub histogram_sigfig: u8,
    pub histogram_max_value: f64,
    /// Key text of an event without dimensions, for rows loaded before
    /// `events.dimensions` existed.
    pub empty_dimensions: &'a str,
}

/// The all-dimensions total row's `dimensions`.
pub const ALL_DIMENSIONS: &str = "*";

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The ids with more than one copy in the hours of `h` (widened by the
/// dedup margin), as `cityHash64(event_id)`, into `batch_dup_ids` under the
/// run's version: the only events [`hour_states`] has to deduplicate.
/// Grouping 8-byte hashes is a fraction of grouping every row's columns by
/// its 36-byte id.
pub fn duplicate_ids(h: &HourSpec<'_>) -> String {
    let (lo, hi) = h.widened();
    format!(
        "INSERT INTO batch_dup_ids (version, id_hash) \
         SELECT {version}, id_hash FROM ( \
            SELECT cityHash64(event_id) AS id_hash FROM {source} \
            WHERE timestamp >= toDateTime({lo}) AND timestamp < toDateTime({hi}) \
            GROUP BY id_hash HAVING count() > 1)",
        version = h.version,
        source = h.source,
    )
}

/// Forget one run's duplicate ids once its states are written.
pub fn drop_duplicate_ids(version: u64) -> String {
    format!("ALTER TABLE batch_dup_ids DROP PARTITION {version}")
}

impl HourSpec<'_> {
    /// The time range searched for copies of the hours' events.
    fn widened(&self) -> (i64, i64) {
        let margin = i64::from(self.dedup_margin_secs);
        (self.hour - margin, self.end + margin)
    }
}

/// The hours' 5-minute states into `batch_states`: the one aggregation of
/// the raw record a pass makes (after [`duplicate_ids`]). Events come by two
/// roads that together hold each event of the hours exactly once:
/// - an event with one copy, of a user never deleted, as it is stored (almost
///   every event, at the cost of a scan);
/// - the rest (ids named by `batch_dup_ids`, users named by `deletions`):
///   one row per `event_id`, its earliest received copy (each column's
///   `argMin` under the same key) over the hours widened by the dedup
///   margin, kept when its time is in the hours and it was received after
///   the last deletion request of its user that covers it (made
///   project-wide, or for the event's tenant).
///
/// Then one row per (window, key) with its distinct-user state and its
/// values' histogram buckets.
pub fn hour_states(h: &HourSpec<'_>) -> String {
    let window_ms = i64::from(h.window_secs) * 1000;
    let (lo, hi) = h.widened();
    let in_hours = |t: &str| format!("{t} >= {} AND {t} < {}", h.hour * 1000, h.end * 1000);
    let bucket = sql_bucket("v", h.histogram_sigfig, h.histogram_max_value);
    let hist = "sumMap(if(has_value, [toUInt64(b)], emptyArrayUInt64()), if(has_value, [toUInt64(1)], emptyArrayUInt64()))";
    let first = "(received_at, kafka_partition, kafka_offset)";
    let user = "if(user_id != '', user_id, anonymous_id)";
    let duplicates = format!(
        "cityHash64(event_id) GLOBAL IN (SELECT id_hash FROM batch_dup_ids WHERE version = {})",
        h.version
    );
    // GLOBAL: on a cluster `events` is Distributed and a shard would look
    // the subquery's table up in its own default database; the initiator
    // runs it once and ships the result (on one server it is the same).
    let deleted =
        format!("(project_id, {user}) GLOBAL IN (SELECT project_id, user FROM deletions)");
    format!(
        "INSERT INTO batch_states \
         (version, hour, window_start, project_id, event, dimensions, events, users_state, \
          value_count, value_sum, value_min, value_max, hist_values, hist_counts) \
         SELECT {version}, toDateTime(intDiv(w, 3600) * 3600), toDateTime(w), project_id, e, d, count(), \
                uniqExactState(user_key), countIf(has_value), sumIf(v, has_value), \
                minIf(v, has_value), maxIf(v, has_value), \
                tupleElement({hist}, 1), tupleElement({hist}, 2) \
         FROM ( \
            SELECT w, project_id, e, d, user_key, has_value, v, if(has_value, {bucket}, 0) AS b \
            FROM ( \
                SELECT project_id, event AS e, if(dimensions = '', {empty}, dimensions) AS d, \
                       {user} AS user_key, isNotNull(value) AS has_value, ifNull(value, 0.) AS v, \
                       intDiv(timestamp_ms, {window_ms}) * {window_secs} AS w \
                FROM {source} \
                WHERE timestamp >= toDateTime({lo}) AND timestamp < toDateTime({hi}) \
                  AND {stored_in_hours} AND NOT ({duplicates}) AND NOT ({deleted}) \
                UNION ALL \
                SELECT project_id, e, d, user_key, has_value, v, w \
                FROM ( \
                    SELECT fp AS project_id, fe AS e, if(fd = '', {empty}, fd) AS d, \
                           if(fu != '', fu, fa) AS user_key, isNotNull(fv) AS has_value, ifNull(fv, 0.) AS v, \
                           intDiv(ft, {window_ms}) * {window_secs} AS w, fr AS received, ftn AS tenant \
                    FROM ( \
                        SELECT argMin(project_id, {first}) AS fp, argMin(event, {first}) AS fe, \
                               argMin(dimensions, {first}) AS fd, argMin(user_id, {first}) AS fu, \
                               argMin(anonymous_id, {first}) AS fa, argMin(value, {first}) AS fv, \
                               argMin(timestamp_ms, {first}) AS ft, argMin(received_at, {first}) AS fr, \
                               argMin(tenant_id, {first}) AS ftn \
                        FROM {source} \
                        WHERE timestamp >= toDateTime({lo}) AND timestamp < toDateTime({hi}) \
                          AND ({duplicates} OR {deleted}) \
                        GROUP BY event_id \
                    ) \
                    WHERE {first_in_hours} \
                ) \
                ANY LEFT JOIN ( \
                    SELECT project_id, user AS user_key, \
                           groupArray(tenant_id) AS deleted_tenants, groupArray(until) AS deleted_until \
                    FROM ( \
                        SELECT project_id, user, tenant_id, max(requested_at) AS until \
                        FROM deletions GROUP BY project_id, user, tenant_id \
                    ) \
                    GROUP BY project_id, user \
                ) USING (project_id, user_key) \
                WHERE received > arrayReduce('max', \
                    arrayFilter((at, t, mine) -> t = '' OR t = mine, \
                                deleted_until, deleted_tenants, replicate(tenant, deleted_tenants))) \
            ) \
         ) \
         GROUP BY w, project_id, e, d",
        version = h.version,
        window_secs = h.window_secs,
        empty = quote(h.empty_dimensions),
        source = h.source,
        stored_in_hours = in_hours("timestamp_ms"),
        first_in_hours = in_hours("ft"),
    )
}

/// Percentile `q` of merged bucket arrays, read as the serving views and
/// [`hourglass_core::histogram::quantile_from_buckets`] read it.
fn percentile(q: &str) -> String {
    format!(
        "arrayElement(hv, arrayFirstIndex((c, t) -> c >= t, arrayCumSum(hc), replicate(greatest(1, ceil({q} * vc)), hc))) / 1000"
    )
}

/// Finalized rows into `batch_rollups` from the states of the given passes,
/// for each `(period_secs, totals)` of `parts` (period 300, 3600 or 86400;
/// per key, or with `totals` per (project, event) as [`ALL_DIMENSIONS`]), in
/// one statement: one part written and one round trip instead of one per
/// kind of row. `states` is a condition on `batch_states` naming the passes
/// to read.
pub fn finalize(parts: &[(u32, bool)], version: u64, states: &str) -> String {
    let selects = parts
        .iter()
        .map(|&(period_secs, totals)| finalized_rows(period_secs, version, states, totals))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!(
        "INSERT INTO batch_rollups \
         (period_secs, bucket_start, project_id, event, dimensions, version, events, users, \
          value_count, value_sum, value_min, value_max, p50, p90, p95, p99, hist_values, hist_counts) \
         {selects}"
    )
}

fn finalized_rows(period_secs: u32, version: u64, states: &str, totals: bool) -> String {
    let bucket = match period_secs {
        300 => "window_start".to_owned(),
        3600 => "hour".to_owned(),
        _ => "toDateTime(toStartOfDay(hour))".to_owned(),
    };
    let dims = if totals {
        quote(ALL_DIMENSIONS)
    } else {
        "dimensions".to_owned()
    };
    let group = if totals {
        "bucket, project_id, event"
    } else {
        "bucket, project_id, event, dimensions"
    };
    format!(
        "SELECT {period_secs}, bucket, project_id, event, {dims_out}, {version}, n, u, vc, vs, vmin, vmax, \
                {p50}, {p90}, {p95}, {p99}, hv, hc \
         FROM ( \
            SELECT {bucket} AS bucket, project_id, event, {dims_in} AS dims, \
                   sum(events) AS n, uniqExactMerge(users_state) AS u, \
                   sum(value_count) AS vc, sum(value_sum) AS vs, \
                   minIf(value_min, value_count > 0) AS vmin, maxIf(value_max, value_count > 0) AS vmax, \
                   sumMap(hist_values, hist_counts) AS hist, \
                   tupleElement(hist, 1) AS hv, tupleElement(hist, 2) AS hc \
            FROM batch_states WHERE {states} \
            GROUP BY {group} \
         )",
        dims_out = "dims",
        dims_in = dims,
        p50 = percentile("0.50"),
        p90 = percentile("0.90"),
        p95 = percentile("0.95"),
        p99 = percentile("0.99"),
    )
}

/// The condition on `batch_states` naming one pass over `[hour, end)` (one
/// version covers the run of hours one statement recomputed; the hour range
/// lets the primary key skip every other pass).
pub fn states_of_pass(hour: i64, end: i64, version: u64) -> String {
    format!("hour >= toDateTime({hour}) AND hour < toDateTime({end}) AND version = {version}")
}

/// The condition on `batch_states` naming the current pass of every hour of
/// one day (the day's rows derive from them).
pub fn states_of_day(day: i64) -> String {
    format!(
        "hour >= toDateTime({day}) AND hour < toDateTime({end}) AND (hour, version) IN ( \
            SELECT bucket_start, max(version) FROM batch_commits \
            WHERE period_secs = 3600 AND bucket_start >= toDateTime({day}) AND bucket_start < toDateTime({end}) \
            GROUP BY bucket_start)",
        end = day + 86_400
    )
}

/// The single-row commit that switches readers of a period to a pass,
/// `switch_delay_secs` from now by the server's clock.
pub fn commit(
    period_secs: u32,
    bucket_start: i64,
    version: u64,
    source: &str,
    raw_as_of: u32,
    switch_delay_secs: u32,
) -> String {
    let events = format!(
        "(SELECT sum(events) FROM batch_rollups WHERE period_secs = {period_secs} AND bucket_start = toDateTime({bucket_start}) AND version = {version} AND dimensions = '*')"
    );
    format!(
        "INSERT INTO batch_commits (period_secs, bucket_start, version, source, raw_as_of, visible_from, events) \
         SELECT {period_secs}, toDateTime({bucket_start}), {version}, {source}, toDateTime({raw_as_of}), \
                now() + {switch_delay_secs}, ifNull({events}, 0)",
        source = quote(source),
    )
}

/// The commits of a run of hours recomputed under one version, one row per
/// hour (hours left without events by deletions included, so their speed
/// rows are replaced too). Each row lands whole, so each hour switches at
/// once.
pub fn commit_hours(
    hours: &[i64],
    version: u64,
    source: &str,
    raw_as_of: u32,
    switch_delay_secs: u32,
) -> String {
    let list = hours
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let (first, last) = (
        hours.iter().min().copied().unwrap_or(0),
        hours.iter().max().copied().unwrap_or(0),
    );
    format!(
        "INSERT INTO batch_commits (period_secs, bucket_start, version, source, raw_as_of, visible_from, events) \
         SELECT 3600, toDateTime(h), {version}, {source}, toDateTime({raw_as_of}), now() + {switch_delay_secs}, n \
         FROM (SELECT toUInt32(arrayJoin([{list}])) AS h) \
         ANY LEFT JOIN ( \
            SELECT toUInt32(bucket_start) AS h, sum(events) AS n FROM batch_rollups \
            WHERE period_secs = 3600 AND bucket_start >= toDateTime({first}) AND bucket_start <= toDateTime({last}) \
              AND version = {version} AND dimensions = '*' GROUP BY h \
         ) USING (h)",
        source = quote(source),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_escape_what_clickhouse_reads_as_special() {
        assert_eq!(quote(r#"{"a":"it's"}"#), r#"'{"a":"it\'s"}'"#);
        assert_eq!(quote(r"a\b"), r"'a\\b'");
    }

    #[test]
    fn totals_group_without_dimensions() {
        let sql = finalize(&[(3600, true)], 7, "version = 7");
        assert!(
            sql.contains("GROUP BY bucket, project_id, event )"),
            "{sql}"
        );
        assert!(sql.contains("'*' AS dims"), "{sql}");
        let sql = finalize(&[(300, false)], 7, "version = 7");
        assert!(
            sql.contains("GROUP BY bucket, project_id, event, dimensions"),
            "{sql}"
        );
    }
}
