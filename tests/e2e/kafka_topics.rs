//! Topic durability against the local broker (one broker): asking for more
//! copies than the cluster has brokers is refused with both numbers, by the
//! library and by `hourglass migrate --create-topics` (the chart's job);
//! topics are created with the configured `min.insync.replicas`; an
//! existing topic weaker than configured is named by ingest at start.

use std::process::Command;
use std::time::Duration;

use crate::common::{Ingest, TestEnv, hourglass_bin, wait_until};
use hourglass_core::kafka::{TopicError, ensure_pipeline_topics, topics};

#[tokio::test(flavor = "multi_thread")]
async fn replication_is_applied_checked_and_reported() {
    let env = TestEnv::new("topics").await;
    let mut strong = env.cfg.kafka.clone();
    strong.replication_factor = 3;
    strong.min_insync_replicas = 2;

    // More copies than brokers: refused, naming both numbers; nothing made.
    let err = ensure_pipeline_topics(&strong).await.unwrap_err();
    assert!(
        matches!(
            err,
            TopicError::TooFewBrokers {
                wanted: 3,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "kafka.replication_factor is 3, but the cluster at 127.0.0.1:19092 has 1 broker(s)"
        ),
        "{err}"
    );
    let names = [
        env.cfg.kafka.topic.as_str(),
        env.cfg.kafka.dlq_topic.as_str(),
    ];
    assert!(
        topics::describe(&env.cfg.kafka, &names)
            .await
            .unwrap()
            .is_empty(),
        "no topic was created"
    );
    let cli = Command::new(hourglass_bin())
        .args(["migrate", "--create-topics"])
        .envs(env.child_env())
        .env("HOURGLASS_KAFKA__REPLICATION_FACTOR", "3")
        .env("HOURGLASS_KAFKA__MIN_INSYNC_REPLICAS", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success(), "the chart's job must fail");
    assert!(stderr.contains("has 1 broker(s)"), "{stderr}");

    // What the single broker can hold: created with one copy each.
    ensure_pipeline_topics(&env.cfg.kafka).await.unwrap();
    let found = topics::describe(&env.cfg.kafka, &names).await.unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    for t in &found {
        assert_eq!(t.replicas, 1, "{t:?}");
        // A broker that answers DescribeConfigs shows the value it was made with.
        if let Some(isr) = t.min_insync_replicas {
            assert_eq!(isr, 1, "{t:?}");
        }
    }
    eprintln!("as the broker holds them: {found:?}");
    let weaker = topics::weaknesses(&strong, &found);
    assert!(
        weaker.iter().any(|w| w.contains(&format!(
            "topic {} has partitions with 1 replica(s); kafka.replication_factor is 3",
            env.cfg.kafka.topic
        ))),
        "{weaker:?}"
    );

    // Ingest configured for 3 copies starts against them, and says so.
    let ingest = Ingest::start(
        &env,
        "p",
        &[
            ("HOURGLASS_KAFKA__REPLICATION_FACTOR", "3".into()),
            ("HOURGLASS_KAFKA__MIN_INSYNC_REPLICAS", "2".into()),
        ],
    )
    .await;
    let log = std::env::temp_dir().join(format!("{}.log", env.name));
    let wanted = format!(
        "topic {} has partitions with 1 replica(s); kafka.replication_factor is 3",
        env.cfg.kafka.topic
    );
    wait_until(Duration::from_secs(20), "ingest's warning", || {
        let (log, wanted) = (log.clone(), wanted.clone());
        async move { std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&wanted)) }
    })
    .await;
    drop(ingest);
    env.teardown().await;
}
