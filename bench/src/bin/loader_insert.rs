//! Loader insert throughput into the local ClickHouse: 1 M `events` rows
//! through the loader's sink (RowBinary + LZ4, batches of `--batch` rows,
//! the deletions check included), and in the same run the ceiling: bare
//! HTTP `INSERT … FORMAT RowBinary` requests of the same rows, encoded
//! before the timing, in the same batches. Both runs' row counts are
//! checked.
//!
//! `cargo run --release -p hourglass-bench --bin loader_insert -- --rows 1000000`

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hourglass_core::Config;
use hourglass_core::config::ClickHouseCompression;
use hourglass_loader::rows::EventRow;
use hourglass_loader::sink::EventSink;
use rand::{Rng, SeedableRng, rngs::SmallRng};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
    /// Runs of each (loader, bare INSERT) per wire format; medians are printed.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
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

const COLUMNS: &str = "project_id, event, event_id, user_id, anonymous_id, session_id, \
    timestamp, timestamp_ms, received_at, value, properties, schema_version, \
    kafka_partition, kafka_offset, dimensions, tenant_id";

/// How rows travel to ClickHouse.
#[derive(Clone, Copy)]
enum Wire {
    Lz4,
    Plain,
}

impl Wire {
    fn name(self) -> &'static str {
        match self {
            Wire::Lz4 => "LZ4 (clickhouse.compression = lz4, the chart's)",
            Wire::Plain => "uncompressed (the default)",
        }
    }

    /// The HTTP interface's `compress`/`decompress` value.
    fn flag(self) -> &'static str {
        match self {
            Wire::Lz4 => "1",
            Wire::Plain => "0",
        }
    }
}

struct Bench {
    args: Args,
    cfg: Config,
    db: String,
    rows: Vec<EventRow>,
    ch: clickhouse::Client,
    http: reqwest::Client,
}

impl Bench {
    /// The loader's sink inserting every row; seconds and client CPU-seconds.
    async fn loader(&self, wire: Wire) -> Result<(f64, f64)> {
        let mut cfg = self.cfg.clickhouse.clone();
        cfg.compression = match wire {
            Wire::Lz4 => ClickHouseCompression::Lz4,
            Wire::Plain => ClickHouseCompression::None,
        };
        let sink = EventSink::new(hourglass_core::clickhouse::client(&cfg));
        self.ch.query("TRUNCATE TABLE events").execute().await?;
        let cpu = hourglass_bench::cpu_seconds(std::process::id());
        let started = Instant::now();
        for chunk in self.rows.chunks(self.args.batch) {
            sink.insert(chunk).await?;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = hourglass_bench::cpu_seconds(std::process::id()) - cpu;
        check_rows(&self.ch, self.rows.len(), "the loader's sink").await?;
        Ok((secs, cpu))
    }

    /// The same rows as RowBinary, one body per batch: the server's own
    /// encoding of exactly these rows, read back from the table.
    async fn encode(&self, wire: Wire) -> Result<Vec<bytes::Bytes>> {
        let mut bodies = Vec::new();
        for (c, chunk) in self.rows.chunks(self.args.batch).enumerate() {
            let (from, to) = (chunk[0].timestamp_ms, chunk[chunk.len() - 1].timestamp_ms);
            let query = format!(
                "SELECT {COLUMNS} FROM events WHERE timestamp_ms BETWEEN {from} AND {to} \
                 ORDER BY timestamp_ms FORMAT RowBinary"
            );
            let body = self
                .http
                .post(&self.cfg.clickhouse.url)
                .query(&[("database", self.db.as_str()), ("compress", wire.flag())])
                .body(query)
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("fetching batch {c} as RowBinary"))?
                .bytes()
                .await?;
            bodies.push(body);
        }
        Ok(bodies)
    }

    /// The ceiling: bare HTTP INSERTs of pre-encoded bodies; seconds.
    async fn bare(&self, wire: Wire, bodies: &[bytes::Bytes]) -> Result<f64> {
        self.ch.query("TRUNCATE TABLE events").execute().await?;
        let insert = format!("INSERT INTO events ({COLUMNS}) FORMAT RowBinary");
        let started = Instant::now();
        for body in bodies {
            self.http
                .post(&self.cfg.clickhouse.url)
                .query(&[
                    ("database", self.db.as_str()),
                    ("decompress", wire.flag()),
                    ("query", insert.as_str()),
                ])
                .body(body.clone())
                .send()
                .await?
                .error_for_status()
                .context("bare RowBinary INSERT")?;
        }
        let secs = started.elapsed().as_secs_f64();
        check_rows(&self.ch, self.rows.len(), "the bare INSERT").await?;
        Ok(secs)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut cfg = Config::default();
    let db = format!("bench_load_{}", std::process::id());
    cfg.clickhouse.database = db.clone();
    hourglass_sql::migrate(&cfg.clickhouse).await?;
    let bench = Bench {
        rows: rows(args.rows),
        ch: hourglass_core::clickhouse::client(&cfg.clickhouse),
        http: reqwest::Client::new(),
        args,
        cfg,
        db: db.clone(),
    };
    // A first load to read the ceiling's bodies back from (not counted).
    bench.loader(Wire::Plain).await?;
    let mut bodies = Vec::new();
    for wire in [Wire::Plain, Wire::Lz4] {
        bodies.push(bench.encode(wire).await?);
    }
    let n = bench.rows.len() as f64;
    for (i, wire) in [Wire::Plain, Wire::Lz4].into_iter().enumerate() {
        let (mut ours, mut cpus, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..bench.args.repeat {
            // Alternate which goes first: a run leaves merges behind.
            if round % 2 == 0 {
                let (s, c) = bench.loader(wire).await?;
                ours.push(s);
                cpus.push(c);
                bare.push(bench.bare(wire, &bodies[i]).await?);
            } else {
                bare.push(bench.bare(wire, &bodies[i]).await?);
                let (s, c) = bench.loader(wire).await?;
                ours.push(s);
                cpus.push(c);
            }
        }
        let encoded: usize = bodies[i].iter().map(bytes::Bytes::len).sum();
        let runs: Vec<String> = ours
            .iter()
            .zip(&bare)
            .map(|(o, b)| format!("{:.0} %", 100.0 * b / o))
            .collect();
        let (ours, bare) = (median(ours), median(bare));
        println!(
            "{}: loader sink {:.0} rows/s ({ours:.2} s, client {:.2} CPU-s per million rows); \
             bare HTTP INSERT … FORMAT RowBinary of the same rows pre-encoded ({:.1} MB) {:.0} rows/s ({bare:.2} s); \
             loader / ceiling {:.0} % (medians of {} runs each; per run {})",
            wire.name(),
            n / ours,
            median(cpus) * 1e6 / n,
            encoded as f64 / 1e6,
            n / bare,
            100.0 * bare / ours,
            bench.args.repeat,
            runs.join(", "),
        );
    }
    bench
        .ch
        .query(&format!("DROP DATABASE `{db}`"))
        .execute()
        .await?;
    Ok(())
}

/// `events` holds exactly `n` rows with `n` distinct event ids.
async fn check_rows(ch: &clickhouse::Client, n: usize, who: &str) -> Result<()> {
    let (rows, ids): (u64, u64) = ch
        .query("SELECT count(), uniqExact(event_id) FROM events")
        .fetch_one()
        .await?;
    if rows != n as u64 || ids != n as u64 {
        bail!("{who} left {rows} rows ({ids} distinct event ids) for {n}");
    }
    Ok(())
}
