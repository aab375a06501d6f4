//! The local stack's broker under the demo's load: which tansu storage and
//! which client settings keep up with `hourglass up --demo`, durably.
//!
//! For each combination of `--storage`, `--linger-ms` and the consumers'
//! `--fetch-wait-ms` / `--fetch-min-bytes`, on a fresh broker of its own:
//! - a fleet of clients publishes `--rate` events/s through ingest's own
//!   publisher (idempotent, `acks=all`, zstd, ingest's tuning), in requests of
//!   `--request-events`, each request started on schedule whatever the
//!   others are doing; a request's latency runs from its scheduled start to
//!   the broker's acknowledgement of its last event;
//! - `--groups` consumer groups read the topic with the pipeline's consumer
//!   settings, and their lag (acknowledged minus read) is sampled each second;
//! - optionally (`--kill-at`) the broker is SIGKILLed and restarted mid-run;
//! - then `--flat-out-seconds` of publishing as fast as 64 clients can;
//! - at the end every group must have read every acknowledged event, and the
//!   broker's high watermarks must add up to what a reader found.
//!
//! Prints one line per run and a Markdown table for the benchmarks doc.
//!
//! `cargo run --release -p hourglass-bench --bin local_broker -- --kill-at 15`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use hourglass_bench::{LocalBroker, cpu_seconds};
use hourglass_core::config::{IngestConfig, KafkaConfig};
use hourglass_core::contract::EncodedEvent;
use hourglass_core::telemetry::Readiness;
use hourglass_ingest::broker_health::Health;
use hourglass_ingest::publish::Publisher;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// tansu storage engines to compare (sqlite, memory).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,memory")]
    storage: Vec<String>,
    /// With and/or without the local stack's index on tansu's sqlite
    /// header table (on, off).
    #[arg(long, value_delimiter = ',', default_value = "on")]
    header_index: Vec<String>,
    /// Producer linger values to compare, in ms (ingest's `linger_ms`).
    #[arg(long, value_delimiter = ',', default_value = "5,50")]
    linger_ms: Vec<u32>,
    /// Consumers' `fetch.wait.max.ms` values to compare.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    fetch_wait_ms: Vec<u32>,
    /// Consumers' `fetch.min.bytes` values to compare.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    fetch_min_bytes: Vec<u32>,
    /// Events per second published during the paced part.
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Events per request (the demo sends 200).
    #[arg(long, default_value_t = 200)]
    request_events: u32,
    /// Length of the paced part.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Consumer groups reading (the pipeline has three).
    #[arg(long, default_value_t = 3)]
    groups: usize,
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// SIGKILL the broker this many seconds into the paced part, then
    /// restart it on the same data.
    #[arg(long)]
    kill_at: Option<u64>,
    /// Seconds of publishing flat out after the paced part (0 skips it).
    #[arg(long, default_value_t = 10)]
    flat_out_seconds: u64,
    /// Keep the broker's folder (data and tansu.log) after each run.
    #[arg(long)]
    keep: bool,
    /// Print acknowledgements and lag every second.
    #[arg(long)]
    verbose: bool,
    /// Port of the benchmark's own broker.
    #[arg(long, default_value_t = 19291)]
    port: u16,
}

#[derive(Clone, Copy)]
struct Setting<'a> {
    storage: &'a str,
    header_index: bool,
    linger_ms: u32,
    fetch_wait_ms: u32,
    fetch_min_bytes: u32,
}

struct Outcome {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    paced_rate: f64,
    failed_requests: u64,
    max_lag: u64,
    end_lag: u64,
    broker_cpu: f64,
    flat_out_rate: f64,
    restart: Option<Duration>,
    lost: u64,
    watermarks_right: bool,
}

const TOPIC: &str = "events";
const USERS: u32 = 3_000;

