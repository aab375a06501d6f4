//! Retention: each project's raw events, rollups and lake events older than
//! its days (`[retention]`, its tier, its own `[projects.<id>]` days) are
//! deleted. In the lake, a `dt=` folder every project has expired is
//! deleted; from a folder only some projects have expired, their events are
//! removed by rewriting its files (`hourglass_lake::erase::remove_events`),
//! and the folder's `_retention.json` names the projects taken out, so
//! later passes do not read it again for them.
//!
//! A pass works on every server: it counts what has expired, table by table,
//! and deletes it with `ALTER TABLE … DELETE` (on a cluster, on every shard's
//! local table). It reads the configuration each time, so a changed
//! retention applies on the next pass, with no migration. The speed and the
//! batch layer's rows of a level go together, so the serving views never
//! show one without the other.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::Client;
use hourglass_core::Config;
use hourglass_core::clickhouse::cluster::{mutated_table, mutation_target};
use hourglass_core::config::RetentionDays;

use crate::BatchError;

use hourglass_lake::store::ObjectInfo;

use crate::metrics::{DELETED_LAKE_EVENTS, DELETED_OBJECTS, DELETED_ROWS};

/// How long a pass waits for its deletions to be applied before it moves
/// on (they go on in the background and the next pass counts what is left).
const MUTATION_WAIT_SECS: u64 = 600;

/// A store whose days a project sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Raw,
    Rollup5m,
    Rollup1h,
    Rollup1d,
}

impl Store {
    pub const ALL: [Store; 4] = [
        Store::Raw,
        Store::Rollup5m,
        Store::Rollup1h,
        Store::Rollup1d,
    ];

    pub fn days(self, d: &RetentionDays) -> u32 {
        match self {
            Store::Raw => d.raw,
            Store::Rollup5m => d.rollup_5m,
            Store::Rollup1h => d.rollup_1h,
            Store::Rollup1d => d.rollup_1d,
        }
    }

    /// (table, time column, extra condition) of every table holding it.
    pub fn tables(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            Store::Raw => &[("events", "timestamp", "")],
            Store::Rollup5m => &[
                ("rollup_5m", "window_start", ""),
                ("batch_rollups", "bucket_start", "period_secs = 300 AND "),
                ("batch_states", "window_start", ""),
            ],
            Store::Rollup1h => &[
                ("rollup_1h", "bucket_start", ""),
                ("batch_rollups", "bucket_start", "period_secs = 3600 AND "),
            ],
            Store::Rollup1d => &[
                ("rollup_1d", "bucket_start", ""),
                ("batch_rollups", "bucket_start", "period_secs = 86400 AND "),
            ],
        }
    }
}

/// Which projects a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projects {
    One(String),
    /// Every project but those listed under `[projects]` (the defaults).
    Unlisted(Vec<String>),
}

impl std::fmt::Display for Projects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Projects::One(p) => write!(f, "{p}"),
            Projects::Unlisted(_) => write!(f, "(projects not listed)"),
        }
    }
}

/// Rows of one table of some projects older than `before` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub table: &'static str,
    pub projects: Projects,
    pub before: i64,
    pub rows: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub clickhouse: Vec<Expired>,
    /// Lake folders before this day are deleted whole (every project has
    /// expired them).
    pub lake_before: Option<NaiveDate>,
    pub lake_objects: u64,
    pub lake_bytes: u64,
    /// Events of some projects removed from folders others still keep.
    pub lake_rewrites: Vec<LakeRewrite>,
    /// Table TTLs brought in line with the configuration (servers ≥ 21.8).
    pub ttl: Vec<crate::ttl::TtlChange>,
}

/// One folder's rewrite for the projects that expired it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeRewrite {
    pub day: NaiveDate,
    /// The projects taken out (`*`: those not listed under `[projects]`).
    pub projects: Vec<String>,
    pub files: hourglass_lake::erase::EraseSummary,
}

/// Name of a folder's record of the projects retention took out of it.
pub const LAKE_MARKER: &str = "_retention.json";

/// Stands for every project not listed under `[projects]` in a folder's
/// record and in reports.
const OTHERS: &str = "*";

/// Midnight UTC `days` days before the day of `now`: keeping 1 day keeps
/// today and yesterday.
pub fn cutoff(now: DateTime<Utc>, days: u32) -> i64 {
    (now.timestamp().div_euclid(86_400) - i64::from(days)) * 86_400
}

