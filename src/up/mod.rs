//! `hourglass up`: the whole pipeline on one machine, in one process.
//!
//! Starts the local stack when it is not running, applies migrations, then
//! runs ingest, aggregator, loader, archiver, the batch layer and the query
//! API as tasks on one runtime with one shutdown token; optionally demo
//! traffic through the real HTTP endpoint; and a live view in the terminal.
//! Logs go to a file.

use crate::out::outln;

mod demo;
mod view;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use hourglass_core::Config;
use hourglass_core::config::WriteKey;
use hourglass_core::telemetry;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Post realistic demo traffic through the ingest endpoint.
    #[arg(long)]
    demo: bool,
    /// Demo events per second.
    #[arg(long, default_value_t = 2_000)]
    demo_rate: u32,
    /// Stop the demo traffic after this many seconds (the pipeline keeps running).
    #[arg(long)]
    demo_seconds: Option<u64>,
    /// Stop everything after this many seconds, as a Ctrl-C would.
    #[arg(long)]
    run_seconds: Option<u64>,
    /// Do not start the local stack (use the servers the config names).
    #[arg(long)]
    no_stack: bool,
    /// The batch layer's settle time here (batch.settle_secs, default 3,600
    /// in production): an hour is recomputed this long after it ends.
    #[arg(long, default_value_t = 120)]
    batch_settle_secs: u32,
}

/// A write key for project `demo`, made once per stack folder; only its hash
/// goes into the config. The key itself is kept for the README's curl.
fn local_key(dir: &Path) -> Result<(String, String)> {
    let key_path = dir.join("ingest-key");
    let key = match std::fs::read_to_string(&key_path) {
        Ok(k) if !k.trim().is_empty() => k.trim().to_owned(),
        _ => {
            let (key, hash) = hourglass_ingest::keys::new_key();
            std::fs::write(&key_path, format!("{key}\n")).context("writing the local write key")?;
            std::fs::write(dir.join("ingest-keys"), format!("demo {hash}\n"))?;
            key
        }
    };
    let hash = hourglass_ingest::keys::hash_key(&key);
    Ok((key, hash))
}

/// The query API's HS256 secret for this stack folder, made once (like the
/// write key), and a token for project `demo` written next to it for the
/// README's curl (a new one, valid 30 days, on every start).
fn local_query_login(cfg: &mut Config, dir: &Path) -> Result<String> {
    let q = &mut cfg.query;
    if q.jwt_algorithm != hourglass_core::config::JwtAlgorithm::HS256 {
        anyhow::bail!(
            "hourglass up signs its demo token with HS256; query.jwt_algorithm is {:?}",
            q.jwt_algorithm
        );
    }
    if q.jwt_secret.is_empty() {
        let path = dir.join("query-secret");
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                let secret = uuid::Uuid::new_v4().simple().to_string()
                    + &uuid::Uuid::new_v4().simple().to_string();
                std::fs::write(&path, format!("{secret}\n"))
                    .context("writing the local query secret")?;
                secret
            }
        };
        q.jwt_secret = secret;
    }
    // The demo's events carry no tenant: its token reads the whole project.
    q.allow_project_wide_tokens = true;
    let token = hourglass_query::auth::project_token(
        q,
        "demo",
        "hourglass-up",
        Duration::from_secs(30 * 86_400),
    )
    .context("signing the local query token")?;
    std::fs::write(dir.join("query-token"), format!("{token}\n"))
        .context("writing the local query token")?;
    Ok(token)
}

