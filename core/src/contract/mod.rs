//! The event contract: what apps send, what lands on Kafka.
//!
//! Input events arrive in batches ([`parse_batch`]); each one is validated on
//! its own ([`validate::normalize`]) so one malformed event never costs the rest
//! of the batch. A valid event becomes an [`EventEnvelope`]: the JSON value of
//! a Kafka record whose key is [`EventEnvelope::kafka_key`].

mod envelope;
mod limits;
mod segment;
mod validate;

pub use envelope::{DecodeError, EventEnvelope, SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
pub use limits::ContractLimits;
pub use validate::{BatchError, ParsedBatch, Rejection, normalize, parse_batch};
