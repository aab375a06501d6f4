//! Shared foundation of Hourglass.
//!
//! Every component links this crate and nothing else of each other's:
//! - [`contract`]: the event contract. Raw HTTP batches are validated and
//!   normalized into [`contract::EventEnvelope`], the JSON value of every Kafka
//!   record on the `events` topic, keyed by `project_id:user`.
//! - [`config`]: the one configuration tree (TOML file plus `HOURGLASS_*`
//!   environment overrides), with defaults that work against the local stack.
//! - [`kafka`], [`clickhouse`], [`s3`]: client builders, so no component
//!   writes broker, database or object-store plumbing of its own.
//! - [`consumer`]: the runtime the three Kafka consumers run on (start,
//!   retry with the assignment paused, rejoin a group that forgot them).
//! - [`telemetry`]: tracing, Prometheus metrics and the health endpoints that
//!   every long-running component serves.

pub mod clickhouse;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod dimensions;
pub mod histogram;
pub mod http;
pub mod kafka;
pub mod process;
pub mod s3;
pub mod telemetry;

pub use config::Config;