/// (store, projects, cutoff) of every rule the configuration makes at `now`.
pub fn rules(cfg: &Config, now: DateTime<Utc>) -> Vec<(Store, Projects, i64)> {
    let listed: Vec<String> = cfg.projects.keys().cloned().collect();
    let defaults = cfg.retention.defaults();
    let mut rules = Vec::new();
    for store in Store::ALL {
        for (id, p) in &cfg.projects {
            let days = store.days(&cfg.retention.of(p));
            if days > 0 {
                rules.push((store, Projects::One(id.clone()), cutoff(now, days)));
            }
        }
        let days = store.days(&defaults);
        if days > 0 {
            rules.push((store, Projects::Unlisted(listed.clone()), cutoff(now, days)));
        }
    }
    rules
}

/// One pass at `now`: what has expired, deleted unless `dry_run`.
pub async fn pass(cfg: &Config, now: DateTime<Utc>, dry_run: bool) -> Result<Report, BatchError> {
    let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let mut report = Report {
        ttl: crate::ttl::sync(cfg, &client, dry_run).await?,
        ..Report::default()
    };
    for (store, projects, before) in rules(cfg, now) {
        for &(table, column, extra) in store.tables() {
            let rows = expire(
                cfg, &client, table, column, extra, &projects, before, dry_run,
            )
            .await?;
            if rows > 0 {
                report.clickhouse.push(Expired {
                    table,
                    projects: projects.clone(),
                    before,
                    rows,
                });
            }
        }
    }
    let lake_days = LakeDays::of(cfg);
    if lake_days.any() {
        lake(cfg, &lake_days, now, dry_run, &mut report).await?;
    }
    Ok(report)
}

/// Count the expired rows of one table; delete them unless `dry_run`.
#[allow(clippy::too_many_arguments)]
async fn expire(
    cfg: &Config,
    client: &Client,
    table: &'static str,
    column: &str,
    extra: &str,
    projects: &Projects,
    before: i64,
    dry_run: bool,
) -> Result<u64, BatchError> {
    let (project_condition, ids) = match projects {
        Projects::One(id) => ("project_id = ?".to_owned(), vec![id.clone()]),
        Projects::Unlisted(ids) if ids.is_empty() => ("1".to_owned(), Vec::new()),
        Projects::Unlisted(ids) => (
            format!("project_id NOT IN ({})", vec!["?"; ids.len()].join(", ")),
            ids.clone(),
        ),
    };
    let condition = format!("{extra}{column} < toDateTime(?) AND {project_condition}");
    let bind = |mut q: clickhouse::query::Query| {
        q = q.bind(u32::try_from(before.max(0)).unwrap_or(u32::MAX));
        for id in &ids {
            q = q.bind(id.as_str());
        }
        q
    };
    let rows: u64 = bind(client.query(&format!("SELECT count() FROM {table} WHERE {condition}")))
        .fetch_one()
        .await?;
    if rows == 0 || dry_run {
        return Ok(rows);
    }
    bind(client.query(&format!(
        "ALTER TABLE {} DELETE WHERE {condition}",
        mutation_target(&cfg.clickhouse, table)
    )))
    .execute()
    .await?;
    await_deletion(cfg, client, table).await?;
    metrics::counter!(DELETED_ROWS, "table" => table).increment(rows);
    tracing::info!(table, projects = %projects, before, rows, "retention: expired rows deleted");
    Ok(rows)
}

/// Wait (up to [`MUTATION_WAIT_SECS`]) for a deletion from `table` to be
/// applied; one still running after that goes on in the background (the
/// next pass counts what is left), with a warning.
pub(crate) async fn await_deletion(
    cfg: &Config,
    client: &Client,
    table: &str,
) -> Result<(), BatchError> {
    let applied = hourglass_core::clickhouse::mutations_done(
        client,
        &mutated_table(&cfg.clickhouse, table),
        std::time::Duration::from_secs(MUTATION_WAIT_SECS),
    )
    .await?;
    if !applied {
        tracing::warn!(
            table,
            "a deletion is still being applied; it goes on in the background"
        );
    }
    Ok(())
}

/// Lake days of each project listed under `[projects]` and of the rest
/// (0: forever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeDays {
    pub listed: BTreeMap<String, u32>,
    pub others: u32,
}

impl LakeDays {
    pub fn of(cfg: &Config) -> Self {
        Self {
            listed: cfg
                .projects
                .iter()
                .map(|(id, p)| (id.clone(), cfg.retention.of(p).lake))
                .collect(),
            others: cfg.retention.defaults().lake,
        }
    }

    fn any(&self) -> bool {
        self.others > 0 || self.listed.values().any(|d| *d > 0)
    }

    /// The first day a rule of `days` keeps at `now` (None: forever).
    fn kept_from(now: DateTime<Utc>, days: u32) -> Option<NaiveDate> {
        (days > 0).then(|| {
            DateTime::<Utc>::from_timestamp(cutoff(now, days), 0)
                .expect("a cutoff is a valid time")
                .date_naive()
        })
    }

