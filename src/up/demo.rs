//! Demo traffic: realistic batches posted through the real HTTP endpoint
//! with a write key. Page views over a few hundred paths (a few popular),
//! clicks, signups, and API calls whose `value` is a latency with a long
//! tail; a few thousand users with sessions; some events out of order
//! inside the grace period and some late past it, on purpose, and first a
//! small history import (hours old) for the batch layer to pick up.
//!
//! It behaves like a fleet of clients, not one: a batch leaves every 100 ms
//! whether or not earlier ones have been answered (up to
//! [`MAX_IN_FLIGHT`] at once), and like the Segment SDKs each event carries
//! its own `event_id`, so a batch answered 503 is sent again unchanged after
//! `Retry-After` and lands once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Requests of the demo waiting for an answer at once, at most.
const MAX_IN_FLIGHT: usize = 64;

/// The history import sent first: batches of events one to three hours old.
const HISTORY_BATCHES: usize = 4;
const HISTORY_BATCH_EVENTS: usize = 500;

pub struct DemoCounters {
    pub sent: AtomicU64,
    /// Events acknowledged (each counted once, whatever the retries).
    pub accepted: AtomicU64,
    /// Events sent with a timestamp past the aggregator's grace period.
    pub late_on_purpose: AtomicU64,
    /// Events of the history import (also in `sent`).
    pub imported: AtomicU64,
    /// Answers other than 2xx, and requests that got no answer.
    pub refused_requests: AtomicU64,
    /// Events of batches still unanswered when the demo stopped.
    pub abandoned: AtomicU64,
    /// Milliseconds from a batch's first send to its 2xx, retries included.
    latency: Mutex<Histogram<u64>>,
}

impl Default for DemoCounters {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            late_on_purpose: AtomicU64::new(0),
            imported: AtomicU64::new(0),
            refused_requests: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new(3).expect("3 significant figures")),
        }
    }
}

impl DemoCounters {
    /// Request latency at quantile `q`, in ms (0 before the first answer).
    pub fn latency_ms(&self, q: f64) -> f64 {
        let h = self.latency.lock().expect("latency lock");
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    }

    pub fn answered_requests(&self) -> u64 {
        self.latency.lock().expect("latency lock").len()
    }
}

pub struct Demo {
    pub url: String,
    pub key: String,
    pub events_per_sec: u32,
    /// How far back a late event is dated (past window + grace).
    pub late_by: Duration,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<DemoCounters>,
}

const USERS: u32 = 3_000;
const BUTTONS: [&str; 3] = ["buy", "try", "more"];
const PLANS: [&str; 2] = ["free", "pro"];
const APIS: [&str; 3] = ["orders", "search", "users"];
const PATHS: u32 = 300;

fn path(rng: &mut SmallRng) -> String {
    // A few pages take most views.
    let popular = ["/", "/pricing", "/docs", "/blog", "/signup"];
    if rng.random_bool(0.5) {
        popular[rng.random_range(0..popular.len())].to_string()
    } else {
        format!("/docs/page-{}", rng.random_range(0..PATHS))
    }
}

/// Latency in ms: mostly tens of ms, a long tail into seconds.
fn latency(rng: &mut SmallRng) -> f64 {
    let base = 20.0 * (rng.random::<f64>() * 2.5).exp();
    let spike = if rng.random_bool(0.01) { 10.0 } else { 1.0 };
    (base * spike * 10.0).round() / 10.0
}

impl Demo {
    fn batch(&self, rng: &mut SmallRng, n: usize) -> (Value, u64) {
        let now = chrono::Utc::now();
        let mut late = 0;
        let events: Vec<Value> = (0..n)
            .map(|_| {
                let user = rng.random_range(0..USERS);
                let session = format!("s{user}-{}", now.timestamp() / 900);
                let mut ts = now - chrono::Duration::milliseconds(rng.random_range(0..1_500));
                let roll = rng.random::<f64>();
                if roll < 0.02 {
                    // Out of order, inside the grace period.
                    ts -= chrono::Duration::milliseconds(rng.random_range(2_000..5_000));
                } else if roll < 0.025 {
                    ts -= chrono::Duration::from_std(self.late_by).unwrap_or_default();
                    late += 1;
                }
                let t = ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let pick = rng.random::<f64>();
                let mut event = if pick < 0.55 {
                    json!({"event": "page_view", "user_id": format!("user-{user}"), "session_id": session,
                           "timestamp": t, "properties": {"path": path(rng), "referrer": "https://news.example.com/"}})
                } else if pick < 0.80 {
                    json!({"event": "click", "user_id": format!("user-{user}"), "session_id": session,
                           "timestamp": t, "properties": {"path": path(rng), "button": BUTTONS[rng.random_range(0..3)]}})
                } else if pick < 0.82 {
                    json!({"event": "signup", "user_id": format!("user-{user}"), "session_id": session,
                           "timestamp": t, "properties": {"plan": PLANS[rng.random_range(0..2)]}})
                } else {
                    json!({"event": "api_call", "user_id": format!("user-{user}"), "session_id": session,
                           "timestamp": t, "value": latency(rng),
                           "properties": {"path": format!("/api/v1/{}", APIS[rng.random_range(0..3)])}})
                };
                let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
                event["event_id"] = json!(id);
                event
            })
            .collect();
        (json!({"batch": events, "sent_at": now}), late)
    }

