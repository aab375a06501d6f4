//! Ingest under attack: `--attackers` connections send worst-case bodies
//! with the same (public) write key as a well-behaved client, which posts a
//! normal batch every `--interval-ms`. Prints ingest's peak RSS, the good
//! client's latency (from each request's scheduled start) and whether every
//! one of its events reached the topic, and what each kind of attack got.
//!
//! The attacks, spread over the connections: deeply nested JSON; a
//! `[0,0,…]` flood, plain (at the body cap) and gzip'd (at the decoded
//! cap); gzip and zstd bombs of whitespace (each inflates to the decoded
//! cap before it fails, the costliest bomb); slow uploads (a 4 MiB body
//! trickled at 1 kB/s, held until ingest's body deadline).
//!
//! It starts its own tansu with `memory://` storage on 127.0.0.1:19194.
//!
//! `cargo run --release -p hourglass-bench --bin ingest_adversarial`

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use hourglass_bench::{Component, LocalBroker, proc_status_kib};
use hourglass_core::Config;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
struct Args {
    /// Seconds the attack (and the good client) run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Attacking connections.
    #[arg(long, default_value_t = 64)]
    attackers: usize,
    /// The good client's pace: one batch every this many milliseconds.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Events per good batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Only this attack (nested, flood-plain, flood-gzip, gzip-bomb,
    /// zstd-bomb, slow-upload), to see what each costs.
    #[arg(long)]
    only: Option<String>,
    /// The hourglass binary.
    #[arg(long, default_value = "target/release/hourglass")]
    hourglass: String,
}

const KEY: &str = "hgk_adversarial_key";
const MAX_BODY: usize = 4 << 20;
const MAX_DECODED: usize = 16 << 20;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Attack {
    Nested,
    FloodPlain,
    FloodGzip,
    GzipBomb,
    ZstdBomb,
    SlowUpload,
}

const ATTACKS: [Attack; 6] = [
    Attack::Nested,
    Attack::FloodPlain,
    Attack::FloodGzip,
    Attack::GzipBomb,
    Attack::ZstdBomb,
    Attack::SlowUpload,
];

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `[0,0,…,0]` of `len` bytes.
fn flood(len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(b"[0");
    while body.len() + 3 <= len {
        body.extend_from_slice(b",0");
    }
    body.push(b']');
    body
}

/// An attack's body and its content encoding.
fn body(attack: Attack) -> (Bytes, Option<&'static str>) {
    match attack {
        Attack::Nested => {
            // One event whose properties nest a million levels deep, within the body cap.
            let depth = (MAX_BODY - 100) / 6;
            let mut b = br#"[{"event":"e","user_id":"u","properties":"#.to_vec();
            b.extend(std::iter::repeat_n(&br#"{"a":"#[..], depth).flatten());
            b.push(b'1');
            b.extend(std::iter::repeat_n(b'}', depth));
            b.extend_from_slice(b"}]");
            (b.into(), None)
        }
        Attack::FloodPlain => (flood(MAX_BODY).into(), None),
        Attack::FloodGzip => (gzip(&flood(MAX_DECODED)).into(), Some("gzip")),
        Attack::GzipBomb => (gzip(&vec![b' '; 64 << 20]).into(), Some("gzip")),
        Attack::ZstdBomb => (
            zstd::encode_all(&vec![b' '; 64 << 20][..], 19)
                .unwrap()
                .into(),
            Some("zstd"),
        ),
        Attack::SlowUpload => (Bytes::new(), None),
    }
}

fn good_body(seq: usize, batch: usize) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let events: Vec<Value> = (0..batch)
        .map(|i| {
            json!({"event": "page_view", "user_id": format!("user-{}", (seq * batch + i) % 5_000),
                   "event_id": uuid::Uuid::now_v7(), "timestamp": now,
                   "properties": {"path": format!("/docs/page-{}", i % 300), "country": "DE"}})
        })
        .collect();
    json!({ "batch": events }).to_string()
}

/// One attacking connection: its body again and again until `stop`; the
/// statuses it got, by code (0: no answer).
async fn attack(
    url: String,
    kind: Attack,
    body: Bytes,
    encoding: Option<&'static str>,
    stop: Arc<AtomicBool>,
) -> BTreeMap<u16, usize> {
    let mut statuses = BTreeMap::new();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        let status = if kind == Attack::SlowUpload {
            slow_upload(&url, &stop).await
        } else {
            let mut r = client
                .post(format!("{url}/v1/batch"))
                .basic_auth(KEY, Some(""))
                .header("content-type", "application/json");
            if let Some(e) = encoding {
                r = r.header("content-encoding", e);
            }
            r.body(body.clone())
                .send()
                .await
                .map_or(0, |r| r.status().as_u16())
        };
        *statuses.entry(status).or_default() += 1;
    }
    statuses
}