    /// Folders before this day are expired for every project.
    pub fn whole_before(&self, now: DateTime<Utc>) -> Option<NaiveDate> {
        std::iter::once(self.others)
            .chain(self.listed.values().copied())
            .map(|d| Self::kept_from(now, d))
            .collect::<Option<Vec<NaiveDate>>>()?
            .into_iter()
            .min()
    }

    /// The projects (`*` for the unlisted ones) that have expired `day`.
    pub fn expired_on(&self, now: DateTime<Utc>, day: NaiveDate) -> Vec<String> {
        let expired = |d: u32| Self::kept_from(now, d).is_some_and(|from| day < from);
        let mut out: Vec<String> = self
            .listed
            .iter()
            .filter(|(_, d)| expired(**d))
            .map(|(id, _)| id.clone())
            .collect();
        if expired(self.others) {
            out.push(OTHERS.into());
        }
        out
    }
}

/// What a folder's `_retention.json` records.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct FolderRecord {
    /// Projects whose events retention took out (`*`: the unlisted ones).
    removed: Vec<String>,
}

/// Lake folders (`dt=YYYY-MM-DD/`): deleted whole before every project's
/// cutoff, else rewritten without the events of the projects that expired
/// them.
async fn lake(
    cfg: &Config,
    days: &LakeDays,
    now: DateTime<Utc>,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), BatchError> {
    let lake_err = |e: &dyn std::fmt::Display| BatchError::Lake(e.to_string());
    let whole_before = days.whole_before(now);
    report.lake_before = whole_before;
    let store = hourglass_lake::store::open(cfg)
        .await
        .map_err(|e| lake_err(&e))?;
    let objects = store.list("dt=").await.map_err(|e| lake_err(&e))?;
    let mut by_day: BTreeMap<NaiveDate, Vec<ObjectInfo>> = BTreeMap::new();
    for object in objects {
        let day = object
            .key
            .strip_prefix("dt=")
            .and_then(|k| k.get(..10))
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        if let Some(day) = day {
            by_day.entry(day).or_default().push(object);
        }
    }
    for (day, objects) in by_day {
        if whole_before.is_some_and(|before| day < before) {
            for object in objects {
                if !dry_run {
                    store.delete(&object.key).await.map_err(|e| lake_err(&e))?;
                    metrics::counter!(DELETED_OBJECTS).increment(1);
                }
                report.lake_objects += 1;
                report.lake_bytes += object.size;
            }
            continue;
        }
        let expired = days.expired_on(now, day);
        if expired.is_empty() {
            continue;
        }
        let marker = format!("dt={day}/{LAKE_MARKER}");
        let mut record = FolderRecord::default();
        if objects.iter().any(|o| o.key == marker) {
            let body = store.get(&marker).await.map_err(|e| lake_err(&e))?;
            record = serde_json::from_slice(&body).unwrap_or_default();
        }
        let to_remove: Vec<String> = expired
            .into_iter()
            .filter(|p| !record.removed.contains(p))
            .collect();
        if to_remove.is_empty() {
            continue;
        }
        let removal = Arc::new(projects_removal(&to_remove, days));
        let files = hourglass_lake::erase::remove_events(
            store.as_ref(),
            &objects,
            removal,
            cfg.lake.row_group_rows,
            dry_run,
        )
        .await
        .map_err(|e| lake_err(&e))?;
        if !dry_run {
            record.removed.extend(to_remove.iter().cloned());
            let body = serde_json::to_vec(&record).expect("a record serializes");
            store
                .put(&marker, body.into())
                .await
                .map_err(|e| lake_err(&e))?;
            metrics::counter!(DELETED_LAKE_EVENTS).increment(files.events_removed);
            tracing::info!(%day, projects = ?to_remove, events = files.events_removed, rewritten = files.files_rewritten, removed = files.files_removed, "retention: expired projects' events taken out of a lake folder");
        }
        report.lake_rewrites.push(LakeRewrite {
            day,
            projects: to_remove,
            files,
        });
    }
    if report.lake_objects > 0 && !dry_run {
        tracing::info!(
            objects = report.lake_objects,
            bytes = report.lake_bytes,
            before = ?whole_before,
            "retention: expired lake objects deleted"
        );
    }
    Ok(())
}

/// The events of `projects` (`*`: every project not listed).
fn projects_removal(projects: &[String], days: &LakeDays) -> hourglass_lake::erase::Removal {
    let named: HashSet<String> = projects.iter().filter(|p| *p != OTHERS).cloned().collect();
    let others = projects.iter().any(|p| p == OTHERS);
    let listed: HashSet<String> = days.listed.keys().cloned().collect();
    let goes = Arc::new(move |project: &str| {
        named.contains(project) || (others && !listed.contains(project))
    });
    let first_look = goes.clone();
    hourglass_lake::erase::Removal {
        may_cover: Box::new(move |project, _, _| first_look(project)),
        covers: Box::new(move |ev| goes(&ev.project_id)),
    }
}

