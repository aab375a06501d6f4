//! A flush that reached some tables and not others (ClickHouse died between
//! writing `rollup_5m`'s part and its views', or between two months' parts)
//! is settled exactly: each table ends up with the flush once, and settling
//! again changes nothing. The missing view parts are made real by detaching
//! the view for the INSERT, on the real server.

use std::collections::BTreeMap;

use clickhouse::Client;
use hourglass_aggregator::sink::{RollupSink, Settled};
use hourglass_aggregator::window::{Checkpoint, ClosedWindows, KeyAggregate, RollupRow, user_hash};
use hourglass_core::config::ClickHouseConfig;
use rand::Rng;

/// 2026-01-31 22:00 UTC: windows of a flush reach into February, so a flush
/// lands in two monthly parts per table.
const T0_MS: i64 = 1_769_896_800_000;
const WINDOW_MS: i64 = 300_000;

/// A flush of windows `first..first + n` (five minutes each), every window
/// one key with `users` events of distinct users; `salt` keeps users apart.
fn flush(first: i64, n: i64, users: u32, salt: u32, resume_offset: i64) -> ClosedWindows {
    let rows: Vec<RollupRow> = (first..first + n)
        .map(|w| {
            let mut agg = KeyAggregate::default();
            for u in 0..users {
                agg.add(
                    user_hash(&format!("u{salt}-{w}-{u}")),
                    Some(f64::from(u % 7)),
                    3,
                    3_600_000.0,
                );
            }
            RollupRow::new(T0_MS + w * WINDOW_MS, "p\u{1f}page\u{1f}{}", agg)
        })
        .collect();
    let last = rows.last().map_or(0, |r| r.window_start_ms);
    ClosedWindows {
        windows: rows.len(),
        last_window_start_ms: last,
        rows,
        late: Vec::new(),
        checkpoint: Checkpoint {
            resume_offset,
            watermark_ms: last + WINDOW_MS + 60_000,
        },
    }
}

fn events(c: &ClosedWindows) -> u64 {
    c.rows.iter().map(|r| r.events).sum()
}

/// A migrated database of its own (named from `prefix`), its client, a
/// sink for topic `events`, and its quoted name.
async fn fresh_database(prefix: &str) -> (Client, RollupSink, String) {
    let cfg = ClickHouseConfig {
        database: format!("{prefix}_{:08x}", rand::rng().random::<u32>()),
        ..ClickHouseConfig::default()
    };
    hourglass_sql::migrate(&cfg).await.expect("migrate");
    let client = hourglass_core::clickhouse::client(&cfg);
    let sink = RollupSink::new(client.clone(), "events");
    (client, sink, format!("`{}`", cfg.database))
}

/// Parts of `rollup_5m` as INSERTs made them (level 0, merged since or not).
async fn inserted_parts(client: &Client) -> u64 {
    client
        .query(
            "SELECT count() FROM system.parts \
             WHERE database = currentDatabase() AND table = 'rollup_5m' AND level = 0",
        )
        .fetch_one()
        .await
        .unwrap()
}

