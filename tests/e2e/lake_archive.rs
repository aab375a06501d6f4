//! The archiver against the local S3 server: 400,000 seeded events
//! (`HG_LAKE_EVENTS`) → Parquet objects holding each event exactly once,
//! through an S3 outage (the server SIGKILLed mid-run, the archiver
//! stopped during it and a new one started while S3 is down) and 5 more
//! SIGKILLs of the archiver; pyarrow and DuckDB read the lake with Hive
//! partitioning.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::generator;
use crate::common::scenario::{self, KillPlan};
use crate::common::{TestEnv, sigkill, sigterm};
use hourglass_core::config::LakeStorage;
use hourglass_lake::store::ObjectStore;

fn archiver_env(env: &TestEnv) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("HOURGLASS_LAKE__STORAGE", "s3".into()),
        ("HOURGLASS_S3__PREFIX", env.name.clone()),
        ("HOURGLASS_LAKE__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LAKE__FILE_MAX_ROWS", "50000".into()),
        ("HOURGLASS_LAKE__FILE_MAX_AGE_SECS", "5".into()),
    ];
    vars.extend(scenario::fast_group_env());
    vars
}

/// Events the lake's file names say it holds (overlaps would count twice).
async fn archived(store: &dyn ObjectStore) -> u64 {
    let objects = store.list("").await.unwrap_or_default();
    hourglass_lake::layout::records_named(objects.iter().map(|o| o.key.as_str())) as u64
}

