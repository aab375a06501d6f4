//! Query API latency over 10 M events and their rollups in the local
//! ClickHouse: the events are generated over 30 days, written to `events`,
//! and run through the aggregator's windowing core and sink (so `rollup_5m`,
//! `rollup_1h` and `rollup_1d` hold what a live run would); then the API,
//! in this process, answers three requests repeatedly from `--concurrency`
//! clients: a 24-hour `/v1/metrics` at 5m, a 30-day one at 1d, and one page
//! of `/v1/events`. Prints the first request's latency (ClickHouse asked;
//! a range of closed windows is then answered from the API's memory), then
//! p50/p99/max latency and requests/s of the repeated requests.
//!
//! With `--batch`, the batch layer first recomputes every hour and day of
//! the range, after adding 2 % client retries and a user deletion to the
//! raw record (timed, against a `SELECT … GROUP BY` of the same rows by the
//! same ClickHouse in the same run), so the API answers from the batch rows; `--no-cache` makes every request ask ClickHouse. Latency
//! percentiles include the first request.
//!
//! `cargo run --release -p hourglass-bench --bin query_api -- --events 10000000 --batch --no-cache`
//! (the data stays in database `hg_bench_query`; `--reuse` skips loading it
//! again when it is already there).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use hourglass_aggregator::sink::RollupSink;
use hourglass_aggregator::window::{
    EventRef, PartitionWindows, WindowConfig, dimension_values, user_hash,
};
use hourglass_core::Config;
use hourglass_loader::rows::EventRow;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Map, Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Requests per scenario (after 20 warm-up requests).
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value = "hg_bench_query")]
    database: String,
    /// Keep the database when it already holds `--events` events.
    #[arg(long)]
    reuse: bool,
    /// Ask ClickHouse every time (query.cache_closed_answers = false).
    #[arg(long)]
    no_cache: bool,
    /// Recompute the whole range with the batch layer first (timed).
    #[arg(long)]
    batch: bool,
}

const PARTITIONS: u64 = 8;
const EVENTS: [&str; 5] = ["page_view", "click", "signup", "api_call", "purchase"];
const PATHS: usize = 10;
const SECRET: &str = "bench-secret-0123456789-0123456789";
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600;

