//! Two days of seeded sessions for a project (page views, API calls with a
//! long-tailed latency, errors, one user shared by two tenants) and the
//! state Hourglass would hold for them: raw rows as the loader writes them,
//! rollups through the aggregator's own windowing core and sink, and a
//! Parquet lake. Used by the query API's suite and by the modern-ClickHouse
//! check, which needs the same tables filled.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use hourglass_aggregator::window::{
    EventRef, PartitionWindows, WindowConfig, dimension_values, user_hash,
};
use hourglass_core::contract::{EventEnvelope, SCHEMA_VERSION};
use hourglass_lake::store::{LocalStore, ObjectStore};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::json;

use super::TestEnv;

pub const PATHS: [&str; 5] = ["/", "/pricing", "/docs", "/blog", "/signup"];
pub const PARTITIONS: u64 = 4;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap()
}

pub fn partition_of(e: &EventEnvelope) -> i32 {
    (user_hash(e.user()) % PARTITIONS) as i32
}

/// Sessions of `project` over two days from t0: each a user, 1..=15 events a
/// few seconds to minutes apart: page views, API calls with a long-tailed
/// latency `value` (some flagged `error: true`), and `error` events.
pub fn generate(project: &str, seed: u64, sessions: usize) -> Vec<EventEnvelope> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for s in 0..sessions {
        let user_n = rng.random_range(0..200u32);
        let user = format!("{project}-user-{user_n}");
        let tenant = if user_n % 2 == 0 { "t1" } else { "t2" };
        let mut t = t0().timestamp_millis() + rng.random_range(0..(47 * 3_600_000));
        for _ in 0..rng.random_range(1..=15) {
            t += rng.random_range(2_000..300_000);
            let roll = rng.random_range(0..100);
            let (event, value, error) = match roll {
                0..60 => ("page_view", None, false),
                60..90 => {
                    let v = (rng.random::<f64>().powi(4) * 3_000.0 * 1000.0).round() / 1000.0 + 1.0;
                    ("api_call", Some(v), roll >= 87)
                }
                _ => ("error", None, false),
            };
            let mut properties = serde_json::Map::new();
            properties.insert(
                "path".into(),
                json!(PATHS[rng.random_range(0..PATHS.len())]),
            );
            properties.insert("tenant_id".into(), json!(tenant));
            if error {
                properties.insert("error".into(), json!(true));
            }
            let timestamp = Utc.timestamp_millis_opt(t).unwrap();
            out.push(EventEnvelope {
                schema_version: SCHEMA_VERSION,
                project_id: project.into(),
                event_id: uuid::Uuid::from_u64_pair(seed, out.len() as u64),
                event: event.into(),
                user_id: Some(user.clone()),
                anonymous_id: None,
                session_id: Some(format!("{project}-session-{s}")),
                timestamp,
                received_at: timestamp + Duration::seconds(1),
                value,
                properties,
            });
        }
    }
    // One user id in two tenants (each tenant picks its own ids); its events
    // in t2 carry a nested `tenant_id` of t1, which is data, not the tenant.
    for (i, tenant) in ["t1", "t1", "t1", "t2", "t2", "t2"].into_iter().enumerate() {
        let timestamp = t0() + Duration::hours(3 + i as i64);
        let mut properties = serde_json::Map::new();
        if tenant == "t2" {
            properties.insert("meta".into(), json!({"tenant_id": "t1"}));
        }
        properties.insert("path".into(), json!("/"));
        properties.insert("tenant_id".into(), json!(tenant));
        out.push(EventEnvelope {
            schema_version: SCHEMA_VERSION,
            project_id: project.into(),
            event_id: uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                timestamp.timestamp() as u64,
                0,
            )),
            event: "page_view".into(),
            user_id: Some(format!("{project}-shared")),
            anonymous_id: None,
            session_id: Some(format!("{project}-shared-{tenant}")),
            timestamp,
            received_at: timestamp + Duration::seconds(1),
            value: None,
            properties,
        });
    }
    out
}

/// Raw rows, rollups through the aggregator's core and sink, and the lake.
pub async fn seed(env: &TestEnv, events: &[EventEnvelope], lake: &LocalStore) {
    let ch = env.clickhouse();
    let mut by_partition: BTreeMap<i32, Vec<&EventEnvelope>> = BTreeMap::new();
    for e in events {
        by_partition.entry(partition_of(e)).or_default().push(e);
    }
    let window = Arc::new(WindowConfig::from(&env.cfg));
    let shape = hourglass_loader::rows::RowShape::from(&env.cfg);
    let sink = hourglass_aggregator::sink::RollupSink::new(ch.clone(), &env.cfg.kafka.topic);
    for (partition, mut list) in by_partition {
        list.sort_by_key(|e| (e.timestamp, e.event_id));
        let mut insert = ch
            .insert::<hourglass_loader::rows::EventRow>("events")
            .await
            .unwrap();
        let mut core = PartitionWindows::new(window.clone(), 0, None);
        let mut files: BTreeMap<DateTime<Utc>, hourglass_lake::schema::BatchBuilder> =
            BTreeMap::new();
        let mut offsets: BTreeMap<DateTime<Utc>, (i64, i64)> = BTreeMap::new();
        for (offset, e) in list.iter().enumerate() {
            let offset = offset as i64;
            insert
                .write(
                    &hourglass_loader::rows::from_envelope((*e).clone(), partition, offset, &shape)
                        .unwrap(),
                )
                .await
                .unwrap();
            let dimensions = dimension_values(&window.dimensions, Some(&e.properties));
            core.ingest(
                &EventRef {
                    project_id: &e.project_id,
                    event: &e.event,
                    user: e.user(),
                    timestamp_ms: e.timestamp.timestamp_millis(),
                    value: e.value,
                    dimensions: &dimensions,
                },
                offset,
                chrono::Utc::now().timestamp_millis(),
            );
            let hour = hourglass_lake::layout::hour_of(e.received_at);
            files.entry(hour).or_default().append(e, partition, offset);
            let span = offsets.entry(hour).or_insert((offset, offset));
            span.1 = offset;
        }
        insert.end().await.unwrap();
        core.mark_caught_up(0);
        core.tick(i64::MAX);
        let closed = core.take_closed().expect("closed windows");
        sink.write(partition, &closed).await.unwrap();
        for (hour, mut batch) in files {
            let (first, last) = offsets[&hour];
            let body = hourglass_lake::schema::to_parquet(&batch.finish(), 100_000).unwrap();
            let key = hourglass_lake::layout::file_key(
                hour,
                &env.cfg.kafka.topic,
                partition,
                first,
                last,
            );
            lake.put(&key, body).await.unwrap();
        }
    }
}
