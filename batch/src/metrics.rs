//! Metric names of the batch layer (`hourglass_batch_*`).

pub const HOURS: &str = "hourglass_batch_hours_total";
pub const DAYS: &str = "hourglass_batch_days_total";
pub const EVENTS: &str = "hourglass_batch_events_total";
pub const HOUR_SECONDS: &str = "hourglass_batch_hour_duration_seconds";
pub const HOURS_DUE: &str = "hourglass_batch_hours_due";
pub const MAX_DRIFT: &str = "hourglass_batch_max_drift_ratio";
pub const UNEXPLAINED_HOURS: &str = "hourglass_batch_unexplained_hours";
pub const LEASE_HELD: &str = "hourglass_batch_lease_held";
pub const FAILURES: &str = "hourglass_batch_failures_total";
pub const DELETED_ROWS: &str = "hourglass_retention_deleted_rows_total";
pub const DELETED_OBJECTS: &str = "hourglass_retention_deleted_objects_total";
pub const PRUNED_ROWS: &str = "hourglass_batch_pruned_rows_total";
pub const DELETED_LAKE_EVENTS: &str = "hourglass_retention_deleted_lake_events_total";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HOURS, "Hours recomputed and committed");
    describe_counter!(DAYS, "Days whose 1d rows were recomputed and committed");
    describe_counter!(
        EVENTS,
        "Events in the hours committed (after dedup and deletions)"
    );
    describe_histogram!(HOUR_SECONDS, "Time to recompute and commit one hour");
    describe_gauge!(
        HOURS_DUE,
        "Settled hours waiting for a first or renewed pass"
    );
    describe_gauge!(
        MAX_DRIFT,
        "Largest |speed - batch| / batch events of any hour and event of the last day"
    );
    describe_gauge!(
        UNEXPLAINED_HOURS,
        "Hours and events of the last day whose drift late events, duplicates and deletions do not explain"
    );
    describe_gauge!(LEASE_HELD, "1 while this process holds the batch lease");
    describe_counter!(DELETED_ROWS, "Rows deleted by retention passes, by table");
    describe_counter!(DELETED_OBJECTS, "Lake objects deleted by retention passes");
    describe_counter!(
        DELETED_LAKE_EVENTS,
        "Events of expired projects taken out of lake folders other projects keep"
    );
    describe_counter!(
        PRUNED_ROWS,
        "Rows of superseded batch versions deleted, by table"
    );
    describe_counter!(
        FAILURES,
        "Batch and retention passes that failed (retried on the next interval)"
    );
}
