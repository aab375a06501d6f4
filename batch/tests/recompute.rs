//! The batch layer against the local ClickHouse: the same histogram buckets
//! as the speed layer, an hour recomputed from seeded raw rows (duplicates,
//! late copies, a deleted user, rows from before `events.dimensions`) equal
//! to the generator's truth, the serving views switching layer, dirty hours
//! found again, and a second pass changing nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use clickhouse::{Client, Row};
use hourglass_batch::{Batch, Range, lease::Lease};
use hourglass_core::Config;
use hourglass_core::dimensions::Dimensions;
use hourglass_core::histogram::{VALUE_SCALE, ValueHistogram, sql_bucket};
use hourglass_loader::rows::EventRow;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// 2026-11-02T10:00:00Z: long settled.
const HOUR: i64 = 1_793_613_600;
const DAY: i64 = HOUR - HOUR % 86_400;

fn config(label: &str) -> Config {
    let mut cfg = Config::default();
    cfg.clickhouse.database = format!("hgt_{label}_{:08x}", rand::rng().random::<u32>());
    cfg.aggregator.dimensions = vec!["path".into()];
    cfg.batch.switch_delay_secs = 0;
    cfg
}

async fn fresh(label: &str) -> (Config, Client) {
    let cfg = config(label);
    hourglass_sql::migrate(&cfg.clickhouse)
        .await
        .expect("migrate");
    let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
    (cfg, client)
}

async fn drop_db(cfg: &Config) {
    let _ = hourglass_core::clickhouse::server_client(&cfg.clickhouse)
        .query(&format!(
            "DROP DATABASE IF EXISTS `{}`",
            cfg.clickhouse.database
        ))
        .execute()
        .await;
}

#[derive(Row, Deserialize)]
struct Buckets {
    v: Vec<u64>,
    c: Vec<u64>,
}

#[derive(Row, Serialize)]
struct Probe {
    i: u32,
    v: f64,
}

/// Values where rounding, clamping and bucket edges can go wrong.
fn probe_values(rng: &mut SmallRng, max_value: f64) -> Vec<f64> {
    let mut values = vec![
        0.0,
        -0.0,
        -1.0,
        0.0004,
        0.0005,
        0.0015,
        0.0025,
        1.0,
        max_value,
        max_value + 1.0,
        1e12,
    ];
    for k in 0..45u32 {
        let p = (1u64 << k) as f64;
        for d in [-1.0, 0.0, 1.0] {
            values.push((p + d) / VALUE_SCALE);
            values.push((p + d + 0.5) / VALUE_SCALE);
        }
    }
    for _ in 0..20_000 {
        let magnitude = 10f64.powi(rng.random_range(-3..7));
        values.push(rng.random::<f64>() * magnitude);
        // Ties at half a thousandth.
        values.push((rng.random_range(0..2_000_000u64) as f64 + 0.5) / VALUE_SCALE);
    }
    values
}

#[tokio::test]
async fn sql_buckets_equal_the_speed_layers_for_the_same_values() {
    let (cfg, client) = fresh("bucket").await;
    let a = &cfg.aggregator;
    let mut rng = SmallRng::seed_from_u64(17);
    let values = probe_values(&mut rng, a.histogram_max_value);
    client
        .query("CREATE TABLE probe (i UInt32, v Float64) ENGINE = Memory")
        .execute()
        .await
        .unwrap();
    let mut insert = client.insert::<Probe>("probe").await.unwrap();
    for (i, v) in values.iter().enumerate() {
        insert.write(&Probe { i: i as u32, v: *v }).await.unwrap();
    }
    insert.end().await.unwrap();

    let bucket = sql_bucket("v", a.histogram_sigfig, a.histogram_max_value);
    let sql_buckets: Vec<(u32, u64)> = client
        .query(&format!("SELECT i, {bucket} FROM probe ORDER BY i"))
        .fetch_all()
        .await
        .unwrap();
    let mut wrong = Vec::new();
    for (i, b) in &sql_buckets {
        let v = values[*i as usize];
        let mut one = ValueHistogram::new(a.histogram_sigfig, a.histogram_max_value);
        one.record(v);
        let rust = one.buckets().0[0];
        if rust != *b {
            wrong.push((v, rust, *b));
        }
    }
    assert_eq!(sql_buckets.len(), values.len());
    assert!(
        wrong.is_empty(),
        "{} of {} values bucketed differently (value, rust, sql): {:?}",
        wrong.len(),
        values.len(),
        &wrong[..wrong.len().min(20)]
    );

    // All values in one (dense) histogram against sumMap over the SQL buckets.
    let mut all = ValueHistogram::new(a.histogram_sigfig, a.histogram_max_value);
    for v in &values {
        all.record(*v);
    }
    let (sv, sc): (Vec<u64>, Vec<u64>) = client
        .query(&format!(
            "SELECT tupleElement(m, 1) AS v, tupleElement(m, 2) AS c FROM (SELECT sumMap([{bucket}], [toUInt64(1)]) AS m FROM probe)"
        ))
        .fetch_one::<Buckets>()
        .await
        .map(|b| (b.v, b.c))
        .unwrap();
    assert_eq!(all.buckets(), (sv, sc));
    drop_db(&cfg).await;
}

