//! Prometheus metrics of the query API.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const REQUESTS: &str = "hourglass_query_requests_total";
pub const REQUEST_SECONDS: &str = "hourglass_query_request_seconds";
pub const ERRORS: &str = "hourglass_query_errors_total";
pub const DELETED_EVENTS: &str = "hourglass_query_deleted_events_total";
pub const CLOSED_ANSWERS: &str = "hourglass_query_closed_answers_total";
pub const READER_READ_ONLY: &str = "hourglass_query_reader_read_only";

pub fn describe() {
    describe_counter!(REQUESTS, "requests answered, by route and status");
    describe_histogram!(REQUEST_SECONDS, "request handling time, by route");
    describe_counter!(ERRORS, "refused or failed requests, by code");
    describe_counter!(DELETED_EVENTS, "rows removed from events by user deletions");
    describe_counter!(
        CLOSED_ANSWERS,
        "/v1/metrics answers over closed windows, by whether memory had them (hit) or ClickHouse was asked (miss)"
    );
    describe_gauge!(
        READER_READ_ONLY,
        "1 when the ClickHouse user the API reads as cannot write (query.read_user), 0 when it can"
    );
}

pub fn request(route: &str, status: u16, took: Duration) {
    counter!(REQUESTS, "route" => route.to_owned(), "status" => status.to_string()).increment(1);
    histogram!(REQUEST_SECONDS, "route" => route.to_owned()).record(took.as_secs_f64());
}

pub fn error(code: &'static str) {
    counter!(ERRORS, "code" => code).increment(1);
}

pub fn deletion(events: u64) {
    counter!(DELETED_EVENTS).increment(events);
}

pub fn closed_answer(hit: bool) {
    counter!(CLOSED_ANSWERS, "cache" => if hit { "hit" } else { "miss" }).increment(1);
}

pub fn reader_read_only(read_only: bool) {
    gauge!(READER_READ_ONLY).set(if read_only { 1.0 } else { 0.0 });
}