    /// A history import through `/v1/import`: `n` events dated one to three
    /// hours back. The speed layer counts them late; the batch layer, whose
    /// settled hours they fall in, takes them in within minutes.
    fn history(&self, rng: &mut SmallRng, n: usize) -> Value {
        let (mut body, _) = self.batch(rng, n);
        let now = chrono::Utc::now();
        for event in body["batch"].as_array_mut().into_iter().flatten() {
            let back = chrono::Duration::seconds(rng.random_range(3_600..3 * 3_600));
            event["timestamp"] =
                json!((now - back).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        body
    }

    /// Post a batch every 100 ms until `stop` is set, each in its own task,
    /// after a small history import.
    pub async fn run(self) {
        let client = reqwest::Client::new();
        let mut rng = SmallRng::seed_from_u64(2026);
        for _ in 0..HISTORY_BATCHES {
            let body = self.history(&mut rng, HISTORY_BATCH_EVENTS);
            self.counters
                .sent
                .fetch_add(HISTORY_BATCH_EVENTS as u64, Ordering::Relaxed);
            self.counters
                .imported
                .fetch_add(HISTORY_BATCH_EVENTS as u64, Ordering::Relaxed);
            Send {
                client: client.clone(),
                url: format!("{}/v1/import", self.url).into(),
                key: self.key.as_str().into(),
                body: body.to_string(),
                events: HISTORY_BATCH_EVENTS as u64,
                late: 0,
                stop: self.stop.clone(),
                counters: self.counters.clone(),
            }
            .until_answered()
            .await;
        }
        let per_tick = (self.events_per_sec / 10).max(1) as usize;
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let url: Arc<str> = format!("{}/v1/batch", self.url).into();
        let key: Arc<str> = self.key.as_str().into();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut requests = tokio::task::JoinSet::new();
        while !self.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            while requests.try_join_next().is_some() {}
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let (body, late) = self.batch(&mut rng, per_tick);
            self.counters
                .sent
                .fetch_add(per_tick as u64, Ordering::Relaxed);
            let send = Send {
                client: client.clone(),
                url: url.clone(),
                key: key.clone(),
                body: body.to_string(),
                events: per_tick as u64,
                late,
                stop: self.stop.clone(),
                counters: self.counters.clone(),
            };
            requests.spawn(async move {
                send.until_answered().await;
                drop(permit);
            });
        }
        while requests.join_next().await.is_some() {}
    }
}

/// One batch on its way, sent again unchanged until it is accepted.
struct Send {
    client: reqwest::Client,
    url: Arc<str>,
    key: Arc<str>,
    body: String,
    events: u64,
    late: u64,
    stop: Arc<AtomicBool>,
    counters: Arc<DemoCounters>,
}

impl Send {
    async fn until_answered(self) {
        let first = Instant::now();
        loop {
            let answer = self
                .client
                .post(&*self.url)
                .basic_auth(&*self.key, Some(""))
                .header("content-type", "application/json")
                .body(self.body.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let wait = match answer {
                Ok(r) if r.status().is_success() => {
                    let accepted = r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["accepted"].as_u64())
                        .unwrap_or(0);
                    let c = &self.counters;
                    c.accepted.fetch_add(accepted, Ordering::Relaxed);
                    c.late_on_purpose.fetch_add(self.late, Ordering::Relaxed);
                    let micros = first.elapsed().as_micros() as u64;
                    let _ = c
                        .latency
                        .lock()
                        .expect("latency lock")
                        .record(micros.max(1));
                    return;
                }
                Ok(r) => r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1u64),
                Err(_) => 1,
            };
            self.counters
                .refused_requests
                .fetch_add(1, Ordering::Relaxed);
            let until = Instant::now() + Duration::from_secs(wait.clamp(1, 5));
            while Instant::now() < until {
                if self.stop.load(Ordering::Relaxed) {
                    self.counters
                        .abandoned
                        .fetch_add(self.events, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