/// One raw row as the generator made it.
struct Raw {
    row: EventRow,
    user_key: String,
}

struct Generated {
    rows: Vec<Raw>,
    duplicates: usize,
    deleted_user: (String, String),
    deleted_at: u32,
    /// (project, user, tenant): deleted by that tenant's admin only, at
    /// `deleted_at`; the user's events in other tenants stay.
    tenant_deletion: (String, String, String),
}

fn generate(dims: &Dimensions, seed: u64, n: usize) -> Generated {
    let mut rng = SmallRng::seed_from_u64(seed);
    let paths = ["/", "/pricing", "/docs", "/blog"];
    let events = ["page_view", "purchase", "signup"];
    let deleted_user = ("p1".to_owned(), "u7".to_owned());
    let deleted_at = (HOUR + 1800) as u32;
    let mut rows = Vec::new();
    let mut offsets = [0i64; 8];
    for i in 0..n {
        // From 10 minutes before the hour to 10 minutes after: the margins matter.
        let ts_ms = (HOUR - 600) * 1000 + rng.random_range(0..4_800_000i64);
        let project = if rng.random_bool(0.8) { "p1" } else { "p2" };
        let event = events[rng.random_range(0..events.len())];
        let user_n = rng.random_range(0..60);
        let (user_id, anonymous_id) = if rng.random_bool(0.1) {
            (String::new(), format!("anon-{user_n}"))
        } else {
            (format!("u{user_n}"), String::new())
        };
        let mut props = serde_json::Map::new();
        if rng.random_bool(0.9) {
            props.insert(
                "path".into(),
                paths[rng.random_range(0..paths.len())].into(),
            );
        }
        let tenant = ["", "acme", "globex"][rng.random_range(0..3)];
        if !tenant.is_empty() {
            props.insert("tenant_id".into(), tenant.into());
        }
        let value = (event == "purchase").then(|| match rng.random_range(0..10) {
            0 => (rng.random_range(0..100_000u64) as f64 + 0.5) / VALUE_SCALE,
            1 => -(rng.random::<f64>()),
            2 => 4_000_000.0,
            _ => rng.random::<f64>() * 10f64.powi(rng.random_range(0..5)),
        });
        // 3 % arrive hours to days late; the rest within seconds.
        let delay = if rng.random_bool(0.03) {
            rng.random_range(3_600..5 * 86_400)
        } else {
            rng.random_range(0..5)
        };
        let received = (ts_ms / 1000 + delay) as u32;
        let partition = (user_n % 8) as usize;
        offsets[partition] += 1;
        // Rows of the first tenth predate `events.dimensions`.
        let dimensions = if i < n / 10 && !props.contains_key("path") {
            String::new()
        } else {
            dims.key(&props)
        };
        let user_key = if user_id.is_empty() {
            anonymous_id.clone()
        } else {
            user_id.clone()
        };
        rows.push(Raw {
            row: EventRow {
                project_id: project.into(),
                event: event.into(),
                event_id: uuid::Uuid::from_u128(rng.random()).to_string(),
                user_id,
                anonymous_id,
                session_id: String::new(),
                timestamp: (ts_ms / 1000) as u32,
                timestamp_ms: ts_ms,
                received_at: received,
                value,
                properties: serde_json::Value::Object(props).to_string(),
                schema_version: 1,
                kafka_partition: partition as u16,
                kafka_offset: offsets[partition],
                dimensions,
                tenant_id: tenant.into(),
            },
            user_key,
        });
    }
    // 2 % sent again with the same event_id, as a client's retry sends it:
    // the same payload on the same partition (keyed by user), some received
    // earlier than the first copy's row (a retry the broker took first).
    // Copies whose payloads differ are hostile input: `events` keeps one of
    // them (its engine has no version column), see issue 18.
    let duplicates = n / 50;
    for _ in 0..duplicates {
        let original = &rows[rng.random_range(0..n)];
        let mut row = original.row.clone();
        row.received_at = original
            .row
            .received_at
            .saturating_add_signed(rng.random_range(-3..600));
        row.kafka_offset = offsets[row.kafka_partition as usize];
        let user_key = original.user_key.clone();
        rows.push(Raw { row, user_key });
    }
    Generated {
        rows,
        duplicates,
        deleted_user,
        deleted_at,
        tenant_deletion: ("p1".into(), "u8".into(), "acme".into()),
    }
}