async fn exec(client: &Client, sql: &str) {
    client
        .query(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Per bucket of a level: (events, distinct users) as the level holds
/// them, and as `rollup_5m` implies them.
async fn level_against_rollup_5m(
    client: &Client,
    table: &str,
    bucket: &str,
) -> (BTreeMap<u32, (u64, u64)>, BTreeMap<u32, (u64, u64)>) {
    let held: Vec<(u32, u64, u64)> = client
        .query(&format!(
            "SELECT toUInt32(bucket_start) AS b, sumMerge(events_state), uniqExactArrayMerge(users_state) \
             FROM {table} GROUP BY b ORDER BY b"
        ))
        .fetch_all()
        .await
        .unwrap();
    let implied: Vec<(u32, u64, u64)> = client
        .query(&format!(
            "SELECT b, sum(e), uniqExactArray(h) FROM \
             (SELECT toUInt32({bucket}(window_start)) AS b, events AS e, user_hashes AS h FROM rollup_5m) \
             GROUP BY b ORDER BY b"
        ))
        .fetch_all()
        .await
        .unwrap();
    let map = |v: Vec<(u32, u64, u64)>| v.into_iter().map(|(b, e, u)| (b, (e, u))).collect();
    (map(held), map(implied))
}

/// `rollup_5m` holds the `sent` events once; each level agrees with it
/// bucket by bucket, in events and distinct users.
async fn assert_every_event_once(client: &Client, sent: u64) {
    let in_5m: u64 = client
        .query("SELECT sum(events) FROM rollup_5m")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(in_5m, sent, "rollup_5m");
    for (table, bucket) in [
        ("rollup_1h", "toStartOfHour"),
        ("rollup_1d", "toStartOfDay"),
    ] {
        let (held, implied) = level_against_rollup_5m(client, table, bucket).await;
        assert_eq!(held, implied, "{table} against rollup_5m");
        assert_eq!(
            held.values().map(|(e, _)| e).sum::<u64>(),
            sent,
            "{table} total"
        );
    }
}

#[tokio::test]
async fn a_flush_that_landed_in_part_is_completed_exactly_once() {
    let (client, sink, db) = fresh_database("hgt_partial").await;
    let mut sent = 0;

    // Partition 0: a flush that landed whole, then one whose INSERT wrote
    // rollup_5m, the checkpoint and rollup_1d but not rollup_1h (the view
    // fires last). The two share the hour 23:00.
    let earlier = flush(12, 8, 5, 0, 100);
    sink.write(0, &earlier).await.expect("earlier flush");
    let failed = flush(20, 10, 7, 0, 200);
    exec(&client, &format!("DETACH TABLE {db}.rollup_1h_mv")).await;
    sink.write(0, &failed)
        .await
        .expect("write without the hourly view");
    exec(&client, &format!("ATTACH TABLE {db}.rollup_1h_mv")).await;
    sent += events(&earlier) + events(&failed);
    match sink.settle(0, &failed).await.expect("settle") {
        // 23:40–00:25 in UTC: two hours, whatever the server's time zone.
        Settled::Repaired(r) => assert_eq!(
            (
                r.rows,
                r.hourly_buckets,
                r.daily_buckets,
                r.progress,
                r.unverified_buckets
            ),
            (0, 2, 0, false, 0),
            "{r:?}"
        ),
        other => panic!("partition 0: {other:?}"),
    }

    // Partition 1: the checkpoint's view missed the flush.
    let progress_missed = flush(0, 6, 3, 1, 50);
    exec(
        &client,
        &format!("DETACH TABLE {db}.aggregator_progress_mv"),
    )
    .await;
    sink.write(1, &progress_missed)
        .await
        .expect("write without progress");
    exec(
        &client,
        &format!("ATTACH TABLE {db}.aggregator_progress_mv"),
    )
    .await;
    sent += events(&progress_missed);
    match sink.settle(1, &progress_missed).await.expect("settle") {
        Settled::Repaired(r) => assert!(
            r.progress && r.rows == 0 && r.hourly_buckets == 0 && r.daily_buckets == 0,
            "{r:?}"
        ),
        other => panic!("partition 1: {other:?}"),
    }

    // Partition 2: only January's part of the flush landed (its February
    // rows, and everything their views would hold, did not).
    let months = flush(18, 12, 4, 2, 70);
    let january = ClosedWindows {
        rows: months.rows[..6].to_vec(),
        ..flush(0, 0, 0, 2, 70)
    };
    assert!(
        months.rows[6].window_start_ms >= 1_769_904_000_000,
        "the seventh window is February's"
    );
    sink.write(
        2,
        &ClosedWindows {
            checkpoint: months.checkpoint,
            ..january
        },
    )
    .await
    .expect("january only");
    sent += events(&months);
    match sink.settle(2, &months).await.expect("settle") {
        Settled::Repaired(r) => assert_eq!((r.rows, r.unverified_buckets), (6, 0), "{r:?}"),
        other => panic!("partition 2: {other:?}"),
    }

    // Partition 3: nothing landed.
    let lost = flush(0, 3, 2, 3, 10);
    assert_eq!(sink.settle(3, &lost).await.unwrap(), Settled::NotLanded);

    // Settling again finds every flush whole and writes nothing.
    assert_eq!(sink.settle(0, &failed).await.unwrap(), Settled::Landed);
    assert_eq!(
        sink.settle(1, &progress_missed).await.unwrap(),
        Settled::Landed
    );
    assert_eq!(sink.settle(2, &months).await.unwrap(), Settled::Landed);

    assert_every_event_once(&client, sent).await;
    let mut checkpoints = sink.checkpoints().await.unwrap();
    checkpoints.sort_by_key(|(p, _)| *p);
    let got: Vec<(i32, i64, i64)> = checkpoints
        .iter()
        .map(|(p, c)| (*p, c.resume_offset, c.watermark_ms))
        .collect();
    let want: Vec<(i32, i64, i64)> = [(0, &failed), (1, &progress_missed), (2, &months)]
        .iter()
        .map(|(p, c)| (*p, c.checkpoint.resume_offset, c.checkpoint.watermark_ms))
        .collect();
    assert_eq!(got, want, "checkpoints");

    exec(&client, &format!("DROP DATABASE {db}")).await;
}

/// The partition's next owner (the previous one was killed, or lost the
/// partition while ClickHouse was down) knows none of the flush's rows: it
/// finds them in `rollup_5m` and settles every table from them before it
/// tells where the partition resumes.
#[tokio::test]
async fn a_new_owner_settles_what_the_last_flush_left() {
    let (client, sink, db) = fresh_database("hgt_takeover").await;
    let write_without = |p: i32, c: ClosedWindows, views: &'static [&'static str]| {
        let (client, sink, db) = (client.clone(), sink.clone(), db.clone());
        async move {
            for v in views {
                exec(&client, &format!("DETACH TABLE {db}.{v}")).await;
            }
            sink.write(p, &c).await.expect("write");
            for v in views {
                exec(&client, &format!("ATTACH TABLE {db}.{v}")).await;
            }
            c
        }
    };
    const LEVELS: &[&str] = &["rollup_1h_mv", "rollup_1d_mv"];
    const ALL_VIEWS: &[&str] = &["aggregator_progress_mv", "rollup_1h_mv", "rollup_1d_mv"];
    let mut sent = 0;
    // Partition 0: its last flush landed whole.
    let whole = write_without(0, flush(0, 4, 3, 10, 40), &[]).await;
    // Partition 1: the checkpoint landed, the levels did not; an earlier
    // flush shares their buckets.
    let earlier = write_without(1, flush(0, 2, 2, 11, 5), &[]).await;
    let levels_missed = write_without(1, flush(2, 6, 5, 11, 60), LEVELS).await;
    // Partition 2: only rollup_5m (no view ran).
    let earlier_2 = write_without(2, flush(0, 3, 2, 12, 7), &[]).await;
    let only_5m = write_without(2, flush(3, 5, 4, 12, 80), ALL_VIEWS).await;
    // Partition 3: its first flush ever, and only rollup_5m.
    let first_only_5m = write_without(3, flush(0, 4, 2, 13, 30), ALL_VIEWS).await;
    // Partition 4: its checkpoint missed the flush, but it is not taken
    // over here (its own owner settles it): it stays without one.
    let elsewhere = write_without(4, flush(0, 2, 2, 14, 9), &["aggregator_progress_mv"]).await;
    for c in [
        &elsewhere,
        &whole,
        &earlier,
        &levels_missed,
        &earlier_2,
        &only_5m,
        &first_only_5m,
    ] {
        sent += events(c);
    }

    let want: Vec<(i32, i64, i64)> = [
        (0, &whole),
        (1, &levels_missed),
        (2, &only_5m),
        (3, &first_only_5m),
    ]
    .iter()
    .map(|(p, c)| (*p, c.checkpoint.resume_offset, c.checkpoint.watermark_ms))
    .collect();
    let positions = |sink: RollupSink| async move {
        let mut got: Vec<(i32, i64, i64)> = sink
            .start_positions(&[0, 1, 2, 3])
            .await
            .expect("start positions")
            .into_iter()
            .map(|(p, c)| (p, c.resume_offset, c.watermark_ms))
            .collect();
        got.sort();
        got
    };
    assert_eq!(positions(sink.clone()).await, want, "first takeover");
    // Taking over again finds every flush whole: the same positions, and
    // no level filled twice (the totals below would show it).
    assert_eq!(positions(sink.clone()).await, want, "second takeover");

    assert_every_event_once(&client, sent).await;
    exec(&client, &format!("DROP DATABASE {db}")).await;
}

/// One INSERT carries several partitions' flushes (`write_flush`); when it
/// reaches `rollup_5m` but not the views, each partition settles its own
/// share, and a share that landed whole is found whole.
#[tokio::test]
async fn a_shared_flush_is_settled_partition_by_partition() {
    let (client, sink, db) = fresh_database("hgt_shared").await;
    const ALL_VIEWS: &[&str] = &["aggregator_progress_mv", "rollup_1h_mv", "rollup_1d_mv"];

    // Partitions 0 and 1 share an INSERT that lands whole; 2, 3 and 4 share
    // one whose views did not run (windows across the month's end).
    let whole = vec![(0, flush(0, 4, 3, 20, 40)), (1, flush(2, 3, 2, 21, 33))];
    let results = sink.write_flush(&whole).await;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(Result::is_ok));
    // Shared: one INSERT, so one part in rollup_5m per month.
    assert_eq!(
        inserted_parts(&client).await,
        1,
        "two partitions, one INSERT"
    );
    let only_5m = vec![
        (2, flush(18, 12, 4, 22, 70)),
        (3, flush(0, 5, 3, 23, 15)),
        (4, flush(10, 2, 6, 24, 9)),
    ];
    for v in ALL_VIEWS {
        exec(&client, &format!("DETACH TABLE {db}.{v}")).await;
    }
    let results = sink.write_flush(&only_5m).await;
    for v in ALL_VIEWS {
        exec(&client, &format!("ATTACH TABLE {db}.{v}")).await;
    }
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(Result::is_ok));
    // One more INSERT, across the month's end: two more parts (three
    // INSERTs would have made four).
    assert_eq!(
        inserted_parts(&client).await,
        3,
        "three partitions, one INSERT"
    );
    let sent: u64 = whole.iter().chain(&only_5m).map(|(_, c)| events(c)).sum();

    for (p, c) in &whole {
        assert_eq!(sink.settle(*p, c).await.unwrap(), Settled::Landed, "{p}");
    }
    for (p, c) in &only_5m {
        match sink.settle(*p, c).await.expect("settle") {
            Settled::Repaired(r) => assert!(
                r.rows == 0 && r.progress && r.hourly_buckets > 0 && r.daily_buckets > 0,
                "partition {p}: {r:?}"
            ),
            other => panic!("partition {p}: {other:?}"),
        }
        assert_eq!(sink.settle(*p, c).await.unwrap(), Settled::Landed, "{p}");
    }

    assert_every_event_once(&client, sent).await;
    let mut checkpoints = sink.checkpoints().await.unwrap();
    checkpoints.sort_by_key(|(p, _)| *p);
    let got: Vec<(i32, i64)> = checkpoints
        .iter()
        .map(|(p, c)| (*p, c.resume_offset))
        .collect();
    assert_eq!(got, vec![(0, 40), (1, 33), (2, 70), (3, 15), (4, 9)]);
    exec(&client, &format!("DROP DATABASE {db}")).await;
}
