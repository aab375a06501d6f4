//! End to end: N pre-produced events on a topic → `hourglass aggregate` →
//! every event counted in `rollup_5m`, against the ceiling of a bare
//! consumer (same settings) reading the same records from the same topic.
//! Both are timed twice: from their start (process or consumer creation,
//! group join included) and from their first record, so neither pays a
//! start-up the other does not; both ends are polled every 20 ms (the
//! aggregator's end on its metrics until it has read every record, then in
//! ClickHouse, so the polling does not load the server it shares). Also
//! the CPU time of the consumer, of the aggregator and of ClickHouse
//! meanwhile, and the aggregator's peak RSS. `--repeat N` runs N rounds of
//! both over the same records and prints the medians.
//!
//! By default it starts its own tansu broker with `memory://` storage on
//! 127.0.0.1:19192 (the local stack's sqlite broker reads about 20k msg/s,
//! which would measure the broker, not the aggregator); `--brokers` uses an
//! existing one instead. ClickHouse is the local stack's.
//!
//! `cargo run --release -p hourglass-bench --bin aggregator_e2e -- --events 1000000 --repeat 5`

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hourglass_bench::LocalBroker;
use hourglass_core::Config;
use hourglass_core::contract::{EventEnvelope, SCHEMA_VERSION};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Map, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Use this broker instead of starting a memory:// tansu.
    #[arg(long)]
    brokers: Option<String>,
    /// The aggregator's flush interval.
    #[arg(long, default_value_t = 1000)]
    flush_interval_ms: u64,
    /// Rounds of ceiling and aggregator, one after the other over the same
    /// records (single runs on a shared 2-core VM swing by 15 points).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// The hourglass binary.
    #[arg(long, default_value = "target/release/hourglass")]
    hourglass: String,
    /// Watch the end in ClickHouse every 20 ms from the first record, as
    /// before 2026-12-07 (those queries cost the server a tenth of a core
    /// on this VM), instead of from when the aggregator has read every record.
    #[arg(long)]
    poll_rollups_throughout: bool,
    /// A librdkafka property for both consumers, the bare one and the
    /// aggregator's (`kafka.client`), e.g. `queued.min.messages=300000`.
    #[arg(long = "consumer-property", value_parser = parse_property)]
    consumer_properties: Vec<(String, String)>,
}

/// A map as an inline TOML table, the form a `HOURGLASS_…` variable takes.
fn inline_table(map: &std::collections::BTreeMap<String, String>) -> String {
    let entries: Vec<String> = map.iter().map(|(k, v)| format!("{k:?} = {v:?}")).collect();
    format!("{{{}}}", entries.join(", "))
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((k.to_owned(), v.to_owned()))
}

