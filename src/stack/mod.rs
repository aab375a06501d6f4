//! The local stack: a Kafka-protocol broker (tansu), ClickHouse and an
//! S3-compatible server (s3s-fs), all on 127.0.0.1, state under one folder.
//!
//! `up` is idempotent: it installs what is missing, reuses a server that
//! already answers on its port (whoever started it), starts what is stopped,
//! waits until each answers, then creates the topics and the bucket. `down`
//! stops what `up` started, by the PIDs it recorded.

use crate::out::outln;

mod clickhouse_server;
pub mod cluster;
mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hourglass_core::Config;

use process::{Server, port_of};

/// Where the stack keeps its data, logs and PID files.
pub fn default_dir() -> PathBuf {
    std::env::var_os("HOURGLASS_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".stack"))
}

/// The servers of the stack, with the cluster profile's when it was set up
/// in `dir`; `write_configs` (only when starting) writes their generated
/// config files.
fn servers(cfg: &Config, dir: &Path, write_configs: bool) -> Result<Vec<Server>> {
    let mut all = usual_servers(cfg, dir, write_configs)?;
    if cluster::is_set_up(dir) {
        all.extend(cluster::servers(dir, write_configs)?);
    }
    Ok(all)
}

fn usual_servers(cfg: &Config, dir: &Path, write_configs: bool) -> Result<Vec<Server>> {
    let kafka_port = port_of(&cfg.kafka.brokers).context("kafka.brokers has no port")?;
    let ch_port = port_of(&cfg.clickhouse.url).context("clickhouse.url has no port")?;
    let s3_port = port_of(&cfg.s3.endpoint).context("s3.endpoint has no port")?;
    let listener = format!("tcp://127.0.0.1:{kafka_port}");
    Ok(vec![
        Server {
            name: "kafka (tansu)".into(),
            key: "kafka".into(),
            binary: "tansu",
            install: process::Install::Cargo {
                krate: "tansu@0.6.0",
                features: "dynostore,libsql",
            },
            port: kafka_port,
            args: vec![
                "broker".into(),
                "--listener-url".into(),
                listener.clone(),
                "--advertised-listener-url".into(),
                listener,
                // sqlite paths resolve against the working directory, which is the data dir.
                "--storage-engine".into(),
                "sqlite://tansu.db".into(),
            ],
            ready: process::Ready::Tcp,
        },
        clickhouse_server::server(dir, ch_port, write_configs)?,
        Server {
            name: "S3 (s3s-fs)".into(),
            key: "s3".into(),
            binary: "s3s-fs",
            install: process::Install::Cargo {
                krate: "s3s-fs@0.14.1",
                features: "binary",
            },
            port: s3_port,
            args: vec![
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                s3_port.to_string(),
                "--access-key".into(),
                cfg.s3.access_key_id.clone(),
                "--secret-key".into(),
                cfg.s3.secret_access_key.clone(),
                dir.join("s3").join("data").display().to_string(),
            ],
            ready: process::Ready::HttpStatus("/", 403),
        },
    ])
}

/// Install, start and prepare everything; returns once all of it answers.
/// `with_cluster` adds the cluster profile ([`cluster`]), which stays part
/// of this stack folder until `down`.
pub async fn up(cfg: &Config, dir: &Path, with_cluster: bool) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create stack folder {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    if with_cluster {
        std::fs::create_dir_all(dir.join("cluster"))?;
    }
    std::fs::create_dir_all(dir.join("s3").join("data"))?;
    for server in servers(cfg, &dir, true)? {
        server.ensure_running(&dir).await?;
        if server.key == "kafka" {
            index_broker_store(&server, &dir)?;
        }
    }
    retry("kafka (tansu): creating topics", || {
        hourglass_core::kafka::ensure_pipeline_topics(&cfg.kafka)
    })
    .await?;
    let s3 = hourglass_core::s3::client(&cfg.s3).await;
    retry("S3 (s3s-fs): creating the bucket", || {
        hourglass_core::s3::ensure_bucket(&s3, &cfg.s3.bucket)
    })
    .await?;
    if cluster::is_set_up(&dir) {
        outln!(
            "cluster {:?}: {} shards × {} replicas, ClickHouse at {} (and the next ports), ZooKeeper 127.0.0.1:{}",
            cluster::CLUSTER,
            cluster::SHARDS,
            cluster::REPLICAS,
            cluster::nodes()[0].url(),
            cluster::ZOOKEEPER_PORT
        );
    }
    outln!(
        "stack ready: kafka {} (topics {}, {}), clickhouse {}, s3 {} (bucket {}); state in {}",
        cfg.kafka.brokers,
        cfg.kafka.topic,
        cfg.kafka.dlq_topic,
        cfg.clickhouse.url,
        cfg.s3.endpoint,
        cfg.s3.bucket,
        dir.display()
    );
    Ok(())
}

/// Index the SQLite store of the broker this stack runs: tansu 0.6 reads
/// record headers by a key it has no index for (see
/// [`hourglass_core::kafka::tansu_store`]). A broker started by someone else
/// is left alone.
fn index_broker_store(kafka: &process::Server, dir: &Path) -> Result<()> {
    if kafka.recorded_pid(dir).is_none() {
        return Ok(());
    }
    process::install_tool("sqlite3", "sqlite3", &process::Install::Apt(&["sqlite3"]))?;
    hourglass_core::kafka::tansu_store::index_headers(
        &dir.join(&kafka.key).join("tansu.db"),
        Duration::from_secs(30),
    )
    .context("kafka (tansu): indexing its SQLite store")
}

async fn retry<F, Fut, E>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut last = String::new();
    for _ in 0..20 {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("{what} failed: {last}")
}

/// Restart, until `stop` is cancelled, any server of this stack that died (a
/// killed broker, an OOM-killed ClickHouse): what an init system or a
/// Kubernetes restart policy does in production. Servers started by someone
/// else are left alone.
pub async fn keep_up(cfg: &Config, dir: &Path, stop: &tokio_util::sync::CancellationToken) {
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let Ok(servers) = servers(cfg, &dir, false) else {
        return;
    };
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for server in &servers {
            if !server.pid_file(&dir).exists() {
                continue; // not ours, or stopped on purpose (`stack down`)
            }
            // A server this process started and that died stays a zombie,
            // which still answers kill(pid, 0), until it is reaped.
            if let Some(pid) = server.recorded_pid(&dir) {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
            if server.recorded_pid(&dir).is_some() || server.answers().await {
                continue;
            }
            tracing::warn!(
                server = %server.name,
                "a server of the local stack died: restarting it"
            );
            let restarted = match server.ensure_running(&dir).await {
                Ok(()) if server.key == "kafka" => index_broker_store(server, &dir),
                other => other,
            };
            match restarted {
                Ok(()) => tracing::info!(server = %server.name, "restarted"),
                Err(e) => {
                    tracing::error!(server = %server.name, error = %format!("{e:#}"), "could not restart")
                }
            }
        }
    }
}

/// Stop the broker, delete everything it stored, and start it again with
/// the default topics. The test command runs each end-to-end suite on a
/// fresh broker: tansu's SQLite store slows as it grows (group coordinator
/// answers stalled past the consumers' session timeout after a few million
/// records), which is a fact of the local stack, not of what is tested.
pub async fn reset_kafka(cfg: &Config, dir: &Path) -> Result<()> {
    let dir = dir.canonicalize()?;
    let kafka = usual_servers(cfg, &dir, false)?
        .into_iter()
        .find(|s| s.key == "kafka")
        .expect("the stack has a broker");
    if kafka.recorded_pid(&dir).is_none() {
        bail!(
            "the broker was not started by this stack ({}): not resetting it",
            dir.display()
        );
    }
    kafka.stop(&dir)?;
    for entry in std::fs::read_dir(dir.join("kafka"))? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tansu.db"))
        {
            std::fs::remove_file(&path)?;
        }
    }
    kafka.ensure_running(&dir).await?;
    index_broker_store(&kafka, &dir)?;
    retry("kafka (tansu): creating topics", || {
        hourglass_core::kafka::ensure_pipeline_topics(&cfg.kafka)
    })
    .await?;
    outln!("kafka (tansu): reset to an empty store");
    Ok(())
}

/// Stop the servers this stack started (by recorded PID), the cluster
/// profile's first (ZooKeeper last).
pub fn down(cfg: &Config, dir: &Path) -> Result<()> {
    let mut all = servers(cfg, dir, false)?;
    all.reverse();
    for server in all {
        server.stop(dir)?;
    }
    Ok(())
}

/// One line per server: answering or not, and who started it.
pub async fn status(cfg: &Config, dir: &Path) -> Result<bool> {
    let mut all = true;
    for server in servers(cfg, dir, false)? {
        let answering = server.answers().await;
        all &= answering;
        let owner = match server.recorded_pid(dir) {
            Some(pid) => format!("pid {pid}"),
            None => "not started by this stack".into(),
        };
        outln!(
            "{:<26} port {:<6} {:<6} {}",
            server.name,
            server.port,
            if answering { "up" } else { "DOWN" },
            owner
        );
    }
    Ok(all)
}
