//! The serving views on the local ClickHouse 18.16, and the same schema,
//! rows and statements on a current ClickHouse.
//!
//! 1. Known `rollup_5m` rows (several windows × source partitions), written
//!    through the aggregator's sink: `rollup_1h`, `rollup_1d` and the serving
//!    views return exactly the sums, and percentiles from merged buckets equal
//!    those of one HdrHistogram fed every value.
//! 2. chdb-core (ClickHouse 26.x in-process, `tests/python/chdb_run.py`) gets
//!    every migration rendered for a modern server (LowCardinality, codecs,
//!    TTL, insert deduplication), then every row 18.16 holds after those same
//!    known rows, two projects' seeded sessions and a batch pass (tables that
//!    materialized views fill are filled by chdb's own views), and must
//!    answer `metrics_5m/1h/1d` and every statement the query API sent to
//!    18.16 while walking its endpoints (the text with its bound values, from
//!    the API's statement log) as 18.16 did; the API's writes (a user
//!    deletion) must run there too.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::common::TestEnv;
use crate::common::seeded_project::{generate, seed, t0};
use chrono::Utc;
use hourglass_aggregator::sink::RollupSink;
use hourglass_aggregator::window::{Checkpoint, ClosedWindows, KeyAggregate, RollupRow, user_hash};
use hourglass_core::histogram::ValueHistogram;
use hourglass_lake::store::LocalStore;
use hourglass_sql::{Features, MIGRATIONS, render};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const MIN: i64 = 60_000;
const SECRET: &str = "modern-clickhouse-check-secret-0123456789";

/// What [`write_known_rollups`] wrote, summed.
struct Known {
    events: u64,
    users: usize,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    whole: ValueHistogram,
}

/// 12 windows (one hour) × 4 source partitions of project `p`, event `api`;
/// users 0..400 keyed to partitions.
async fn write_known_rollups(sink: &RollupSink) -> Known {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut known = Known {
        events: 0,
        users: 0,
        count: 0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        whole: ValueHistogram::new(3, 3_600_000.0),
    };
    let mut all_users = HashSet::new();
    for partition in 0..4 {
        let mut rows = Vec::new();
        for w in 0..12 {
            let mut agg = KeyAggregate::default();
            for _ in 0..rng.random_range(50..300) {
                let user = format!("u{}", rng.random_range(0..100) * 4 + partition);
                let v = (rng.random::<f64>().powi(3) * 5_000.0 * 1000.0).round() / 1000.0;
                agg.add(user_hash(&user), Some(v), 3, 3_600_000.0);
                all_users.insert(user);
                known.whole.record(v);
                known.events += 1;
                known.count += 1;
                known.sum += v;
                known.min = known.min.min(v);
                known.max = known.max.max(v);
            }
            rows.push(RollupRow::new(T0 + w * 5 * MIN, "p\u{1f}api\u{1f}{}", agg));
        }
        let closed = ClosedWindows {
            windows: rows.len(),
            last_window_start_ms: T0 + 55 * MIN,
            rows,
            late: Vec::new(),
            checkpoint: Checkpoint {
                resume_offset: 1000 + i64::from(partition),
                watermark_ms: T0 + 61 * MIN,
            },
        };
        sink.write(partition, &closed).await.expect("write");
    }
    known.users = all_users.len();
    known
}

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct Served {
    events: u64,
    users: u64,
    value_count: u64,
    value_sum: f64,
    value_min: f64,
    value_max: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

#[tokio::test]
async fn hourly_and_daily_views_equal_the_merged_five_minute_rows() {
    let env = TestEnv::new("views").await;
    env.migrate().await;
    let client = env.clickhouse();
    let sink = RollupSink::new(client.clone(), "events");
    let known = write_known_rollups(&sink).await;
    let whole = &known.whole;

    for view in ["metrics_1h", "metrics_1d"] {
        let got: Vec<Served> = client
            .query(&format!(
                "SELECT events, users, value_count, value_sum, value_min, value_max, p50, p95, p99 FROM {view}"
            ))
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{view}: one bucket");
        let g = &got[0];
        assert_eq!(
            (g.events, g.users, g.value_count),
            (known.events, known.users as u64, known.count),
            "{view}"
        );
        assert!(
            (g.value_sum - known.sum).abs() < 1e-6 * known.sum,
            "{view} sum {} vs {}",
            g.value_sum,
            known.sum
        );
        assert_eq!(
            (g.value_min, g.value_max),
            (known.min, known.max),
            "{view} min/max"
        );
        assert_eq!(
            (g.p50, g.p95, g.p99),
            (
                whole.quantile(0.5),
                whole.quantile(0.95),
                whole.quantile(0.99)
            ),
            "{view}: percentiles from merged buckets equal one histogram fed every value"
        );
    }

    // A dashboard selects only what it plots: each column must work alone.
    for view in ["metrics_5m", "metrics_1h", "metrics_1d"] {
        for column in ["p95", "users", "value_avg", "events"] {
            let alone: Vec<f64> = client
                .query(&format!("SELECT toFloat64({column}) FROM {view}"))
                .fetch_all()
                .await
                .unwrap_or_else(|e| panic!("SELECT {column} FROM {view}: {e}"));
            assert!(!alone.is_empty(), "{view}.{column}");
        }
    }
    let p95_alone: Vec<f64> = client
        .query("SELECT p95 FROM metrics_1h")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(p95_alone, vec![whole.quantile(0.95)]);

    // metrics_5m: 12 rows, each the sum over the 4 source partitions.
    let per_window: Vec<(u64, u64)> = client
        .query("SELECT events, value_count FROM metrics_5m ORDER BY window_start")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(per_window.len(), 12);
    assert_eq!(per_window.iter().map(|r| r.0).sum::<u64>(), known.events);

    let checkpoints = sink.checkpoints().await.unwrap();
    assert_eq!(checkpoints.len(), 4);
    assert!(
        checkpoints
            .iter()
            .all(|(p, c)| c.resume_offset == 1000 + i64::from(*p))
    );
    assert!(
        checkpoints
            .iter()
            .any(|(p, c)| *p == 2 && c.watermark_ms == T0 + 61 * MIN),
        "{checkpoints:?}"
    );

    env.drop_database().await;
}

/// Every statement the query API logs, in the order sent.
#[derive(Clone, Default)]
struct StatementLog(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != hourglass_query::sql::STATEMENT_LOG {
            return;
        }
        struct Field(Option<String>);
        impl tracing::field::Visit for Field {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "statement" {
                    self.0 = Some(format!("{v:?}"));
                }
            }
        }
        let mut field = Field(None);
        event.record(&mut field);
        self.0.lock().unwrap().extend(field.0);
    }
}

