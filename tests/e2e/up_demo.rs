//! `hourglass up --demo` for a bounded time with short windows: rows land in
//! `events`, `rollup_5m`, the hourly view and the lake, and the counts agree
//! (raw = lake = accepted; rollups = raw − the late events it reports).
//! While it runs, the README's first batch, first read and page URL are run
//! as written (extracted from README.md), and the page is loaded in
//! headless Chromium until the numbers it draws equal the API's; its
//! screenshot is kept in `test-artifacts/query-page.png` (git-ignored).

use std::process::Command;

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{TestEnv, browser, hourglass_bin, readme};
use hourglass_lake::store::{LocalStore, ObjectStore};

fn number_after(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
}

/// Demo project reads with the token `up` wrote, as the README does.
struct Reader {
    http: reqwest::Client,
    token: String,
}

const QUERY: &str = "http://127.0.0.1:19105";

impl Reader {
    async fn get(&self, path: &str, query: &[(&str, String)]) -> serde_json::Value {
        let r = self
            .http
            .get(format!("{QUERY}{path}"))
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{path} {query:?}: {}",
            r.text().await.unwrap()
        );
        r.json().await.unwrap()
    }
}

fn points(answer: &serde_json::Value) -> Vec<serde_json::Value> {
    answer["series"]
        .as_array()
        .and_then(|s| s.first())
        .map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

fn epoch(p: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(p["time"].as_str().unwrap())
        .unwrap()
        .timestamp()
}

/// What the page should draw for the ranges it says it drew, from the API.
async fn expected_cells(reader: &Reader, dom: &str) -> BTreeMap<String, String> {
    let attr = |n: &str| -> i64 {
        browser::body_attribute(dom, n)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the page says no {n}"))
    };
    let (five_from, five_to) = (attr("five-from"), attr("five-to"));
    let (hour_from, hour_to) = (attr("hour-from"), attr("hour-to"));
    let names = reader
        .get(
            "/v1/event-names",
            &[("from", hour_from.to_string()), ("to", hour_to.to_string())],
        )
        .await;
    let mut cells = BTreeMap::new();
    let mut hours: BTreeMap<i64, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    let names: Vec<String> = names["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    for name in &names {
        let metrics = |step: &str, from: i64, to: i64| {
            [
                ("event", name.clone()),
                ("step", step.to_owned()),
                ("from", from.to_string()),
                ("to", to.to_string()),
            ]
        };
        let five = reader
            .get("/v1/metrics", &metrics("5m", five_from, five_to))
            .await;
        let mut sums = [0u64; 12];
        for p in points(&five) {
            let col = ((epoch(&p) - five_from) / 300) as usize;
            sums[col] += p["events"].as_u64().unwrap();
        }
        for (col, n) in sums.iter().enumerate() {
            let t = five_from + 300 * col as i64;
            cells.insert(
                format!("{name}|per_minute|{t}"),
                format!("{:.1}", *n as f64 / 5.0),
            );
        }
        let hourly = reader
            .get("/v1/metrics", &metrics("1h", hour_from, hour_to))
            .await;
        for p in points(&hourly) {
            hours.entry(epoch(&p)).or_default().insert(name.clone(), p);
        }
    }
    for (t, by_event) in &hours {
        let batch = by_event.values().any(|p| p["layer"] == "batch");
        cells.insert(
            format!("*|layer|{t}"),
            if batch { "batch" } else { "speed" }.to_owned(),
        );
        for name in &names {
            let p = by_event.get(name);
            cells.insert(
                format!("{name}|users|{t}"),
                p.map_or("–".into(), |p| p["users"].to_string()),
            );
            cells.insert(
                format!("{name}|p95|{t}"),
                p.and_then(|p| p["p95"].as_f64())
                    .map_or("–".into(), |v| format!("{v:.2}")),
            );
        }
    }
    cells
}

/// Cells that differ (p95 within rounding: JS and Rust may round a tie
/// differently); empty when the page drew what the API answers.
fn differences(drawn: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = drawn.keys().chain(want.keys()).collect();
    keys.into_iter()
        .filter(|k| {
            let (a, b) = (drawn.get(*k), want.get(*k));
            match (
                a.and_then(|a| a.parse::<f64>().ok()),
                b.and_then(|b| b.parse::<f64>().ok()),
            ) {
                (Some(x), Some(y)) if k.contains("|p95|") => (x - y).abs() > 0.0051,
                _ => a != b,
            }
        })
        .map(|k| format!("{k}: page {:?}, API {:?}", drawn.get(k), want.get(k)))
        .collect()
}

/// The page drew the API's numbers, with data in it: the count of
/// non-zero per-minute cells and of batch-corrected hours.
async fn page_matches_api(
    reader: &Reader,
    profile: &Path,
    url: &str,
) -> Result<(usize, usize), String> {
    let dom = {
        let (profile, url) = (profile.to_owned(), url.to_owned());
        tokio::task::spawn_blocking(move || browser::dump_dom(&profile, &url))
            .await
            .unwrap()
    };
    let state = browser::body_attribute(&dom, "state");
    if state.as_deref() != Some("ready") {
        return Err(format!("page state {state:?}: {dom}"));
    }
    let drawn = browser::cells(&dom);
    let want = expected_cells(reader, &dom).await;
    let diff = differences(&drawn, &want);
    if !diff.is_empty() {
        return Err(format!(
            "{} cells differ: {:?}",
            diff.len(),
            &diff[..diff.len().min(8)]
        ));
    }
    let busy = drawn
        .iter()
        .filter(|(k, v)| k.contains("|per_minute|") && v.as_str() != "0.0")
        .count();
    let batch = drawn
        .iter()
        .filter(|(k, v)| k.starts_with("*|layer|") && v.as_str() == "batch")
        .count();
    if busy == 0 || batch == 0 {
        return Err(format!(
            "nothing to compare yet: {busy} busy cells, {batch} batch hours"
        ));
    }
    Ok((busy, batch))
}

/// What the reader saw while `up` ran.
struct ReadSide {
    first_batch: String,
    first_read: Vec<serde_json::Value>,
    page: (usize, usize),
    screenshot: std::path::PathBuf,
}

/// While `up` runs: the README's first batch, first read and page URL, as
/// written, from a folder whose `.stack` is `up`'s; then the page in
/// Chromium against the API, until it has data and matches.
async fn read_side(work: std::path::PathBuf) -> ReadSide {
    let token_file = work.join(".stack/query-token");
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let reader = loop {
        assert!(
            started.elapsed().as_secs() < 40,
            "the query API never answered with events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let Ok(token) = std::fs::read_to_string(&token_file) else {
            continue;
        };
        let Ok(r) = http
            .get(format!("{QUERY}/v1/events?limit=5"))
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
        if page["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break Reader {
                http: http.clone(),
                token: token.trim().to_owned(),
            };
        }
    };
    let send = readme::shell_blocks("Send the first batch");
    let first_batch = {
        let (block, work) = (send[0].clone(), work.clone());
        tokio::task::spawn_blocking(move || readme::run(&block, &work))
            .await
            .unwrap()
    };
    let read = readme::shell_blocks("Read it back");
    let (read_block, page_block) = (read[0].clone(), read[1].clone());
    let (first_read, page_url) = {
        let work = work.clone();
        tokio::task::spawn_blocking(move || {
            (
                readme::json_documents(&readme::run(&read_block, &work)),
                readme::run(&page_block, &work).trim().to_owned(),
            )
        })
        .await
        .unwrap()
    };
    let profile = work.join("chromium-profile");
    let page = loop {
        let why = match page_matches_api(&reader, &profile, &page_url).await {
            Ok(seen) => break seen,
            Err(why) => why,
        };
        assert!(
            started.elapsed().as_secs() < 70,
            "the page never drew the API's numbers: {why}"
        );
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    };
    let artifact = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts/query-page.png");
    let screenshot =
        tokio::task::spawn_blocking(move || browser::screenshot(&profile, &page_url, &artifact))
            .await
            .unwrap();
    ReadSide {
        first_batch,
        first_read,
        page,
        screenshot,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_demo_traffic_fills_every_store_consistently() {
    let env = TestEnv::new("up_demo").await;
    let work = std::env::temp_dir().join(&env.name);
    let dir = work.join(".stack");
    let lake = dir.join("lake");
    // Ingest and the query API on their usual ports: the README's commands
    // run as written.
    let vars = [
        ("HOURGLASS_AGGREGATOR__WINDOW_SECS", "10".into()),
        ("HOURGLASS_AGGREGATOR__GRACE_SECS", "2".into()),
        ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "2".into()),
        ("HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS", "200".into()),
        // The drill-down dashboard splits by a dimension.
        ("HOURGLASS_AGGREGATOR__DIMENSIONS", r#"["path"]"#.into()),
        ("HOURGLASS_LOADER__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LAKE__HTTP_LISTEN", "127.0.0.1:0".into()),
        ("HOURGLASS_LAKE__LOCAL_DIR", lake.display().to_string()),
        ("HOURGLASS_LAKE__FILE_MAX_AGE_SECS", "2".into()),
        ("HOURGLASS_BATCH__INTERVAL_SECS", "5".into()),
        ("HOURGLASS_BATCH__HTTP_LISTEN", "127.0.0.1:0".into()),
    ];
    std::fs::create_dir_all(&dir).unwrap();
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
        "75",
        "--dir",
    ])
    .arg(&dir)
    .envs(env.child_env())
    .envs(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let reader = tokio::spawn(read_side(work.clone()));
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
    let seen = reader.await.unwrap();
    // The README's first batch answers what the README says it answers.
    let send = readme::shell_blocks("Send the first batch");
    let said = readme::expected_output(&send[0]).expect("the README shows the answer");
    assert_eq!(
        readme::json_documents(&seen.first_batch),
        vec![said],
        "the README's first batch"
    );
    // Its first read: five demo events, then one metrics answer.
    let events = seen.first_read[0]["events"].as_array().expect("events");
    assert_eq!(events.len(), 5, "{:?}", seen.first_read);
    assert!(events.iter().all(|e| e["project_id"] == "demo"));
    assert_eq!(
        seen.first_read[1]["event"], "page_view",
        "{:?}",
        seen.first_read
    );
    assert!(seen.first_read[1]["series"].is_array());
    eprintln!(
        "the page drew the API's numbers: {} busy per-minute cells, {} batch-corrected hours; screenshot {}",
        seen.page.0,
        seen.page.1,
        seen.screenshot.display()
    );
    assert!(
        stdout.contains("http://127.0.0.1:19105/ui#token="),
        "the banner shows the page's URL"
    );
    assert!(
        stdout.contains("http://127.0.0.1:19105/v1/events?limit=5"),
        "the banner shows the read curl"
    );
    assert!(
        stdout.contains("http://127.0.0.1:19101/v1/batch"),
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
    // The demo's events and the README's first batch (3 accepted).
    let accepted = accepted + 3;
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
    let checked = crate::common::grafana::assert_every_query_returns_rows(
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
    let _ = std::fs::remove_dir_all(&work);
    env.teardown().await;
}
