//! Ingest over HTTP: batches of realistic events posted over N keep-alive
//! connections to `hourglass ingest`, flat out and at a set rate. Prints
//! accepted events/s and request latency (p50/p99/max, measured from each
//! request's scheduled start so a stalled server cannot hide), next to the
//! ceiling: a bare rdkafka producer with the same settings into the same
//! broker, producing the very records ingest published in the flat-out run
//! (read back from the topic). The figure that matters on 2 shared cores is
//! CPU per event: ingest's process (HTTP, decompression, parsing,
//! validation, encoding, producing) against the bare producer's, for the
//! same records in the same run.
//!
//! By default it starts its own tansu with `memory://` storage on
//! 127.0.0.1:19193 (`--brokers` uses another).
//!
//! `cargo run --release -p hourglass-bench --bin ingest_http`

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use hourglass_bench::{Component, LocalBroker};
use hourglass_core::Config;
use hourglass_core::contract::{SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};

/// The load generator shares the two cores with ingest and the broker: keep
/// its allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Events posted in the flat-out run (also what the ceiling run produces).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent keep-alive connections. Throughput at a given number of
    /// events in flight is bound by the producer's linger and the broker's
    /// round trip (Little's law), so flat out needs enough of them.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Events/s of the paced run (0 skips it).
    #[arg(long, default_value_t = 75_000)]
    rate: usize,
    /// Length of the paced run.
    #[arg(long, default_value_t = 20)]
    rate_seconds: u64,
    /// Use this broker instead of starting a memory:// tansu.
    #[arg(long)]
    brokers: Option<String>,
    /// The hourglass binary.
    #[arg(long, default_value = "target/release/hourglass")]
    hourglass: String,
}

const KEY: &str = "hgk_bench_key";
const PATHS: usize = 300;

/// One request body: `batch` events as an app sends them (native shape).
fn body(rng: &mut SmallRng, batch: usize) -> String {
    let names = ["page_view", "click", "signup", "api_call", "purchase"];
    let countries = ["DE", "US", "FR", "BR", "IN", "JP", "GB"];
    let now = chrono::Utc::now();
    let events: Vec<Value> = (0..batch)
        .map(|_| {
            let name = names[rng.random_range(0..names.len())];
            let user = rng.random_range(0..5_000);
            let ts = now - chrono::Duration::milliseconds(rng.random_range(0..5_000));
            let mut e = json!({
                "event": name,
                "user_id": format!("user-{user}"),
                "session_id": format!("s-{user}-{}", rng.random_range(0..4)),
                "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "properties": {
                    "path": format!("/docs/page-{}", rng.random_range(0..PATHS)),
                    "country": countries[rng.random_range(0..countries.len())],
                    "referrer": "https://www.example.com/search?q=hourglass",
                    "device": if rng.random_bool(0.3) { "mobile" } else { "desktop" },
                }
            });
            if name == "api_call" {
                // Long-tailed latency in ms.
                let v: f64 = rng.random::<f64>().powi(4) * 2_000.0 + 5.0;
                e["value"] = json!((v * 10.0).round() / 10.0);
            }
            e
        })
        .collect();
    json!({ "batch": events, "sent_at": now.to_rfc3339() }).to_string()
}