/// A 4 MiB body trickled at about 1 kB/s; the status ingest answers (408
/// at its body deadline), 0 when the attack ended first.
async fn slow_upload(url: &str, stop: &AtomicBool) -> u16 {
    use tokio::io::AsyncReadExt;
    let addr = url.trim_start_matches("http://");
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{KEY}:"),
    );
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nContent-Length: {MAX_BODY}\r\n\r\n["
    );
    if conn.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let (mut read, mut write) = conn.into_split();
    let answer = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = read.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0)
    });
    while !stop.load(Ordering::Relaxed) && !answer.is_finished() {
        if write.write_all(&[b' '; 100]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if stop.load(Ordering::Relaxed) && !answer.is_finished() {
        answer.abort();
        return 0;
    }
    answer.await.unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    hourglass_core::process::disable_transparent_huge_pages();
    let args = Args::parse();
    let tmp = std::env::temp_dir().join(format!("hourglass-adversarial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let broker = LocalBroker::memory(&tmp, 19194)?;
    let mut cfg = Config::default();
    cfg.kafka.brokers = broker.brokers.clone();
    cfg.kafka.topic = format!("bench_adversarial_{}", std::process::id());
    hourglass_core::kafka::ensure_topics(&cfg.kafka, &[(cfg.kafka.topic.as_str(), 4)]).await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let hash = hourglass_ingest::keys::hash_key(KEY);
    // Default limits: what a deployment has unless it changes them.
    let ingest = Component(
        Command::new(&args.hourglass)
            .arg("ingest")
            .env("HOURGLASS_KAFKA__BROKERS", &cfg.kafka.brokers)
            .env("HOURGLASS_KAFKA__TOPIC", &cfg.kafka.topic)
            .env("HOURGLASS_INGEST__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "HOURGLASS_INGEST__KEYS",
                format!(r#"[{{project_id="site",sha256="{hash}"}}]"#),
            )
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (build it first)", args.hourglass))?,
    );
    let url = format!("http://127.0.0.1:{port}");
    hourglass_bench::wait_ready(&url).await?;
    let pid = ingest.0.id();
    let idle_rss = proc_status_kib(pid, "VmRSS:");

    let bodies: BTreeMap<Attack, (Bytes, Option<&'static str>)> =
        ATTACKS.iter().map(|&a| (a, body(a))).collect();
    for (a, (b, e)) in &bodies {
        if *a != Attack::SlowUpload {
            println!(
                "{a:?}: {} bytes as sent ({})",
                b.len(),
                e.unwrap_or("plain")
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let kinds: Vec<Attack> = match &args.only {
        Some(name) => {
            let wanted = name.replace('-', "").to_ascii_lowercase();
            let kind = ATTACKS
                .into_iter()
                .find(|a| format!("{a:?}").to_ascii_lowercase() == wanted)
                .with_context(|| format!("no attack named {name}"))?;
            vec![kind]
        }
        None => ATTACKS.to_vec(),
    };
    let attackers: Vec<_> = (0..args.attackers)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            let (body, encoding) = bodies[&kind].clone();
            (
                kind,
                tokio::spawn(attack(url.clone(), kind, body, encoding, stop.clone())),
            )
        })
        .collect();
    // Let the attack reach its full weight before the good client starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let client = reqwest::Client::new();
    let interval = Duration::from_millis(args.interval_ms);
    let requests = (args.seconds * 1000 / args.interval_ms) as usize;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut sent = 0usize;
    let mut retried = 0usize;
    let mut peak_rss = 0;
    let mut peak_charged = 0.0f64;
    let start = tokio::time::Instant::now();
    let cpu = hourglass_bench::cpu_seconds(pid);
    for seq in 0..requests {
        let due = start + interval * seq as u32;
        tokio::time::sleep_until(due).await;
        let body = good_body(seq, args.batch);
        // A client that is told to retry does so until its batch is taken:
        // the latency counts every try.
        loop {
            let r = client
                .post(format!("{url}/v1/batch"))
                .basic_auth(KEY, Some(""))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => break,
                _ => {
                    retried += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        sent += args.batch;
        latency.record(due.elapsed().as_micros().max(1) as u64)?;
        peak_rss = peak_rss.max(proc_status_kib(pid, "VmRSS:"));
        if seq % 25 == 0 {
            peak_charged = peak_charged.max(charged(&client, &url).await);
        }
    }
    let good_secs = start.elapsed().as_secs_f64();
    let cpu = hourglass_bench::cpu_seconds(pid) - cpu;
    stop.store(true, Ordering::Relaxed);
    let mut by_kind: BTreeMap<Attack, BTreeMap<u16, usize>> = BTreeMap::new();
    for (kind, task) in attackers {
        let statuses = task.await?;
        let entry = by_kind.entry(kind).or_default();
        for (s, n) in statuses {
            *entry.entry(s).or_default() += n;
        }
    }
    let hwm = proc_status_kib(pid, "VmHWM:");

    // Every good event on the topic, none twice: only the good client can
    // have put records there (every attack body is refused whole).
    let on_topic = topic_records(&cfg).await?;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{} attacking connections for {:.0} s, ingest with default limits",
        args.attackers, good_secs
    );
    for (kind, statuses) in &by_kind {
        let total: usize = statuses.values().sum();
        println!("  {kind:?}: {total} requests, by status {statuses:?}");
    }
    println!(
        "good client: {} batches of {} every {} ms; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} retries",
        requests,
        args.batch,
        args.interval_ms,
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0,
        retried
    );
    println!(
        "good events sent {sent}; on the topic {} distinct in {} records",
        on_topic.0, on_topic.1
    );
    println!(
        "ingest: peak RSS {:.0} MiB (VmHWM; idle {:.0} MiB, highest sampled {:.0} MiB), highest sampled memory budget charge {:.0} MiB, {:.1} CPU-seconds",
        hwm as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        peak_charged / f64::from(1 << 20),
        cpu
    );
    drop(ingest);
    drop(broker);
    let _ = std::fs::remove_dir_all(&tmp);
    if on_topic != (sent, sent) {
        bail!("{sent} good events sent, {on_topic:?} (distinct, records) on the topic");
    }
    Ok(())
}

/// `hourglass_ingest_in_flight_bytes` now.
async fn charged(client: &reqwest::Client, url: &str) -> f64 {
    let Ok(r) = client.get(format!("{url}/metrics")).send().await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("hourglass_ingest_in_flight_bytes "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// Distinct events on the topic, and records in all (read from the start
/// until it has been quiet for 3 s).
async fn topic_records(cfg: &Config) -> Result<(usize, usize)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("{}_count", cfg.kafka.topic))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&cfg.kafka.topic])?;
    tokio::task::spawn_blocking(move || {
        let mut ids = std::collections::HashSet::new();
        let mut records = 0;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(3) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    records += 1;
                    quiet_since = Instant::now();
                    let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
                    ids.insert(v["event_id"].as_str().unwrap_or_default().to_owned());
                }
                Some(Err(e)) => bail!("reading the topic: {e}"),
                None => {}
            }
        }
        Ok((ids.len(), records))
    })
    .await?
}
