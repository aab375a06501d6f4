//! The end-to-end suites, one module each, built as one test binary (one
//! compile and one link instead of one per suite). Each suite runs against
//! the local stack with its own database, topic and groups; the README's
//! test command runs them one at a time on an empty broker:
//! `cargo test --release -p hourglass --test e2e -- SUITE::`.

mod common;

mod aggregator_exactly_once;
mod aggregator_refused;
mod batch_end_to_end;
mod clickhouse_cluster;
mod consumer_runtime;
mod helm_chart;
mod ingest_broker_outage;
mod ingest_http;
mod kafka_topics;
mod lake_archive;
mod lake_erasure;
mod lake_replay;
mod loader_deletions;
mod loader_exactly_once;
mod loader_refused;
mod modern_clickhouse;
mod project_quotas;
mod query_api;
mod retention;
mod up_demo;
