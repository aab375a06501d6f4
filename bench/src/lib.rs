//! Pieces the benchmarks share.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A tansu broker with `memory://` storage, killed on drop. The local stack's
/// sqlite broker moves about 20k records/s, which would measure the broker's
/// storage instead of the component under test.
pub struct MemoryBroker {
    child: Child,
    pub brokers: String,
}

impl MemoryBroker {
    /// Start one on 127.0.0.1:`port`, working in `dir`.
    pub fn start(dir: &std::path::Path, port: u16) -> Result<Self> {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu (run `hourglass stack up` once to install it)")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("tansu did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            brokers: format!("127.0.0.1:{port}"),
        })
    }
}

impl Drop for MemoryBroker {
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