/// Every object's events: the rows its name says, each in the hour folder
/// of its `received_at`, and over all objects exactly `expected`, each once.
async fn read_back(
    store: &dyn ObjectStore,
    objects: &[hourglass_lake::store::ObjectInfo],
    expected: &HashSet<uuid::Uuid>,
) {
    let mut ids = HashSet::with_capacity(expected.len());
    let mut rows = 0usize;
    for o in objects {
        assert!(o.key.starts_with("dt="), "Hive layout: {}", o.key);
        let events =
            hourglass_lake::schema::read_parquet(store.get(&o.key).await.unwrap()).unwrap();
        let name = hourglass_lake::layout::parse_key(&o.key).unwrap();
        assert_eq!(
            events.len() as i64,
            name.records(),
            "{}: rows match its name",
            o.key
        );
        for e in &events {
            assert_eq!(
                hourglass_lake::layout::hour_folder(e.event.received_at),
                hourglass_lake::layout::folder_of(&o.key),
                "hour folder by received_at"
            );
        }
        rows += events.len();
        ids.extend(events.into_iter().map(|e| e.event.event_id));
    }
    assert_eq!(rows, expected.len(), "rows over all objects");
    assert_eq!(ids.len(), expected.len(), "no duplicate event_id");
    assert!(&ids == expected, "exactly the generated events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_archived_exactly_once_through_kills() {
    let n = scenario::env_count("HG_LAKE_EVENTS", 400_000);
    let mut plan = KillPlan::new("lake_archive");
    let mut env = TestEnv::new("lake_archive").await;
    // The archiver and compaction read `deletions`.
    env.migrate().await;
    env.cfg.lake.storage = LakeStorage::S3;
    env.cfg.s3.prefix = env.name.clone();
    env.create_topic(8).await;
    let generated = generator::generate(11, n, 13, 5_000);
    generator::produce(&env.cfg.kafka, &generated.events).await;
    let store: Arc<dyn ObjectStore> =
        Arc::from(hourglass_lake::store::open(&env.cfg).await.unwrap());

    // The S3 server SIGKILLed while the archiver writes (its lake calls
    // fail, it pauses and retries), the archiver stopped (SIGTERM) during
    // the outage and a new one started while S3 is down; S3 back 10 s
    // later. An archiver that committed a file's offsets before its upload
    // landed loses that file here.
    if let Some(s3_pid) = scenario::stack_pid_for("s3", "s3 outage") {
        let mut child = env.spawn(&["archive"], &archiver_env(&env));
        crate::common::wait_until(Duration::from_secs(120), "a first object", || {
            let store = store.clone();
            async move { archived(store.as_ref()).await > 0 }
        })
        .await;
        tokio::time::sleep(plan.instant(Duration::from_secs(5))).await;
        let before = archived(store.as_ref()).await;
        assert!(
            before < n as u64,
            "the outage came after the run had finished"
        );
        scenario::kill_server(s3_pid);
        eprintln!("s3 outage: the S3 server SIGKILLed with {before} events archived");
        // A graceful stop during the outage (an operator's restart): the
        // archiver writes its open files on the way out, which fails, and
        // must not commit past what it could not write.
        tokio::time::sleep(Duration::from_secs(3)).await;
        sigterm(&mut child);
        let mut child = env.spawn(&["archive"], &archiver_env(&env));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "an archiver started while S3 is down waits for it"
        );
        crate::common::stack_up();
        sigkill(&mut child);
    }

    // SIGKILLed at random moments of its lives (joining the group, reading,
    // uploading), restarted at once each time. Lives of up to 25 s: a
    // replacement first waits out the dead member's 10 s session.
    let mut child = scenario::kill_lives(
        &mut plan,
        5,
        Duration::from_secs(25),
        || env.spawn(&["archive"], &archiver_env(&env)),
        || {
            let store = store.clone();
            async move { archived(store.as_ref()).await }
        },
        n as u64,
    )
    .await;
    let seen = archived(store.as_ref()).await;
    let start = std::time::Instant::now();
    crate::common::wait_for_progress(
        Duration::from_secs(180),
        "events in the lake",
        n as u64,
        || {
            let store = store.clone();
            async move { archived(store.as_ref()).await }
        },
    )
    .await;
    eprintln!(
        "the last {} events archived in {:.0?}",
        n as u64 - seen,
        start.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    sigterm(&mut child);

    // Read every object back: exactly the generated events, each once.
    let objects = store.list("").await.unwrap();
    let expected: HashSet<_> = generated.events.iter().map(|e| e.event_id).collect();
    read_back(store.as_ref(), &objects, &expected).await;
    eprintln!("{} objects as the archiver wrote them", objects.len());

    // Compaction of those hours: each partition's files of an hour made
    // one, then those one hour file, the same events each once.
    let arrivals = || generated.events.iter().map(|e| e.received_at);
    let opts = hourglass_lake::compact::CompactOptions {
        topic: env.cfg.kafka.topic.clone(),
        from: arrivals().min().unwrap(),
        to: arrivals().max().unwrap() + chrono::Duration::hours(1),
        max_bytes: env.cfg.lake.compact_max_bytes,
        row_group_rows: env.cfg.lake.row_group_rows,
        tenant_property: env.cfg.contract.tenant_property.clone(),
        across_partitions: true,
        dry_run: false,
    };
    let mut deletions = hourglass_core::clickhouse::deletions::DeletionsWatch::new(
        hourglass_core::clickhouse::client(&env.cfg.clickhouse),
    );
    let pass = hourglass_lake::compact::compact(store.as_ref(), &opts, &|_| true, &mut deletions)
        .await
        .unwrap();
    let compacted = store.list("").await.unwrap();
    let mut hours = HashSet::new();
    for o in &compacted {
        assert!(
            hours.insert(hourglass_lake::layout::folder_of(&o.key)),
            "one file per hour: {}",
            o.key
        );
    }
    // Each hour file's spans, from its footer (an S3 range read).
    let partitions_of_hours: usize = hourglass_lake::named::list_named(store.as_ref(), "")
        .await
        .unwrap()
        .iter()
        .map(|f| f.name.spans.len())
        .sum();
    assert!(
        partitions_of_hours > compacted.len() && pass.hour_files > 0,
        "hour files hold several partitions each: {partitions_of_hours} spans in {} files",
        compacted.len()
    );
    assert!(
        pass.files_in > pass.files_out,
        "the kills left small files to merge"
    );
    assert_eq!(
        pass.files_in + (compacted.len() - pass.files_out),
        objects.len(),
        "every object merged or left as the only one of its partition-hour"
    );
    read_back(store.as_ref(), &compacted, &expected).await;
    eprintln!(
        "compaction: {} objects → {} ({} merged into {})",
        objects.len(),
        compacted.len(),
        pass.files_in,
        pass.files_out
    );

    // A data engineer's view: pyarrow with Hive partitioning, DuckDB on top.
    let python = crate::common::python();
    let s3 = &env.cfg.s3;
    let out = std::process::Command::new(&python)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/read_lake.py"),
            &s3.endpoint,
            &s3.bucket,
            &s3.prefix,
            &s3.access_key_id,
            &s3.secret_access_key,
        ])
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e} (scripts/test installs pyarrow and duckdb)"));
    assert!(
        out.status.success(),
        "pyarrow/duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], n);
    assert_eq!(report["distinct_ids"], n);
    let fields: Vec<&str> = report["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"dt") && fields.contains(&"hour"),
        "Hive partition columns: {fields:?}"
    );
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), 2, "the run crosses midnight: {days:?}");
    let per_day: u64 = days.iter().map(|d| d[1].as_u64().unwrap()).sum();
    assert_eq!(per_day, n as u64, "DuckDB's count per day adds up");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_up_in_parts_and_come_back_whole() {
    let mut env = TestEnv::new("lake_multipart").await;
    env.cfg.lake.storage = LakeStorage::S3;
    env.cfg.s3.prefix = env.name.clone();
    // Parts of 5 MiB (S3's minimum), a 12 MiB object: three parts.
    env.cfg.lake.multipart_threshold_bytes = 5 * 1024 * 1024;
    let store = hourglass_lake::store::open(&env.cfg).await.unwrap();
    let body: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let key = "dt=2026-01-01/hour=00/big-0000-00000000000000000000-00000000000000000001.parquet";
    store
        .put(key, bytes::Bytes::from(body.clone()))
        .await
        .unwrap();
    let listed = store.list("dt=2026-01-01/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, body.len() as u64);
    assert!(
        store.get(key).await.unwrap() == body,
        "the object reads back byte for byte"
    );
    env.teardown().await;
}
