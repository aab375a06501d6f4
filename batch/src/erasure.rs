//! Deleted users erased beyond `events`: the deletion requests the lake has
//! not applied yet, applied by one pass over its files
//! ([`hourglass_lake::erase`]) and then recorded in `lake_erasures`; and
//! the user's hash taken out of the rollups' user sets
//! ([`crate::rollup_erasure`], recorded in `rollup_erasures`).
//!
//! Run by `hourglass batch` with its retention passes (every
//! `retention.interval_secs`) and by `hourglass erase [--dry-run]`. The
//! lake takes a request once it is `lake.file_max_age_secs` plus
//! [`ERASE_AFTER_MARGIN_SECS`] old: a file the archiver was filling when the
//! request was made is in the lake by then.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use hourglass_core::Config;
use hourglass_core::clickhouse::deletions::DeletedUsers;
use hourglass_lake::erase::EraseSummary;
use serde::{Deserialize, Serialize};

use crate::BatchError;

/// Margin past `lake.file_max_age_secs` before a request is applied.
const ERASE_AFTER_MARGIN_SECS: u64 = 60;

/// One request of `deletions`.
#[derive(Debug, Clone, Row, Deserialize)]
pub(crate) struct Request {
    pub project_id: String,
    pub tenant_id: String,
    pub user: String,
    pub requested_at: u32,
}

/// The requests made up to `until` (Unix seconds) that `applied` (a table
/// with their columns) does not hold yet.
pub(crate) async fn pending(
    client: &clickhouse::Client,
    applied: &str,
    until: i64,
) -> Result<Vec<Request>, BatchError> {
    // GLOBAL: on a cluster both tables are Distributed (the same on one server).
    Ok(client
        .query(&format!(
            "SELECT project_id, tenant_id, user, toUInt32(requested_at) FROM deletions \
             WHERE requested_at <= toDateTime(?) AND (project_id, tenant_id, user, requested_at) \
               GLOBAL NOT IN (SELECT project_id, tenant_id, user, requested_at FROM {applied})"
        ))
        .bind(until.max(0))
        .fetch_all()
        .await?)
}

#[derive(Row, Serialize)]
struct Erased<'a> {
    project_id: &'a str,
    tenant_id: &'a str,
    user: &'a str,
    requested_at: u32,
    erased_at: u32,
    files_rewritten: u64,
    files_removed: u64,
    events_removed: u64,
}

/// What a pass did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct ErasureReport {
    /// Requests applied to the lake (pending ones, dry).
    pub requests: usize,
    pub lake: EraseSummary,
    pub rollups: crate::rollup_erasure::RollupErasure,
}

/// One erasure pass at `now`.
pub async fn pass(
    cfg: &Config,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<ErasureReport, BatchError> {
    let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let until = now.timestamp()
        - i64::try_from(cfg.lake.file_max_age_secs + ERASE_AFTER_MARGIN_SECS).unwrap_or(i64::MAX);
    let pending = pending(&client, "lake_erasures", until).await?;
    let mut report = ErasureReport {
        requests: pending.len(),
        rollups: crate::rollup_erasure::pass(cfg, &client, now, dry_run).await?,
        ..ErasureReport::default()
    };
    if pending.is_empty() {
        return Ok(report);
    }
    let mut deleted = DeletedUsers::default();
    for r in &pending {
        deleted.add(
            r.project_id.clone(),
            r.tenant_id.clone(),
            r.user.clone(),
            r.requested_at,
        );
    }
    let store = hourglass_lake::store::open(cfg)
        .await
        .map_err(|e| BatchError::Lake(e.to_string()))?;
    report.lake = hourglass_lake::erase::erase(
        store.as_ref(),
        deleted,
        &cfg.contract.tenant_property,
        cfg.lake.row_group_rows,
        dry_run,
    )
    .await
    .map_err(|e| BatchError::Lake(e.to_string()))?;
    if dry_run {
        return Ok(report);
    }
    let mut insert = client.insert::<Erased<'_>>("lake_erasures").await?;
    for r in &pending {
        insert
            .write(&Erased {
                project_id: &r.project_id,
                tenant_id: &r.tenant_id,
                user: &r.user,
                requested_at: r.requested_at,
                erased_at: now.timestamp().clamp(0, i64::from(u32::MAX)) as u32,
                files_rewritten: report.lake.files_rewritten,
                files_removed: report.lake.files_removed,
                events_removed: report.lake.events_removed,
            })
            .await?;
    }
    insert.end().await?;
    tracing::info!(
        requests = pending.len(),
        files_read = report.lake.files_read,
        files_rewritten = report.lake.files_rewritten,
        files_removed = report.lake.files_removed,
        events_removed = report.lake.events_removed,
        "erasure pass: deleted users' events removed from the lake"
    );
    Ok(report)
}

/// The report as `hourglass erase` prints it.
pub fn table(report: &ErasureReport, dry_run: bool) -> String {
    let (verb, files) = if dry_run {
        ("would remove", "would be rewritten")
    } else {
        ("removed", "rewritten")
    };
    let r = &report.rollups;
    format!(
        "{} deletion requests pending for the lake\n{verb} {} events; of {} files read, {} {files} and {} removed\n\
         rollups: {} requests {}: {} rows of rollup_5m, {} hourly and {} daily buckets rebuilt; {} waiting for their buckets to close, {} tenant requests not applicable\n",
        report.requests,
        report.lake.events_removed,
        report.lake.files_read,
        report.lake.files_rewritten,
        report.lake.files_removed,
        r.requests,
        if dry_run {
            "would be applied"
        } else {
            "applied"
        },
        r.rows,
        r.hourly_buckets,
        r.daily_buckets,
        r.waiting,
        r.not_applicable,
    )
}
