//! ClickHouse client builder and server capability checks.
//!
//! Production runs ClickHouse 24.x; the local stack runs Debian's 18.16. Code
//! that wants a newer feature asks [`ServerVersion`] first.

pub mod cluster;
pub mod deletions;
pub mod errors;
pub mod levels;

use clickhouse::Client;

use crate::config::{ClickHouseCompression, ClickHouseConfig};

/// Wait until `table` of the client's database has no unfinished mutation
/// (`ALTER ... DELETE` applies in the background), polling every 100 ms;
/// false if `limit` passes first.
pub async fn mutations_done(
    client: &Client,
    table: &str,
    limit: std::time::Duration,
) -> Result<bool, clickhouse::error::Error> {
    let started = std::time::Instant::now();
    loop {
        let pending: u64 = client
            .query("SELECT count() FROM system.mutations WHERE database = currentDatabase() AND table = ? AND is_done = 0")
            .bind(table)
            .fetch_one()
            .await?;
        if pending == 0 {
            return Ok(true);
        }
        if started.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A client bound to the configured database, with the cluster's write
/// and read rules when `clickhouse.cluster` is set ([`cluster`]).
pub fn client(cfg: &ClickHouseConfig) -> Client {
    cluster::writer_settings(cfg).into_iter().fold(
        server_client(cfg).with_database(&cfg.database),
        |c, (k, v)| c.with_setting(k, v),
    )
}

/// A client with no database selected (for `CREATE DATABASE`).
pub fn server_client(cfg: &ClickHouseConfig) -> Client {
    let mut c = Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_compression(match cfg.compression {
            ClickHouseCompression::None => clickhouse::Compression::None,
            ClickHouseCompression::Lz4 => clickhouse::Compression::Lz4,
        })
        // Row validation asks the server for column types with settings and
        // formats 18.16 does not know; our row structs are checked by tests.
        .with_validation(false);
    if !cfg.password.is_empty() {
        c = c.with_password(&cfg.password);
    }
    c
}

/// `major.minor` of the server, from `SELECT version()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        Some(Self {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
        })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// TTL, column codecs and LowCardinality without experimental flags.
    pub fn has_modern_ddl(self) -> bool {
        self.at_least(21, 8)
    }

    /// `insert_deduplication_token` and `non_replicated_deduplication_window`.
    pub fn has_insert_dedup(self) -> bool {
        self.at_least(22, 2)
    }

    pub async fn query(client: &Client) -> Result<Self, clickhouse::error::Error> {
        let text: String = client.query("SELECT version()").fetch_one().await?;
        Self::parse(&text).ok_or_else(|| {
            clickhouse::error::Error::Custom(format!("unrecognized server version {text:?}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        let new = ServerVersion::parse("24.8.4.13").unwrap();
        assert!(!old.has_modern_ddl() && !old.has_insert_dedup());
        assert!(new.has_modern_ddl() && new.has_insert_dedup());
        assert_eq!(ServerVersion::parse("garbage"), None);
    }
}