async fn load(cfg: &Config, args: &Args) -> Result<()> {
    let server = hourglass_core::clickhouse::server_client(&cfg.clickhouse);
    server
        .query(&format!(
            "DROP DATABASE IF EXISTS `{}`",
            cfg.clickhouse.database
        ))
        .execute()
        .await?;
    hourglass_sql::migrate(&cfg.clickhouse).await?;
    let ch = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let window = Arc::new(WindowConfig::from(cfg));
    let sink = RollupSink::new(ch.clone(), "events");
    let mut cores: Vec<PartitionWindows> = (0..PARTITIONS)
        .map(|_| PartitionWindows::new(window.clone(), 0, None))
        .collect();
    let mut offsets = [0i64; PARTITIONS as usize];
    let mut rng = SmallRng::seed_from_u64(10);
    let span_ms = args.days * 86_400_000;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut batch: Vec<EventRow> = Vec::with_capacity(200_000);
    let mut rollup_rows = 0usize;
    for i in 0..args.events {
        let ts = T0 * 1000 + (i as i64 * span_ms) / args.events as i64;
        let user = format!("user-{}", rng.random_range(0..50_000));
        let event = EVENTS[rng.random_range(0..EVENTS.len())];
        let value = (event == "api_call")
            .then(|| (rng.random::<f64>().powi(3) * 2_000.0 * 1000.0).round() / 1000.0 + 1.0);
        let mut properties = Map::new();
        properties.insert(
            "path".into(),
            json!(format!("/page/{}", rng.random_range(0..PATHS))),
        );
        let p = (user_hash(&user) % PARTITIONS) as usize;
        let offset = offsets[p];
        offsets[p] += 1;
        let dimensions = dimension_values(&window.dimensions, Some(&properties));
        cores[p].ingest(
            &EventRef {
                project_id: "bench",
                event,
                user: &user,
                timestamp_ms: ts,
                value,
                dimensions: &dimensions,
            },
            offset,
            now_ms,
        );
        batch.push(EventRow {
            project_id: "bench".into(),
            event: event.into(),
            event_id: uuid::Uuid::from_u64_pair(7, i as u64).to_string(),
            user_id: user,
            anonymous_id: String::new(),
            session_id: format!("s{}", i / 20),
            timestamp: (ts / 1000) as u32,
            timestamp_ms: ts,
            received_at: (ts / 1000) as u32,
            value,
            properties: Value::Object(properties.clone()).to_string(),
            schema_version: 1,
            kafka_partition: p as u16,
            kafka_offset: offset,
            dimensions: hourglass_core::dimensions::key_json(
                &window.dimensions,
                &properties,
                window.max_dimension_len,
            ),
            tenant_id: String::new(),
        });
        if batch.len() == batch.capacity() || i + 1 == args.events {
            let mut insert = ch.insert::<EventRow>("events").await?;
            for row in &batch {
                insert.write(row).await?;
            }
            insert.end().await?;
            batch.clear();
            for (p, core) in cores.iter_mut().enumerate() {
                if i + 1 == args.events {
                    core.mark_caught_up(0);
                    core.tick(i64::MAX);
                }
                if let Some(closed) = core.take_all_closed() {
                    rollup_rows += closed.rows.len();
                    sink.write(p as i32, &closed).await?;
                }
            }
            eprint!(
                "\rloaded {} events, {rollup_rows} rollup_5m rows, {:.0} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!();
    Ok(())
}

/// Offset added to a retried copy's, so copies never share a record's offset.
const COPY_OFFSET: i64 = 1_000_000_000;

/// What real input adds to the generated events, once per database: 2 % of
/// events sent again as a client's retry sends them (same `event_id` and
/// payload, received 1-600 s later as another broker record), and one
/// user's deletion halfway through the range. The batch layer then has
/// copies to remove and a deleted user to leave out, as it would in
/// production; the speed rollups are left as the generator wrote them.
async fn add_retries_and_a_deletion(cfg: &Config) -> Result<()> {
    let ch = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let copies: u64 = ch
        .query("SELECT count() FROM events WHERE kafka_offset >= ?")
        .bind(COPY_OFFSET)
        .fetch_one()
        .await?;
    if copies > 0 {
        return Ok(());
    }
    ch.query(
        "INSERT INTO events SELECT project_id, event, event_id, user_id, anonymous_id, session_id, \
                timestamp, timestamp_ms, received_at + 1 + cityHash64(event_id) % 600, value, properties, \
                schema_version, kafka_partition, kafka_offset + ?, dimensions \
         FROM events WHERE cityHash64(event_id) % 50 = 0",
    )
    .bind(COPY_OFFSET)
    .execute()
    .await?;
    ch.query(
        "INSERT INTO deletions (project_id, user, requested_at, requested_by, events_removed) \
         VALUES ('bench', 'user-7', toDateTime(?), 'bench', 0)",
    )
    .bind(T0 + 15 * 86_400)
    .execute()
    .await?;
    Ok(())
}

/// Every hour and day of the range through the batch layer, timed; then the
/// ceilings, the same ClickHouse scanning and grouping the same rows by
/// 5-minute window and key in one `SELECT … GROUP BY` with nothing written
/// and no copy removed, in the same run: counts and exact distinct users,
/// and the rollup's own aggregates (those plus value sum/min/max and
/// histogram buckets).
async fn recompute(cfg: &Config, days: i64) -> Result<()> {
    add_retries_and_a_deletion(cfg).await?;
    let ch = hourglass_core::clickhouse::client(&cfg.clickhouse);
    // Every run batches the range for the first time, as a new deployment
    // would (earlier runs' passes would otherwise pile up in the tables).
    for table in [
        "batch_states",
        "batch_rollups",
        "batch_commits",
        "reconciliation",
    ] {
        ch.query(&format!("TRUNCATE TABLE {table}"))
            .execute()
            .await?;
    }
    let (from, to) = (T0, T0 + days * 86_400);
    let rows: u64 = ch
        .query("SELECT count() FROM events WHERE timestamp >= toDateTime(?) AND timestamp < toDateTime(?)")
        .bind(from)
        .bind(to)
        .fetch_one()
        .await?;
    let mut cfg = cfg.clone();
    cfg.batch.max_hours_per_pass = u32::MAX;
    let mut batch = hourglass_batch::Batch::new(&cfg);
    let lease =
        hourglass_batch::lease::Lease::acquire(batch.client(), cfg.batch.lease_secs, true).await?;
    let started = Instant::now();
    let report = batch
        .pass(
            hourglass_batch::Range {
                from: Some(from),
                to: Some(to),
                force: true,
            },
            &lease,
        )
        .await?;
    let batch_secs = started.elapsed().as_secs_f64();
    lease.release().await;
    let grouping = |aggregates: &str| {
        format!(
            "SELECT count() FROM ( \
                SELECT intDiv(timestamp_ms, 300000) AS w, project_id, event, dimensions, {aggregates} \
                FROM events WHERE timestamp >= toDateTime({from}) AND timestamp < toDateTime({to}) \
                GROUP BY w, project_id, event, dimensions)"
        )
    };
    let started = Instant::now();
    let groups: u64 = ch
        .query(&grouping(
            "count(), uniqExact(if(user_id != '', user_id, anonymous_id))",
        ))
        .fetch_one()
        .await?;
    let plain_secs = started.elapsed().as_secs_f64();
    let a = &cfg.aggregator;
    let bucket = hourglass_core::histogram::sql_bucket(
        "ifNull(value, 0.)",
        a.histogram_sigfig,
        a.histogram_max_value,
    );
    let started = Instant::now();
    let _: u64 = ch
        .query(&grouping(&format!(
            "count(), uniqExactState(if(user_id != '', user_id, anonymous_id)), count(value), sum(value), \
             min(value), max(value), sumMap(if(isNotNull(value), [{bucket}], emptyArrayUInt64()), \
             if(isNotNull(value), [toUInt64(1)], emptyArrayUInt64()))"
        )))
        .fetch_one()
        .await?;
    let rollup_secs = started.elapsed().as_secs_f64();
    let rows = rows as f64;
    println!(
        "batch recompute: {} hours and {} days, {rows} rows read ({} events after removing copies and the deleted user) \
         in {batch_secs:.1} s = {:.0} rows/s; the same rows in one SELECT … GROUP BY ({groups} groups) with \
         count and exact users: {plain_secs:.2} s = {:.0} rows/s, recompute at {:.1} % of it; with the rollup's \
         aggregates: {rollup_secs:.2} s = {:.0} rows/s, recompute at {:.1} % of it",
        report.hours.len(),
        report.days.len(),
        report.events,
        rows / batch_secs,
        rows / plain_secs,
        100.0 * plain_secs / batch_secs,
        rows / rollup_secs,
        100.0 * rollup_secs / batch_secs,
    );
    // Readers switch to the new rows `switch_delay_secs` after the commit.
    tokio::time::sleep(Duration::from_secs(
        u64::from(cfg.batch.switch_delay_secs) + 1,
    ))
    .await;
    Ok(())
}

struct Scenario {
    name: &'static str,
    path: String,
}

async fn run(
    base: &str,
    token: &str,
    s: &Scenario,
    requests: usize,
    concurrency: usize,
) -> Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{base}{}", s.path);
    let mut first = None;
    // The first requests count too: an uncached answer has no warm-up.
    let mut all = Histogram::<u64>::new(3).expect("sigfig");
    for _ in 0..20 {
        let t = Instant::now();
        let r = http.get(&url).bearer_auth(token).send().await?;
        anyhow::ensure!(r.status().is_success(), "{}: {}", s.name, r.text().await?);
        let _ = r.bytes().await?;
        first.get_or_insert(t.elapsed());
        all.record(t.elapsed().as_micros() as u64)
            .expect("in range");
    }
    let started = Instant::now();
    let per_worker = requests / concurrency;
    let workers = (0..concurrency).map(|_| {
        let http = http.clone();
        let url = url.clone();
        let token = token.to_owned();
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("sigfig");
            for _ in 0..per_worker {
                let t = Instant::now();
                let r = http.get(&url).bearer_auth(&token).send().await?;
                let ok = r.status().is_success();
                let _ = r.bytes().await?;
                anyhow::ensure!(ok, "request failed");
                h.record(t.elapsed().as_micros() as u64).expect("in range");
            }
            Ok::<_, anyhow::Error>(h)
        })
    });
    for w in futures::future::join_all(workers).await {
        all.add(w??).expect("same bounds");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{:<28} first {:>7.1} ms | {:>5} req {:>7.1} req/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
        s.name,
        first.unwrap_or_default().as_secs_f64() * 1000.0,
        all.len(),
        all.len() as f64 / secs,
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.max() as f64 / 1000.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    hourglass_core::process::disable_transparent_huge_pages();
    let args = Args::parse();
    let mut cfg = Config::default();
    cfg.clickhouse.database = args.database.clone();
    cfg.aggregator.dimensions = vec!["path".into()];
    cfg.query.jwt_secret = SECRET.into();
    cfg.query.allow_project_wide_tokens = true;
    cfg.query.rate_limit_per_sec = 1_000_000;
    cfg.query.rate_limit_burst = 1_000_000;
    cfg.query.cache_closed_answers = !args.no_cache;
    let ch = hourglass_core::clickhouse::client(&cfg.clickhouse);
    let have: u64 = ch
        .query("SELECT count() FROM events")
        .fetch_one()
        .await
        .unwrap_or(0);
    if args.reuse && have >= args.events as u64 {
        // Tables added since the data was loaded.
        hourglass_sql::migrate(&cfg.clickhouse).await?;
    } else {
        load(&cfg, &args).await.context("loading the data")?;
    }
    let counts: (u64, u64, u64) = ch
        .query("SELECT (SELECT count() FROM events), (SELECT count() FROM rollup_5m), (SELECT sum(events) FROM rollup_5m)")
        .fetch_one()
        .await?;
    println!(
        "data: {} events in `events`, {} rollup_5m rows adding up to {} events, over {} days",
        counts.0, counts.1, counts.2, args.days
    );

    if args.batch {
        recompute(&cfg, args.days).await.context("the batch pass")?;
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    cfg.query.listen = format!("127.0.0.1:{port}");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(hourglass_query::run(cfg.clone(), stop.clone()));
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{base}/health/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"project_id": "bench", "exp": chrono::Utc::now().timestamp() + 86_400}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    let last_day = T0 + (args.days - 1) * 86_400;
    let scenarios = [
        Scenario {
            name: "/v1/metrics 24 h at 5m",
            path: format!(
                "/v1/metrics?event=api_call&step=5m&from={last_day}&to={}",
                last_day + 86_400
            ),
        },
        Scenario {
            name: "/v1/metrics 30 d at 1d",
            path: format!(
                "/v1/metrics?event=api_call&step=1d&from={T0}&to={}",
                T0 + args.days * 86_400
            ),
        },
        Scenario {
            name: "/v1/events one page (100)",
            path: format!(
                "/v1/events?event=api_call&from={last_day}&to={}&limit=100",
                last_day + 86_400
            ),
        },
    ];
    println!(
        "{} requests per scenario, {} concurrent clients, API and ClickHouse on this machine, answers over closed windows {}",
        args.requests,
        args.concurrency,
        if args.no_cache {
            "always from ClickHouse"
        } else {
            "kept in memory"
        }
    );
    for s in &scenarios {
        run(&base, &token, s, args.requests, args.concurrency).await?;
    }
    stop.cancel();
    Ok(())
}
