//! Speed against batch, per hour and event: what the speed layer counted,
//! what the batch counted, and why they differ.
//!
//! - `copies_loaded`: rows the loader wrote for the hour (every record of
//!   the topic, duplicates included), from `event_hours`;
//! - `late_added`: records the aggregator counted late (so never in a speed
//!   row) and the batch took in, from `late_events`;
//! - `deleted_removed`: distinct events of deleted users, from `deleted_events`;
//! - `duplicates_removed` = copies − batch events − deleted: every extra copy
//!   of an event, deleted users' included;
//! - `unexplained` = speed events + late − copies: zero when the speed
//!   layer and the loader each saw every record of the hour exactly once.
//!   Anything else is flagged as an error.

use clickhouse::{Client, Row};
use serde::Deserialize;

use crate::BatchError;

/// The reconciliation rows of `hours` (recomputed by pass `version`),
/// computed from the tables above and written to `reconciliation`.
pub async fn record_hours(client: &Client, hours: &[i64], version: u64) -> Result<(), BatchError> {
    if hours.is_empty() {
        return Ok(());
    }
    let list = hours
        .iter()
        .map(|h| format!("toDateTime({h})"))
        .collect::<Vec<_>>()
        .join(",");
    client
        .query(&format!(
            "INSERT INTO reconciliation \
             (hour, project_id, event, version, speed_events, batch_events, speed_users, batch_users, \
              copies_loaded, duplicates_removed, late_added, deleted_removed, unexplained, drift) \
             SELECT h, project_id, event, {version}, se, be, su, bu, copies, \
                    toInt64(copies) - toInt64(be) - toInt64(del), late, del, \
                    toInt64(se) + toInt64(late) - toInt64(copies), \
                    if(be = 0, if(se = 0, 0., 1.), (toFloat64(se) - toFloat64(be)) / toFloat64(be)) \
             FROM ( \
                SELECT h, project_id, event, sum(se) AS se, sum(su) AS su, sum(be) AS be, sum(bu) AS bu, \
                       sum(copies) AS copies, sum(late) AS late, sum(del) AS del \
                FROM ( \
                    SELECT bucket_start AS h, toString(project_id) AS project_id, toString(event) AS event, \
                           toUInt64(sumMerge(events_state)) AS se, toUInt64(uniqExactArrayMerge(users_state)) AS su, \
                           toUInt64(0) AS be, toUInt64(0) AS bu, toUInt64(0) AS copies, toUInt64(0) AS late, toUInt64(0) AS del \
                    FROM rollup_1h WHERE bucket_start IN ({list}) GROUP BY bucket_start, project_id, event \
                    UNION ALL \
                    SELECT bucket_start, toString(project_id), toString(event), toUInt64(0), toUInt64(0), events, users, \
                           toUInt64(0), toUInt64(0), toUInt64(0) \
                    FROM batch_rollups \
                    WHERE period_secs = 3600 AND bucket_start IN ({list}) AND version = {version} AND dimensions = '*' \
                    UNION ALL \
                    SELECT hour, project_id, event, toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), \
                           toUInt64(sum(copies)), toUInt64(0), toUInt64(0) \
                    FROM event_hours WHERE hour IN ({list}) GROUP BY hour, project_id, event \
                    UNION ALL \
                    SELECT hour, project_id, event, toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), \
                           toUInt64(uniqExact(source_topic, source_partition, source_offset)), toUInt64(0) \
                    FROM late_events WHERE hour IN ({list}) GROUP BY hour, project_id, event \
                    UNION ALL \
                    SELECT hour, project_id, event, toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), \
                           toUInt64(0), toUInt64(sum(events)) \
                    FROM deleted_events WHERE hour IN ({list}) GROUP BY hour, project_id, event \
                ) GROUP BY h, project_id, event \
             )"
        ))
        .execute()
        .await?;
    let unexplained: Vec<(u32, String, String, i64)> = client
        .query(&format!(
            "SELECT toUInt32(hour), project_id, event, unexplained FROM reconciliation \
             WHERE hour IN ({list}) AND version = ? AND unexplained != 0"
        ))
        .bind(version)
        .fetch_all()
        .await?;
    for (hour, project, event, n) in unexplained {
        tracing::error!(
            hour = %crate::plan::show(i64::from(hour)),
            %project,
            %event,
            unexplained = n,
            "speed and batch differ by more than late events, duplicates and deletions explain: a record was counted twice or lost"
        );
    }
    Ok(())
}