/// What a window or hour must read, from the generator alone.
#[derive(Debug, Default)]
struct Truth {
    events: u64,
    users: BTreeSet<String>,
    values: Vec<f64>,
}

type Key = (i64, String, String, String);

/// The truth per (bucket, project, event, dimensions) for buckets of
/// `period` seconds, over events in `[from, to)`.
fn truth(
    g: &Generated,
    dims: &Dimensions,
    period: i64,
    from: i64,
    to: i64,
) -> BTreeMap<Key, Truth> {
    let mut first: HashMap<&str, &Raw> = HashMap::new();
    for raw in &g.rows {
        let r = &raw.row;
        let rank = |x: &EventRow| (x.received_at, x.kafka_partition, x.kafka_offset);
        first
            .entry(r.event_id.as_str())
            .and_modify(|f| {
                if rank(r) < rank(&f.row) {
                    *f = raw;
                }
            })
            .or_insert(raw);
    }
    let mut out: BTreeMap<Key, Truth> = BTreeMap::new();
    for raw in first.values() {
        let r = &raw.row;
        let secs = r.timestamp_ms.div_euclid(1000);
        if secs < from || secs >= to {
            continue;
        }
        if (r.project_id.clone(), raw.user_key.clone()) == g.deleted_user
            && r.received_at <= g.deleted_at
        {
            continue;
        }
        let (project, user, tenant) = &g.tenant_deletion;
        if (&r.project_id, &raw.user_key, &r.tenant_id) == (project, user, tenant)
            && r.received_at <= g.deleted_at
        {
            continue;
        }
        let props: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&r.properties).unwrap();
        let key = (
            secs - secs.rem_euclid(period),
            r.project_id.clone(),
            r.event.clone(),
            dims.key(&props),
        );
        let t = out.entry(key).or_default();
        t.events += 1;
        t.users.insert(raw.user_key.clone());
        t.values.extend(r.value);
    }
    out
}

#[derive(Debug, Row, Deserialize)]
struct Served {
    window_start: u32,
    project_id: String,
    event: String,
    dimensions: String,
    events: u64,
    users: u64,
    value_count: u64,
    value_sum: f64,
    value_min: f64,
    value_max: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    layer: String,
}

async fn served(client: &Client, view: &str, from: i64, to: i64) -> Vec<Served> {
    client
        .query(&format!(
            "SELECT toUInt32(window_start) AS window_start, toString(project_id) AS project_id, toString(event) AS event, \
                    dimensions, events, users, value_count, value_sum, value_min, value_max, p50, p90, p95, p99, layer \
             FROM {view} WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?) \
             ORDER BY window_start, project_id, event, dimensions"
        ))
        .bind(from)
        .bind(to)
        .fetch_all()
        .await
        .unwrap()
}

/// The truth's percentile, from the `hdrhistogram` crate fed the raw values.
fn true_quantile(values: &[f64], q: f64, cfg: &Config) -> f64 {
    let a = &cfg.aggregator;
    let max_scaled = (a.histogram_max_value * VALUE_SCALE) as u64;
    let mut h =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, max_scaled, a.histogram_sigfig).unwrap();
    for v in values {
        let scaled = (v * VALUE_SCALE).round().clamp(0.0, max_scaled as f64) as u64;
        h.saturating_record(scaled);
    }
    h.value_at_quantile(q) as f64 / VALUE_SCALE
}