/// A record like ingest's (about 330 bytes of JSON) whose sequence number
/// sits at a fixed place, so readers can tick it off cheaply.
fn record(seq: u64, rng: &mut SmallRng) -> EncodedEvent {
    let user = rng.random_range(0..USERS);
    let payload = format!(
        r#"{{"seq":{seq:012},"schema_version":1,"project_id":"demo","event_id":"{}","event":"page_view","user_id":"user-{user}","session_id":"s{user}","timestamp":"2026-12-01T10:00:00.000Z","received_at":"2026-12-01T10:00:00.100Z","properties":{{"path":"/docs/page-{}","referrer":"https://news.example.com/"}}}}"#,
        uuid::Uuid::now_v7(),
        rng.random_range(0..300),
    );
    EncodedEvent {
        key: format!("demo:user-{user}"),
        payload: payload.into_bytes(),
    }
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.get(7..19)?).ok()?.parse().ok()
}

/// Which sequence numbers were acknowledged, and which each group read.
struct Ledger {
    acknowledged: Mutex<Vec<bool>>,
    acked_count: AtomicU64,
}

impl Ledger {
    fn acknowledge(&self, from: u64, n: u64) {
        let mut acked = self.acknowledged.lock().unwrap();
        let end = (from + n) as usize;
        if acked.len() < end {
            acked.resize(end, false);
        }
        acked[from as usize..end].fill(true);
        self.acked_count.fetch_add(n, Ordering::Relaxed);
    }
}

/// One group's reader: counts what it reads and which sequence numbers.
fn read_group(
    kafka: &KafkaConfig,
    group: String,
    setting: Setting<'_>,
    stop: Arc<AtomicBool>,
    assigned: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
) -> Result<std::thread::JoinHandle<Vec<u32>>> {
    let kafka = KafkaConfig {
        fetch_wait_max_ms: setting.fetch_wait_ms,
        ..kafka.clone()
    };
    let mut config = hourglass_core::kafka::consumer_config(&kafka, &group);
    config.set("fetch.min.bytes", setting.fetch_min_bytes.to_string());
    let consumer: BaseConsumer = config.create().context("creating a consumer")?;
    consumer.subscribe(&[TOPIC])?;
    Ok(std::thread::spawn(move || {
        let mut seen: Vec<u32> = Vec::new();
        let mut counted = false;
        while !stop.load(Ordering::Relaxed) {
            if !counted && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                assigned.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
                && let Some(seq) = m.payload().and_then(seq_of)
            {
                let i = seq as usize;
                if seen.len() <= i {
                    seen.resize(i + 1, 0);
                }
                seen[i] += 1;
                read.fetch_add(1, Ordering::Relaxed);
            }
        }
        seen
    }))
}