/// The run's events, made as they are produced (10 M would not fit in
/// memory as envelopes).
fn events(n: usize) -> impl Iterator<Item = EventEnvelope> {
    let names = ["page_view", "click", "signup", "api_call", "purchase"];
    let mut rng = SmallRng::seed_from_u64(9);
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    (0..n).map(move |i| {
        let event = names[rng.random_range(0..names.len())];
        let ts = t0 + chrono::Duration::milliseconds((i as i64 * 12 * 300_000) / n as i64);
        let mut properties = Map::new();
        properties.insert(
            "path".into(),
            Value::from(format!("/p/{}", rng.random_range(0..50))),
        );
        EventEnvelope {
            schema_version: SCHEMA_VERSION,
            project_id: "bench".into(),
            event_id: uuid::Uuid::now_v7(),
            event: event.into(),
            user_id: Some(format!("user-{}", rng.random_range(0..10_000))),
            anonymous_id: None,
            session_id: None,
            timestamp: ts,
            received_at: ts,
            value: (event == "api_call").then(|| rng.random::<f64>() * 500.0),
            properties,
        }
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = std::env::temp_dir().join(format!("hourglass-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut cfg = Config::default();
    let _broker = match &args.brokers {
        Some(b) => {
            cfg.kafka.brokers = b.clone();
            None
        }
        None => {
            let broker = LocalBroker::memory(&tmp, 19192)?;
            cfg.kafka.brokers = broker.brokers.clone();
            cfg.kafka.fetch_wait_max_ms = hourglass_bench::MEMORY_BROKER_FETCH_WAIT_MS;
            Some(broker)
        }
    };
    let name = format!("bench_agg_{}", std::process::id());
    cfg.kafka.topic = name.clone();
    hourglass_core::kafka::ensure_topics(&cfg.kafka, &[(name.as_str(), 8)]).await?;

    let first = events(1).next().expect("one event");
    let producer = hourglass_core::kafka::producer(&cfg.kafka)?;
    let started = Instant::now();
    hourglass_bench::produce_all(
        &producer,
        &name,
        events(args.events).map(|e| (e.kafka_key(), e.encode())),
    )
    .await;
    // Then one later event per partition, as a live stream has: its event
    // time closes every window of the run (its own window stays open), so
    // the timing ends when the last events are counted, not on an idle
    // timeout.
    let closing = EventEnvelope {
        event: "closing".into(),
        timestamp: first.timestamp + chrono::Duration::hours(2),
        ..first.clone()
    };
    let payload = closing.encode();
    for p in 0..8 {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&name)
                    .partition(p)
                    .key("bench:closing")
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    println!(
        "produced {} events in {:.1} s ({:.0}/s)",
        args.events,
        started.elapsed().as_secs_f64(),
        args.events as f64 / started.elapsed().as_secs_f64()
    );

    cfg.kafka
        .client
        .extend(args.consumer_properties.iter().cloned());
    let mut rounds = Vec::new();
    for round in 0..args.repeat {
        let ceiling = ceiling(&cfg, &format!("{name}-ceiling-{round}"), args.events)?;
        let ours = aggregate(&cfg, &args, &format!("{name}_{round}")).await?;
        println!(
            "round {}: ceiling {} from its creation (group join included), {} from its first record; {:.2} µs of consumer CPU per event",
            round + 1,
            rate(args.events, ceiling.timing.from_start),
            rate(args.events, ceiling.timing.from_first),
            ceiling.cpu_seconds * 1e6 / args.events as f64
        );
        println!(
            "  aggregator, broker to flushed rollup_5m rows (every event counted once): {} from its process start (group join included), {} from its first record",
            rate(args.events, ours.timing.from_start),
            rate(args.events, ours.timing.from_first)
        );
        println!(
            "  aggregator / ceiling: {:.0} % from the start, {:.0} % from the first record",
            100.0 * ours.ratio_from_start(&ceiling),
            100.0 * ours.ratio_from_first(&ceiling)
        );
        println!(
            "  aggregator CPU {:.2} s ({:.2} µs per event), ClickHouse CPU meanwhile {:.2} s (user + system, its INSERTs, views and merges); peak RSS {:.0} MiB",
            ours.cpu_seconds,
            ours.cpu_seconds * 1e6 / args.events as f64,
            ours.clickhouse_cpu_seconds,
            ours.peak_rss_kib as f64 / 1024.0
        );
        rounds.push((ceiling, ours));
    }
    let _ = hourglass_core::kafka::delete_topics(&cfg.kafka, &[&name]).await;
    if rounds.len() > 1 {
        let from_start = median(rounds.iter().map(|(c, o)| o.ratio_from_start(c)));
        let from_first = median(rounds.iter().map(|(c, o)| o.ratio_from_first(c)));
        let rss = rounds
            .iter()
            .map(|(_, o)| o.peak_rss_kib)
            .max()
            .unwrap_or(0);
        println!(
            "median of {} rounds: aggregator / ceiling {:.0} % from the start, {:.0} % from the first record; highest peak RSS {:.0} MiB",
            rounds.len(),
            100.0 * from_start,
            100.0 * from_first,
            rss as f64 / 1024.0
        );
    }
    Ok(())
}

/// A bare consumer with the same settings reading every record of the topic
/// in a group of its own.
struct Ceiling {
    timing: Timing,
    cpu_seconds: f64,
}

fn ceiling(cfg: &Config, group: &str, events: usize) -> Result<Ceiling> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let started = Instant::now();
    let cpu = hourglass_bench::cpu_seconds(std::process::id());
    let consumer: BaseConsumer =
        hourglass_core::kafka::consumer_config(&cfg.kafka, group).create()?;
    consumer.subscribe(&[&cfg.kafka.topic])?;
    let mut first = None;
    let mut read = 0usize;
    while read < events && started.elapsed() < Duration::from_secs(900) {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            read += 1;
        }
    }
    anyhow::ensure!(read == events, "the bare consumer read {read} records");
    Ok(Ceiling {
        timing: Timing {
            from_start: started.elapsed().as_secs_f64(),
            from_first: first.map_or(0.0, |f| f.elapsed().as_secs_f64()),
        },
        cpu_seconds: hourglass_bench::cpu_seconds(std::process::id()) - cpu,
    })
}

/// One run of `hourglass aggregate` over the topic, in a group and a
/// database of its own.
struct Aggregated {
    timing: Timing,
    cpu_seconds: f64,
    clickhouse_cpu_seconds: f64,
    peak_rss_kib: u64,
}

impl Aggregated {
    fn ratio_from_start(&self, ceiling: &Ceiling) -> f64 {
        ceiling.timing.from_start / self.timing.from_start
    }

    fn ratio_from_first(&self, ceiling: &Ceiling) -> f64 {
        ceiling.timing.from_first / self.timing.from_first
    }
}

async fn aggregate(cfg: &Config, args: &Args, database: &str) -> Result<Aggregated> {
    let mut ch_cfg = cfg.clickhouse.clone();
    ch_cfg.database = database.to_owned();
    hourglass_sql::migrate(&ch_cfg).await?;
    let ch = hourglass_core::clickhouse::client(&ch_cfg);
    let clickhouse_cpu = clickhouse_cpu_seconds(&ch).await?;
    let started = Instant::now();
    let child = Command::new(&args.hourglass)
        .arg("aggregate")
        .env("HOURGLASS_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env(
            "HOURGLASS_KAFKA__FETCH_WAIT_MAX_MS",
            cfg.kafka.fetch_wait_max_ms.to_string(),
        )
        .env("HOURGLASS_KAFKA__TOPIC", &cfg.kafka.topic)
        .env("HOURGLASS_CLICKHOUSE__DATABASE", database)
        .env("HOURGLASS_AGGREGATOR__GROUP_ID", database)
        .env(
            "HOURGLASS_AGGREGATOR__HTTP_LISTEN",
            format!("127.0.0.1:{METRICS_PORT}"),
        )
        .env(
            "HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS",
            args.flush_interval_ms.to_string(),
        )
        .env("HOURGLASS_AGGREGATOR__DIMENSIONS", r#"["path"]"#)
        .env("HOURGLASS_KAFKA__CLIENT", inline_table(&cfg.kafka.client))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .context("starting hourglass aggregate (build it with cargo build --release)")?;
    // Stopped (SIGTERM, waited for) on every way out, a failed wait included.
    let aggregator = hourglass_bench::Component(child);
    let pid = aggregator.0.id();
    // Its first record: the events counter leaves 0 (polled every 20 ms).
    let metrics = AggregatorMetrics::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let first_record = loop {
        if metrics.records_read().await > 0 {
            break Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the aggregator read nothing in 120 s"
        );
        tokio::time::sleep(POLL).await;
    };
    // Until it has read every record, the end is watched on its metrics:
    // a query to ClickHouse every 20 ms costs the server about 2 ms of CPU
    // each, a tenth of a core of the 2 the aggregator shares with it (the
    // ceiling counts its records for free). The count in `rollup_5m`, the
    // end that matters, is then polled as often.
    if !args.poll_rollups_throughout {
        while metrics.records_read().await < args.events as u64
            && started.elapsed() < Duration::from_secs(1800)
        {
            tokio::time::sleep(POLL).await;
        }
    }
    let counted = "SELECT sum(events) FROM rollup_5m WHERE event != 'closing'";
    let mut done_at = None;
    while started.elapsed() < Duration::from_secs(1800) {
        let flushed: u64 = ch.query(counted).fetch_one().await.unwrap_or(0);
        if flushed >= args.events as u64 {
            done_at = Some(Instant::now());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let cpu_seconds = hourglass_bench::cpu_seconds(pid);
    let peak_rss_kib = hourglass_bench::proc_status_kib(pid, "VmHWM:");
    drop(aggregator);
    let clickhouse_cpu_seconds = clickhouse_cpu_seconds(&ch).await? - clickhouse_cpu;
    let exact: u64 = ch.query(counted).fetch_one().await.unwrap_or(0);
    let _ = ch
        .query(&format!("DROP DATABASE `{database}`"))
        .execute()
        .await;
    let done_at = done_at.context("not every event was flushed within 30 minutes")?;
    anyhow::ensure!(
        exact == args.events as u64,
        "rollup_5m counts {exact} events for {}",
        args.events
    );
    Ok(Aggregated {
        timing: Timing {
            from_start: (done_at - started).as_secs_f64(),
            from_first: (done_at - first_record).as_secs_f64(),
        },
        cpu_seconds,
        clickhouse_cpu_seconds,
        peak_rss_kib,
    })
}

/// The server's CPU time so far (its own count, so it works wherever it
/// runs): every query's and merge's user and system time.
async fn clickhouse_cpu_seconds(ch: &clickhouse::Client) -> Result<f64> {
    let micros: u64 = ch
        .query(
            "SELECT toUInt64(sum(value)) FROM system.events \
             WHERE event IN ('UserTimeMicroseconds', 'SystemTimeMicroseconds')",
        )
        .fetch_one()
        .await?;
    Ok(micros as f64 / 1e6)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Where the aggregator's metrics are scraped.
const METRICS_PORT: u16 = 19195;

/// How often both ends of the aggregator's timing are looked at.
const POLL: Duration = Duration::from_millis(20);

/// The aggregator's own count of the records it has read.
struct AggregatorMetrics {
    http: reqwest::Client,
    url: String,
}

impl AggregatorMetrics {
    fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
        }
    }

    /// Records read so far, whatever became of them (0 while it starts).
    async fn records_read(&self) -> u64 {
        let text = match self.http.get(&self.url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .filter(|l| l.starts_with("hourglass_aggregator_events_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// Seconds of a run, timed from its start and from its first record.
struct Timing {
    from_start: f64,
    from_first: f64,
}

fn rate(events: usize, secs: f64) -> String {
    format!("{:.0} events/s ({secs:.2} s)", events as f64 / secs)
}
