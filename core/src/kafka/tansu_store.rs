//! The local stack's broker is tansu with its SQLite store. tansu 0.6 keeps
//! record headers in a `header` table with no index, and reads a fetched
//! record's headers with a lookup by (topition, offset_id): without an index
//! that is a scan of every header ever written, per record fetched. Every
//! Hourglass record carries the schema-version header, so the broker's CPU
//! went to those scans and grew with the store (100 % of a core at a few
//! hundred events/s once a few hundred thousand were stored). The index below
//! makes the lookup a B-tree search; see the `local_broker` benchmark for
//! the figures. It changes no data and tansu's own queries pick it up.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The index tansu's `header` lookups need.
pub const HEADER_INDEX_SQL: &str =
    "CREATE INDEX IF NOT EXISTS hourglass_header_record ON header (topition, offset_id);";

#[derive(Debug, thiserror::Error)]
pub enum TansuStoreError {
    #[error("tansu did not create its schema in {} within {timeout:?}", db.display())]
    NoSchema {
        db: std::path::PathBuf,
        timeout: Duration,
    },
    #[error("running sqlite3 on {} (install Debian's sqlite3): {source}", db.display())]
    Sqlite3 {
        db: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite3 could not index {}: {stderr}", db.display())]
    Index {
        db: std::path::PathBuf,
        stderr: String,
    },
}

/// Wait until the running broker has created its schema in `db`, then add
/// the header index (a no-op when it exists). Uses Debian's `sqlite3`.
pub fn index_headers(db: &Path, timeout: Duration) -> Result<(), TansuStoreError> {
    let sqlite3 = |args: &[&str], sql: &str| {
        Command::new("sqlite3")
            .args(args)
            .args(["-cmd", ".timeout 10000"])
            .arg(db)
            .arg(sql)
            .output()
            .map_err(|source| TansuStoreError::Sqlite3 {
                db: db.to_path_buf(),
                source,
            })
    };
    let started = Instant::now();
    loop {
        // Read-only, so that asking never creates an empty file before tansu does.
        if db.exists() {
            let out = sqlite3(
                &["-readonly"],
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'header';",
            )?;
            if String::from_utf8_lossy(&out.stdout).trim() == "1" {
                break;
            }
        }
        if started.elapsed() > timeout {
            return Err(TansuStoreError::NoSchema {
                db: db.to_path_buf(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = sqlite3(&[], HEADER_INDEX_SQL)?;
    if !out.status.success() {
        return Err(TansuStoreError::Index {
            db: db.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