impl StatementLog {
    /// What was logged since the last call, each distinct text once.
    fn take(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .filter(|s| seen.insert(s.clone()))
            .collect()
    }
}

fn token(claims: Value) -> String {
    crate::common::hs256_token(SECRET, &claims)
}

/// 18.16's answer to `sql`, as TabSeparated text.
async fn answer_on_18_16(client: &clickhouse::Client, sql: &str) -> String {
    // The client treats `?` as a placeholder; the text is final already.
    let bytes = client
        .query(&sql.replace('?', "??"))
        .fetch_bytes("TabSeparated")
        .unwrap()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("18.16 refused\n{sql}\n{e}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The same rows and cells; floating-point cells may differ in the last
/// digits (the engines sum in different orders).
fn same_answer(old: &str, new: &str) -> Result<(), String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    if a.len() != b.len() {
        return Err(format!("{} rows on 18.16, {} on 26.x", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let (xs, ys): (Vec<&str>, Vec<&str>) = (x.split('\t').collect(), y.split('\t').collect());
        let close = |p: &str, q: &str| match (p.parse::<f64>(), q.parse::<f64>()) {
            (Ok(p), Ok(q)) => p == q || (p - q).abs() <= 1e-9 * p.abs().max(q.abs()),
            _ => false,
        };
        if xs.len() != ys.len() || xs.iter().zip(&ys).any(|(p, q)| p != q && !close(p, q)) {
            return Err(format!("row {i} differs:\n 18.16: {x}\n 26.x:  {y}"));
        }
    }
    Ok(())
}

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct TableRow {
    name: String,
    engine: String,
    create_table_query: String,
}

/// Every table of the database that the pipeline writes directly, copied to
/// TabSeparated files: what chdb loads. Tables that materialized views fill
/// are left out (chdb's own views fill them from the copied rows), and so is
/// the migrations ledger.
async fn copy_tables(env: &TestEnv, dir: &std::path::Path) -> Vec<Value> {
    let client = env.clickhouse();
    let tables: Vec<TableRow> = client
        .query(
            "SELECT name, engine, create_table_query FROM system.tables \
             WHERE database = currentDatabase() ORDER BY name",
        )
        .fetch_all()
        .await
        .unwrap();
    let filled_by_views: HashSet<String> = tables
        .iter()
        .filter(|t| t.engine == "MaterializedView")
        .filter_map(|t| {
            let to = t.create_table_query.split(" TO ").nth(1)?;
            let target = to.split_whitespace().next()?.rsplit('.').next()?;
            Some(target.trim_matches('`').to_owned())
        })
        .collect();
    assert!(
        filled_by_views.contains("rollup_1h") && filled_by_views.contains("aggregator_progress"),
        "view targets found: {filled_by_views:?}"
    );
    let mut out = Vec::new();
    for t in tables.iter().filter(|t| {
        !t.engine.ends_with("View")
            && t.name != "schema_migrations"
            && !filled_by_views.contains(&t.name)
    }) {
        let columns: Vec<String> = client
            .query(
                "SELECT name FROM system.columns WHERE database = currentDatabase() \
                 AND table = ? AND default_kind NOT IN ('MATERIALIZED', 'ALIAS')",
            )
            .bind(&t.name)
            .fetch_all()
            .await
            .unwrap();
        let list = columns
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = client
            .query(&format!("SELECT {list} FROM `{}`", t.name))
            .fetch_bytes("TabSeparated")
            .unwrap()
            .collect()
            .await
            .unwrap();
        let path = dir.join(format!("{}.tsv", t.name));
        std::fs::write(&path, &rows).unwrap();
        out.push(json!({"table": t.name, "columns": columns, "path": path}));
    }
    out
}

fn chdb(args: &[&str]) -> String {
    let python = crate::common::python();
    let out = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/chdb_run.py"
        ))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e} (scripts/test installs chdb-core)"));
    assert!(
        out.status.success(),
        "chdb_run.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_clickhouse_answers_every_statement_as_18_16_does() {
    let statements = StatementLog::default();
    {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(statements.clone()),
        )
        .unwrap();
    }
    let version = chdb(&["--version"]);
    let parsed = hourglass_core::clickhouse::ServerVersion::parse(version.trim())
        .unwrap_or_else(|| panic!("chdb's version {version:?}"));
    let modern = Features::from(parsed);
    assert_eq!(
        modern,
        Features {
            modern_ddl: true,
            insert_dedup: true
        },
        "ClickHouse {version} gets the modern DDL"
    );

    // On 18.16: the view test's known rows, two projects' sessions, and a
    // batch pass over their first day (the second stays with the speed layer).
    let mut env = TestEnv::new("modern").await;
    env.cfg.aggregator.dimensions = vec!["path".into(), "tenant_id".into()];
    // Readers take the batch pass's hours at once.
    env.cfg.batch.switch_delay_secs = 0;
    env.migrate().await;
    let client = env.clickhouse();
    let known = write_known_rollups(&RollupSink::new(client.clone(), &env.cfg.kafka.topic)).await;
    let events: Vec<_> = generate("acme", 1, 400)
        .into_iter()
        .chain(generate("globex", 2, 150))
        .collect();
    let work = std::env::temp_dir().join(format!("{}-chdb", env.name));
    std::fs::create_dir_all(&work).unwrap();
    seed(&env, &events, &LocalStore::new(work.join("lake"))).await;
    let from = t0().timestamp();
    let to = from + 2 * 86_400;
    let pass = hourglass_batch::run_once(
        &env.cfg,
        hourglass_batch::Range {
            from: Some(from),
            to: Some(from + 86_400),
            force: false,
        },
    )
    .await
    .expect("batch pass");
    assert_eq!(pass.days.len(), 1, "{pass:?}");
    eprintln!(
        "18.16 holds {} known rollup events, {} seeded events, {} batch hours",
        known.events,
        events.len(),
        pass.hours.len()
    );

    // The query API's endpoints, as an app walks them.
    let mut cfg = env.cfg.clone();
    cfg.query.jwt_secret = SECRET.into();
    cfg.query.allow_project_wide_tokens = true;
    let (base, stop) = crate::common::start_query_api(cfg).await;
    let http = reqwest::Client::new();
    let exp = Utc::now().timestamp() + 3600;
    let acme = token(json!({"project_id": "acme", "sub": "t", "exp": exp}));
    let acme_t1 = token(json!({"project_id": "acme", "tenant_id": "t1", "exp": exp}));
    let globex = token(json!({"project_id": "globex", "sub": "t", "exp": exp}));
    let p = token(json!({"project_id": "p", "sub": "t", "exp": exp}));
    let acme_admin =
        token(json!({"project_id": "acme", "sub": "ops", "hourglass_admin": true, "exp": exp}));
    let get = |tok: &str, path: String| {
        let req = http.get(format!("{base}{path}")).bearer_auth(tok);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "GET {path}: {status} {body}");
            body
        }
    };
    let known_to = T0 / 1000 + 3600;
    for step in ["5m", "1h", "1d"] {
        let (a, b) = if step == "1d" {
            (T0 / 1000, T0 / 1000 + 86_400)
        } else {
            (T0 / 1000, known_to)
        };
        get(
            &p,
            format!("/v1/metrics?event=api&step={step}&from={a}&to={b}"),
        )
        .await;
        let answer = get(
            &acme,
            format!("/v1/metrics?event=api_call&step={step}&from={from}&to={to}"),
        )
        .await;
        let layers: HashSet<&str> = answer["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["layer"].as_str())
            .collect();
        assert_eq!(
            layers,
            HashSet::from(["batch", "speed"]),
            "{step}: the first day from the batch layer, the second from the speed layer"
        );
    }
    for query in [
        "event=page_view&step=1h&group_by=path",
        "event=page_view&step=1d&where=path:/docs",
        "event=page_view&step=5m&group_by=path,tenant_id",
        "event=signup_never_sent&step=1h&fill=true",
    ] {
        get(&acme, format!("/v1/metrics?{query}&from={from}&to={to}")).await;
    }
    get(
        &acme_t1,
        format!("/v1/metrics?event=page_view&step=1h&from={from}&to={to}"),
    )
    .await;
    get(
        &globex,
        format!("/v1/metrics?event=api_call&step=1d&from={from}&to={to}"),
    )
    .await;
    get(&acme, format!("/v1/event-names?from={from}&to={to}")).await;
    get(&acme_t1, format!("/v1/event-names?from={from}&to={to}")).await;
    let page = get(&acme, format!("/v1/events?from={from}&to={to}&limit=40")).await;
    let cursor = page["next_cursor"].as_str().expect("a second page");
    get(
        &acme,
        format!("/v1/events?from={from}&to={to}&limit=40&cursor={cursor}"),
    )
    .await;
    let first = &page["events"][0];
    let id = first["event_id"].as_str().unwrap();
    let user = first["user_id"].as_str().unwrap();
    get(&acme, format!("/v1/events/{id}?from={from}&to={to}")).await;
    get(
        &acme,
        format!("/v1/users/{user}/events?from={from}&to={to}"),
    )
    .await;
    get(&acme_t1, format!("/v1/events?from={from}&to={to}&limit=10")).await;
    for order in ["duration", "error_rate"] {
        get(
            &acme,
            format!("/v1/sessions?from={from}&to={to}&limit=20&order={order}"),
        )
        .await;
    }
    get(
        &acme_t1,
        format!("/v1/sessions?from={from}&to={to}&limit=20"),
    )
    .await;
    let reads = statements.take();
    assert!(
        reads.len() >= 20,
        "the walk sent {} statements: {reads:#?}",
        reads.len()
    );

    // 18.16's answers, and its tables as they are now.
    let views: Vec<String> = ["metrics_5m", "metrics_1h", "metrics_1d"]
        .iter()
        .map(|v| format!("SELECT * FROM {v} ORDER BY window_start, project_id, event, dimensions"))
        .collect();
    let mut expected = Vec::new();
    for sql in views.iter().chain(&reads) {
        expected.push(answer_on_18_16(&client, sql).await);
    }
    let tables = copy_tables(&env, &work).await;

    // A user deletion: its statements (a count, the ledger, the mutation)
    // must run on 26.x too.
    let victim = events.iter().find(|e| e.project_id == "acme").unwrap();
    let r = http
        .delete(format!("{base}/v1/users/{}", victim.user()))
        .bearer_auth(&acme_admin)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "DELETE: {}", r.status());
    let writes = statements.take();
    assert!(
        writes.iter().any(|s| s.contains("DELETE")),
        "deletion statements: {writes:#?}"
    );

    let schema: Vec<String> = std::iter::once(format!(
        "CREATE DATABASE IF NOT EXISTS `{}`",
        env.cfg.clickhouse.database
    ))
    .chain(MIGRATIONS.iter().flat_map(|m| {
        render(
            m.sql,
            &env.cfg.clickhouse.database,
            modern,
            env.cfg.clickhouse.events_retention_days,
        )
    }))
    .collect();
    let request = json!({
        "database": env.cfg.clickhouse.database,
        "schema": schema,
        "tables": tables,
        "statements": views.iter().chain(&reads).map(|s| json!({"sql": s, "read": true}))
            .chain(writes.iter().map(|s| json!({"sql": s, "read": !s.starts_with("ALTER") && !s.starts_with("INSERT")})))
            .collect::<Vec<_>>(),
    });
    let request_path = work.join("request.json");
    std::fs::write(&request_path, request.to_string()).unwrap();
    let answer: Value = serde_json::from_str(&chdb(&[request_path.to_str().unwrap()])).unwrap();
    let results = answer["results"].as_array().unwrap();
    let mut failures = Vec::new();
    for (i, (sql, old)) in views.iter().chain(&reads).zip(&expected).enumerate() {
        match (&results[i]["tsv"], &results[i]["error"]) {
            (Value::String(new), _) => {
                if let Err(why) = same_answer(old, new) {
                    failures.push(format!("{sql}\n{why}"));
                }
            }
            (_, error) => failures.push(format!("{sql}\nrefused by 26.x: {error}")),
        }
    }
    for (sql, result) in writes.iter().zip(&results[views.len() + reads.len()..]) {
        if let Some(error) = result.get("error") {
            failures.push(format!("{sql}\nrefused by 26.x: {error}"));
        }
    }
    let rows: usize = expected.iter().map(|e| e.lines().count()).sum();
    eprintln!(
        "ClickHouse {}: {} statements ({} view reads, {} API reads, {} API writes), {rows} rows compared",
        answer["version"],
        results.len(),
        views.len(),
        reads.len(),
        writes.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} statements answer differently on ClickHouse {version}:\n\n{}",
        failures.len(),
        results.len(),
        failures.join("\n\n")
    );
    assert!(
        expected[..3].iter().all(|e| e.lines().count() > 0) && rows > 1000,
        "the comparison covers data ({rows} rows)"
    );

    stop.cancel();
    let _ = std::fs::remove_dir_all(&work);
    env.drop_database().await;
}

