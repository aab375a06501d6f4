//! A seeded event generator that knows exactly what it sent.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use hourglass_core::config::KafkaConfig;
use hourglass_core::contract::{EventEnvelope, SCHEMA_VERSION};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureRecord;
use serde_json::{Map, Value};
use uuid::Uuid;

pub const EVENTS: [&str; 5] = ["page_view", "click", "signup", "api_call", "purchase"];
pub const WINDOW_MS: i64 = 300_000;

/// What one (window, event, path) should add up to.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub events: u64,
    pub users: HashSet<String>,
    pub values: Vec<f64>,
}

pub struct Generated {
    pub events: Vec<EventEnvelope>,
    /// (window start ms, event, dimensions JSON) → truth.
    pub truth: BTreeMap<(i64, String, String), Truth>,
}

/// 2025-12-31T23:30:00Z: a run of 13+ windows crosses an hour and a day.
pub fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 12, 31, 23, 30, 0).unwrap()
}

/// `n` events over `windows` five-minute windows from [`base_time`], mostly in
/// time order with up to 50 s of disorder (inside the 60 s grace, so none is
/// late), `users` distinct users, a `path` dimension of 20 values.
pub fn generate(seed: u64, n: usize, windows: i64, users: usize) -> Generated {
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = base_time().timestamp_millis();
    let span = windows * WINDOW_MS;
    let mut events = Vec::with_capacity(n);
    let mut truth: BTreeMap<(i64, String, String), Truth> = BTreeMap::new();
    for i in 0..n {
        let nominal = t0 + (i as i64 * span) / n as i64;
        let ts = (nominal - rng.random_range(0..50_000)).max(t0);
        let event = EVENTS[rng.random_range(0..EVENTS.len())];
        let user = format!("user-{}", rng.random_range(0..users));
        let path = format!("/page/{}", rng.random_range(0..20));
        let value = match event {
            "api_call" => Some((rng.random::<f64>().powi(3) * 2_000.0 * 1000.0).round() / 1000.0),
            "purchase" => Some(rng.random_range(1..50_000) as f64 / 100.0),
            _ => None,
        };
        let mut properties = Map::new();
        properties.insert("path".into(), Value::from(path.clone()));
        properties.insert("noise".into(), Value::from(rng.random::<u32>()));
        let ts = Utc.timestamp_millis_opt(ts).unwrap();
        let window = ts.timestamp_millis().div_euclid(WINDOW_MS) * WINDOW_MS;
        let dims = format!(r#"{{"path":"{path}"}}"#);
        let t = truth.entry((window, event.to_string(), dims)).or_default();
        t.events += 1;
        t.users.insert(user.clone());
        if let Some(v) = value {
            t.values.push(v);
        }
        events.push(EventEnvelope {
            schema_version: SCHEMA_VERSION,
            project_id: "proj".into(),
            event_id: Uuid::from_u128(rng.random()),
            event: event.into(),
            user_id: Some(user),
            anonymous_id: None,
            session_id: None,
            timestamp: ts,
            received_at: ts,
            value,
            properties,
        });
    }
    Generated { events, truth }
}

/// Produce every event, keyed by `project_id:user`, waiting for each ack.
pub async fn produce(cfg: &KafkaConfig, events: &[EventEnvelope]) {
    let producer = hourglass_core::kafka::producer(cfg).expect("producer");
    let topic = cfg.topic.as_str();
    let producer = &producer;
    futures::stream::iter(events.iter())
        .map(|e| async move {
            let key = e.kafka_key();
            let payload = e.encode();
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(err, _)| err)
                .expect("delivered");
        })
        .buffer_unordered(20_000)
        .collect::<Vec<_>>()
        .await;
}