/// The report as text, one line per table and projects.
pub fn table(report: &Report, dry_run: bool) -> String {
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut out = String::new();
    for e in &report.clickhouse {
        let before = DateTime::<Utc>::from_timestamp(e.before, 0)
            .map(|t| t.date_naive().to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "{verb} {:>10} rows of {:<14} {} before {before}\n",
            e.rows, e.table, e.projects
        ));
    }
    if let Some(before) = report.lake_before {
        out.push_str(&format!(
            "{verb} {:>10} lake objects ({} bytes) before {before}\n",
            report.lake_objects, report.lake_bytes
        ));
    }
    for r in &report.lake_rewrites {
        out.push_str(&format!(
            "{verb} {:>10} lake events of {} in dt={} ({} of {} files rewritten, {} removed)\n",
            r.files.events_removed,
            r.projects.join(", "),
            r.day,
            r.files.files_rewritten,
            r.files.files_read,
            r.files.files_removed
        ));
    }
    if out.is_empty() {
        out.push_str("nothing has expired\n");
    }
    let changed = if dry_run { "would change" } else { "changed" };
    for c in &report.ttl {
        out.push_str(&format!(
            "{changed} the TTL of {}: {} -> {}\n",
            c.table,
            c.from.as_deref().unwrap_or("none"),
            c.to.as_deref().unwrap_or("none")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use hourglass_core::config::{ProjectConfig, RetentionTier};

    use super::*;

    #[test]
    fn each_project_gets_its_own_days_else_its_tier_else_the_defaults() {
        let mut cfg = Config::default();
        cfg.retention.raw_days = 30;
        cfg.retention.tiers.insert(
            "free".into(),
            RetentionTier {
                raw_days: Some(1),
                rollup_5m_days: Some(7),
                ..Default::default()
            },
        );
        cfg.projects.insert(
            "a".into(),
            ProjectConfig {
                tier: "free".into(),
                rollup_5m_days: Some(3),
                ..Default::default()
            },
        );
        cfg.projects.insert(
            "b".into(),
            ProjectConfig {
                raw_days: Some(0),
                ..Default::default()
            },
        );
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 17, 0, 0).unwrap();
        let day = |d: u32| {
            Utc.with_ymd_and_hms(2026, 12, d, 0, 0, 0)
                .unwrap()
                .timestamp()
        };
        let unlisted = Projects::Unlisted(vec!["a".into(), "b".into()]);
        assert_eq!(
            rules(&cfg, now),
            vec![
                // a: the tier's day; b keeps raw events forever; the rest 30.
                (Store::Raw, Projects::One("a".into()), day(5)),
                (Store::Raw, unlisted, day(6) - 30 * 86_400),
                // a's own 3 days over the tier's 7.
                (Store::Rollup5m, Projects::One("a".into()), day(3)),
            ]
        );
        assert_eq!(cutoff(now, 0), day(6));
    }

    #[test]
    fn lake_folders_go_whole_once_every_project_expired_them() {
        let mut cfg = Config::default();
        cfg.retention.lake_days = 30;
        cfg.retention.tiers.insert(
            "free".into(),
            RetentionTier {
                lake_days: Some(2),
                ..Default::default()
            },
        );
        for (id, tier, own) in [
            ("f", "free", None),
            ("g", "", Some(60)),
            ("h", "free", Some(0)),
        ] {
            cfg.projects.insert(
                id.into(),
                ProjectConfig {
                    tier: tier.into(),
                    lake_days: own,
                    ..Default::default()
                },
            );
        }
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 17, 0, 0).unwrap();
        let days = LakeDays::of(&cfg);
        let date = |m: u32, d: u32| NaiveDate::from_ymd_opt(2026, m, d).unwrap();
        // h keeps its events forever: no folder goes whole.
        assert_eq!(days.whole_before(now), None);
        assert_eq!(days.expired_on(now, date(12, 4)), Vec::<String>::new());
        assert_eq!(days.expired_on(now, date(12, 3)), vec!["f".to_owned()]);
        assert_eq!(
            days.expired_on(now, date(11, 5)),
            vec!["f".to_owned(), "*".to_owned()]
        );
        assert_eq!(
            days.expired_on(now, date(10, 6)),
            vec!["f".to_owned(), "g".to_owned(), "*".to_owned()]
        );
        cfg.projects.remove("h");
        assert_eq!(LakeDays::of(&cfg).whole_before(now), Some(date(10, 7)));
    }
}
