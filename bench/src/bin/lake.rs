//! The lake: archive throughput (the archiver's own work, and end to end
//! from a `memory://` tansu through `hourglass archive`), Parquet size per
//! 1,000 events against the JSON on Kafka, compaction of what the archiver
//! wrote, DuckDB reading the day (as written, compacted, and the same rows
//! in one well-formed file), and replay throughput, each from ideal files
//! and from the archiver's own. The events arrive over one day (24 hour
//! folders, two seconds of disorder at each boundary, as from several
//! ingest replicas).
//!
//! `cargo run --release -p hourglass-bench --bin lake -- --events 1000000`

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hourglass_bench::LocalBroker;
use hourglass_core::Config;
use hourglass_core::contract::{EventEnvelope, SCHEMA_VERSION};
use hourglass_lake::replay::{ReplayOptions, Target};
use hourglass_lake::schema::{BatchBuilder, to_parquet};
use hourglass_lake::store::{LocalStore, ObjectStore};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per Parquet file.
    #[arg(long, default_value_t = 250_000)]
    file_rows: usize,
    /// The hourglass binary.
    #[arg(long, default_value = "target/release/hourglass")]
    hourglass: String,
    /// Python with duckdb (scripts/test installs one).
    #[arg(long, env = "HOURGLASS_PYTHON", default_value = "python3")]
    python: String,
    /// Rounds of each DuckDB query (medians are printed).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn events(n: usize) -> Vec<EventEnvelope> {
    let names = ["page_view", "click", "signup", "api_call", "purchase"];
    let countries = ["DE", "US", "FR", "BR", "IN", "JP", "GB"];
    let mut rng = SmallRng::seed_from_u64(5);
    let t0: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    (0..n)
        .map(|i| {
            let name = names[rng.random_range(0..names.len())];
            let user = rng.random_range(0..5_000);
            // The day, less the last two seconds (received_at stays in it).
            let ts = t0 + chrono::Duration::milliseconds((i as i64 * 86_398_000) / n as i64);
            EventEnvelope {
                schema_version: SCHEMA_VERSION,
                project_id: "bench".into(),
                event_id: uuid::Uuid::now_v7(),
                event: name.into(),
                user_id: Some(format!("user-{user}")),
                anonymous_id: None,
                session_id: Some(format!("s-{user}-{}", rng.random_range(0..4))),
                timestamp: ts,
                received_at: ts + chrono::Duration::milliseconds(rng.random_range(0..2_000)),
                value: (name == "api_call")
                    .then(|| (rng.random::<f64>().powi(4) * 2_000.0 * 10.0).round() / 10.0),
                properties: serde_json::from_value(json!({
                    "path": format!("/docs/page-{}", rng.random_range(0..300)),
                    "country": countries[rng.random_range(0..countries.len())],
                    "referrer": "https://www.example.com/search?q=hourglass",
                    "device": if rng.random_bool(0.3) { "mobile" } else { "desktop" },
                }))
                .unwrap(),
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    hourglass_core::process::disable_transparent_huge_pages();
    let args = Args::parse();
    let tmp = std::env::temp_dir().join(format!("hourglass-bench-lake-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let all = events(args.events);
    let records: Vec<(String, Vec<u8>)> = all.iter().map(|e| (e.kafka_key(), e.encode())).collect();
    let json_bytes: usize = records.iter().map(|(_, v)| v.len()).sum();

    // 1. The archiver's own work: record bytes → envelope → Arrow → zstd Parquet → folder.
    let store = LocalStore::new(tmp.join("core"));
    let started = Instant::now();
    let mut parquet_bytes = 0;
    for (f, chunk) in records.chunks(args.file_rows).enumerate() {
        let mut b = BatchBuilder::default();
        for (i, (_, payload)) in chunk.iter().enumerate() {
            let e = EventEnvelope::decode(payload)?;
            b.append(&e, 0, (f * args.file_rows + i) as i64);
        }
        let body = to_parquet(&b.finish(), 128 * 1024)?;
        parquet_bytes += body.len();
        store
            .put(
                &format!("dt=2026-01-01/hour=10/bench-0000-{f:020}-0.parquet"),
                body,
            )
            .await?;
    }
    let core = args.events as f64 / started.elapsed().as_secs_f64();
    println!("archive core (decode, Arrow, zstd Parquet, write; one thread): {core:.0} events/s");
    println!(
        "size per 1,000 events: Parquet {:.1} KB, JSON {:.1} KB: Parquet is 1/{:.1} of the JSON",
        parquet_bytes as f64 / args.events as f64,
        json_bytes as f64 / args.events as f64,
        json_bytes as f64 / parquet_bytes as f64
    );

    // 2. End to end through Kafka: memory:// tansu → hourglass archive → folder.
    let broker = LocalBroker::memory(&tmp, 19194)?;
    let mut cfg = Config::default();
    cfg.kafka.brokers = broker.brokers.clone();
    cfg.kafka.fetch_wait_max_ms = hourglass_bench::MEMORY_BROKER_FETCH_WAIT_MS;
    cfg.kafka.topic = "bench_lake".into();
    hourglass_core::kafka::ensure_topics(&cfg.kafka, &[("bench_lake", 8)]).await?;
    let producer = hourglass_core::kafka::producer(&cfg.kafka)?;
    hourglass_bench::produce_all(
        &producer,
        "bench_lake",
        records.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())),
    )
    .await;
    let lake_dir = tmp.join("e2e");
    let child = Command::new(&args.hourglass)
        .arg("archive")
        .env("HOURGLASS_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env(
            "HOURGLASS_KAFKA__FETCH_WAIT_MAX_MS",
            cfg.kafka.fetch_wait_max_ms.to_string(),
        )
        .env("HOURGLASS_KAFKA__TOPIC", "bench_lake")
        .env("HOURGLASS_LAKE__LOCAL_DIR", &lake_dir)
        .env("HOURGLASS_LAKE__HTTP_LISTEN", "127.0.0.1:0")
        .env("HOURGLASS_LAKE__FILE_MAX_AGE_SECS", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.hourglass))?;
    // Stopped on every way out, a failed wait included.
    let archiver = hourglass_bench::Component(child);
    let e2e_store = LocalStore::new(&lake_dir);
    let started = Instant::now();
    loop {
        let objects = e2e_store.list("").await?;
        let done = hourglass_lake::layout::records_named(objects.iter().map(|o| o.key.as_str()));
        if done >= args.events as i64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("archiver did not finish in 600 s ({done} events)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e2e = started.elapsed();
    drop(archiver);
    drop(broker);
    println!(
        "archive end to end (tansu memory:// → hourglass archive → folder, 8 partitions): {:.0} events/s ({:.1} s, includes the last file's 1 s age limit)",
        args.events as f64 / e2e.as_secs_f64(),
        e2e.as_secs_f64()
    );
    let written = e2e_store.list("").await?;
    println!(
        "as written by the archiver: {}",
        describe_files(&written, json_bytes)
    );
    // A copy of the lake as written, for DuckDB to read after compaction.
    let as_written = tmp.join("as-written");
    copy_dir(&lake_dir, &as_written)?;

    // 3. Compaction of the archiver's files, the archiver's own pass.
    let mut lake_cfg = Config::default();
    lake_cfg.kafka.topic = "bench_lake".into();
    let opts = hourglass_lake::compact::CompactOptions {
        from: "2026-01-01T00:00:00Z".parse()?,
        to: "2026-01-03T00:00:00Z".parse()?,
        ..hourglass_lake::compact::CompactOptions::settled(&lake_cfg, chrono::Utc::now())
    };
    let started = Instant::now();
    let pass = hourglass_lake::compact::compact(
        &e2e_store,
        &opts,
        &|_| true,
        &mut hourglass_core::clickhouse::deletions::DeletionsWatch::fixed(Default::default()),
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    let compacted = e2e_store.list("").await?;
    let named = hourglass_lake::layout::records_named(compacted.iter().map(|o| o.key.as_str()));
    if named != args.events as i64 {
        bail!(
            "the compacted lake names {named} events, not {}",
            args.events
        );
    }
    let hours: std::collections::HashSet<&str> = compacted
        .iter()
        .map(|o| hourglass_lake::layout::folder_of(&o.key))
        .collect();
    println!(
        "compaction: {} files ({:.1} MB) merged into {} ({} of them hour files) in {took:.1} s ({:.0} events/s); {} files left in {} hour folders",
        pass.files_in,
        pass.bytes_in as f64 / 1e6,
        pass.files_out,
        pass.hour_files,
        pass.rows as f64 / took,
        compacted.len(),
        hours.len()
    );
    println!(
        "after compaction: {}",
        describe_files(&compacted, json_bytes)
    );

    // 4. DuckDB reading the day: compacted, as written, and one file.
    let out = Command::new(&args.python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/duckdb_read.py"
        ))
        .arg(format!("{}/dt=2026-01-01/*/*.parquet", lake_dir.display()))
        .arg(tmp.join("one.parquet"))
        .arg(args.rounds.to_string())
        .arg(format!(
            "as_written={}/dt=2026-01-01/*/*.parquet",
            as_written.display()
        ))
        .output()
        .with_context(|| {
            format!(
                "running {} (needs duckdb: scripts/test installs it)",
                args.python
            )
        })?;
    if !out.status.success() {
        bail!("duckdb_read.py: {}", String::from_utf8_lossy(&out.stderr));
    }
    let read: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let one_rate = read["one_file"]["rows_per_s"].as_f64().unwrap_or(0.0);
    for (name, what) in [
        (
            "one_file",
            "one well-formed file of the same rows (DuckDB's own COPY)",
        ),
        ("lake", "the day of the lake, compacted"),
        ("as_written", "the day of the lake as the archiver wrote it"),
        (
            "hourly",
            "the same rows as one file per arrival hour with every partition, written by DuckDB (the layout of the lake's hour files)",
        ),
        (
            "partition_day",
            "the same rows as one file per partition and day (a layout the lake does not have)",
        ),
    ] {
        let r = &read[name];
        let rate = r["rows_per_s"].as_f64().unwrap_or(0.0);
        println!(
            "DuckDB, a day's report query over {what}: {} files, {} rows, median {:.3} s = {:.1} M rows/s ({:.0} % of the one file)",
            r["files"],
            r["rows"],
            r["seconds"].as_f64().unwrap_or(0.0),
            rate / 1e6,
            100.0 * rate / one_rate
        );
    }

    // 3. Replay: list, read and decode in parallel, filter by event time.
    let mut cfg = Config::default();
    cfg.kafka.topic = "bench".into();
    let opts = ReplayOptions {
        from: "2026-01-01T00:00:00Z".parse()?,
        to: "2026-01-02T00:00:00Z".parse()?,
        project: None,
        target: Target::ClickHouse,
        kafka_topic: String::new(),
        dry_run: true,
        parallel: 4,
        lateness: chrono::Duration::hours(24),
        lead: chrono::Duration::hours(1),
        progress: false,
    };
    cfg.clickhouse.database = format!("bench_lake_{}", std::process::id());
    hourglass_sql::migrate(&cfg.clickhouse).await?;
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(tmp.join("core")));
    let s = hourglass_lake::replay::replay(&cfg, store.clone(), &opts).await?;
    println!(
        "replay read of the ideal files ({} of {} rows; 4 files at a time, decode, filter; dry run): {:.0} events/s ({} events)",
        s.files,
        args.file_rows,
        s.events_read as f64 / s.seconds,
        s.events_read
    );
    for (what, dir) in [("as written", &as_written), ("compacted", &lake_dir)] {
        let mut real = cfg.clone();
        real.kafka.topic = "bench_lake".into();
        let real_store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir));
        let s = hourglass_lake::replay::replay(&real, real_store, &opts).await?;
        println!(
            "replay read of the archiver's files, {what} ({} files; dry run): {:.0} events/s ({} events)",
            s.files,
            s.events_read as f64 / s.seconds,
            s.events_read
        );
    }
    let opts = ReplayOptions {
        dry_run: false,
        ..opts
    };
    let s = hourglass_lake::replay::replay(&cfg, store, &opts).await?;
    println!(
        "replay of the ideal files into ClickHouse `events`: {:.0} events/s ({} inserted)",
        s.events_read as f64 / s.seconds,
        s.written
    );
    hourglass_core::clickhouse::server_client(&cfg.clickhouse)
        .query(&format!(
            "DROP DATABASE IF EXISTS {}",
            cfg.clickhouse.database
        ))
        .execute()
        .await?;
    if std::env::var_os("HG_BENCH_KEEP").is_some() {
        println!("kept {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// Count, total size, size against the JSON, and the size spread of files.
fn describe_files(files: &[hourglass_lake::store::ObjectInfo], json_bytes: usize) -> String {
    let mut sizes: Vec<u64> = files.iter().map(|o| o.size).collect();
    sizes.sort_unstable();
    let total: u64 = sizes.iter().sum();
    let at = |q: f64| {
        sizes
            .get(((sizes.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    format!(
        "{} files, {:.1} MB (1/{:.1} of the JSON); file size min {} B, median {:.1} KB, max {:.1} MB; {} files under 10 KB",
        files.len(),
        total as f64 / 1e6,
        json_bytes as f64 / total.max(1) as f64,
        at(0.0),
        at(0.5) as f64 / 1e3,
        at(1.0) as f64 / 1e6,
        sizes.iter().filter(|&&s| s < 10_000).count()
    )
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::create_dir_all(to)?;
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
