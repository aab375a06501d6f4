//! Metric names of the loader (`hourglass_loader_*`).

pub const ROWS: &str = "hourglass_loader_rows_total";
pub const BATCH_ROWS: &str = "hourglass_loader_batch_rows";
pub const BATCH_SECONDS: &str = "hourglass_loader_batch_duration_seconds";
pub const RETRIES: &str = "hourglass_loader_retries_total";
pub const DELETED_USERS_ROWS: &str = "hourglass_loader_deleted_user_rows_total";
pub const DEAD_LETTERS: &str = "hourglass_loader_dead_letters_total";
pub const CONSUMER_LAG: &str = "hourglass_loader_consumer_lag_messages";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ROWS, "Rows inserted into events");
    describe_histogram!(BATCH_ROWS, "Rows per INSERT");
    describe_histogram!(BATCH_SECONDS, "Time to insert one batch, retries included");
    describe_counter!(RETRIES, "Failed INSERT attempts that were retried");
    describe_counter!(
        DELETED_USERS_ROWS,
        "Records left out because their user was deleted (received before the request)"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Records sent to the dead-letter topic, by reason"
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Messages behind the partition's high watermark"
    );
}