/// Retention as table TTLs on a current ClickHouse (chdb): the statements a
/// retention pass sends to a server with TTLs, applied to the schema such a
/// server gets; rows of known ages per project, merged with `OPTIMIZE …
/// FINAL`: exactly the expired ones are gone. Read back, the TTLs are in
/// sync (a second pass changes nothing); a project's changed days change
/// the tables that hold that store, and only those.
#[test]
fn table_ttls_drop_exactly_each_projects_expired_rows_on_a_current_clickhouse() {
    use hourglass_batch::ttl;
    use hourglass_core::config::ProjectConfig;

    let version = chdb(&["--version"]);
    let modern =
        Features::from(hourglass_core::clickhouse::ServerVersion::parse(version.trim()).unwrap());
    let mut cfg = hourglass_core::Config::default();
    cfg.clickhouse.database = "hourglass_ttl".into();
    cfg.retention.raw_days = 30;
    cfg.retention.rollup_5m_days = 10;
    cfg.projects.insert(
        "acme".into(),
        ProjectConfig {
            raw_days: Some(3),
            ..ProjectConfig::default()
        },
    );
    cfg.projects.insert(
        "globex".into(),
        ProjectConfig {
            rollup_5m_days: Some(0),
            ..ProjectConfig::default()
        },
    );
    let schema: Vec<String> = std::iter::once("CREATE DATABASE IF NOT EXISTS hourglass_ttl".into())
        .chain(
            MIGRATIONS
                .iter()
                .flat_map(|m| render(m.sql, "hourglass_ttl", modern, 0)),
        )
        .collect();
    let untouched: Vec<(&'static str, String)> = ttl::tables()
        .iter()
        .map(|t| (t.name, "MergeTree ORDER BY tuple()".to_owned()))
        .collect();
    let changes = ttl::changes(&cfg, &untouched);
    let tables: Vec<&str> = changes.iter().map(|c| c.table).collect();
    assert_eq!(
        tables,
        vec!["events", "rollup_5m", "batch_rollups", "batch_states"],
        "forever for every project: no TTL (rollup_1h, rollup_1d)"
    );
    // (table, id column, project, days old, kept?): a row 30 days old is on
    // the last day 30 days keep (the retention pass's cutoff is that
    // day's midnight), one 31 days old is not.
    let rows: [(&str, &str, &str, i64, bool); 12] = [
        ("events", "event_id", "acme", 2, true),
        ("events", "event_id", "acme", 5, false),
        ("events", "event_id", "globex", 10, true),
        ("events", "event_id", "globex", 40, false),
        ("events", "event_id", "other", 30, true),
        ("events", "event_id", "other", 31, false),
        ("rollup_5m", "event", "acme", 5, true),
        ("rollup_5m", "event", "acme", 20, false),
        ("rollup_5m", "event", "globex", 400, true),
        ("rollup_5m", "event", "other", 12, false),
        ("batch_rollups", "event", "acme", 20, false),
        ("batch_rollups", "event", "globex", 400, true),
    ];
    let mut statements: Vec<Value> = changes
        .iter()
        .map(|c| json!({"sql": ttl::statement(&cfg, c), "read": false}))
        .collect();
    for (i, (table, id, project, days, _)) in rows.iter().enumerate() {
        let (time, extra_col, extra_val) = match *table {
            "events" => ("timestamp", "", ""),
            "rollup_5m" => ("window_start", "", ""),
            _ => ("bucket_start", ", period_secs", ", 300"),
        };
        statements.push(json!({
            "sql": format!(
                "INSERT INTO {table} (project_id, {id}, {time}{extra_col}) \
                 VALUES ('{project}', 'row-{i}', now() - INTERVAL {days} DAY{extra_val})"
            ),
            "read": false,
        }));
    }
    for table in ["events", "rollup_5m", "batch_rollups"] {
        statements.push(json!({"sql": format!("OPTIMIZE TABLE {table} FINAL"), "read": false}));
    }
    let kept_query = "SELECT arrayJoin(['events', 'rollup_5m', 'batch_rollups']) AS t, \
        arraySort(multiIf(t = 'events', (SELECT groupArray(event_id) FROM events), \
                          t = 'rollup_5m', (SELECT groupArray(event) FROM rollup_5m), \
                          (SELECT groupArray(event) FROM batch_rollups))) ORDER BY t";
    statements.push(json!({"sql": kept_query, "read": true}));
    statements.push(json!({
        "sql": "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() ORDER BY name",
        "read": true,
    }));
    let work = std::env::temp_dir().join(format!("hourglass-ttl-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let request_path = work.join("request.json");
    let request = json!({
        "database": "hourglass_ttl",
        "schema": schema,
        "tables": [],
        "statements": statements,
    });
    std::fs::write(&request_path, request.to_string()).unwrap();
    let answer: Value = serde_json::from_str(&chdb(&[request_path.to_str().unwrap()])).unwrap();
    let results = answer["results"].as_array().unwrap();
    for (st, r) in statements.iter().zip(results) {
        assert!(r.get("error").is_none(), "{}: {}", st["sql"], r["error"]);
    }
    let n = results.len();
    let mut want: Vec<String> = Vec::new();
    for table in ["batch_rollups", "events", "rollup_5m"] {
        let mut kept: Vec<String> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.0 == table && r.4)
            .map(|(i, _)| format!("'row-{i}'"))
            .collect();
        kept.sort();
        want.push(format!("{table}\t[{}]", kept.join(",")));
    }
    assert_eq!(
        results[n - 2]["tsv"].as_str().unwrap().trim_end(),
        want.join("\n"),
        "exactly the expired rows dropped"
    );
    let engines: Vec<(&'static str, String)> = results[n - 1]["tsv"]
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, engine) = l.split_once('\t')?;
            let table = ttl::tables().into_iter().find(|t| t.name == name)?.name;
            Some((table, engine.replace("\\'", "'")))
        })
        .collect();
    assert_eq!(engines.len(), ttl::tables().len());
    assert_eq!(
        ttl::changes(&cfg, &engines),
        Vec::new(),
        "read back, every TTL is in sync"
    );
    let mut later = cfg.clone();
    later.projects.get_mut("acme").unwrap().raw_days = Some(7);
    let changed: Vec<&str> = ttl::changes(&later, &engines)
        .iter()
        .map(|c| c.table)
        .collect();
    assert_eq!(changed, vec!["events"]);
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "ClickHouse {}: {} TTL statements, {} rows, the TTLs read back in sync",
        answer["version"],
        changes.len(),
        rows.len()
    );
}
