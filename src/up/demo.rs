//! Demo traffic: realistic batches posted through the real HTTP endpoint
//! with a write key. Page views over a few hundred paths (a few popular),
//! clicks, signups, and API calls whose `value` is a latency with a long
//! tail; a few thousand users with sessions; some events out of order
//! inside the grace period and some late past it, on purpose.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(Default)]
pub struct DemoCounters {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    /// Events sent with a timestamp past the aggregator's grace period.
    pub late_on_purpose: AtomicU64,
    pub refused_requests: AtomicU64,
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
                if pick < 0.55 {
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
                }
            })
            .collect();
        (json!({"batch": events, "sent_at": now}), late)
    }

    /// Post batches ten times a second until `stop` is set.
    pub async fn run(self) {
        let client = reqwest::Client::new();
        let mut rng = SmallRng::seed_from_u64(2026);
        let per_tick = (self.events_per_sec / 10).max(1) as usize;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !self.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let (body, late) = self.batch(&mut rng, per_tick);
            let sent = client
                .post(format!("{}/v1/batch", self.url))
                .basic_auth(&self.key, Some(""))
                .json(&body)
                .send()
                .await;
            self.counters
                .sent
                .fetch_add(per_tick as u64, Ordering::Relaxed);
            match sent {
                Ok(r) if r.status().is_success() => {
                    let accepted = r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["accepted"].as_u64())
                        .unwrap_or(0);
                    self.counters
                        .accepted
                        .fetch_add(accepted, Ordering::Relaxed);
                    self.counters
                        .late_on_purpose
                        .fetch_add(late, Ordering::Relaxed);
                }
                Ok(r) => {
                    self.counters
                        .refused_requests
                        .fetch_add(1, Ordering::Relaxed);
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(1u64);
                    tokio::time::sleep(Duration::from_secs(wait.min(5))).await;
                }
                Err(_) => {
                    self.counters
                        .refused_requests
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
