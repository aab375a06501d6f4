//! Which hours and days a pass recomputes, found from small tables only:
//! `event_hours` (what was loaded, per event hour, and when),
//! `deleted_events` (what deletions removed) and `batch_commits`.

use chrono::{TimeZone, Utc};
use clickhouse::Client;

use crate::BatchError;

/// An hour or day as RFC 3339, for logs and reports.
pub fn show(t: i64) -> String {
    Utc.timestamp_opt(t, 0)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// The server's clock, Unix seconds: every instant the batch layer stores
/// or compares is the server's, never this process's.
pub async fn server_now(client: &Client) -> Result<u32, BatchError> {
    Ok(client.query("SELECT toUInt32(now())").fetch_one().await?)
}

/// Hours starting before this instant (server clock) have ended at least
/// `settle_secs` ago.
pub async fn settled_before(client: &Client, settle_secs: u32) -> Result<i64, BatchError> {
    let now = server_now(client).await?;
    Ok(i64::from(now) - 3600 - i64::from(settle_secs))
}

/// Most rows loaded for the hours one statement recomputes: the dedup
/// (`argMin` per `event_id`) holds one entry per event in memory, and the
/// lease is renewed between runs (about 20 s of work on 2 cores at the
/// measured 240 k events/s, well inside the default 60 s lease).
pub const MAX_COPIES_PER_STATEMENT: u64 = 5_000_000;

/// Most hours one statement recomputes (a day: what a day's rows derive from).
pub const MAX_HOURS_PER_STATEMENT: usize = 24;

/// `hours` (sorted) cut into runs of consecutive hours that one statement
/// recomputes together: each run at most [`MAX_HOURS_PER_STATEMENT`] long
/// and at most [`MAX_COPIES_PER_STATEMENT`] rows (an hour bigger than that
/// alone). At internet scale every hour is its own run; on small data a
/// statement's fixed cost is paid once per day instead of once per hour.
pub async fn statement_runs(client: &Client, hours: &[i64]) -> Result<Vec<Vec<i64>>, BatchError> {
    if hours.is_empty() {
        return Ok(Vec::new());
    }
    let copies: Vec<(u32, u64)> = client
        .query(
            "SELECT toUInt32(hour), toUInt64(sum(copies)) FROM event_hours \
             WHERE hour >= toDateTime(?) AND hour <= toDateTime(?) GROUP BY hour",
        )
        .bind(hours[0])
        .bind(hours[hours.len() - 1])
        .fetch_all()
        .await?;
    let copies: std::collections::HashMap<i64, u64> =
        copies.into_iter().map(|(h, n)| (i64::from(h), n)).collect();
    Ok(runs(hours, |h| copies.get(&h).copied().unwrap_or(0)))
}

fn runs(hours: &[i64], copies: impl Fn(i64) -> u64) -> Vec<Vec<i64>> {
    let mut out: Vec<Vec<i64>> = Vec::new();
    let mut rows = 0u64;
    for &h in hours {
        let n = copies(h);
        let extends = out.last().is_some_and(|run| {
            run.last() == Some(&(h - 3600))
                && run.len() < MAX_HOURS_PER_STATEMENT
                && rows + n <= MAX_COPIES_PER_STATEMENT
        });
        if extends {
            rows += n;
            out.last_mut().expect("a run").push(h);
        } else {
            rows = n;
            out.push(vec![h]);
        }
    }
    out
}

/// Hours in `[from, before)` that hold loaded events and were never batched,
/// or changed (rows loaded, or a deletion recorded) since the raw record
/// their current pass read; every hour with events when `force`. Oldest first.
pub async fn due_hours(
    client: &Client,
    from: Option<i64>,
    before: i64,
    force: bool,
) -> Result<Vec<i64>, BatchError> {
    let from = from.unwrap_or(0).max(0);
    let hours: Vec<u32> = client
        .query(
            "SELECT toUInt32(hour) FROM ( \
                SELECT hour, max(changed_at) AS changed_at FROM ( \
                    SELECT hour, inserted_at AS changed_at FROM event_hours \
                    WHERE hour >= toDateTime(?) AND hour < toDateTime(?) \
                    UNION ALL \
                    SELECT hour, requested_at AS changed_at FROM deleted_events \
                    WHERE hour >= toDateTime(?) AND hour < toDateTime(?) \
                ) GROUP BY hour \
             ) ANY LEFT JOIN ( \
                SELECT bucket_start AS hour, argMax(raw_as_of, version) AS batched_as_of \
                FROM batch_commits WHERE period_secs = 3600 GROUP BY bucket_start \
             ) USING hour \
             WHERE ? = 1 OR toUInt32(batched_as_of) = 0 OR changed_at >= batched_as_of \
             ORDER BY hour",
        )
        .bind(from)
        .bind(before.max(0))
        .bind(from)
        .bind(before.max(0))
        .bind(u8::from(force))
        .fetch_all()
        .await?;
    Ok(hours.into_iter().map(i64::from).collect())
}

/// Days starting in `[from, before)` with a batched hour newer than the
/// day's own pass (or no day pass yet); every day with a batched hour when
/// `force`.
pub async fn due_days(
    client: &Client,
    from: Option<i64>,
    before: i64,
    force: bool,
) -> Result<Vec<i64>, BatchError> {
    let from = from.unwrap_or(0).max(0);
    let from_day = from - from.rem_euclid(86_400);
    let days: Vec<u32> = client
        .query(
            "SELECT toUInt32(day) FROM ( \
                SELECT toDateTime(toStartOfDay(bucket_start)) AS day, max(version) AS newest_hour \
                FROM batch_commits WHERE period_secs = 3600 \
                GROUP BY day \
             ) ANY LEFT JOIN ( \
                SELECT bucket_start AS day, max(version) AS day_version \
                FROM batch_commits WHERE period_secs = 86400 GROUP BY bucket_start \
             ) USING day \
             WHERE day >= toDateTime(?) AND day < toDateTime(?) AND (? = 1 OR newest_hour > day_version) \
             ORDER BY day",
        )
        .bind(from_day)
        .bind(before.max(0))
        .bind(u8::from(force))
        .fetch_all()
        .await?;
    Ok(days.into_iter().map(i64::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_consecutive_and_bounded() {
        // 1,800,000,000 is an hour boundary.
        let h = |i: i64| 1_800_000_000 + i * 3600;
        let hours: Vec<i64> = (0..30).chain([40, 41, 43]).map(h).collect();
        let got = runs(&hours, |_| 1);
        let lens: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![24, 6, 2, 1]);
        let big = runs(&hours[..3], |_| MAX_COPIES_PER_STATEMENT / 2 + 1);
        assert_eq!(
            big.len(),
            3,
            "each hour alone when two would be too many rows"
        );
    }
}
