//! Pieces the benchmarks share.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A tansu broker of the benchmarks' own, killed on drop.
///
/// Component benchmarks use `memory://` ([`LocalBroker::memory`]): the local
/// stack's durable `sqlite://` broker would measure the broker's storage
/// instead of the component under test. The `local_broker` benchmark, which
/// measures the broker itself, starts either.
pub struct LocalBroker {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
    storage: String,
    header_index: bool,
    pub brokers: String,
}

/// `kafka.fetch_wait_max_ms` for consumers of a `memory://` broker: it
/// answers a fetch that waits for data only at the wait's end, so 500 ms
/// halved a bare consumer's rate (390-426 k records/s against 635-700 k at
/// 100 ms, 2026-12-01). Pinned here so the benchmarks keep it whatever the
/// default becomes.
pub const MEMORY_BROKER_FETCH_WAIT_MS: u32 = 100;

/// Storage engine URLs of tansu, by short name.
pub fn storage_url(name: &str) -> Result<&'static str> {
    match name {
        // Resolved against the working directory, which is the broker's dir.
        "sqlite" => Ok("sqlite://tansu.db"),
        "memory" => Ok("memory://tansu/"),
        other => bail!("unknown tansu storage {other:?} (sqlite or memory)"),
    }
}

impl LocalBroker {
    /// A `memory://` broker on 127.0.0.1:`port`, working in `dir`.
    pub fn memory(dir: &std::path::Path, port: u16) -> Result<Self> {
        Self::start(dir, port, "memory", false)
    }

    /// A broker with `storage` (`sqlite` or `memory`) on 127.0.0.1:`port`,
    /// working (and, for sqlite, keeping its data) in `dir`; `header_index`
    /// indexes a sqlite store as the local stack does
    /// ([`hourglass_core::kafka::tansu_store`]).
    pub fn start(
        dir: &std::path::Path,
        port: u16,
        storage: &str,
        header_index: bool,
    ) -> Result<Self> {
        storage_url(storage)?;
        let child = spawn_tansu(dir, port, storage, header_index)?;
        Ok(Self {
            child,
            dir: dir.to_path_buf(),
            port,
            storage: storage.to_owned(),
            header_index,
            brokers: format!("127.0.0.1:{port}"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the broker, then start it again on the same data; returns
    /// how long it took until it accepted connections again.
    pub fn kill_and_restart(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_tansu(&self.dir, self.port, &self.storage, self.header_index)?;
        Ok(started.elapsed())
    }
}

fn spawn_tansu(
    dir: &std::path::Path,
    port: u16,
    storage: &str,
    header_index: bool,
) -> Result<Child> {
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        bail!("127.0.0.1:{port} is already taken (a broker left from an earlier run?)");
    }
    let url = format!("tcp://127.0.0.1:{port}");
    // Appended to across restarts, for the post-mortem of a broker that died.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .context("opening tansu.log")?;
    let mut child = Command::new("tansu")
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", storage_url(storage)?])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting tansu (run `hourglass stack up` once to install it)")?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            bail!("tansu did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if storage == "sqlite" && header_index {
        hourglass_core::kafka::tansu_store::index_headers(
            &dir.join("tansu.db"),
            Duration::from_secs(10),
        )?;
    }
    Ok(child)
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produce every record to `topic`, 50,000 in flight at a time (records are
/// made from `records` as they are sent); a failed delivery ends the
/// benchmark.
pub async fn produce_all<K, V>(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: impl Iterator<Item = (K, V)>,
) where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    use futures::StreamExt;
    futures::stream::iter(records)
        .map(|(key, payload)| async move {
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(topic)
                        .key(key.as_ref())
                        .payload(payload.as_ref()),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)
        })
        .buffer_unordered(50_000)
        .for_each(|r| async {
            r.expect("delivered");
        })
        .await;
}

/// utime + stime of a process, in seconds (clock ticks of 10 ms).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A component process a benchmark started, stopped with SIGTERM (so it
/// drains as in production) and waited for on drop.
pub struct Component(pub Child);

impl Drop for Component {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// Wait until `{url}/health/ready` answers 200, at most 30 s.
pub async fn wait_ready(url: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        if reqwest::get(format!("{url}/health/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{url} not ready after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A kB field of `/proc/{pid}/status` (`VmRSS:`, `VmHWM:`), 0 when unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
