//! The large-body lane. Decoding and parsing a large body costs
//! milliseconds of CPU (a 4 MiB body, a bomb inflating to the decoded cap),
//! and any client can send them as fast as it likes; on two cores a few
//! connections doing so would starve every ordinary batch. So a body is
//! *large* once it is over [`LARGE_BODY_BYTES`] as sent or as inflated
//! (and a zstd body is large from its start: its decoder allocates its
//! window at once), and large bodies are decoded and parsed by at most
//! `ingest.large_body_workers` requests at a time; the others wait for a
//! turn (503 with Retry-After after [`WAIT`]). Small batches, the common
//! case, never wait for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies over this many bytes, as sent or as inflated, go through the lane.
pub const LARGE_BODY_BYTES: usize = 256 * 1024;

/// How long a large body waits for its turn before 503.
pub const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("ingest is busy with other large bodies (over {LARGE_BODY_BYTES} bytes)")]
pub struct Busy;

#[derive(Debug, Clone)]
pub struct LargeBodyLane {
    turns: Arc<Semaphore>,
}

impl LargeBodyLane {
    pub fn new(workers: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Busy> {
        tokio::time::timeout(WAIT, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)
    }

    /// [`Self::enter`] from a blocking thread (a body being decoded).
    pub fn enter_blocking(&self) -> Result<OwnedSemaphorePermit, Busy> {
        tokio::runtime::Handle::current().block_on(self.enter())
    }
}
