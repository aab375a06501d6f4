//! The SQL of `/v1/metrics` over both layers of the lambda architecture:
//! batch rows for the hours (days, for `1d`) a visible batch commit covers,
//! speed rows for the rest, each bucket saying which layer answered.
//!
//! Both halves compare `batch_commits.visible_from` with one instant the
//! request fixes (`as_of`), so one answer never holds an hour from both
//! layers or from neither, even while a batch pass is writing: `now()` would
//! not do, since ClickHouse 18.16 evaluates it apart in each subquery, and a
//! reading straddling the second a commit became visible counted the hour
//! in both (the serving views had the same fault; migration 12).
//!
//! The batch half reads the finalized all-dimensions total rows when the
//! request neither groups nor filters by a dimension (a 30-day range at
//! `1d` is 30 rows), and otherwise merges the batch's per-window
//! distinct-user states, so distinct users stay exact across keys.

use crate::rollups::Step;
use crate::sql::Sql;

/// What one `/v1/metrics` request asks for.
pub struct Request<'a> {
    pub step: Step,
    pub project_id: &'a str,
    pub event: &'a str,
    pub from: i64,
    pub to: i64,
    pub group_by: &'a [&'a str],
    pub filters: &'a [(&'a str, String)],
    /// The instant (Unix seconds) at which commits count as visible.
    pub as_of: i64,
}

/// Visible commits of one period, as a subquery of (bucket, version).
fn current(period_secs: i64, as_of: i64) -> String {
    format!(
        "(SELECT bucket_start, max(version) FROM batch_commits \
         WHERE period_secs = {period_secs} AND visible_from <= toDateTime({as_of}) GROUP BY bucket_start)"
    )
}

/// Buckets of one period a visible commit covers.
fn committed(period_secs: i64, as_of: i64) -> String {
    format!(
        "(SELECT bucket_start FROM batch_commits \
         WHERE period_secs = {period_secs} AND visible_from <= toDateTime({as_of}))"
    )
}

fn groups(sql: &mut Sql, group_by: &[&str]) {
    if group_by.is_empty() {
        sql.push("emptyArrayString() AS g, ");
    } else {
        let items = vec!["visitParamExtractString(dimensions, ?)"; group_by.len()].join(", ");
        sql.push_bound(
            &format!("[{items}] AS g, "),
            group_by.iter().map(|d| (*d).into()),
        );
    }
}

fn scope(sql: &mut Sql, r: &Request<'_>, time_col: &str) {
    sql.push_bound(
        " project_id = ? AND event = ?",
        [r.project_id.into(), r.event.into()],
    );
    sql.push_bound(
        &format!(" AND {time_col} >= toDateTime(?) AND {time_col} < toDateTime(?)"),
        [r.from.into(), r.to.into()],
    );
    for (d, v) in r.filters {
        sql.push_bound(
            " AND visitParamExtractString(dimensions, ?) = ?",
            [(*d).into(), v.as_str().into()],
        );
    }
}

/// The speed rows of the buckets no visible commit covers.
fn speed(r: &Request<'_>) -> Sql {
    let (table, time_col, aggregates) = match r.step {
        Step::FiveMinutes => (
            "rollup_5m",
            "window_start",
            "sum(events) AS n, uniqExactArray(user_hashes) AS u, sum(value_count) AS vc, \
             sum(value_sum) AS vs, minIf(value_min, value_count > 0) AS vmin, \
             maxIf(value_max, value_count > 0) AS vmax, sumMap(hist_values, hist_counts) AS h",
        ),
        Step::Hour | Step::Day => (
            if r.step == Step::Hour {
                "rollup_1h"
            } else {
                "rollup_1d"
            },
            "bucket_start",
            "sumMerge(events_state) AS n, uniqExactArrayMerge(users_state) AS u, \
             sumMerge(value_count_state) AS vc, sumMerge(value_sum_state) AS vs, \
             minIfMerge(value_min_state) AS vmin, maxIfMerge(value_max_state) AS vmax, \
             sumMapMerge(hist_state) AS h",
        ),
    };
    let mut sql = Sql::new(&format!("SELECT toUInt32({time_col}) AS t, "));
    groups(&mut sql, r.group_by);
    sql.push(aggregates);
    sql.push(", emptyArrayFloat64() AS q, 'speed' AS layer");
    // PREWHERE: the aggregate states (distinct-user sets of a whole day)
    // are read only for the rows that pass; with WHERE, ClickHouse 18.16
    // deserialized every state of the granule before dropping the batched
    // buckets (0.34 s against 0.02 s for 30 days at 1d).
    sql.push(&format!(" FROM {table} PREWHERE"));
    scope(&mut sql, r, time_col);
    // GLOBAL: on a cluster the rollups are Distributed and a shard resolves
    // a plain subquery's table in its own default database; the initiator
    // runs this one and ships the result (on one server it is the same).
    let not_batched = match r.step {
        Step::FiveMinutes => format!(
            " AND toStartOfHour(window_start) GLOBAL NOT IN {}",
            committed(3600, r.as_of)
        ),
        Step::Hour => format!(
            " AND bucket_start GLOBAL NOT IN {}",
            committed(3600, r.as_of)
        ),
        Step::Day => format!(
            " AND bucket_start GLOBAL NOT IN {}",
            committed(86_400, r.as_of)
        ),
    };
    sql.push(&not_batched);
    sql.push(" GROUP BY t, g");
    sql
}

