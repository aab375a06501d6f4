//! Deleted users taken out of the speed layer's distinct-user sets.
//!
//! `rollup_5m` keeps each row's users as a set of hashes (`user_hashes`,
//! the aggregator's `user_hash` of `user_id`, else `anonymous_id`), and the
//! hourly and daily levels merge those sets into states that cannot be
//! edited. A request in `deletions` not yet in `rollup_erasures` is applied
//! once every bucket it touches is closed for good (every source
//! partition's checkpoint watermark is past the bucket's end plus the
//! grace, so no flush writes there again): the user's hash is removed from
//! the project's `rollup_5m` rows of windows before the request (`ALTER …
//! UPDATE`, `users` its set's new size), then those hourly and daily buckets are
//! deleted and filled again from `rollup_5m` with the views' own SELECT
//! (`core::clickhouse::levels`). A request whose buckets are not all closed
//! waits for a later pass. Event counts and values stay: they hold no one's
//! identity, and the batch layer recomputes the user's hours without them.
//!
//! A tenant's request touches only rows of its tenant, which the rollups
//! tell apart only when the tenant property is one of
//! `aggregator.dimensions`; otherwise it is recorded as not applicable (a
//! project-wide request is needed to take the hash out).

use chrono::{DateTime, Utc};
use clickhouse::{Client, Row};
use hourglass_core::Config;
use hourglass_core::clickhouse::cluster::{mutated_table, mutation_target};
use hourglass_core::clickhouse::levels;
use serde::{Deserialize, Serialize};

use crate::BatchError;
use crate::erasure::Request;

/// How long a pass waits for one of its mutations.
const MUTATION_WAIT_SECS: u64 = 600;

/// What the rollups pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupErasure {
    /// Requests applied (or, dry, that would be).
    pub requests: usize,
    /// Requests waiting for their buckets to close.
    pub waiting: usize,
    /// Tenant requests the rollups cannot tell apart (recorded, not applied).
    pub not_applicable: usize,
    /// `rollup_5m` rows whose set held a deleted user.
    pub rows: u64,
    pub hourly_buckets: usize,
    pub daily_buckets: usize,
}

#[derive(Row, Deserialize)]
struct Touched {
    rows: u64,
    hours: Vec<u32>,
    days: Vec<u32>,
}

#[derive(Row, Serialize)]
struct Applied<'a> {
    project_id: &'a str,
    tenant_id: &'a str,
    user: &'a str,
    requested_at: u32,
    erased_at: u32,
    rows_updated: u64,
    applicable: u8,
}

