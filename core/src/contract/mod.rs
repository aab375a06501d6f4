//! The event contract: what apps send, what lands on Kafka.
//!
//! Input events arrive in batches ([`parse_batch`]); each one is validated on
//! its own ([`validate::normalize`]) so one malformed event never costs the rest
//! of the batch. A valid event becomes an [`EventEnvelope`]: the JSON value of
//! a Kafka record whose key is [`EventEnvelope::kafka_key`]. Ingest goes
//! through [`Normalizer`], which gives the same answers and writes native
//! events straight into their record.

mod batch;
pub mod enrich;
mod envelope;
mod limits;
mod native;
mod segment;
mod validate;

pub use batch::{BatchError, ParsedBatch, parse_batch, read_batch};
pub use enrich::{EnrichPolicy, Enrichment};
pub use envelope::{DecodeError, EventEnvelope, SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
pub use limits::ContractLimits;
pub use native::{EncodedEvent, Normalizer};
pub use validate::{Rejection, normalize};
