//! Prometheus metrics of the ingest service.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const REQUESTS: &str = "hourglass_ingest_requests_total";
pub const EVENTS_ACCEPTED: &str = "hourglass_ingest_events_accepted_total";
pub const EVENTS_REJECTED: &str = "hourglass_ingest_events_rejected_total";
pub const QUEUE_DEPTH: &str = "hourglass_ingest_producer_queue_events";
pub const DELIVERY_SECONDS: &str = "hourglass_ingest_delivery_seconds";
pub const REQUEST_SECONDS: &str = "hourglass_ingest_request_seconds";
pub const BROKER_STATE: &str = "hourglass_ingest_broker_state";
pub const IN_FLIGHT_BYTES: &str = "hourglass_ingest_in_flight_bytes";
pub const OVER_QUOTA: &str = "hourglass_ingest_over_quota_events_total";

pub fn describe() {
    describe_counter!(REQUESTS, "HTTP requests answered, by route and status");
    describe_counter!(
        EVENTS_ACCEPTED,
        "events acknowledged by the broker, by project"
    );
    describe_counter!(EVENTS_REJECTED, "events refused by validation, by reason");
    describe_counter!(
        OVER_QUOTA,
        "events refused with 429 because their project was over a quota, by project and quota (events_per_sec counts a request's events as they are charged: one before its body is read, the rest after)"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "events in the producer waiting for the broker's acknowledgement"
    );
    describe_histogram!(
        DELIVERY_SECONDS,
        "time from enqueueing a request's events to the broker's last acknowledgement"
    );
    describe_histogram!(REQUEST_SECONDS, "request handling time, by route");
    describe_gauge!(
        IN_FLIGHT_BYTES,
        "memory charged to the requests in flight (bodies as they arrive, decoded events and their copies), against ingest.max_in_flight_bytes"
    );
    describe_gauge!(
        BROKER_STATE,
        "the broker as ingest's probe last saw it: 0 answering, 1 slow (connects, answers late; still publishing), 2 unreachable (answering 503)"
    );
}

pub fn broker_state(health: &crate::broker_health::Health) {
    use crate::broker_health::Health;
    let state = match health {
        Health::Answering => 0.0,
        Health::Slow { .. } => 1.0,
        Health::Unreachable { .. } => 2.0,
    };
    gauge!(BROKER_STATE).set(state);
}

pub fn request(route: &'static str, status: u16, took: Duration) {
    counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    histogram!(REQUEST_SECONDS, "route" => route).record(took.as_secs_f64());
}

pub fn accepted(project: &str, n: usize) {
    counter!(EVENTS_ACCEPTED, "project" => project.to_owned()).increment(n as u64);
}

pub fn over_quota(q: &crate::quota::QuotaExceeded, events: usize) {
    counter!(OVER_QUOTA, "project" => q.project.clone(), "quota" => q.quota.key())
        .increment(events as u64);
}

pub fn rejected(reason: &'static str) {
    counter!(EVENTS_REJECTED, "reason" => reason).increment(1);
}

pub fn queue_depth(n: i32) {
    gauge!(QUEUE_DEPTH).set(f64::from(n));
}

pub fn delivery_latency(took: Duration) {
    histogram!(DELIVERY_SECONDS).record(took.as_secs_f64());
}

pub fn in_flight_bytes(n: usize) {
    gauge!(IN_FLIGHT_BYTES).set(n as f64);
}
