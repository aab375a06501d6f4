//! End to end: deleted users erased from the lake. Events archived by the
//! real archiver into the S3 server; then two deletion requests (one
//! project-wide, by `user_id` or `anonymous_id`; one for a tenant only):
//! `hourglass erase --dry-run` names exactly the events that would go and
//! changes nothing; `hourglass erase` leaves no file holding a covered
//! event, every other event intact (compared by id with the originals),
//! names that still account for every kept event once, and no request
//! pending; the rollups hold the project-wide victim in no user set. Records
//! of a deleted user still on the topic when the archiver
//! comes back are left out of its new files. Then one project's lake
//! retention takes its events out of folders the other projects keep.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hourglass_core::config::LakeStorage;
use hourglass_core::contract::EventEnvelope;
use hourglass_lake::layout;
use hourglass_lake::schema::{LakeEvent, read_parquet};
use hourglass_lake::store::{ObjectStore, StoreError};
use uuid::Uuid;

use crate::common::generator;
use crate::common::{TestEnv, run_hourglass, sigterm, wait_until};

const VICTIM: &str = "user-7";
/// Deleted by the admin of tenant `acme` only; also has events in `globex`.
const TENANT_VICTIM: &str = "user-in-two-tenants";

/// The lake in the S3 server, under the test's own prefix.
fn lake_vars(env: &TestEnv) -> Vec<(&'static str, String)> {
    vec![
        ("HOURGLASS_LAKE__STORAGE", "s3".to_owned()),
        ("HOURGLASS_S3__PREFIX", env.name.clone()),
        ("HOURGLASS_LAKE__FILE_MAX_AGE_SECS", "2".to_owned()),
        ("HOURGLASS_LAKE__HTTP_LISTEN", "127.0.0.1:0".to_owned()),
        ("HOURGLASS_LAKE__COMPACT_INTERVAL_SECS", "0".to_owned()),
    ]
}

