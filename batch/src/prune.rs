//! Superseded batch versions removed.
//!
//! Every pass writes its hours' (or day's) rows under a new version, and a
//! commit switches readers to it; the rows of earlier versions stay in
//! `batch_states` and `batch_rollups`, read by nobody. They grow with every
//! recompute (a late event, an import, a deletion each recompute an hour),
//! and the versions computed before a user's deletion still hold the user
//! (in `batch_states`' distinct-user states). A prune pass deletes, per
//! bucket, the versions older than the one readers have been served for
//! `batch.prune_after_secs` (a query that read the older one has finished by
//! then), and the versions no commit names (a pass killed before its
//! commit) once they are [`ORPHAN_AFTER_MS`] old.
//!
//! Run by `hourglass batch` with its retention passes and by `hourglass
//! retention`; the pruning itself is one `ALTER … DELETE` per table.

use std::collections::{BTreeMap, HashSet};

use clickhouse::{Client, Row};
use hourglass_core::Config;
use hourglass_core::clickhouse::cluster::mutation_target;
use serde::Deserialize;

use crate::BatchError;

/// A version without a commit is a pass killed before it committed once it
/// is this old (versions are the pass's start in Unix milliseconds; no pass
/// runs this long).
pub const ORPHAN_AFTER_MS: u64 = 6 * 3_600 * 1_000;

/// Most (bucket, version) pairs one pass deletes; the rest wait for the next.
const MAX_PAIRS_PER_PASS: usize = 2_000;

/// Rows of one version of one bucket: `period` is the commit's (3600 for an
/// hour's 5-minute and hourly rows, 86400 for a day's).
#[derive(Debug, Clone, Row, Deserialize)]
struct VersionRows {
    period: u32,
    bucket: u32,
    version: u64,
    rows: u64,
}

/// What a pass deleted (or, dry, would delete), per table: versions and rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub tables: BTreeMap<&'static str, (u64, u64)>,
    /// Pairs left for the next pass ([`MAX_PAIRS_PER_PASS`]).
    pub left_over: usize,
}

/// The tables a pass prunes, with the commit a row belongs to: its period
/// and bucket, as expressions over the table's columns.
const TABLES: [(&str, &str, &str); 2] = [
    (
        "batch_rollups",
        "if(period_secs = 86400, 86400, 3600)",
        "toUInt32(if(period_secs = 86400, bucket_start, toStartOfHour(bucket_start)))",
    ),
    ("batch_states", "toUInt32(3600)", "toUInt32(hour)"),
];

/// One prune pass.
pub async fn pass(cfg: &Config, dry_run: bool) -> Result<PruneReport, BatchError> {
    let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let serving = serving(&client, cfg.batch.prune_after_secs).await?;
    let committed: HashSet<(u32, u32, u64)> = client
        .query("SELECT period_secs, toUInt32(bucket_start), version FROM batch_commits")
        .fetch_all::<(u32, u32, u64)>()
        .await?
        .into_iter()
        .collect();
    let orphan_before =
        (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(ORPHAN_AFTER_MS);
    let mut report = PruneReport::default();
    let mut budget = MAX_PAIRS_PER_PASS;
    for (table, period, bucket) in TABLES {
        let present: Vec<VersionRows> = client
            .query(&format!(
                "SELECT toUInt32({period}) AS period, {bucket} AS bucket, version, count() AS rows \
                 FROM {table} GROUP BY period, bucket, version"
            ))
            .fetch_all()
            .await?;
        let stale: Vec<&VersionRows> = present
            .iter()
            .filter(|r| {
                let superseded = serving
                    .get(&(r.period, r.bucket))
                    .is_some_and(|&current| r.version < current);
                let orphan = !committed.contains(&(r.period, r.bucket, r.version))
                    && r.version < orphan_before;
                superseded || orphan
            })
            .collect();
        report.left_over += stale.len().saturating_sub(budget);
        let stale = &stale[..stale.len().min(budget)];
        budget -= stale.len();
        if stale.is_empty() {
            continue;
        }
        let rows: u64 = stale.iter().map(|r| r.rows).sum();
        report.tables.insert(table, (stale.len() as u64, rows));
        if dry_run {
            continue;
        }
        let key = format!("toUInt32({period}), {bucket}, version");
        delete(cfg, &client, table, &key, stale).await?;
        ::metrics::counter!(crate::metrics::PRUNED_ROWS, "table" => table).increment(rows);
        tracing::info!(
            table,
            versions = stale.len(),
            rows,
            "superseded batch versions deleted"
        );
    }
    Ok(report)
}

/// The version each bucket has served for at least `after_secs`, by
/// (period, bucket).
async fn serving(
    client: &Client,
    after_secs: u32,
) -> Result<BTreeMap<(u32, u32), u64>, BatchError> {
    Ok(client
        .query(
            "SELECT period_secs, toUInt32(bucket_start), max(version) FROM batch_commits \
             WHERE visible_from <= now() - ? GROUP BY period_secs, bucket_start",
        )
        .bind(after_secs)
        .fetch_all::<(u32, u32, u64)>()
        .await?
        .into_iter()
        .map(|(period, bucket, version)| ((period, bucket), version))
        .collect())
}

async fn delete(
    cfg: &Config,
    client: &Client,
    table: &str,
    key: &str,
    stale: &[&VersionRows],
) -> Result<(), BatchError> {
    let pairs = stale
        .iter()
        .map(|r| format!("({}, {}, {})", r.period, r.bucket, r.version))
        .collect::<Vec<_>>()
        .join(", ");
    client
        .query(&format!(
            "ALTER TABLE {} DELETE WHERE ({key}) IN ({pairs})",
            mutation_target(&cfg.clickhouse, table)
        ))
        .execute()
        .await?;
    crate::retention::await_deletion(cfg, client, table).await?;
    Ok(())
}

/// What `hourglass retention` prints of a pass.
pub fn table(report: &PruneReport, dry_run: bool) -> String {
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut out = String::new();
    if report.tables.is_empty() {
        out.push_str("batch layer: no superseded versions\n");
    }
    for (table, (versions, rows)) in &report.tables {
        out.push_str(&format!(
            "batch layer: {verb} {rows} rows of {versions} superseded versions from {table}\n"
        ));
    }
    if report.left_over > 0 {
        out.push_str(&format!(
            "batch layer: {} more versions left for the next pass\n",
            report.left_over
        ));
    }
    out
}