fn assert_served_equal(served: &[Served], truth: &BTreeMap<Key, Truth>, cfg: &Config, what: &str) {
    let got: BTreeMap<Key, &Served> = served
        .iter()
        .map(|s| {
            (
                (
                    i64::from(s.window_start),
                    s.project_id.clone(),
                    s.event.clone(),
                    s.dimensions.clone(),
                ),
                s,
            )
        })
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        truth.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (key, t) in truth {
        let s = got[key];
        assert_eq!(s.layer, "batch", "{what} {key:?}");
        assert_eq!(
            (s.events, s.users),
            (t.events, t.users.len() as u64),
            "{what} {key:?}: events, users"
        );
        assert_eq!(
            s.value_count,
            t.values.len() as u64,
            "{what} {key:?}: value count"
        );
        if t.values.is_empty() {
            continue;
        }
        let sum: f64 = t.values.iter().sum();
        assert!(
            (s.value_sum - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "{what} {key:?}: sum {} vs {sum}",
            s.value_sum
        );
        let min = t.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(
            (s.value_min, s.value_max),
            (min, max),
            "{what} {key:?}: min, max"
        );
        for (q, p) in [(0.5, s.p50), (0.9, s.p90), (0.95, s.p95), (0.99, s.p99)] {
            assert_eq!(
                p,
                true_quantile(&t.values, q, cfg),
                "{what} {key:?}: p{}",
                q * 100.0
            );
        }
    }
}

async fn load(client: &Client, rows: impl Iterator<Item = &EventRow>) {
    let mut insert = client.insert::<EventRow>("events").await.unwrap();
    for r in rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();
}

/// The generator's two deletion requests: one project-wide, one for a
/// tenant only.
async fn record_deletions(client: &Client, g: &Generated) {
    client
        .query("INSERT INTO deletions (project_id, user, requested_at, requested_by, events_removed) VALUES (?, ?, toDateTime(?), 'test', 0)")
        .bind(&g.deleted_user.0)
        .bind(&g.deleted_user.1)
        .bind(g.deleted_at)
        .execute()
        .await
        .unwrap();
    client
        .query("INSERT INTO deletions (project_id, user, tenant_id, requested_at, requested_by, events_removed) VALUES (?, ?, ?, toDateTime(?), 'test', 0)")
        .bind(&g.tenant_deletion.0)
        .bind(&g.tenant_deletion.1)
        .bind(&g.tenant_deletion.2)
        .bind(g.deleted_at)
        .execute()
        .await
        .unwrap();
}

/// A speed row in `rollup_5m`, as the aggregator would have flushed it.
async fn speed_row(client: &Client, window: i64, event: &str, dims: &str, events: u64) {
    client
        .query(
            "INSERT INTO rollup_5m (window_start, project_id, event, dimensions, source_topic, source_partition, \
             events, users, user_hashes, value_count, value_sum, value_min, value_max, p50, p90, p95, p99, \
             hist_values, hist_counts, resume_offset, watermark_ms) \
             VALUES (toDateTime(?), 'p1', ?, ?, 'events', 0, ?, 1, [1], 0, 0, 0, 0, 0, 0, 0, 0, [], [], 0, 0)",
        )
        .bind(window)
        .bind(event)
        .bind(dims)
        .bind(events)
        .execute()
        .await
        .unwrap();
}

#[tokio::test]
async fn an_hour_recomputed_from_raw_rows_equals_the_truth_and_replaces_the_speed_rows() {
    let (cfg, client) = fresh("hour").await;
    let dims = Dimensions::from(&cfg.aggregator);
    let g = generate(&dims, 2417, 6_000);
    // The tenant deletion has events on both sides to decide.
    for tenant in ["acme", "globex"] {
        assert!(g.rows.iter().any(|r| r.user_key == g.tenant_deletion.1
            && r.row.project_id == g.tenant_deletion.0
            && r.row.tenant_id == tenant
            && r.row.received_at <= g.deleted_at));
    }
    load(&client, g.rows.iter().map(|r| &r.row)).await;
    record_deletions(&client, &g).await;
    // Merged first: the pass must read the truth from collapsed copies too.
    client
        .query("OPTIMIZE TABLE events FINAL")
        .execute()
        .await
        .unwrap();
    let path_key = dims.key(&serde_json::from_str(r#"{"path":"/docs"}"#).unwrap());
    speed_row(&client, HOUR, "page_view", &path_key, 999_999).await;

    // Before any pass: the speed row, marked as such.
    let before = served(&client, "metrics_5m", HOUR, HOUR + 300).await;
    assert_eq!(before.len(), 1);
    assert_eq!(
        (before[0].events, before[0].layer.as_str()),
        (999_999, "speed")
    );

    let mut batch = Batch::new(&cfg);
    let lease = Lease::acquire(batch.client(), cfg.batch.lease_secs, false)
        .await
        .unwrap();
    let range = Range {
        from: Some(HOUR - 3600),
        to: Some(HOUR + 7200),
        force: false,
    };
    let report = batch.pass(range, &lease).await.unwrap();
    assert_eq!(report.hours, vec![HOUR - 3600, HOUR, HOUR + 3600]);
    assert_eq!(report.days, vec![DAY]);
    let all = truth(&g, &dims, 300, HOUR - 3600, HOUR + 7200);
    let total: u64 = all.values().map(|t| t.events).sum();
    assert_eq!(report.events, total);

    let want_5m = truth(&g, &dims, 300, HOUR, HOUR + 3600);
    assert_served_equal(
        &served(&client, "metrics_5m", HOUR, HOUR + 3600).await,
        &want_5m,
        &cfg,
        "5m",
    );
    let want_1h = truth(&g, &dims, 3600, HOUR - 3600, HOUR + 7200);
    assert_served_equal(
        &served(&client, "metrics_1h", HOUR - 3600, HOUR + 7200).await,
        &want_1h,
        &cfg,
        "1h",
    );
    let want_1d = truth(&g, &dims, 86_400, DAY, DAY + 86_400);
    assert_served_equal(
        &served(&client, "metrics_1d", DAY, DAY + 86_400).await,
        &want_1d,
        &cfg,
        "1d",
    );

    // The all-dimensions totals: exact distinct users per (hour, project, event).
    let totals: Vec<(String, String, u64, u64)> = client
        .query("SELECT toString(project_id), toString(event), events, users FROM batch_rollups \
                WHERE period_secs = 3600 AND bucket_start = toDateTime(?) AND dimensions = '*' \
                AND version = (SELECT max(version) FROM batch_commits WHERE period_secs = 3600 AND bucket_start = toDateTime(?)) \
                ORDER BY 1, 2")
        .bind(HOUR)
        .bind(HOUR)
        .fetch_all()
        .await
        .unwrap();
    let mut want_totals: BTreeMap<(String, String), (u64, BTreeSet<String>)> = BTreeMap::new();
    for ((_, p, e, _), t) in &want_1h {
        let w = want_totals.entry((p.clone(), e.clone())).or_default();
        w.0 += t.events;
        w.1.extend(t.users.iter().cloned());
    }
    let want_totals: Vec<_> = want_totals
        .into_iter()
        .map(|((p, e), (n, u))| (p, e, n, u.len() as u64))
        .collect();
    // Only the hour itself (the map above spans three hours).
    let hour_only = truth(&g, &dims, 3600, HOUR, HOUR + 3600);
    let mut hour_totals: BTreeMap<(String, String), (u64, BTreeSet<String>)> = BTreeMap::new();
    for ((_, p, e, _), t) in &hour_only {
        let w = hour_totals.entry((p.clone(), e.clone())).or_default();
        w.0 += t.events;
        w.1.extend(t.users.iter().cloned());
    }
    let hour_totals: Vec<_> = hour_totals
        .into_iter()
        .map(|((p, e), (n, u))| (p, e, n, u.len() as u64))
        .collect();
    assert_eq!(totals, hour_totals);
    assert!(want_totals.len() >= hour_totals.len());

    check_query_api(&cfg, &client, &want_5m, &want_1d).await;

    // Reconciliation: copies loaded per hour, duplicates and deletions explained.
    let recon: Vec<(String, String, u64, u64, i64, u64)> = client
        .query("SELECT project_id, event, copies_loaded, batch_events, duplicates_removed, speed_events FROM reconciliation FINAL \
                WHERE hour = toDateTime(?) ORDER BY version DESC, project_id, event LIMIT 1 BY project_id, event")
        .bind(HOUR)
        .fetch_all()
        .await
        .unwrap();
    let copies = g
        .rows
        .iter()
        .filter(|r| r.row.timestamp as i64 / 3600 * 3600 == HOUR)
        .count() as u64;
    assert_eq!(recon.iter().map(|r| r.2).sum::<u64>(), copies);
    let batched: u64 = hour_totals.iter().map(|t| t.2).sum();
    assert_eq!(recon.iter().map(|r| r.3).sum::<u64>(), batched);
    assert_eq!(recon.iter().map(|r| r.5).sum::<u64>(), 999_999);

    // A second pass finds nothing to do; a forced one changes no number.
    let again = batch.pass(range, &lease).await.unwrap();
    assert!(again.hours.is_empty() && again.days.is_empty(), "{again:?}");
    let forced = batch
        .pass(
            Range {
                force: true,
                ..range
            },
            &lease,
        )
        .await
        .unwrap();
    assert_eq!(forced.hours.len(), 3);
    assert_served_equal(
        &served(&client, "metrics_5m", HOUR, HOUR + 3600).await,
        &want_5m,
        &cfg,
        "5m forced",
    );
    assert_served_equal(
        &served(&client, "metrics_1d", DAY, DAY + 86_400).await,
        &want_1d,
        &cfg,
        "1d forced",
    );

    // A late row arriving after the pass makes its hour (and day) due again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut late = g.rows[0].row.clone();
    late.event_id = uuid::Uuid::from_u128(7).to_string();
    late.timestamp = (HOUR + 42) as u32;
    late.timestamp_ms = (HOUR + 42) * 1000;
    late.user_id = "late-user".into();
    late.received_at = late.received_at.max((HOUR + 90_000) as u32);
    load(&client, std::iter::once(&late)).await;
    let dirty = batch.pass(range, &lease).await.unwrap();
    assert_eq!(
        (dirty.hours, dirty.days, dirty.events),
        (vec![HOUR], vec![DAY], batched + 1)
    );
    let n: u64 = client
        .query("SELECT sum(events) FROM metrics_1d WHERE window_start = toDateTime(?)")
        .bind(DAY)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, want_1d.values().map(|t| t.events).sum::<u64>() + 1);
    let _ = g.duplicates;
    lease.release().await;
    drop_db(&cfg).await;
}

/// `/v1/metrics` reads the batch rows of batched hours and days (totals when
/// ungrouped, merged states when grouped) and says so per bucket; an hour
/// no pass covered is answered by the speed layer.
async fn check_query_api(
    cfg: &Config,
    client: &Client,
    want_5m: &BTreeMap<Key, Truth>,
    want_1d: &BTreeMap<Key, Truth>,
) {
    let later = HOUR + 5 * 3600;
    speed_row(client, later, "purchase", "{}", 5).await;
    let mut cfg = cfg.clone();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    cfg.query.listen = format!("127.0.0.1:{port}");
    cfg.query.jwt_secret = "batch-test-secret".into();
    cfg.query.allow_project_wide_tokens = true;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(hourglass_query::run(cfg.clone(), stop.clone()));
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"project_id": "p1", "sub": "test", "exp": chrono_now() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"batch-test-secret"),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            for _ in 0..100 {
                if let Ok(r) = http
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    assert!(r.status().is_success(), "GET {path}: {}", r.status());
                    return r.json::<serde_json::Value>().await.unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("the query API did not answer");
        }
    };
    // Ungrouped 5m: one series, every bucket from the batch, exact users.
    let body = get(format!(
        "/v1/metrics?event=purchase&step=5m&from={HOUR}&to={}",
        HOUR + 3600
    ))
    .await;
    let mut want: BTreeMap<i64, (u64, BTreeSet<String>, Vec<f64>)> = BTreeMap::new();
    for ((t, p, e, _), truth) in want_5m {
        if p == "p1" && e == "purchase" {
            let w = want.entry(*t).or_default();
            w.0 += truth.events;
            w.1.extend(truth.users.iter().cloned());
            w.2.extend(truth.values.iter().copied());
        }
    }
    let points = body["series"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), want.len(), "{body}");
    for (point, (t, (n, users, values))) in points.iter().zip(&want) {
        assert_eq!(point["layer"], "batch", "{point}");
        assert_eq!(point["time"].as_str().unwrap(), show(*t));
        assert_eq!(
            (
                point["events"].as_u64().unwrap(),
                point["users"].as_u64().unwrap()
            ),
            (*n, users.len() as u64),
            "{point}"
        );
        assert_eq!(
            point["p95"].as_f64().unwrap(),
            true_quantile(values, 0.95, &cfg),
            "{point}"
        );
    }
    // Grouped by path at 1d: per-path exact users from merged states.
    let body = get(format!(
        "/v1/metrics?event=page_view&step=1d&from={DAY}&to={}&group_by=path",
        DAY + 86_400
    ))
    .await;
    let mut want: BTreeMap<String, (u64, BTreeSet<String>)> = BTreeMap::new();
    for ((_, p, e, d), truth) in want_1d {
        if p == "p1" && e == "page_view" {
            let props: serde_json::Value = serde_json::from_str(d).unwrap();
            let path = props["path"].as_str().unwrap_or("").to_owned();
            let w = want.entry(path).or_default();
            w.0 += truth.events;
            w.1.extend(truth.users.iter().cloned());
        }
    }
    let got: BTreeMap<String, (u64, u64, String)> = body["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let p = &s["points"][0];
            (
                s["group"]["path"].as_str().unwrap().to_owned(),
                (
                    p["events"].as_u64().unwrap(),
                    p["users"].as_u64().unwrap(),
                    p["layer"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    let want: BTreeMap<String, (u64, u64, String)> = want
        .into_iter()
        .map(|(k, (n, u))| (k, (n, u.len() as u64, "batch".to_owned())))
        .collect();
    assert_eq!(got, want);
    // An hour no pass covered: the speed layer's row.
    let body = get(format!(
        "/v1/metrics?event=purchase&step=1h&from={later}&to={}",
        later + 3600
    ))
    .await;
    let point = &body["series"][0]["points"][0];
    assert_eq!(
        (point["events"].as_u64(), point["layer"].as_str()),
        (Some(5), Some("speed")),
        "{body}"
    );
    stop.cancel();
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn show(t: i64) -> String {
    hourglass_batch::plan::show(t)
}

/// The generated rows as the archiver would have written them: one Parquet
/// file per (arrival hour, partition).
async fn archive(cfg: &Config, rows: &[Raw]) {
    use hourglass_lake::store::ObjectStore;
    let mut files: BTreeMap<(i64, u16), Vec<&EventRow>> = BTreeMap::new();
    for raw in rows {
        let r = &raw.row;
        files
            .entry((i64::from(r.received_at) / 3600 * 3600, r.kafka_partition))
            .or_default()
            .push(r);
    }
    let store = hourglass_lake::store::LocalStore::new(&cfg.lake.local_dir);
    for ((hour, partition), mut rows) in files {
        rows.sort_by_key(|r| r.kafka_offset);
        let mut batch = hourglass_lake::schema::BatchBuilder::default();
        for r in &rows {
            let envelope = hourglass_core::contract::EventEnvelope {
                schema_version: r.schema_version,
                project_id: r.project_id.clone(),
                event_id: r.event_id.parse().unwrap(),
                event: r.event.clone(),
                user_id: (!r.user_id.is_empty()).then(|| r.user_id.clone()),
                anonymous_id: (!r.anonymous_id.is_empty()).then(|| r.anonymous_id.clone()),
                session_id: None,
                timestamp: chrono::DateTime::from_timestamp_millis(r.timestamp_ms).unwrap(),
                received_at: chrono::DateTime::from_timestamp(i64::from(r.received_at), 0).unwrap(),
                value: r.value,
                properties: serde_json::from_str(&r.properties).unwrap(),
            };
            batch.append(&envelope, i32::from(partition), r.kafka_offset);
        }
        let body = hourglass_lake::schema::to_parquet(&batch.finish(), 100_000).unwrap();
        let key = hourglass_lake::layout::file_key(
            chrono::DateTime::from_timestamp(hour, 0).unwrap(),
            &cfg.kafka.topic,
            i32::from(partition),
            rows[0].kafka_offset,
            rows[rows.len() - 1].kafka_offset,
        );
        store.put(&key, body).await.unwrap();
    }
}

#[derive(Debug, Row, Deserialize)]
struct BatchRow {
    period_secs: u32,
    bucket: u32,
    project_id: String,
    event: String,
    dimensions: String,
    events: u64,
    users: u64,
    value_count: u64,
    value_sum: f64,
    value_min: f64,
    value_max: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    hist_values: Vec<u64>,
    hist_counts: Vec<u64>,
}

async fn batch_rows(client: &Client, source: &str) -> Vec<BatchRow> {
    client
        .query(
            "SELECT period_secs, toUInt32(bucket_start) AS bucket, toString(project_id) AS project_id, \
                    toString(event) AS event, dimensions, events, users, value_count, value_sum, value_min, value_max, \
                    p50, p90, p95, p99, hist_values, hist_counts \
             FROM batch_rollups WHERE period_secs IN (300, 3600) AND (toStartOfHour(bucket_start), version) IN \
                (SELECT bucket_start, version FROM batch_commits WHERE period_secs = 3600 AND source = ?) \
             ORDER BY period_secs, bucket, project_id, event, dimensions",
        )
        .bind(source)
        .fetch_all()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_lake_and_clickhouse_give_identical_batch_rows() {
    let (mut cfg, client) = fresh("lake").await;
    let lake_dir = std::env::temp_dir().join(&cfg.clickhouse.database);
    cfg.lake.storage = hourglass_core::config::LakeStorage::Local;
    cfg.lake.local_dir = lake_dir.display().to_string();
    let dims = Dimensions::from(&cfg.aggregator);
    let g = generate(&dims, 99, 3_000);
    load(&client, g.rows.iter().map(|r| &r.row)).await;
    archive(&cfg, &g.rows).await;
    record_deletions(&client, &g).await;

    let mut batch = Batch::new(&cfg);
    let lease = Lease::acquire(batch.client(), cfg.batch.lease_secs, false)
        .await
        .unwrap();
    let range = Range {
        from: Some(HOUR - 3600),
        to: Some(HOUR + 7200),
        force: true,
    };
    // Merges must not change what a pass computes.
    client
        .query("OPTIMIZE TABLE events FINAL")
        .execute()
        .await
        .unwrap();
    let from_clickhouse = batch.pass(range, &lease).await.unwrap();
    // Late copies arrive up to 5 days after their event time.
    let from_lake = batch
        .pass_from_lake(HOUR - 3600, HOUR + 7200, 24 * 6, &lease)
        .await
        .unwrap();
    assert_eq!(from_lake.hours, from_clickhouse.hours);
    assert_eq!(from_lake.events, from_clickhouse.events);
    let (a, b) = (
        batch_rows(&client, "clickhouse").await,
        batch_rows(&client, "lake").await,
    );
    assert!(a.len() > 100, "{}", a.len());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let key = (
            x.period_secs,
            x.bucket,
            &x.project_id,
            &x.event,
            &x.dimensions,
        );
        assert_eq!(
            key,
            (
                y.period_secs,
                y.bucket,
                &y.project_id,
                &y.event,
                &y.dimensions
            )
        );
        assert_eq!(
            (
                x.events,
                x.users,
                x.value_count,
                x.value_min,
                x.value_max,
                x.p50,
                x.p90,
                x.p95,
                x.p99,
                &x.hist_values,
                &x.hist_counts
            ),
            (
                y.events,
                y.users,
                y.value_count,
                y.value_min,
                y.value_max,
                y.p50,
                y.p90,
                y.p95,
                y.p99,
                &y.hist_values,
                &y.hist_counts
            ),
            "{key:?}"
        );
        assert!(
            (x.value_sum - y.value_sum).abs() <= 1e-9 * x.value_sum.abs().max(1.0),
            "{key:?}"
        );
    }
    lease.release().await;
    let _ = std::fs::remove_dir_all(&lake_dir);
    drop_db(&cfg).await;
}
