//! A partition's checkpoint poisoned by a watermark far ahead (what events
//! dated 2099 left behind before event times were bounded) is reset by the
//! operator's command path: the partition then reads back exactly the reset
//! checkpoint, and the other partitions keep theirs.

use hourglass_aggregator::sink::RollupSink;
use hourglass_aggregator::window::{Checkpoint, ClosedWindows, KeyAggregate, RollupRow, user_hash};
use hourglass_core::config::ClickHouseConfig;
use rand::Rng;

const Y2099_MS: i64 = 4_070_908_800_000;
const T0_MS: i64 = 1_767_225_600_000; // 2026-01-01

/// One closed window of one event, carrying this checkpoint.
fn flush(resume_offset: i64, watermark_ms: i64) -> ClosedWindows {
    let mut agg = KeyAggregate::default();
    agg.add(user_hash("u"), Some(1.0), 3, 3_600_000.0);
    ClosedWindows {
        windows: 1,
        last_window_start_ms: T0_MS,
        rows: vec![RollupRow::new(T0_MS, "p\u{1f}e\u{1f}{}", agg)],
        late: Vec::new(),
        checkpoint: Checkpoint {
            resume_offset,
            watermark_ms,
        },
    }
}

#[tokio::test]
async fn a_poisoned_watermark_is_reset_and_the_others_are_kept() {
    let cfg = ClickHouseConfig {
        database: format!("hgt_cp_reset_{:08x}", rand::rng().random::<u32>()),
        ..ClickHouseConfig::default()
    };
    hourglass_sql::migrate(&cfg).await.expect("migrate");
    let client = hourglass_core::clickhouse::client(&cfg);
    let sink = RollupSink::new(client.clone(), "events");
    // Checkpoints as flushes leave them: partition 0 poisoned, 1 healthy.
    for (partition, resume_offset, watermark_ms) in
        [(0, 120, T0_MS), (0, 150, Y2099_MS), (1, 80, T0_MS + 60_000)]
    {
        sink.write(partition, &flush(resume_offset, watermark_ms))
            .await
            .expect("write");
    }
    let mut before = sink.checkpoints().await.unwrap();
    before.sort_by_key(|(p, _)| *p);
    assert_eq!(
        before[0].1.watermark_ms, Y2099_MS,
        "the poison is what a restart reads"
    );

    let to = Checkpoint {
        resume_offset: 150,
        watermark_ms: T0_MS + 120_000,
    };
    sink.reset_checkpoint(&cfg, 0, to).await.expect("reset");
    let mut after = sink.checkpoints().await.unwrap();
    after.sort_by_key(|(p, _)| *p);
    assert_eq!(after.len(), 2);
    assert_eq!(
        (
            after[0].0,
            after[0].1.resume_offset,
            after[0].1.watermark_ms
        ),
        (0, 150, T0_MS + 120_000)
    );
    assert_eq!(
        (
            after[1].0,
            after[1].1.resume_offset,
            after[1].1.watermark_ms
        ),
        (1, 80, T0_MS + 60_000)
    );
    // A flush after the reset moves the checkpoint on as before.
    let next = flush(170, T0_MS + 180_000);
    sink.write(0, &next).await.unwrap();
    assert_eq!(
        sink.settle(0, &next).await.unwrap(),
        hourglass_aggregator::sink::Settled::Landed
    );
    client
        .query(&format!("DROP DATABASE {}", cfg.database))
        .execute()
        .await
        .unwrap();
}
