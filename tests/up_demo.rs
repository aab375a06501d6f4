//! `hourglass up --demo` for a bounded time with short windows: rows land in
//! `events`, `rollup_5m`, the hourly view and the lake, and the counts agree
//! (raw = lake = accepted; rollups = raw − the late events it reports).

mod common;

use std::process::Command;

use common::{TestEnv, free_port, hourglass_bin};
use hourglass_lake::store::{LocalStore, ObjectStore};

fn number_after(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_demo_traffic_fills_every_store_consistently() {
    let env = TestEnv::new("up_demo").await;
    let dir = std::env::temp_dir().join(&env.name);
    let lake = dir.join("lake");
    let port = free_port();
    let query_port = free_port();
    let vars = [
        ("HOURGLASS_QUERY__LISTEN", format!("127.0.0.1:{query_port}")),
        ("HOURGLASS_INGEST__LISTEN", format!("127.0.0.1:{port}")),
        ("HOURGLASS_AGGREGATOR__WINDOW_SECS", "10".into()),
        ("HOURGLASS_AGGREGATOR__GRACE_SECS", "2".into()),
        ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "2".into()),
        ("HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS", "200".into()),
        // The drill-down dashboard splits by a dimension.
        ("HOURGLASS_AGGREGATOR__DIMENSIONS", r#"["path"]"#.into()),
        ("HOURGLASS_LOADER__GROUP_ID", format!("{}-load", env.name)),
        ("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LAKE__GROUP_ID", format!("{}-arch", env.name)),
        ("HOURGLASS_LAKE__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LAKE__LOCAL_DIR", lake.display().to_string()),
        ("HOURGLASS_LAKE__FILE_MAX_AGE_SECS", "2".into()),
        ("HOURGLASS_BATCH__INTERVAL_SECS", "5".into()),
        ("HOURGLASS_BATCH__HTTP_LISTEN", "127.0.0.1:0".into()),
    ];
    let mut cmd = Command::new(hourglass_bin());
    cmd.args([
        "up",
        "--no-stack",
        "--demo",
        "--demo-rate",
        "1000",
        "--demo-seconds",
        "12",
        "--run-seconds",
        "35",
        "--dir",
    ])
    .arg(&dir)
    .envs(env.child_env())
    .envs(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
    // While it runs: the query API answers with the token `up` wrote for
    // the demo project, as the README's first read does.
    let token_file = dir.join("query-token");
    let reader = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for _ in 0..60 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let Ok(token) = std::fs::read_to_string(&token_file) else {
                continue;
            };
            let Ok(r) = http
                .get(format!("http://127.0.0.1:{query_port}/v1/events?limit=5"))
                .bearer_auth(token.trim())
                .send()
                .await
            else {
                continue;
            };
            if r.status() != 200 {
                continue;
            }
            let page: serde_json::Value = r.json().await.unwrap();
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if !events.is_empty() {
                return events;
            }
        }
        Vec::new()
    });
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run hourglass up");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hourglass up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read_back = reader.await.unwrap();
    assert_eq!(
        read_back.len(),
        5,
        "the query API answered with the demo token"
    );
    assert!(read_back.iter().all(|e| e["project_id"] == "demo"));
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{query_port}/v1/events?limit=5")),
        "the banner shows the read curl"
    );
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{port}/v1/batch")),
        "prints a ready-to-paste curl"
    );
    assert!(stdout.contains("stopped cleanly"), "{stdout}");
    let accepted = {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("demo: "))
            .expect("demo summary");
        line.split(", ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .expect("accepted count")
    };
    let late = number_after(&stdout, "late events (aggregator): ");
    assert!(accepted > 5_000, "demo traffic got through: {accepted}");

    let ch = env.clickhouse();
    let raw: u64 = ch
        .query("SELECT count() FROM events")
        .fetch_one()
        .await
        .unwrap();
    let rolled: u64 = ch
        .query("SELECT sum(events) FROM rollup_5m")
        .fetch_one()
        .await
        .unwrap();
    let hourly: (u64, u64) = ch
        .query("SELECT count(), sum(events) FROM metrics_1h")
        .fetch_one()
        .await
        .unwrap();
    // The history import (hours old, so late for the speed layer) lands in
    // settled hours, which the batch layer recomputes from `events`.
    let imported = number_after(&stdout, "history import: ");
    let batched: (u64, u64, u64) = ch
        .query(
            "SELECT count(), \
                (SELECT uniqExact(event_id) FROM events WHERE toStartOfHour(timestamp) IN (SELECT bucket_start FROM batch_commits WHERE period_secs = 3600)), \
                (SELECT sum(events) FROM rollup_5m WHERE toStartOfHour(window_start) IN (SELECT bucket_start FROM batch_commits WHERE period_secs = 3600)) \
             FROM batch_commits WHERE period_secs = 3600",
        )
        .fetch_one()
        .await
        .unwrap();
    let by_layer: Vec<(String, u64)> = ch
        .query("SELECT layer, sum(events) FROM metrics_1h GROUP BY layer ORDER BY layer")
        .fetch_all()
        .await
        .unwrap();
    let objects = LocalStore::new(&lake).list("").await.unwrap();
    let archived = hourglass_lake::layout::records_named(objects.iter().map(|o| o.key.as_str()));
    eprintln!(
        "accepted {accepted}, raw {raw}, rollups {rolled}, late {late}, hourly {hourly:?}, lake {archived}"
    );
    assert_eq!(raw, accepted, "every accepted event is in `events`");
    assert_eq!(
        archived as u64, accepted,
        "every accepted event is in the lake"
    );
    assert!(late > 0, "the demo sends late events on purpose");
    assert_eq!(
        rolled + late,
        raw,
        "rollups hold every event but the late ones"
    );
    assert!(hourly.0 > 0, "the hourly view has rows");
    eprintln!(
        "imported {imported}; batched hours, their events and speed events {batched:?}; by layer {by_layer:?}"
    );
    assert!(
        batched.0 >= 2,
        "the imported hours were batched: {batched:?}"
    );
    assert!(batched.1 >= imported, "{batched:?}");
    assert_eq!(
        hourly.1,
        rolled - batched.2 + batched.1,
        "the hourly view: speed rows of unbatched hours, batch rows of the rest"
    );
    assert_eq!(
        by_layer.iter().find(|l| l.0 == "batch").map(|l| l.1),
        Some(batched.1)
    );
    // Reconciliation of the batched hours: everything the batch added over the
    // speed layer is the import, which the aggregator recorded as late.
    let recon: (u64, u64, u64, i64) = ch
        .query(
            "SELECT sum(speed_events), sum(batch_events), sum(late_added), sum(abs(unexplained)) FROM ( \
                SELECT * FROM reconciliation FINAL ORDER BY version DESC LIMIT 1 BY hour, project_id, event)",
        )
        .fetch_one()
        .await
        .unwrap();
    eprintln!("reconciliation (speed, batch, late, |unexplained|): {recon:?}");
    let reconcile = std::process::Command::new(hourglass_bin())
        .args([
            "reconcile",
            "--from",
            "2020-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ])
        .envs(env.child_env())
        .output()
        .expect("run hourglass reconcile");
    let table = String::from_utf8_lossy(&reconcile.stdout).into_owned();
    assert!(
        reconcile.status.success(),
        "reconcile flagged a difference:\n{table}\n{}",
        String::from_utf8_lossy(&reconcile.stderr)
    );
    let recon: (u64, u64, u64, i64) = ch
        .query(
            "SELECT sum(speed_events), sum(batch_events), sum(late_added), sum(abs(unexplained)) FROM ( \
                SELECT * FROM reconciliation FINAL ORDER BY checked_at DESC, version DESC LIMIT 1 BY hour, project_id, event)",
        )
        .fetch_one()
        .await
        .unwrap();
    eprintln!("{table}");
    assert_eq!(
        recon.0 + recon.2,
        recon.1,
        "batch = speed + late, nothing else: {recon:?}"
    );
    assert_eq!(recon.3, 0, "{table}");

    // Every ClickHouse query of the Grafana dashboards, for a fixed range
    // over this run's data, as the read-only user.
    let (from, to): (u32, u32) = ch
        .query("SELECT toUInt32(toStartOfDay(min(window_start))), toUInt32(max(window_start)) + 3600 FROM rollup_5m")
        .fetch_one()
        .await
        .unwrap();
    let checked = common::grafana::assert_every_query_returns_rows(
        &env.cfg.clickhouse.url,
        &env.name,
        i64::from(from),
        i64::from(to),
        &[
            ("project", "demo"),
            ("event", "api_call"),
            ("dimension", "path"),
            ("window_minutes", "5"),
        ],
    )
    .await;
    eprintln!("{checked} dashboard queries returned rows");
    let _ = std::fs::remove_dir_all(&dir);
    env.teardown().await;
}
