//! A TCP proxy in front of ClickHouse's HTTP port that loses the answers to
//! some INSERTs: the request goes through and the server runs it to the
//! end, then the writer's connection is closed instead of the answer being
//! passed on. The writer sees an error for a write that landed — the case
//! its landed check (aggregator) or progress check (loader) is for, which a
//! server killed mid-INSERT never produces (that INSERT does not land).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// `host:port` of the test's ClickHouse (its configured URL without the
/// scheme).
pub fn clickhouse_host_port(env: &super::TestEnv) -> String {
    let url = &env.cfg.clickhouse.url;
    url.split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

pub struct LostAnswers {
    /// The proxy's URL, for the writer's `clickhouse.url`.
    pub url: String,
    lost: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for LostAnswers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LostAnswers {
    /// Proxy to `upstream` (host:port); the answers to the first `count`
    /// INSERTs into `table` are lost.
    pub async fn start(upstream: &str, table: &str, count: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lost = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        // The query travels form-encoded in the URL, the table name
        // backquoted by the client: INSERT+INTO+%60rollup_5m%60%28…
        let marker = format!("INSERT+INTO+%60{table}%60");
        let (upstream, lost_, stop_) = (upstream.to_owned(), lost.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = stop_.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(
                    client,
                    server,
                    marker.clone(),
                    count,
                    lost_.clone(),
                    stop_.clone(),
                ));
            }
        });
        Self { url, lost, stop }
    }

    /// How many answers were lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

/// One connection. HTTP/1.1 without pipelining: the server's next bytes
/// after a request are its answer, so an INSERT's answer is the first thing
/// the server sends after the INSERT's head went by.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    marker: String,
    count: usize,
    lost: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let doomed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let doomed_ = doomed.clone();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("POST ")
                && text.contains(&marker)
                && lost
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                        (l < count).then_some(l + 1)
                    })
                    .is_ok()
            {
                doomed_.store(true, Ordering::SeqCst);
            }
            if server_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if doomed.load(Ordering::SeqCst) {
                // The INSERT ran to its end (ClickHouse answers an INSERT
                // once it is written): the answer goes nowhere.
                return;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection (dropping both halves).
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = upstream => {}
        _ = downstream => {}
    }
}