/// One row of `hourglass reconcile`.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct Reconciled {
    pub hour: u32,
    pub project_id: String,
    pub event: String,
    pub version: u64,
    pub speed_events: u64,
    pub batch_events: u64,
    pub speed_users: u64,
    pub batch_users: u64,
    pub copies_loaded: u64,
    pub duplicates_removed: i64,
    pub late_added: u64,
    pub deleted_removed: u64,
    pub unexplained: i64,
    pub drift: f64,
}

/// The reconciliation of the current pass of every batched hour in
/// `[from, to)`, recomputed now (late events and copies keep arriving).
pub async fn range(client: &Client, from: i64, to: i64) -> Result<Vec<Reconciled>, BatchError> {
    let current: Vec<(u32, u64)> = client
        .query(
            "SELECT toUInt32(bucket_start), max(version) FROM batch_commits \
             WHERE period_secs = 3600 AND bucket_start >= toDateTime(?) AND bucket_start < toDateTime(?) \
             GROUP BY bucket_start ORDER BY bucket_start",
        )
        .bind(from)
        .bind(to)
        .fetch_all()
        .await?;
    let mut rows = Vec::new();
    for (hour, version) in current {
        record_hours(client, &[i64::from(hour)], version).await?;
        rows.extend(
            client
                .query(
                    "SELECT toUInt32(hour) AS hour, project_id, event, version, speed_events, batch_events, \
                            speed_users, batch_users, copies_loaded, duplicates_removed, late_added, \
                            deleted_removed, unexplained, drift \
                     FROM reconciliation WHERE hour = toDateTime(?) AND version = ? \
                     ORDER BY project_id, event, checked_at DESC LIMIT 1 BY project_id, event",
                )
                .bind(hour)
                .bind(version)
                .fetch_all::<Reconciled>()
                .await?,
        );
    }
    Ok(rows)
}

/// The gauges of the last day: largest drift, hours with unexplained drift.
pub async fn publish_gauges(client: &Client) -> Result<(), BatchError> {
    let (drift, unexplained): (f64, u64) = client
        .query(
            "SELECT max(abs(drift)), countIf(unexplained != 0) FROM ( \
                SELECT hour, project_id, event, argMax(drift, (version, checked_at)) AS drift, \
                       argMax(unexplained, (version, checked_at)) AS unexplained \
                FROM reconciliation WHERE hour >= now() - 86400 GROUP BY hour, project_id, event)",
        )
        .fetch_one()
        .await?;
    ::metrics::gauge!(crate::metrics::MAX_DRIFT).set(drift);
    ::metrics::gauge!(crate::metrics::UNEXPLAINED_HOURS).set(unexplained as f64);
    Ok(())
}

/// `rows` as the table `hourglass reconcile` prints.
pub fn table(rows: &[Reconciled]) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:<16} {:>10} {:>10} {:>9} {:>9} {:>10} {:>8} {:>8} {:>9} {:>8}\n",
        "hour",
        "project",
        "event",
        "speed",
        "batch",
        "s.users",
        "b.users",
        "duplicates",
        "late",
        "deleted",
        "drift",
        "unexpl."
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<12} {:<16} {:>10} {:>10} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8.3}% {:>8}{}\n",
            crate::plan::show(i64::from(r.hour)),
            r.project_id,
            r.event,
            r.speed_events,
            r.batch_events,
            r.speed_users,
            r.batch_users,
            r.duplicates_removed,
            r.late_added,
            r.deleted_removed,
            r.drift * 100.0,
            r.unexplained,
            if r.unexplained != 0 { "  ERROR" } else { "" }
        ));
    }
    out
}
