//! The runtime the three Kafka consumers (aggregator, loader, archiver) run
//! on, so what decides their correctness under failure is written once:
//!
//! - [`bootstrap`]: config check, health endpoint, metrics, the consumer,
//!   the blocking loop on its own thread, and the stop.
//! - [`Backoff`]: the one retry schedule (doubling, capped, jittered, from
//!   `[consumers]`).
//! - [`PausedRetry`]: a write that fails is retried with the whole
//!   assignment paused (the consumer keeps polling, so it stays in its group
//!   and memory stays bounded), then resumed with every partition re-sought
//!   to the component's own position.
//! - [`AssignmentWatchdog`]: a consumer its group leaves without partitions
//!   while it is owed some rejoins, and so does one that sees a partition
//!   no member consumes ([`orphans`]).
//! - [`ConsumerError`]: how a consumer stops, and whether a restart can help.
//!
//! Each consumer keeps only what differs: the aggregator's landed and
//! revocation checks, the loader's progress check, the archiver's store call.

mod backoff;
pub mod bootstrap;
mod error;
pub mod orphans;
mod pause;
mod watchdog;

pub use backoff::Backoff;
pub use bootstrap::{Component, Started, run_consumer};
pub use error::ConsumerError;
pub use pause::{Paused, PausedRetry};
pub use watchdog::{AssignmentWatchdog, GroupHealth, WatchedContext};