fn banner(cfg: &Config, key: &str, token: &str, log: &Path) {
    let ingest = format!("http://{}", cfg.ingest.listen);
    let query = format!("http://{}", cfg.query.listen);
    let ch = &cfg.clickhouse.url;
    let db = &cfg.clickhouse.database;
    let w = cfg.aggregator.window_secs;
    let settle = cfg.batch.settle_secs;
    let lake = match cfg.lake.storage {
        hourglass_core::config::LakeStorage::Local => format!("folder {}", cfg.lake.local_dir),
        hourglass_core::config::LakeStorage::S3 => {
            format!("s3://{}/{}", cfg.s3.bucket, cfg.s3.prefix)
        }
    };
    outln!(
        r#"
Hourglass is up.

Send events (write key of project "demo"):
  curl -s -u '{key}:' -H 'content-type: application/json' {ingest}/v1/batch \
    -d '{{"batch":[{{"event":"page_view","user_id":"u1","properties":{{"path":"/"}}}},{{"event":"api_call","user_id":"u2","value":182.5}}]}}'

Read it back through the query API (token of project "demo", also in .stack/query-token):
  curl -s -H 'Authorization: Bearer {token}' '{query}/v1/events?limit=5'
  curl -s -H 'Authorization: Bearer {token}' "{query}/v1/metrics?event=page_view&step=5m&from=$(date -u -d '-1 hour' +%Y-%m-%dT%H:00:00Z)&to=$(date -u -d '+1 hour' +%Y-%m-%dT%H:00:00Z)"

Look at it: a page of events per minute, distinct users and p95 per hour by event, and which hours the batch layer has corrected:
  {query}/ui#token={token}

ClickHouse ({ch}, database {db}):
  # last hour per event, with p95
  curl -s '{ch}/?database={db}' --data-binary "SELECT window_start, event, events, users, p95 FROM metrics_1h WHERE window_start >= toStartOfHour(now()) - 3600 ORDER BY window_start, events DESC FORMAT PrettyCompact"
  # which layer answers each hour: 'batch' once an hour has settled ({settle} s after it ends), 'speed' before
  curl -s '{ch}/?database={db}' --data-binary "SELECT window_start, layer, sum(events) AS events FROM metrics_1h WHERE window_start >= now() - 6 * 3600 GROUP BY window_start, layer ORDER BY window_start FORMAT PrettyCompact"
  # speed against batch: duplicates removed, late events added, deletions, drift
  hourglass reconcile --from "$(date -u -d '-6 hours' +%Y-%m-%dT%H:00:00Z)" --to "$(date -u +%Y-%m-%dT%H:00:00Z)"
  # distinct users per hour, over all events
  curl -s '{ch}/?database={db}' --data-binary "SELECT bucket_start, uniqExactArrayMerge(users_state) AS users FROM rollup_1h GROUP BY bucket_start ORDER BY bucket_start DESC LIMIT 24 FORMAT PrettyCompact"
  # late events per window: raw events the rollups did not take
  curl -s '{ch}/?database={db}' --data-binary "SELECT window_start, raw, rolled, raw - rolled AS late FROM (SELECT toDateTime(intDiv(toUInt32(timestamp), {w}) * {w}) AS window_start, count() AS raw FROM events GROUP BY window_start) ANY LEFT JOIN (SELECT window_start, sum(events) AS rolled FROM rollup_5m GROUP BY window_start) USING window_start ORDER BY window_start DESC LIMIT 12 FORMAT PrettyCompact"

Lake: {lake}
Logs: {}
"#,
        log.display()
    );
}

/// The components `up` runs, each as a task of one set: the first to fail
/// stops the others and is named, instead of going unnoticed until Ctrl-C.
#[derive(Default)]
struct Components {
    tasks: tokio::task::JoinSet<(&'static str, Result<(), String>)>,
}

impl Components {
    fn start<E>(
        &mut self,
        name: &'static str,
        component: impl Future<Output = Result<(), E>> + Send + 'static,
    ) where
        E: Into<anyhow::Error> + Send + 'static,
    {
        self.tasks.spawn(async move {
            let result = component.await.map_err(|e| {
                let e: anyhow::Error = e.into();
                format!("{e:#}")
            });
            (name, result)
        });
    }

    fn any_finished(&self) -> bool {
        self.tasks.len() < COMPONENTS
    }

    /// Wait for every component. A component that fails, or stops before
    /// `shutdown` asked it to, cancels `shutdown` so the others drain and
    /// stop; the failures come back named.
    async fn join(mut self, shutdown: &CancellationToken) -> Vec<String> {
        let mut failures = Vec::new();
        while let Some(done) = self.tasks.join_next().await {
            let failure = match done {
                Ok((_, Ok(()))) if shutdown.is_cancelled() => None,
                Ok((name, Ok(()))) => Some(format!("{name}: stopped on its own")),
                Ok((name, Err(e))) => Some(format!("{name}: {e}")),
                Err(e) => Some(format!("a component's task failed: {e}")),
            };
            if let Some(failure) = failure {
                if !shutdown.is_cancelled() {
                    tracing::error!(error = %failure, "a component failed; stopping the others");
                    eprintln!("\n{failure}\nstopping the other components");
                    shutdown.cancel();
                }
                failures.push(failure);
            }
        }
        failures
    }
}

/// How many components `up` starts.
const COMPONENTS: usize = 6;

pub async fn run(mut cfg: Config, dir: &Path, args: UpArgs) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("up.log");
    telemetry::init_tracing_to_file(&cfg.telemetry, &log)
        .with_context(|| format!("opening the log file {}", log.display()))?;
    if !args.no_stack {
        crate::stack::up(&cfg, dir, false).await?;
    }
    hourglass_core::kafka::ensure_pipeline_topics(&cfg.kafka)
        .await
        .context("creating the Kafka topics")?;
    let report = hourglass_sql::migrate(&cfg.clickhouse)
        .await
        .context("applying the ClickHouse migrations")?;
    tracing::info!(applied = ?report.applied, "migrations");
    let (key, hash) = local_key(dir)?;
    let token = local_query_login(&mut cfg, dir)?;
    if cfg.ingest.keys.iter().all(|k| k.sha256 != hash) {
        cfg.ingest.keys.push(WriteKey {
            project_id: "demo".into(),
            sha256: hash,
        });
    }

