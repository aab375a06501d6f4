//! One `hourglass batch` per database: a lease row in `batch_lease`.
//!
//! ClickHouse has no transactions, so the lease is decided by reading after
//! writing: a candidate refuses if someone renewed within `lease_secs`;
//! otherwise it writes its row, waits long enough for a concurrent
//! candidate's row to land, and reads again. Every candidate then sees the
//! same live rows and the same winner (the earliest acquisition, then the
//! smallest holder name); the others stop.

use std::time::Duration;

use clickhouse::{Client, Row};
use serde::Deserialize;

use crate::BatchError;

#[derive(Debug, Row, Deserialize)]
struct Holder {
    holder: String,
    first_acquired: u32,
    last_renewed: u32,
}

pub struct Lease {
    client: Client,
    pub holder: String,
    acquired_at: u32,
    lease_secs: u32,
}

async fn live(client: &Client, lease_secs: u32) -> Result<Vec<Holder>, BatchError> {
    Ok(client
        .query(
            "SELECT holder, toUInt32(minIf(acquired_at, toUInt32(acquired_at) > 0)) AS first_acquired, \
                    toUInt32(max(renewed_at)) AS last_renewed \
             FROM batch_lease GROUP BY holder \
             HAVING last_renewed >= toUInt32(now()) - ? AND toUInt32(min(acquired_at)) > 0 \
             ORDER BY first_acquired, holder",
        )
        .bind(lease_secs)
        .fetch_all()
        .await?)
}

impl Lease {
    /// Take the lease. While another holder renews it: wait (`wait`, a
    /// standby replica) or say who holds it.
    pub async fn acquire(client: &Client, lease_secs: u32, wait: bool) -> Result<Self, BatchError> {
        let holder = format!(
            "{}:{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        while let Some(other) = live(client, lease_secs).await?.first() {
            let secs_ago = crate::plan::server_now(client)
                .await?
                .saturating_sub(other.last_renewed);
            if !wait {
                return Err(BatchError::LeaseHeld {
                    holder: other.holder.clone(),
                    secs_ago,
                    lease_secs,
                });
            }
            tracing::info!(holder = %other.holder, secs_ago, "another batch holds the lease; waiting");
            tokio::time::sleep(Duration::from_secs(u64::from(lease_secs.max(2) / 2))).await;
        }
        client
            .query(
                "INSERT INTO batch_lease (holder, acquired_at, renewed_at) SELECT ?, now(), now()",
            )
            .bind(&holder)
            .execute()
            .await?;
        // Long enough for a rival's INSERT that started before ours to land.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let holders = live(client, lease_secs).await?;
        let winner = holders
            .first()
            .ok_or_else(|| BatchError::Lease("the lease row just written is not there".into()))?;
        if winner.holder != holder {
            return Err(BatchError::LeaseHeld {
                holder: winner.holder.clone(),
                secs_ago: 0,
                lease_secs,
            });
        }
        let acquired_at = winner.first_acquired;
        // Old rows go; a holder gone for a day is not news.
        let _ = client
            .query("ALTER TABLE batch_lease DELETE WHERE renewed_at < now() - 86400")
            .execute()
            .await;
        metrics::gauge!(crate::metrics::LEASE_HELD).set(1.0);
        tracing::info!(%holder, "batch lease acquired");
        Ok(Self {
            client: client.clone(),
            holder,
            acquired_at,
            lease_secs,
        })
    }

    /// Renew, or fail if another holder took over meanwhile (this one was
    /// silent for longer than the lease).
    pub async fn renew(&self) -> Result<(), BatchError> {
        let holders = live(&self.client, self.lease_secs).await?;
        if let Some(first) = holders.first()
            && first.holder != self.holder
        {
            metrics::gauge!(crate::metrics::LEASE_HELD).set(0.0);
            return Err(BatchError::LeaseHeld {
                holder: first.holder.clone(),
                secs_ago: 0,
                lease_secs: self.lease_secs,
            });
        }
        self.client
            .query("INSERT INTO batch_lease (holder, acquired_at, renewed_at) SELECT ?, toDateTime(?), now()")
            .bind(&self.holder)
            .bind(self.acquired_at)
            .execute()
            .await?;
        Ok(())
    }

    /// Give the lease up (a clean stop): the next holder need not wait. A
    /// row with `acquired_at` 0 ends the holder at once; the delete (a
    /// mutation, applied later) only tidies up.
    pub async fn release(self) {
        metrics::gauge!(crate::metrics::LEASE_HELD).set(0.0);
        let _ = self
            .client
            .query("INSERT INTO batch_lease (holder, acquired_at, renewed_at) SELECT ?, toDateTime(0), now()")
            .bind(&self.holder)
            .execute()
            .await;
        let _ = self
            .client
            .query("ALTER TABLE batch_lease DELETE WHERE holder = ?")
            .bind(&self.holder)
            .execute()
            .await;
    }
}