/// Apply the pending requests to the rollups at `now`.
pub async fn pass(
    cfg: &Config,
    client: &Client,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<RollupErasure, BatchError> {
    let pending = crate::erasure::pending(client, "rollup_erasures", now.timestamp()).await?;
    let mut done = RollupErasure::default();
    if pending.is_empty() {
        return Ok(done);
    }
    let closed_until = closed_until(cfg, client).await?;
    let tenant_dimension = cfg
        .aggregator
        .dimensions
        .contains(&cfg.contract.tenant_property);
    for r in &pending {
        if !r.tenant_id.is_empty() && !tenant_dimension {
            done.not_applicable += 1;
            if !dry_run {
                record(client, r, now, 0, false).await?;
            }
            continue;
        }
        let scope = Scope::of(cfg, r);
        let touched: Touched = scope
            .bind(client.query(&format!(
                "SELECT count(), groupUniqArray(toUInt32(toStartOfHour(window_start))), \
                        groupUniqArray(toUInt32(toStartOfDay(window_start))) \
                 FROM rollup_5m WHERE {}",
                scope.condition
            )))
            .fetch_one()
            .await?;
        let closed = |start: u32, len: i64| i64::from(start) + len <= closed_until;
        if !touched.hours.iter().all(|h| closed(*h, 3_600))
            || !touched.days.iter().all(|d| closed(*d, 86_400))
        {
            done.waiting += 1;
            continue;
        }
        done.requests += 1;
        done.rows += touched.rows;
        done.hourly_buckets += touched.hours.len();
        done.daily_buckets += touched.days.len();
        if dry_run {
            continue;
        }
        if touched.rows > 0 {
            take_out(cfg, client, &scope, &touched).await?;
        }
        record(client, r, now, touched.rows, true).await?;
        tracing::info!(
            project = %r.project_id,
            rows = touched.rows,
            hours = touched.hours.len(),
            days = touched.days.len(),
            "erasure: a deleted user's hash taken out of the rollups' user sets"
        );
    }
    Ok(done)
}

/// The rows of one request: the project (and tenant), windows before the
/// request, sets holding the user's hash.
struct Scope {
    condition: String,
    project: String,
    tenant: Option<(String, String)>,
    before: u32,
    hash: u64,
}

impl Scope {
    fn of(cfg: &Config, r: &Request) -> Self {
        let tenant = (!r.tenant_id.is_empty())
            .then(|| (cfg.contract.tenant_property.clone(), r.tenant_id.clone()));
        let mut condition = "project_id = ? AND window_start < toDateTime(?) \
                             AND has(user_hashes, toUInt64(?))"
            .to_owned();
        if tenant.is_some() {
            condition.push_str(" AND visitParamExtractString(dimensions, ?) = ?");
        }
        Self {
            condition,
            project: r.project_id.clone(),
            tenant,
            before: r.requested_at,
            hash: hourglass_aggregator::window::user_hash(&r.user),
        }
    }

    fn bind(&self, mut q: clickhouse::query::Query) -> clickhouse::query::Query {
        q = q.bind(&self.project).bind(self.before).bind(self.hash);
        if let Some((property, tenant)) = &self.tenant {
            q = q.bind(property).bind(tenant);
        }
        q
    }
}

/// The hash out of `rollup_5m`, then the touched buckets of each level
/// deleted and filled again from `rollup_5m`.
async fn take_out(
    cfg: &Config,
    client: &Client,
    scope: &Scope,
    touched: &Touched,
) -> Result<(), BatchError> {
    let ch = &cfg.clickhouse;
    scope
        .bind(client.query(&format!(
            "ALTER TABLE {table} UPDATE user_hashes = {kept}, users = length({kept}) WHERE {}",
            scope.condition,
            table = mutation_target(ch, "rollup_5m"),
            kept = format_args!(
                "arrayFilter(h -> h != toUInt64({}), user_hashes)",
                scope.hash
            ),
        )))
        .execute()
        .await?;
    wait(client, &mutated_table(ch, "rollup_5m")).await?;
    for (level, buckets) in [
        (levels::HOURLY, &touched.hours),
        (levels::DAILY, &touched.days),
    ] {
        client
            .query(&format!(
                "ALTER TABLE {} DELETE WHERE project_id = ? AND has(?, toUInt32(bucket_start))",
                mutation_target(ch, level.table)
            ))
            .bind(&scope.project)
            .bind(buckets)
            .execute()
            .await?;
        wait(client, &mutated_table(ch, level.table)).await?;
        let filter = format!(
            "project_id = ? AND has(?, toUInt32({}(window_start)))",
            level.bucket
        );
        client
            .query(&levels::fill_from_rollup_5m(level, &filter))
            .bind(&scope.project)
            .bind(buckets)
            .execute()
            .await?;
    }
    Ok(())
}

async fn wait(client: &Client, table: &str) -> Result<(), BatchError> {
    let done = hourglass_core::clickhouse::mutations_done(
        client,
        table,
        std::time::Duration::from_secs(MUTATION_WAIT_SECS),
    )
    .await?;
    if done {
        Ok(())
    } else {
        Err(BatchError::Erasure(format!(
            "a mutation of {table} has not finished after {MUTATION_WAIT_SECS} s; the request is applied again next pass"
        )))
    }
}

/// Unix seconds before which every bucket of the rollups is closed for
/// good: the smallest checkpoint watermark of the topic's partitions, less
/// the grace (0 before any flush).
async fn closed_until(cfg: &Config, client: &Client) -> Result<i64, BatchError> {
    let watermark_ms: i64 = client
        .query(
            "SELECT min(wm) FROM (SELECT partition_id, max(checkpoint_watermark_ms) AS wm \
             FROM aggregator_progress WHERE topic = ? GROUP BY partition_id)",
        )
        .bind(&cfg.kafka.topic)
        .fetch_one()
        .await?;
    Ok((watermark_ms / 1000 - i64::from(cfg.aggregator.grace_secs)).max(0))
}

async fn record(
    client: &Client,
    r: &Request,
    now: DateTime<Utc>,
    rows: u64,
    applicable: bool,
) -> Result<(), BatchError> {
    let mut insert = client.insert::<Applied<'_>>("rollup_erasures").await?;
    insert
        .write(&Applied {
            project_id: &r.project_id,
            tenant_id: &r.tenant_id,
            user: &r.user,
            requested_at: r.requested_at,
            erased_at: now.timestamp().clamp(0, i64::from(u32::MAX)) as u32,
            rows_updated: rows,
            applicable: u8::from(applicable),
        })
        .await?;
    insert.end().await?;
    Ok(())
}