fn start_ingest(args: &Args, cfg: &Config, port: u16) -> Result<Component> {
    let hash = hourglass_ingest::keys::hash_key(KEY);
    let child = Command::new(&args.hourglass)
        .arg("ingest")
        .env("HOURGLASS_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env("HOURGLASS_KAFKA__TOPIC", &cfg.kafka.topic)
        .env("HOURGLASS_INGEST__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "HOURGLASS_INGEST__KEYS",
            format!(r#"[{{project_id="bench",sha256="{hash}"}}]"#),
        )
        .env("HOURGLASS_INGEST__RATE_LIMIT_EVENTS_PER_SEC", "0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (build it first)", args.hourglass))?;
    Ok(Component(child))
}

/// The first `expected` records on `topic` (key, payload), read back from
/// the start (a `memory://` tansu's high watermarks are not to be trusted).
fn read_back(cfg: &Config, topic: &str, expected: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        hourglass_core::kafka::consumer_config(&cfg.kafka, &format!("{topic}-read-back"))
            .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut out = Vec::with_capacity(expected);
    let started = Instant::now();
    while out.len() < expected {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "read back {} of the {expected} records ingest acknowledged",
            out.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    Ok(out)
}

/// Bare producer, same settings and batch acknowledgement as ingest's,
/// pre-encoded records, no HTTP.
struct Ceiling {
    rate: f64,
    cpu_us_per_event: f64,
}

async fn ceiling(
    cfg: &Config,
    topic: &str,
    records: &'static [(Vec<u8>, Vec<u8>)],
    batch: usize,
    in_flight_batches: usize,
) -> Result<Ceiling> {
    let producer = hourglass_core::kafka::BatchProducer::new(
        &cfg.kafka,
        &hourglass_ingest::publish::producer_tuning(&cfg.ingest),
    )?;
    let producer = &producer;
    let version = SCHEMA_VERSION.to_string();
    let headers = [(SCHEMA_VERSION_HEADER, version.as_bytes())];
    let headers = &headers;
    // Batches as ingest sends them (one request's events, acknowledged
    // together), `in_flight_batches` of them at a time.
    let send = |chunk: &'static [(Vec<u8>, Vec<u8>)]| async move {
        let outcome = producer
            .send_all(
                topic,
                headers,
                chunk.iter().map(|(k, p)| (k.as_slice(), p.as_slice())),
            )
            .await;
        assert!(outcome.all_acknowledged(), "ceiling run: {outcome:?}");
    };
    // Connection, metadata and producer id first, as ingest has them when
    // its flat-out run starts.
    let timed = records.len() - records.len() / 10;
    let warm = records.len() - timed;
    futures::stream::iter(records[..warm].chunks(batch))
        .for_each_concurrent(in_flight_batches, send)
        .await;
    let started = Instant::now();
    let cpu = hourglass_bench::cpu_seconds(std::process::id());
    futures::stream::iter(records[warm..].chunks(batch))
        .for_each_concurrent(in_flight_batches, send)
        .await;
    let cpu = hourglass_bench::cpu_seconds(std::process::id()) - cpu;
    Ok(Ceiling {
        rate: timed as f64 / started.elapsed().as_secs_f64(),
        cpu_us_per_event: cpu * 1e6 / timed as f64,
    })
}

struct Run {
    events: usize,
    seconds: f64,
    latency_us: Histogram<u64>,
    failures: usize,
}

/// Post `requests` bodies over `connections`; with `interval`, request i is
/// due at start + i × interval and its latency counts from then.
async fn load(
    url: &str,
    bodies: Arc<Vec<String>>,
    requests: usize,
    connections: usize,
    interval: Option<Duration>,
    batch: usize,
) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let next = next.clone();
            let bodies = bodies.clone();
            let url = format!("{url}/v1/batch");
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut failures = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let due = match interval {
                        Some(d) => {
                            let due = start + d * i as u32;
                            tokio::time::sleep_until(due).await;
                            due
                        }
                        None => tokio::time::Instant::now(),
                    };
                    let r = client
                        .post(&url)
                        .basic_auth(KEY, Some(""))
                        .header("content-type", "application/json")
                        .body(bodies[i % bodies.len()].clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {}
                        _ => failures += 1,
                    }
                    h.record(due.elapsed().as_micros().max(1) as u64).unwrap();
                }
                (h, failures)
            })
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut failures = 0;
    for t in tasks {
        let (h, f) = t.await.unwrap();
        latency_us.add(h).unwrap();
        failures += f;
    }
    let seconds = start.elapsed().as_secs_f64();
    Run {
        events: (requests - failures) * batch,
        seconds,
        latency_us,
        failures,
    }
}

fn report(label: &str, run: &Run) {
    let ms = |q: f64| run.latency_us.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{label}: {:.0} events/s accepted ({} events in {:.1} s, {} failed requests); latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        run.events as f64 / run.seconds,
        run.events,
        run.seconds,
        run.failures,
        ms(0.5),
        ms(0.99),
        run.latency_us.max() as f64 / 1000.0
    );
}

/// Requests sent before the timed runs (connections, producer warm).
const WARM_UP_REQUESTS: usize = 200;

