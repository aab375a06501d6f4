//! Loader insert throughput into the local ClickHouse: 1 M `events` rows
//! through the loader's sink (RowBinary + LZ4, batches of `--batch` rows),
//! and in the same run `clickhouse-client` inserting the same rows from a
//! JSONEachRow file (the ceiling).
//!
//! `cargo run --release -p hourglass-bench --bin loader_insert -- --rows 1000000`

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hourglass_core::Config;
use hourglass_loader::rows::EventRow;
use hourglass_loader::sink::EventSink;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
    /// Native port of the local ClickHouse, for clickhouse-client.
    #[arg(long, default_value_t = 19000)]
    native_port: u16,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    project_id: &'a str,
    event: &'a str,
    event_id: &'a str,
    user_id: &'a str,
    anonymous_id: &'a str,
    session_id: &'a str,
    timestamp: u32,
    timestamp_ms: i64,
    received_at: u32,
    value: Option<f64>,
    properties: &'a str,
    schema_version: u16,
    kafka_partition: u16,
    kafka_offset: i64,
}

fn rows(n: usize) -> Vec<EventRow> {
    let names = ["page_view", "click", "signup", "api_call", "purchase"];
    let mut rng = SmallRng::seed_from_u64(4);
    (0..n)
        .map(|i| {
            let event = names[rng.random_range(0..names.len())];
            let ts = 1_767_225_600_000 + (i as i64) * 3;
            EventRow {
                project_id: "bench".into(),
                event: event.into(),
                event_id: uuid::Uuid::from_u128(rng.random()).to_string(),
                user_id: format!("user-{}", rng.random_range(0..10_000)),
                anonymous_id: String::new(),
                session_id: format!("s-{}", rng.random_range(0..50_000)),
                timestamp: (ts / 1000) as u32,
                timestamp_ms: ts,
                received_at: (ts / 1000) as u32,
                value: (event == "api_call").then(|| rng.random::<f64>() * 500.0),
                properties: format!(
                    r#"{{"path":"/p/{}","ref":"search"}}"#,
                    rng.random_range(0..200)
                ),
                schema_version: 1,
                kafka_partition: (i % 8) as u16,
                kafka_offset: (i / 8) as i64,
                dimensions: String::new(),
                tenant_id: String::new(),
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut cfg = Config::default();
    let db = format!("bench_load_{}", std::process::id());
    cfg.clickhouse.database = db.clone();
    hourglass_sql::migrate(&cfg.clickhouse).await?;
    let all = rows(args.rows);

    let file = std::env::temp_dir().join(format!("{db}.json"));
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for r in &all {
            serde_json::to_writer(
                &mut out,
                &JsonRow {
                    project_id: &r.project_id,
                    event: &r.event,
                    event_id: &r.event_id,
                    user_id: &r.user_id,
                    anonymous_id: &r.anonymous_id,
                    session_id: &r.session_id,
                    timestamp: r.timestamp,
                    timestamp_ms: r.timestamp_ms,
                    received_at: r.received_at,
                    value: r.value,
                    properties: &r.properties,
                    schema_version: r.schema_version,
                    kafka_partition: r.kafka_partition,
                    kafka_offset: r.kafka_offset,
                },
            )?;
            out.write_all(b"\n")?;
        }
    }

    let sink = EventSink::new(hourglass_core::clickhouse::client(&cfg.clickhouse));
    let started = Instant::now();
    for chunk in all.chunks(args.batch) {
        sink.insert(chunk).await?;
    }
    let ours = started.elapsed().as_secs_f64();
    let ours_rate = args.rows as f64 / ours;

    let ch = hourglass_core::clickhouse::client(&cfg.clickhouse);
    ch.query("TRUNCATE TABLE events").execute().await?;
    let started = Instant::now();
    let status = Command::new("clickhouse-client")
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &args.native_port.to_string(),
        ])
        .args([
            "--database",
            &db,
            "--query",
            "INSERT INTO events FORMAT JSONEachRow",
        ])
        .stdin(Stdio::from(std::fs::File::open(&file)?))
        .status()
        .context("running clickhouse-client")?;
    if !status.success() {
        bail!("clickhouse-client failed: {status}");
    }
    let ceiling = started.elapsed().as_secs_f64();
    let ceiling_rate = args.rows as f64 / ceiling;
    let count: u64 = ch.query("SELECT count() FROM events").fetch_one().await?;
    ch.query(&format!("DROP DATABASE `{db}`")).execute().await?;
    let _ = std::fs::remove_file(&file);
    if count != args.rows as u64 {
        bail!("clickhouse-client loaded {count} rows, not {}", args.rows);
    }
    println!(
        "loader sink (RowBinary + LZ4, batches of {}): {} rows in {ours:.2} s = {ours_rate:.0} rows/s",
        args.batch, args.rows
    );
    println!(
        "clickhouse-client from a JSONEachRow file (ceiling): {} rows in {ceiling:.2} s = {ceiling_rate:.0} rows/s",
        args.rows
    );
    println!(
        "loader / ceiling: {:.0} %",
        100.0 * ours_rate / ceiling_rate
    );
    Ok(())
}
