//! The windowing core: pure event-time logic, no Kafka or ClickHouse types.
//!
//! One [`PartitionWindows`] per source partition holds that partition's open
//! tumbling windows and its watermark (the largest event time seen, but never
//! past the wall clock: input cannot move it into the future). A window
//! `[start, start + length)` closes once `start + length + grace <= watermark`;
//! an event whose window already closed is *late*: counted, never added (the
//! batch layer still keeps it), and so is an event dated further ahead of the
//! wall clock than `max_ahead` (it would hold a window open for as long as
//! its date is away) or further behind it than [`MAX_BEHIND_MS`] (older than
//! any import; it bounds the months one flush spans). A partition that has read everything there is
//! and sees nothing for `idle_timeout` moves its watermark to the wall clock,
//! so quiet partitions still close their windows.
//!
//! Closed windows wait in a queue until the caller takes them
//! ([`PartitionWindows::take_closed`]) together with the checkpoint that makes
//! the flush exactly-once: the offset to resume from (the smallest offset any
//! still-open window holds, or the next offset to read) and the watermark.

mod aggregate;
mod partition;

pub use aggregate::{KeyAggregate, RollupRow};
pub use partition::{
    Checkpoint, ClosedWindows, EventRef, Ingested, LATE_FLUSH_AT, LateRecord, MAX_BEHIND_MS,
    PartitionWindows,
};

use std::collections::HashMap;

use hourglass_core::Config;

pub use hourglass_core::dimensions::{dimension_text, dimension_values};

/// Key used for keys past the cardinality guard.
pub const OVERFLOW_KEY: &str = "__other__";

/// The tunables of the core, in milliseconds.
#[derive(Debug, Clone)]
pub struct WindowConfig {
    pub window_ms: i64,
    pub grace_ms: i64,
    pub idle_timeout_ms: i64,
    pub max_ahead_ms: i64,
    pub dimensions: Vec<String>,
    /// Keys one project may hold in one window (its own `__other__` aside).
    pub max_keys_per_window: usize,
    /// Projects whose cap differs from `max_keys_per_window`.
    pub project_max_keys: HashMap<Box<str>, usize>,
    pub max_dimension_len: usize,
    pub histogram_sigfig: u8,
    pub histogram_max_value: f64,
}

impl From<&Config> for WindowConfig {
    fn from(cfg: &Config) -> Self {
        let c = &cfg.aggregator;
        Self {
            window_ms: i64::from(c.window_secs) * 1000,
            grace_ms: i64::from(c.grace_secs) * 1000,
            idle_timeout_ms: i64::from(c.idle_timeout_secs) * 1000,
            max_ahead_ms: i64::from(c.max_ahead_secs) * 1000,
            dimensions: c.dimensions.clone(),
            max_keys_per_window: c.max_keys_per_window,
            project_max_keys: cfg
                .projects
                .iter()
                .filter(|(_, p)| p.max_keys_per_window > 0)
                .map(|(id, p)| (id.as_str().into(), p.max_keys_per_window))
                .collect(),
            max_dimension_len: c.max_dimension_len,
            histogram_sigfig: c.histogram_sigfig,
            histogram_max_value: c.histogram_max_value,
        }
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self::from(&Config::default())
    }
}

impl WindowConfig {
    /// Keys `project` may hold in one window of one partition.
    pub fn max_keys_for(&self, project: &str) -> usize {
        self.project_max_keys
            .get(project)
            .copied()
            .unwrap_or(self.max_keys_per_window)
    }

    /// Start of the UTC-aligned window holding `ts_ms`.
    pub fn window_start(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.window_ms) * self.window_ms
    }

    /// Whether the window starting at `start` is closed under `watermark`.
    pub fn is_closed(&self, start: i64, watermark: i64) -> bool {
        start
            .saturating_add(self.window_ms)
            .saturating_add(self.grace_ms)
            <= watermark
    }
}

/// Stable 64-bit hash of a user id. Stored in `rollup_5m.user_hashes` and
/// merged across processes and restarts, so it must never change: xxh3 is
/// specified, unlike std's or ahash's hashers.
pub fn user_hash(user: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(user.as_bytes())
}