    // One flag for every component; a second Ctrl-C does not wait.
    cfg.batch.settle_secs = args.batch_settle_secs;
    cfg.batch.interval_secs = cfg.batch.interval_secs.min(30);

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            telemetry::wait_for_signal().await;
            shutdown.cancel();
            eprintln!("\nstopping: draining every component (Ctrl-C again stops at once)");
            telemetry::wait_for_signal().await;
            eprintln!("stopped at once");
            std::process::exit(130);
        });
    }
    if let Some(secs) = args.run_seconds {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            shutdown.cancel();
        });
    }

    if !args.no_stack {
        let (cfg, dir, stop) = (cfg.clone(), dir.to_path_buf(), shutdown.clone());
        tokio::spawn(async move { crate::stack::keep_up(&cfg, &dir, &stop).await });
    }
    let mut components = Components::default();
    components.start(
        "ingest",
        hourglass_ingest::run(cfg.clone(), shutdown.clone()),
    );
    components.start(
        "aggregator",
        hourglass_aggregator::run(cfg.clone(), shutdown.clone()),
    );
    components.start(
        "loader",
        hourglass_loader::run(cfg.clone(), shutdown.clone()),
    );
    components.start(
        "archiver",
        hourglass_lake::run_archiver(cfg.clone(), shutdown.clone()),
    );
    components.start("batch", hourglass_batch::run(cfg.clone(), shutdown.clone()));
    components.start("query", hourglass_query::run(cfg.clone(), shutdown.clone()));

    let ingest_url = format!("http://{}", cfg.ingest.listen);
    let ready = format!("{ingest_url}/health/ready");
    for _ in 0..300 {
        if reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
            || components.any_finished()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    banner(&cfg, &key, &token, &log);

    let mut demo_counters = None;
    let mut demo_task = None;
    if args.demo {
        let counters = Arc::new(demo::DemoCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (stop, shutdown) = (stop.clone(), shutdown.clone());
            let limit = args.demo_seconds.map(Duration::from_secs);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                while !shutdown.is_cancelled() && limit.is_none_or(|l| started.elapsed() < l) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                stop.store(true, Ordering::Relaxed);
            });
        }
        let late_by = Duration::from_secs(
            2 * u64::from(cfg.aggregator.window_secs) + u64::from(cfg.aggregator.grace_secs) + 5,
        );
        demo_task = Some(tokio::spawn(
            demo::Demo {
                url: ingest_url.clone(),
                key: key.clone(),
                events_per_sec: args.demo_rate,
                late_by,
                stop,
                counters: counters.clone(),
            }
            .run(),
        ));
        demo_counters = Some(counters);
    }
    let view = tokio::spawn(
        view::View {
            cfg: cfg.clone(),
            stop: shutdown.clone(),
            demo: demo_counters.clone(),
            log_file: log.display().to_string(),
        }
        .run(),
    );

    let failures = components.join(&shutdown).await;
    shutdown.cancel();
    if let Some(t) = demo_task {
        let _ = t.await;
    }
    let _ = view.await;
    let text = telemetry::metrics_handle().render();
    outln!();
    if let Some(d) = &demo_counters {
        outln!(
            "demo: {} events sent, {} accepted, {} dated past the grace period on purpose, {} imported as history",
            d.sent.load(Ordering::Relaxed),
            d.accepted.load(Ordering::Relaxed),
            d.late_on_purpose.load(Ordering::Relaxed),
            d.imported.load(Ordering::Relaxed)
        );
        outln!(
            "history import: {} events dated 1-3 hours back (late for the speed layer, recomputed by the batch layer)",
            d.imported.load(Ordering::Relaxed)
        );
        outln!(
            "demo requests: {} answered 2xx (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms), {} refused or unanswered, {} events abandoned at stop",
            d.answered_requests(),
            d.latency_ms(0.5),
            d.latency_ms(0.99),
            d.latency_ms(1.0),
            d.refused_requests.load(Ordering::Relaxed),
            d.abandoned.load(Ordering::Relaxed)
        );
    }
    outln!(
        "late events (aggregator): {}",
        view::late_events(&text) as u64
    );
    if failures.is_empty() {
        outln!("stopped cleanly");
        Ok(())
    } else {
        anyhow::bail!("components failed: {}", failures.join("; "))
    }
}