/// Sum of (high - low) over the topic's partitions.
fn records_on_topic(kafka: &KafkaConfig, partitions: i32) -> Result<i64> {
    let consumer: BaseConsumer = hourglass_core::kafka::consumer_config(kafka, "bench-watermarks")
        .create()
        .context("creating a consumer")?;
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(TOPIC, p, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok(total)
}

async fn run(args: &Args, setting: Setting<'_>) -> Result<Outcome> {
    let tmp = std::env::temp_dir().join(format!("hourglass-local-broker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut broker = LocalBroker::start(&tmp, args.port, setting.storage, setting.header_index)?;
    let kafka = KafkaConfig {
        brokers: broker.brokers.clone(),
        topic: TOPIC.into(),
        partitions: args.partitions,
        ..KafkaConfig::default()
    };
    hourglass_core::kafka::ensure_topics(&kafka, &[(TOPIC, args.partitions)]).await?;

    let stop_readers = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut read_counts = Vec::new();
    for g in 0..args.groups {
        let read = Arc::new(AtomicU64::new(0));
        readers.push(read_group(
            &kafka,
            format!("bench-g{g}"),
            setting,
            stop_readers.clone(),
            assigned.clone(),
            read.clone(),
        )?);
        read_counts.push(read);
    }
    let joined = Instant::now();
    while assigned.load(Ordering::Relaxed) < args.groups as u64 {
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("the consumer groups got no partitions within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ingest = IngestConfig {
        linger_ms: setting.linger_ms,
        ..IngestConfig::default()
    };
    let publisher = Publisher::new(&kafka, &ingest, Readiness::default())?;
    let stop_probe = tokio_util::sync::CancellationToken::new();
    {
        let (publisher, stop) = (publisher.clone(), stop_probe.clone());
        tokio::spawn(async move { publisher.watch_broker(Duration::from_secs(1), stop).await });
    }
    while publisher.broker_health() != Health::Answering {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ledger = Arc::new(Ledger {
        acknowledged: Mutex::new(Vec::new()),
        acked_count: AtomicU64::new(0),
    });
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let failed = Arc::new(AtomicU64::new(0));
    let mut rng = SmallRng::seed_from_u64(24);
    let mut next_seq = 0u64;

    // Paced part: requests on schedule, each in its own task.
    let per_request = u64::from(args.request_events);
    let interval = Duration::from_secs_f64(per_request as f64 / f64::from(args.rate));
    let requests = (args.seconds as f64 / interval.as_secs_f64()) as u64;
    let cpu_before = cpu_seconds(broker.pid());
    let started = Instant::now();
    let mut max_lag = 0u64;
    let mut next_sample = Duration::from_secs(1);
    let mut restart = None;
    let mut tasks = Vec::new();
    let mut cpu_at_kill = 0.0;
    for i in 0..requests {
        let due = interval * i as u32;
        let now = started.elapsed();
        if now < due {
            tokio::time::sleep(due - now).await;
        }
        if started.elapsed() >= next_sample {
            next_sample += Duration::from_secs(1);
            let acked = ledger.acked_count.load(Ordering::Relaxed);
            let lags: Vec<u64> = read_counts
                .iter()
                .map(|r| acked.saturating_sub(r.load(Ordering::Relaxed)))
                .collect();
            max_lag = lags.iter().copied().fold(max_lag, u64::max);
            if args.verbose {
                eprintln!(
                    "  {:>3} s: {acked} acknowledged, lag {lags:?}, {} requests failed",
                    next_sample.as_secs() - 1,
                    failed.load(Ordering::Relaxed)
                );
            }
        }
        // memory:// keeps nothing across a restart: killing it shows nothing new.
        if restart.is_none()
            && setting.storage != "memory"
            && args
                .kill_at
                .is_some_and(|k| started.elapsed().as_secs() >= k)
        {
            cpu_at_kill = cpu_seconds(broker.pid());
            restart = Some(broker.kill_and_restart()?);
            eprintln!("  broker killed and back in {:?}", restart.unwrap());
        }
        let events: Vec<EncodedEvent> = (0..per_request)
            .map(|k| record(next_seq + k, &mut rng))
            .collect();
        let from = next_seq;
        next_seq += per_request;
        let scheduled = started + due;
        let (publisher, ledger, latency, failed) = (
            publisher.clone(),
            ledger.clone(),
            latency.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            match publisher.publish(&events).await {
                Ok(()) => {
                    ledger.acknowledge(from, per_request);
                    let micros = scheduled.elapsed().as_micros() as u64;
                    latency.lock().unwrap().record(micros.max(1)).ok();
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks.drain(..) {
        t.await?;
    }
    let paced_secs = started.elapsed().as_secs_f64();
    let broker_cpu = (cpu_at_kill + cpu_seconds(broker.pid()) - cpu_before) / paced_secs;
    let paced_rate = ledger.acked_count.load(Ordering::Relaxed) as f64 / paced_secs;
    let end_lag = {
        let acked = ledger.acked_count.load(Ordering::Relaxed);
        read_counts
            .iter()
            .map(|r| acked.saturating_sub(r.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0)
    };

    // Flat out: 64 clients, each sending its next request when the last one
    // is acknowledged.
    let mut flat_out_rate = 0.0;
    if args.flat_out_seconds > 0 {
        let before = ledger.acked_count.load(Ordering::Relaxed);
        let seq = Arc::new(AtomicU64::new(next_seq));
        let began = Instant::now();
        let until = began + Duration::from_secs(args.flat_out_seconds);
        let clients: Vec<_> = (0..64u64)
            .map(|c| {
                let (publisher, ledger, seq) = (publisher.clone(), ledger.clone(), seq.clone());
                tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(c);
                    while Instant::now() < until {
                        let from = seq.fetch_add(per_request, Ordering::Relaxed);
                        let events: Vec<EncodedEvent> = (0..per_request)
                            .map(|k| record(from + k, &mut rng))
                            .collect();
                        if publisher.publish(&events).await.is_ok() {
                            ledger.acknowledge(from, per_request);
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            c.await?;
        }
        flat_out_rate = (ledger.acked_count.load(Ordering::Relaxed) - before) as f64
            / began.elapsed().as_secs_f64();
    }

    // Every group must read every acknowledged event.
    let acked_total = ledger.acked_count.load(Ordering::Relaxed);
    let drained = Instant::now();
    while read_counts
        .iter()
        .any(|r| r.load(Ordering::Relaxed) < acked_total)
        && drained.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_readers.store(true, Ordering::Relaxed);
    let acknowledged = std::mem::take(&mut *ledger.acknowledged.lock().unwrap());
    let mut lost = 0;
    let mut distinct_read = 0;
    for reader in readers {
        let seen = reader.join().expect("reader thread");
        lost += acknowledged
            .iter()
            .enumerate()
            .filter(|(i, acked)| **acked && seen.get(*i).is_none_or(|n| *n == 0))
            .count() as u64;
        distinct_read = distinct_read.max(seen.iter().filter(|n| **n > 0).count() as i64);
    }
    let on_topic = records_on_topic(&kafka, args.partitions)?;
    eprintln!(
        "  {acked_total} acknowledged, {} read by the slowest group, {distinct_read} distinct read, {on_topic} on the topic by its watermarks, {lost} acknowledged but not read",
        read_counts
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    );
    stop_probe.cancel();
    drop(publisher);
    drop(broker);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&tmp);
    }

    let h = latency.lock().unwrap();
    Ok(Outcome {
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: h.max() as f64 / 1000.0,
        paced_rate,
        failed_requests: failed.load(Ordering::Relaxed),
        max_lag,
        end_lag,
        broker_cpu,
        flat_out_rate,
        restart,
        lost,
        watermarks_right: on_topic == distinct_read,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    hourglass_core::process::disable_transparent_huge_pages();
    let mut rows = Vec::new();
    for (storage, index) in args
        .storage
        .iter()
        .flat_map(|s| args.header_index.iter().map(move |i| (s, i)))
    {
        let header_index = index == "on";
        if storage != "sqlite" && !header_index {
            continue;
        }
        for &linger_ms in &args.linger_ms {
            for &fetch_wait_ms in &args.fetch_wait_ms {
                for &fetch_min_bytes in &args.fetch_min_bytes {
                    let setting = Setting {
                        storage,
                        header_index,
                        linger_ms,
                        fetch_wait_ms,
                        fetch_min_bytes,
                    };
                    let storage_name = if storage == "sqlite" && !header_index {
                        "sqlite, no header index".to_owned()
                    } else {
                        storage.clone()
                    };
                    eprintln!(
                        "{storage_name}, linger {linger_ms} ms, fetch wait {fetch_wait_ms} ms, min {fetch_min_bytes} B: {} s at {}/s with {} groups reading",
                        args.seconds, args.rate, args.groups
                    );
                    let o = run(&args, setting).await?;
                    let line = format!(
                        "| {storage_name} | {linger_ms} | {fetch_wait_ms} | {fetch_min_bytes} | {:.0} | {:.0} / {:.0} / {:.0} | {} | {} / {} | {:.0} % | {:.0} | {} | {} | {} |",
                        o.paced_rate,
                        o.p50_ms,
                        o.p99_ms,
                        o.max_ms,
                        o.failed_requests,
                        o.max_lag,
                        o.end_lag,
                        o.broker_cpu * 100.0,
                        o.flat_out_rate,
                        o.restart
                            .map(|d| format!("{:.2} s", d.as_secs_f64()))
                            .unwrap_or_else(|| "-".into()),
                        o.lost,
                        if o.watermarks_right { "yes" } else { "no" },
                    );
                    println!("{line}");
                    rows.push(line);
                }
            }
        }
    }
    println!(
        "\n| storage | linger ms | fetch wait ms | fetch min B | acked/s | request p50 / p99 / max ms | failed requests | lag max / end | broker CPU | flat out/s | kill -9 restart | acked lost | watermarks right |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