/// `hourglass args…` against the test's database and lake, with `extra`.
fn run(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> String {
    let mut vars = env.child_env();
    vars.extend(lake_vars(env).into_iter().map(|(k, v)| (k.to_owned(), v)));
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    run_hourglass(args, &vars)
}

fn erase(env: &TestEnv, dry_run: bool) -> String {
    let args: &[&str] = if dry_run {
        &["erase", "--dry-run"]
    } else {
        &["erase"]
    };
    run(env, args, &[])
}

/// Every file of the lake: key → its events.
async fn lake_files(store: &dyn ObjectStore) -> BTreeMap<String, Vec<LakeEvent>> {
    let mut files = BTreeMap::new();
    for o in store.list("dt=").await.unwrap() {
        if layout::parse_key(&o.key).is_none() {
            // A folder's retention record.
            assert!(o.key.ends_with("/_retention.json"), "{}", o.key);
            continue;
        }
        let events = read_parquet(store.get(&o.key).await.unwrap()).unwrap();
        files.insert(o.key, events);
    }
    files
}

/// The requests' rule, written out: the project-wide victim by either id,
/// received up to the request; the tenant victim in `acme` only.
fn covered(e: &EventEnvelope, requested_at: DateTime<Utc>) -> bool {
    let tenant = e.properties.get("tenant_id").and_then(|v| v.as_str());
    e.project_id == "proj"
        && e.received_at <= requested_at
        && (e.user_id.as_deref() == Some(VICTIM)
            || e.anonymous_id.as_deref() == Some(VICTIM)
            || (e.user_id.as_deref() == Some(TENANT_VICTIM) && tenant == Some("acme")))
}

async fn archive_until(env: &TestEnv, store: &dyn ObjectStore, rows: i64) {
    let mut archiver = env.spawn(&["archive"], &lake_vars(env));
    wait_until(Duration::from_secs(120), "events archived", || async {
        let keys: Vec<String> = store
            .list("dt=")
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|o| o.key)
            .collect();
        layout::records_named(keys.iter().map(String::as_str)) >= rows
    })
    .await;
    sigterm(&mut archiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_users_leave_no_event_in_the_lake_and_others_stay_intact() {
    let mut env = TestEnv::new("erase").await;
    env.create_topic(4).await;
    env.migrate().await;
    env.cfg.lake.storage = LakeStorage::S3;
    env.cfg.s3.prefix = env.name.clone();
    let store = hourglass_lake::store::open(&env.cfg).await.unwrap();
    let generated = generator::generate(31, 6_000, 13, 60);
    let base = generator::base_time();
    let requested_at = base + chrono::Duration::hours(2);
    let copy = |e: &EventEnvelope, i: u128| {
        let mut e = e.clone();
        e.event_id = Uuid::from_u128(0xE2A5_0000 + i);
        e
    };
    let mut extra = Vec::new();
    for i in 0..12u128 {
        // The tenant victim, half in each tenant.
        let mut e = copy(&generated.events[i as usize], i);
        e.user_id = Some(TENANT_VICTIM.into());
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        e.properties
            .insert("tenant_id".into(), serde_json::json!(tenant));
        extra.push(e);
        // The victim as someone else's anonymous id.
        let mut e = copy(&generated.events[100 + i as usize], 100 + i);
        e.user_id = Some("someone-else".into());
        e.anonymous_id = Some(VICTIM.into());
        extra.push(e);
        // The victim in another project: not covered.
        let mut e = copy(&generated.events[200 + i as usize], 200 + i);
        e.project_id = "other".into();
        e.user_id = Some(VICTIM.into());
        extra.push(e);
        // The victim back after the request: kept.
        let mut e = copy(&generated.events[300 + i as usize], 300 + i);
        e.user_id = Some(VICTIM.into());
        e.received_at = requested_at + chrono::Duration::minutes(1);
        extra.push(e);
    }
    let mut sent: Vec<EventEnvelope> = generated.events.clone();
    sent.extend(extra);
    generator::produce(&env.cfg.kafka, &sent).await;
    // The speed layer too: every event in a window or recorded late.
    let mut aggregator = env.spawn(
        &["aggregate"],
        &[("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "2".to_owned())],
    );
    archive_until(&env, store.as_ref(), sent.len() as i64).await;
    let ch = env.clickhouse();
    wait_until(Duration::from_secs(120), "events aggregated", || async {
        let (windowed, late): (u64, u64) = ch
            .query(
                "SELECT (SELECT sum(events) FROM rollup_5m), \
                        (SELECT uniqExact(source_partition, source_offset) FROM late_events)",
            )
            .fetch_one()
            .await
            .unwrap_or((0, 0));
        windowed + late >= sent.len() as u64
    })
    .await;
    sigterm(&mut aggregator);
    let victim_hash = hourglass_aggregator::window::user_hash(VICTIM);
    let sets_with_victim = |ch: clickhouse::Client| async move {
        ch.query("SELECT count() FROM rollup_5m WHERE project_id = 'proj' AND has(user_hashes, ?)")
            .bind(victim_hash)
            .fetch_one::<u64>()
            .await
            .unwrap()
    };
    let rows_with_victim = sets_with_victim(ch.clone()).await;
    assert!(
        rows_with_victim > 10,
        "{rows_with_victim} rows hold the victim"
    );

    // The raw record too, then raw retention simulated: every other event
    // (by id) dropped from ClickHouse, so an export needs the lake for the
    // rest and merges the two in time order.
    let mut loader = env.spawn(&["load"], &[]);
    wait_until(Duration::from_secs(120), "events loaded", || async {
        ch.query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0)
            >= sent.len() as u64
    })
    .await;
    sigterm(&mut loader);
    ch.query("ALTER TABLE events DELETE WHERE cityHash64(event_id) % 2 = 0")
        .execute()
        .await
        .unwrap();
    assert!(
        hourglass_core::clickhouse::mutations_done(&ch, "events", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let mut qcfg = env.cfg.clone();
    qcfg.query.jwt_secret = "export-secret".into();
    qcfg.query.allow_project_wide_tokens = true;
    let (api, stop_api) = crate::common::start_query_api(qcfg).await;
    let admin = crate::common::hs256_token(
        "export-secret",
        &serde_json::json!({"project_id": "proj", "sub": "e2e", "hourglass_admin": true,
                            "exp": Utc::now().timestamp() + 3600}),
    );
    let export = |user: &'static str| {
        let (api, admin) = (api.clone(), admin.clone());
        async move {
            let r = reqwest::Client::new()
                .get(format!("{api}/v1/users/{user}/export"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.text()
                .await
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let of_victim = |keep: &dyn Fn(&EventEnvelope) -> bool| {
        let mut want: Vec<&EventEnvelope> = sent
            .iter()
            .filter(|e| {
                e.project_id == "proj"
                    && (e.user_id.as_deref() == Some(VICTIM)
                        || e.anonymous_id.as_deref() == Some(VICTIM))
                    && keep(e)
            })
            .collect();
        want.sort_by_key(|e| (e.timestamp.timestamp_millis(), e.event_id.to_string()));
        want.iter()
            .map(|e| e.event_id.to_string())
            .collect::<Vec<_>>()
    };
    let in_clickhouse: u64 = ch
        .query("SELECT count() FROM events WHERE project_id = 'proj' AND (user_id = ? OR anonymous_id = ?)")
        .bind(VICTIM)
        .bind(VICTIM)
        .fetch_one()
        .await
        .unwrap();
    let exported = export(VICTIM).await;
    let ids = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .map(|l| l["event_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let want_all = of_victim(&|_| true);
    assert_eq!(
        ids(&exported),
        want_all,
        "ClickHouse and lake, oldest first, each once"
    );
    assert!(
        in_clickhouse > 0 && (in_clickhouse as usize) < want_all.len(),
        "{in_clickhouse} of {} in ClickHouse",
        want_all.len()
    );
    let by_id: BTreeMap<String, &EventEnvelope> =
        sent.iter().map(|e| (e.event_id.to_string(), e)).collect();
    for line in &exported {
        let e = by_id[line["event_id"].as_str().unwrap()];
        assert_eq!(line["event"], serde_json::json!(e.event));
        assert_eq!(
            line["timestamp"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap(),
            e.timestamp
        );
    }

    let before = lake_files(store.as_ref()).await;
    let originals: BTreeMap<Uuid, LakeEvent> = before
        .values()
        .flatten()
        .map(|e| (e.event.event_id, e.clone()))
        .collect();
    assert_eq!(originals.len(), sent.len(), "archived once each");
    let to_go: Vec<Uuid> = sent
        .iter()
        .filter(|e| covered(e, requested_at))
        .map(|e| e.event_id)
        .collect();
    assert!(to_go.len() > 50, "{} covered events", to_go.len());
    let holding = before
        .values()
        .filter(|events| events.iter().any(|e| covered(&e.event, requested_at)))
        .count();

    for (tenant, user) in [("", VICTIM), ("acme", TENANT_VICTIM)] {
        ch.query(
            "INSERT INTO deletions (project_id, tenant_id, user, requested_at, requested_by, events_removed) \
             VALUES ('proj', ?, ?, toDateTime(?), 'test', 0)",
        )
        .bind(tenant)
        .bind(user)
        .bind(requested_at.timestamp())
        .execute()
        .await
        .unwrap();
    }

    let dry = erase(&env, true);
    assert!(dry.contains("2 deletion requests pending"), "{dry}");
    assert!(
        dry.contains(&format!("would remove {} events", to_go.len())),
        "{dry}"
    );
    assert_eq!(
        lake_files(store.as_ref()).await.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "a dry run changes nothing"
    );

    let done = erase(&env, false);
    assert!(
        done.contains(&format!("removed {} events", to_go.len())),
        "{done}"
    );
    let after = lake_files(store.as_ref()).await;
    let mut kept: BTreeMap<Uuid, LakeEvent> = BTreeMap::new();
    for (key, events) in &after {
        for e in events {
            assert!(
                !covered(&e.event, requested_at),
                "{key} still holds {}",
                e.event.event_id
            );
            assert!(kept.insert(e.event.event_id, e.clone()).is_none(), "twice");
        }
    }
    let mut want = originals.clone();
    for id in &to_go {
        want.remove(id);
    }
    assert_eq!(kept, want, "every other event intact, compared by id");
    // A reader that listed the lake before the pass (replay, export) reads
    // each listed file from what replaced it: the same events, once.
    let mut through_listing: BTreeMap<Uuid, LakeEvent> = BTreeMap::new();
    for (key, events) in &before {
        // Files as the archiver wrote them: their keys say what they hold.
        let listed = hourglass_lake::named::Named {
            info: hourglass_lake::store::ObjectInfo {
                key: key.clone(),
                size: 0,
            },
            name: layout::parse_key(key).unwrap(),
        };
        match hourglass_lake::listed::get_listed(store.as_ref(), &listed).await {
            Ok(listed) => {
                let mut read = read_parquet(listed.bytes.clone()).unwrap();
                listed.keep_own(&mut read);
                for e in read {
                    assert!(
                        through_listing.insert(e.event.event_id, e).is_none(),
                        "{key}: read twice"
                    );
                }
            }
            Err(StoreError::NotFound { .. }) => assert!(
                events.iter().all(|e| covered(&e.event, requested_at)),
                "{key} is gone with events that were not erased"
            ),
            Err(e) => panic!("{key}: {e}"),
        }
    }
    assert_eq!(through_listing, want, "read through the earlier listing");
    assert!(matches!(
        store
            .get("dt=2000-01-01/hour=00/none-0000-0-0.parquet")
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let keys: Vec<&str> = after.keys().map(String::as_str).collect();
    let names: Vec<(&str, layout::FileName)> = keys
        .iter()
        .map(|k| (*k, layout::parse_key(k).unwrap()))
        .collect();
    assert!(layout::superseded(names.iter().map(|(k, f)| (*k, f))).is_empty());
    assert_eq!(
        layout::records_named(keys.iter().copied()),
        want.len() as i64
    );
    let rewritten = keys.iter().filter(|k| k.ends_with("-e1.parquet")).count();
    assert!(
        rewritten > 0 && rewritten <= holding,
        "{rewritten} rewritten of {holding}"
    );
    let (requests, removed): (u64, u64) = ch
        .query("SELECT count(), max(events_removed) FROM lake_erasures")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((requests, removed), (2, to_go.len() as u64));
    let again = erase(&env, false);
    assert!(again.contains("0 deletion requests pending"), "{again}");

    // An export now holds only the victim's events from after the request
    // (ClickHouse still has the covered rows here: the test recorded the
    // requests directly; the export leaves them out by the same rule).
    assert_eq!(
        ids(&export(VICTIM).await),
        of_victim(&|e| !covered(e, requested_at)),
        "after erasure"
    );
    stop_api.cancel();

    // The rollups: the victim's hash in no user set (every window is before
    // the request), each row's users its set's size, each hourly and daily
    // bucket equal to what rollup_5m implies; the tenant request is recorded
    // as one the rollups cannot tell apart (the tenant is no dimension).
    assert!(
        done.contains(&format!(
            "rollups: 1 requests applied: {rows_with_victim} rows of rollup_5m"
        )),
        "{done}"
    );
    assert!(done.contains("1 tenant requests not applicable"), "{done}");
    assert_eq!(sets_with_victim(ch.clone()).await, 0);
    let (rows, wrong): (u64, u64) = ch
        .query("SELECT count(), countIf(users != length(user_hashes)) FROM rollup_5m")
        .fetch_one()
        .await
        .unwrap();
    assert!(rows > 0 && wrong == 0, "{wrong} of {rows}");
    for (table, bucket) in [
        ("rollup_1h", "toStartOfHour"),
        ("rollup_1d", "toStartOfDay"),
    ] {
        let sql = format!(
            "SELECT toUInt32(bucket_start) AS b, sumMerge(events_state), uniqExactArrayMerge(users_state) \
             FROM {table} GROUP BY b ORDER BY b"
        );
        let held: Vec<(u32, u64, u64)> = ch.query(&sql).fetch_all().await.unwrap();
        let sql = format!(
            "SELECT b, sum(e), uniqExactArray(h) FROM (SELECT toUInt32({bucket}(window_start)) AS b, \
             events AS e, user_hashes AS h FROM rollup_5m) GROUP BY b ORDER BY b"
        );
        let implied: Vec<(u32, u64, u64)> = ch.query(&sql).fetch_all().await.unwrap();
        assert_eq!(held, implied, "{table} against rollup_5m");
    }
    let applied: Vec<(String, u8)> = ch
        .query("SELECT user, applicable FROM rollup_erasures ORDER BY user")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        applied,
        vec![(VICTIM.to_owned(), 1), (TENANT_VICTIM.to_owned(), 0)]
    );

    // The victim's records still on the topic, received before the
    // request, read by the archiver after it: left out of its files.
    let tail: Vec<EventEnvelope> = (0..40u128)
        .map(|i| {
            let mut e = copy(&generated.events[400 + i as usize], 400 + i);
            e.user_id = Some(if i % 2 == 0 { VICTIM } else { "keeper" }.into());
            e.anonymous_id = None;
            e
        })
        .collect();
    generator::produce(&env.cfg.kafka, &tail).await;
    let tail_kept: Vec<&EventEnvelope> =
        tail.iter().filter(|e| !covered(e, requested_at)).collect();
    assert_eq!(tail_kept.len(), 20);
    archive_until(&env, store.as_ref(), (want.len() + tail_kept.len()) as i64).await;
    let last = lake_files(store.as_ref()).await;
    let ids: Vec<Uuid> = last.values().flatten().map(|e| e.event.event_id).collect();
    assert_eq!(ids.len(), want.len() + tail_kept.len(), "each once");
    assert!(
        last.values()
            .flatten()
            .all(|e| !covered(&e.event, requested_at))
    );
    for e in tail_kept {
        assert!(ids.contains(&e.event_id), "{} archived", e.event_id);
    }

    // Per-project lake retention: `other` keeps 30 days of the lake, every
    // other project forever. Its events leave folders the rest still keep.
    let retention = |dry_run: bool| {
        let args: &[&str] = if dry_run {
            &["retention", "--dry-run"]
        } else {
            &["retention"]
        };
        run(
            &env,
            args,
            &[("HOURGLASS_PROJECTS__OTHER", "{lake_days=30}")],
        )
    };
    let of_other = |files: &BTreeMap<String, Vec<LakeEvent>>| {
        files
            .values()
            .flatten()
            .filter(|e| e.event.project_id == "other")
            .count()
    };
    assert_eq!(of_other(&last), 12);
    let dry = retention(true);
    let said: usize = dry
        .lines()
        .filter(|l| l.contains("lake events of other"))
        .map(|l| {
            l.split_whitespace()
                .nth(2)
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(said, 12, "{dry}");
    assert_eq!(of_other(&lake_files(store.as_ref()).await), 12, "dry");
    let done = retention(false);
    let kept = lake_files(store.as_ref()).await;
    assert_eq!(of_other(&kept), 0, "{done}");
    let mut rest: Vec<Uuid> = kept.values().flatten().map(|e| e.event.event_id).collect();
    let mut want_rest: Vec<Uuid> = last
        .values()
        .flatten()
        .filter(|e| e.event.project_id != "other")
        .map(|e| e.event.event_id)
        .collect();
    rest.sort();
    want_rest.sort();
    assert_eq!(rest, want_rest, "the other projects' events stay");
    assert_eq!(
        retention(false),
        "nothing has expired\nbatch layer: no superseded versions\n",
        "recorded per folder"
    );
    env.teardown().await;
}
