//! Metric names of the aggregator (`hourglass_aggregator_*`), labelled only
//! by bounded values (outcome, partition).

pub const EVENTS: &str = "hourglass_aggregator_events_total";
pub const OPEN_WINDOWS: &str = "hourglass_aggregator_open_windows";
pub const OPEN_KEYS: &str = "hourglass_aggregator_open_keys";
pub const WATERMARK_LAG: &str = "hourglass_aggregator_watermark_lag_seconds";
pub const CONSUMER_LAG: &str = "hourglass_aggregator_consumer_lag_messages";
pub const FLUSH_SECONDS: &str = "hourglass_aggregator_flush_duration_seconds";
pub const FLUSH_ROWS: &str = "hourglass_aggregator_flushed_rows_total";
pub const FLUSH_RETRIES: &str = "hourglass_aggregator_flush_retries_total";
pub const FLUSH_REPAIRS: &str = "hourglass_aggregator_flush_repairs_total";
pub const FLUSH_UNVERIFIED: &str = "hourglass_aggregator_flush_unverified_buckets_total";
pub const CLAMPED_VALUES: &str = "hourglass_aggregator_clamped_values_total";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        EVENTS,
        "Events read, by outcome: added, overflow, late, ahead (dated past aggregator.max_ahead_secs after the clock; set aside like late ones), too_old (dated more than 2,901 days before the clock; set aside too), undecodable"
    );
    describe_gauge!(OPEN_WINDOWS, "Open windows over all assigned partitions");
    describe_gauge!(OPEN_KEYS, "Open keys over all open windows");
    describe_gauge!(
        WATERMARK_LAG,
        "Wall clock minus event-time watermark, per partition"
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Messages behind the partition's high watermark (librdkafka statistics)"
    );
    describe_histogram!(
        FLUSH_SECONDS,
        "Time to write one partition's closed windows"
    );
    describe_counter!(FLUSH_ROWS, "rollup_5m rows written");
    describe_counter!(FLUSH_RETRIES, "Failed flush attempts that were retried");
    describe_counter!(
        FLUSH_REPAIRS,
        "After a failed flush: what it had not reached, written then, by table (rollup_5m rows, rollup_1h and rollup_1d buckets, aggregator_progress rows)"
    );
    describe_counter!(
        FLUSH_UNVERIFIED,
        "After a failed flush: rollup_1h/1d buckets whose events from the partition matched neither with nor without the flush (left as they are)"
    );
    describe_counter!(
        CLAMPED_VALUES,
        "Values outside the histogram's range, clamped into it"
    );
}