/// The batch rows of the buckets a visible commit covers.
fn batch(r: &Request<'_>) -> Sql {
    if r.group_by.is_empty() && r.filters.is_empty() {
        // One finalized total row per bucket, its percentiles included: the
        // bucket arrays (thousands of entries a day) are not read at all.
        let mut sql = Sql::new(
            "SELECT toUInt32(bucket_start) AS t, emptyArrayString() AS g, sum(events) AS n, sum(users) AS u, \
             sum(value_count) AS vc, sum(value_sum) AS vs, minIf(value_min, value_count > 0) AS vmin, \
             maxIf(value_max, value_count > 0) AS vmax, (emptyArrayUInt64(), emptyArrayUInt64()) AS h, \
             [any(p50), any(p90), any(p95), any(p99)] AS q, \
             'batch' AS layer FROM batch_rollups PREWHERE",
        );
        scope(&mut sql, r, "bucket_start");
        let commit = match r.step {
            Step::FiveMinutes => format!(
                " AND (toStartOfHour(bucket_start), version) IN {}",
                current(3600, r.as_of)
            ),
            Step::Hour => format!(" AND (bucket_start, version) IN {}", current(3600, r.as_of)),
            Step::Day => format!(
                " AND (bucket_start, version) IN {}",
                current(86_400, r.as_of)
            ),
        };
        sql.push_bound(
            " AND period_secs = ? AND dimensions = '*'",
            [r.step.secs().into()],
        );
        sql.push(&commit);
        sql.push(" GROUP BY t, g");
        return sql;
    }
    // Per-key states of each hour's current pass, merged to the request's groups.
    let time = match r.step {
        Step::FiveMinutes => "window_start",
        Step::Hour => "hour",
        Step::Day => "toDateTime(toStartOfDay(hour))",
    };
    let mut sql = Sql::new(&format!("SELECT toUInt32({time}) AS t, "));
    groups(&mut sql, r.group_by);
    sql.push(
        "sum(events) AS n, uniqExactMerge(users_state) AS u, sum(value_count) AS vc, \
         sum(value_sum) AS vs, minIf(value_min, value_count > 0) AS vmin, \
         maxIf(value_max, value_count > 0) AS vmax, sumMap(hist_values, hist_counts) AS h, \
         emptyArrayFloat64() AS q, 'batch' AS layer FROM batch_states PREWHERE",
    );
    scope(&mut sql, r, time);
    sql.push(&format!(
        " AND (hour, version) IN {}",
        current(3600, r.as_of)
    ));
    if r.step == Step::Day {
        sql.push(&format!(
            " AND toDateTime(toStartOfDay(hour)) IN {}",
            committed(86_400, r.as_of)
        ));
    }
    sql.push(" GROUP BY t, g");
    sql
}

/// Both halves, ordered by group then time.
pub fn metrics_sql(r: &Request<'_>) -> Sql {
    let mut sql = Sql::new("SELECT t, g, n, u, vc, vs, vmin, vmax, h, q, layer FROM (");
    sql.append(speed(r));
    sql.push(" UNION ALL ");
    sql.append(batch(r));
    sql.push(") ORDER BY g, t");
    sql
}

/// A fingerprint of the commits visible at `as_of`: part of the cache key
/// of closed answers, which a batch commit changes.
pub fn commits_fingerprint(as_of: i64) -> Sql {
    let mut sql = Sql::new("SELECT toUInt64(count()), max(version) FROM batch_commits");
    sql.push_bound(" WHERE visible_from <= toDateTime(?)", [as_of.into()]);
    sql
}
