//! Prometheus metrics of the archiver.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const EVENTS: &str = "hourglass_archiver_events_total";
pub const FILES: &str = "hourglass_archiver_files_total";
pub const BYTES: &str = "hourglass_archiver_bytes_total";
pub const UPLOAD_SECONDS: &str = "hourglass_archiver_upload_seconds";
pub const OPEN_FILES: &str = "hourglass_archiver_open_files";
pub const SKIPPED: &str = "hourglass_archiver_skipped_total";
pub const UNDECODABLE: &str = "hourglass_archiver_undecodable_total";
pub const STORE_ERRORS: &str = "hourglass_archiver_store_errors_total";
pub const COMPACTED_FILES: &str = "hourglass_lake_compacted_files_total";
pub const COMPACTION_OUTPUT_FILES: &str = "hourglass_lake_compaction_output_files_total";
pub const COMPACTION_OUTPUT_BYTES: &str = "hourglass_lake_compaction_output_bytes_total";
pub const COMPACTION_SUPERSEDED: &str = "hourglass_lake_compaction_superseded_removed_total";
pub const COMPACTION_ERRORS: &str = "hourglass_lake_compaction_errors_total";
pub const COMPACTION_BACKED_OFF: &str = "hourglass_lake_compaction_backed_off_total";
pub const CONSUMER_LAG: &str = "hourglass_archiver_consumer_lag_messages";
/// Erasure passes run in `hourglass batch` / `hourglass erase`.
pub const ERASED_EVENTS: &str = "hourglass_lake_erased_events_total";
pub const ERASED_FILES: &str = "hourglass_lake_erased_files_total";

pub fn describe() {
    describe_counter!(EVENTS, "events written to the lake");
    describe_counter!(FILES, "Parquet files written to the lake");
    describe_counter!(BYTES, "Parquet bytes written to the lake");
    describe_histogram!(UPLOAD_SECONDS, "time to write one file to the store");
    describe_gauge!(OPEN_FILES, "files being filled (one per partition at most)");
    describe_gauge!(
        CONSUMER_LAG,
        "Messages behind the partition's high watermark (librdkafka statistics)"
    );
    describe_counter!(
        SKIPPED,
        "records skipped because the lake already holds them (after a crash)"
    );
    describe_counter!(
        UNDECODABLE,
        "records that are not events (left to the loader's dead-letter topic)"
    );
    describe_counter!(
        COMPACTED_FILES,
        "files merged into compacted ones (and removed), by tier (partition, hour)"
    );
    describe_counter!(
        COMPACTION_OUTPUT_FILES,
        "compacted files written, by tier (partition: one partition's files of an hour; hour: every partition's)"
    );
    describe_counter!(
        COMPACTION_OUTPUT_BYTES,
        "bytes of compacted files written, by tier"
    );
    describe_counter!(
        COMPACTION_BACKED_OFF,
        "merges undone because another pass changed their folder meanwhile (sources kept for the next pass)"
    );
    describe_counter!(
        COMPACTION_SUPERSEDED,
        "files a stopped compaction left behind, removed by a later pass"
    );
    describe_counter!(
        COMPACTION_ERRORS,
        "compaction passes that failed (retried next interval)"
    );
    describe_erasure();
    describe_counter!(
        STORE_ERRORS,
        "failed store operations (retried), by operation"
    );
}

/// Help texts of the erasure metrics (the batch layer runs erasure).
pub fn describe_erasure() {
    describe_counter!(
        ERASED_EVENTS,
        "events of deleted users removed from lake files"
    );
    describe_counter!(
        ERASED_FILES,
        "lake files rewritten or removed because they held deleted users' events"
    );
}

pub fn erased(pass: &crate::erase::EraseSummary) {
    counter!(ERASED_EVENTS).increment(pass.events_removed);
    counter!(ERASED_FILES).increment(pass.files_rewritten + pass.files_removed);
}

pub fn file_written(rows: usize, bytes: usize, took: Duration) {
    counter!(EVENTS).increment(rows as u64);
    counter!(FILES).increment(1);
    counter!(BYTES).increment(bytes as u64);
    histogram!(UPLOAD_SECONDS).record(took.as_secs_f64());
}

pub fn open_files(n: usize) {
    gauge!(OPEN_FILES).set(n as f64);
}

pub fn skipped(n: u64) {
    counter!(SKIPPED).increment(n);
}

pub fn undecodable() {
    counter!(UNDECODABLE).increment(1);
}

pub fn store_error(op: &'static str) {
    counter!(STORE_ERRORS, "op" => op).increment(1);
}

pub fn compacted(tier: &'static str, sources: usize, bytes: u64) {
    counter!(COMPACTED_FILES, "tier" => tier).increment(sources as u64);
    counter!(COMPACTION_OUTPUT_FILES, "tier" => tier).increment(1);
    counter!(COMPACTION_OUTPUT_BYTES, "tier" => tier).increment(bytes);
}

pub fn compaction_backed_off() {
    counter!(COMPACTION_BACKED_OFF).increment(1);
}

pub fn compaction_superseded_removed() {
    counter!(COMPACTION_SUPERSEDED).increment(1);
}

pub fn compaction_failed() {
    counter!(COMPACTION_ERRORS).increment(1);
}