#[tokio::main]
async fn main() -> Result<()> {
    hourglass_core::process::disable_transparent_huge_pages();
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
            let broker = LocalBroker::memory(&tmp, 19193)?;
            cfg.kafka.brokers = broker.brokers.clone();
            Some(broker)
        }
    };
    cfg.kafka.topic = format!("bench_ingest_{}", std::process::id());
    hourglass_core::kafka::ensure_topics(&cfg.kafka, &[(cfg.kafka.topic.as_str(), 8)]).await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ingest = start_ingest(&args, &cfg, port)?;
    let url = format!("http://127.0.0.1:{port}");
    hourglass_bench::wait_ready(&url).await?;
    let mut rng = SmallRng::seed_from_u64(7);
    let bodies: Arc<Vec<String>> = Arc::new((0..200).map(|_| body(&mut rng, args.batch)).collect());
    let avg = bodies.iter().map(String::len).sum::<usize>() / bodies.len();
    println!(
        "requests of {} events, {avg} bytes of JSON on average, {} connections",
        args.batch, args.connections
    );

    // Warm up connections and the producer.
    load(
        &url,
        bodies.clone(),
        WARM_UP_REQUESTS,
        args.connections,
        None,
        args.batch,
    )
    .await;
    let cpu = hourglass_bench::cpu_seconds(ingest.0.id());
    let flat = load(
        &url,
        bodies.clone(),
        args.events / args.batch,
        args.connections,
        None,
        args.batch,
    )
    .await;
    let cpu = hourglass_bench::cpu_seconds(ingest.0.id()) - cpu;
    report("flat out", &flat);
    let accepted = flat.events as f64 / flat.seconds;
    let ingest_us = cpu * 1e6 / flat.events as f64;

    // The ceiling: the records ingest just published (warm-up included),
    // produced again by a bare producer into a topic of their own.
    anyhow::ensure!(flat.failures == 0, "the flat-out run had failed requests");
    let published = WARM_UP_REQUESTS * args.batch + flat.events;
    let records: &'static [(Vec<u8>, Vec<u8>)] =
        read_back(&cfg, &cfg.kafka.topic, published)?.leak();
    let ceiling_topic = format!("{}_ceiling", cfg.kafka.topic);
    hourglass_core::kafka::ensure_topics(&cfg.kafka, &[(ceiling_topic.as_str(), 8)]).await?;
    // Flat out: 50,000 records in flight, not held to the load generator's
    // connections.
    let flat_out = ceiling(
        &cfg,
        &ceiling_topic,
        records,
        args.batch,
        (50_000 / args.batch).max(1),
    )
    .await?;
    println!(
        "ceiling: bare rdkafka producer, same settings and broker, the {} records ingest published: {:.0} events/s, {:.2} µs of producer CPU per event",
        records.len(),
        flat_out.rate,
        flat_out.cpu_us_per_event
    );
    // As many events in flight as the load generator can have: what the
    // producer's linger and the broker's round trip allow at that depth.
    let same_depth = ceiling(&cfg, &ceiling_topic, records, args.batch, args.connections).await?;
    println!(
        "bare producer with {} batches of {} in flight (as many as the load generator's connections): {:.0} events/s, {:.2} µs of CPU per event",
        args.connections, args.batch, same_depth.rate, same_depth.cpu_us_per_event
    );
    println!(
        "ingest: {ingest_us:.2} µs of CPU per accepted event = {:.2}× the bare producer's {:.2} µs on the same records; \
         throughput {:.0} % of the producer flat out, {:.0} % at the same depth",
        ingest_us / flat_out.cpu_us_per_event,
        flat_out.cpu_us_per_event,
        100.0 * accepted / flat_out.rate,
        100.0 * accepted / same_depth.rate,
    );
    if args.rate > 0 {
        let requests = args.rate * args.rate_seconds as usize / args.batch;
        let interval = Duration::from_secs_f64(args.batch as f64 / args.rate as f64);
        let cpu = hourglass_bench::cpu_seconds(ingest.0.id());
        let paced = load(
            &url,
            bodies,
            requests,
            args.connections.max(64),
            Some(interval),
            args.batch,
        )
        .await;
        let cpu = hourglass_bench::cpu_seconds(ingest.0.id()) - cpu;
        report(&format!("at {} events/s", args.rate), &paced);
        println!(
            "ingest at {} events/s: {:.2} µs of CPU per accepted event ({:.2}× the bare producer's flat-out figure)",
            args.rate,
            cpu * 1e6 / paced.events as f64,
            cpu * 1e6 / paced.events as f64 / flat_out.cpu_us_per_event
        );
    }
    Ok(())
}
