//! End to end: a user deleted while the loader lags behind does not come back.
//! The deletion is recorded before the loader reads the user's records (as
//! when `DELETE /v1/users/{u}` runs while the loader is down or behind);
//! the loader leaves out every event of that user received up to the request
//! (by `user_id` or `anonymous_id`), keeps the ones received after it, and
//! its progress still reaches the end of every partition, also where the
//! user's skipped records are a partition's last. A deletion made for one
//! tenant leaves the same user id's events in other tenants.

use std::time::Duration;

use crate::common::generator;
use crate::common::{TestEnv, sigterm};
use hourglass_core::contract::EventEnvelope;
use uuid::Uuid;

const VICTIM: &str = "user-7";
/// Deleted by the admin of tenant `acme` only; also has events in `globex`.
const TENANT_VICTIM: &str = "user-in-two-tenants";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_stays_deleted_when_the_loader_catches_up() {
    let env = TestEnv::new("load_deleted").await;
    env.create_topic(4).await;
    env.migrate().await;
    let generated = generator::generate(23, 20_000, 13, 200);
    let base = generator::base_time();
    let requested_at = base + chrono::Duration::hours(2);

    // After the generated stream: the victim coming back after the request
    // (kept), as an anonymous id on someone else's events (left out), and
    // the victim's late records received before the request, produced last so
    // they are the tail of the victim's partition (left out).
    let copy = |e: &EventEnvelope, received: chrono::DateTime<chrono::Utc>, i: u128| {
        let mut e = e.clone();
        e.event_id = Uuid::from_u128(0xDE1_0000 + i);
        e.received_at = received;
        e
    };
    let victims: Vec<&EventEnvelope> = generated
        .events
        .iter()
        .filter(|e| e.user_id.as_deref() == Some(VICTIM))
        .collect();
    assert!(victims.len() > 20, "the seed gives the victim events");
    let back: Vec<EventEnvelope> = (0..10)
        .map(|i| {
            copy(
                victims[i],
                requested_at + chrono::Duration::seconds(60),
                i as u128,
            )
        })
        .collect();
    let anonymous: Vec<EventEnvelope> = (0..5)
        .map(|i| {
            let mut e = copy(&generated.events[i], base, 100 + i as u128);
            e.user_id = Some("someone-else".into());
            e.anonymous_id = Some(VICTIM.into());
            e
        })
        .collect();
    let tail: Vec<EventEnvelope> = (0..7)
        .map(|i| {
            copy(
                victims[i],
                base + chrono::Duration::minutes(10),
                200 + i as u128,
            )
        })
        .collect();
    let in_tenants: Vec<EventEnvelope> = (0..12)
        .map(|i| {
            let mut e = copy(&generated.events[10 + i], base, 300 + i as u128);
            e.user_id = Some(TENANT_VICTIM.into());
            e.anonymous_id = None;
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            e.properties
                .insert("tenant_id".into(), serde_json::json!(tenant));
            e
        })
        .collect();
    generator::produce(&env.cfg.kafka, &in_tenants).await;
    generator::produce(&env.cfg.kafka, &generated.events).await;
    generator::produce(&env.cfg.kafka, &back).await;
    generator::produce(&env.cfg.kafka, &anonymous).await;
    generator::produce(&env.cfg.kafka, &tail).await;

    let ch = env.clickhouse();
    ch.query(
        "INSERT INTO deletions (project_id, user, requested_at, requested_by, events_removed) \
         VALUES ('proj', ?, toDateTime(?), 'test', 0)",
    )
    .bind(VICTIM)
    .bind(requested_at.timestamp())
    .execute()
    .await
    .unwrap();
    ch.query(
        "INSERT INTO deletions (project_id, tenant_id, user, requested_at, requested_by, events_removed) \
         VALUES ('proj', 'acme', ?, toDateTime(?), 'admin@acme', 0)",
    )
    .bind(TENANT_VICTIM)
    .bind(requested_at.timestamp())
    .execute()
    .await
    .unwrap();

    let expected = (generated.events.len() - victims.len() + back.len() + 6) as u64;
    let ends = env.partition_ends(4).await;
    let mut loader = env.spawn(
        &["load"],
        &[("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into())],
    );
    env.wait_loaded_to(
        &ends,
        Duration::from_secs(180),
        "the loader's progress at the end of every partition",
    )
    .await;
    sigterm(&mut loader);

    let (rows, ids, victim_rows, anonymous_rows): (u64, u64, u64, u64) = ch
        .query(
            "SELECT count(), uniqExact(event_id), countIf(user_id = ?), countIf(anonymous_id = ?) FROM events",
        )
        .bind(VICTIM)
        .bind(VICTIM)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (rows, ids),
        (expected, expected),
        "every event but the victim's up to the request, once"
    );
    assert_eq!(
        victim_rows,
        back.len() as u64,
        "only the events after the request"
    );
    assert_eq!(anonymous_rows, 0, "matched by anonymous_id too");
    let kept: Vec<String> = ch
        .query("SELECT toString(event_id) FROM events WHERE user_id = ? ORDER BY event_id")
        .bind(VICTIM)
        .fetch_all()
        .await
        .unwrap();
    let mut want: Vec<String> = back.iter().map(|e| e.event_id.to_string()).collect();
    want.sort();
    assert_eq!(kept, want);
    let tenants: Vec<(String, u64)> = ch
        .query("SELECT tenant_id, count() FROM events WHERE user_id = ? GROUP BY tenant_id")
        .bind(TENANT_VICTIM)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        tenants,
        vec![("globex".to_owned(), 6)],
        "acme's deletion leaves globex's events of the same user id"
    );
    env.teardown().await;
}
