//! Kafka record → `events` row, or the reason it can never be loaded.

use clickhouse::Row;
use hourglass_core::contract::EventEnvelope;
use hourglass_core::dimensions::Dimensions;
use serde::Serialize;

/// One row of `events`, in the table's column order (RowBinary).
#[derive(Debug, Clone, PartialEq, Row, Serialize)]
pub struct EventRow {
    pub project_id: String,
    pub event: String,
    pub event_id: String,
    pub user_id: String,
    pub anonymous_id: String,
    pub session_id: String,
    pub timestamp: u32,
    pub timestamp_ms: i64,
    pub received_at: u32,
    pub value: Option<f64>,
    pub properties: String,
    pub schema_version: u16,
    pub kafka_partition: u16,
    pub kafka_offset: i64,
    /// The aggregator's key text of the configured dimensions.
    pub dimensions: String,
    /// The event's tenant (`contract.tenant_property`), empty for none.
    pub tenant_id: String,
}

/// What a row takes from the configuration: the dimensions the aggregator
/// keys by and the property naming the tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowShape {
    pub dims: Dimensions,
    pub tenant_property: String,
}

impl From<&hourglass_core::Config> for RowShape {
    fn from(cfg: &hourglass_core::Config) -> Self {
        Self {
            dims: Dimensions::from(&cfg.aggregator),
            tenant_property: cfg.contract.tenant_property.clone(),
        }
    }
}

/// Why a record goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("record has no value")]
    Empty,
    #[error("{0}")]
    Undecodable(String),
    #[error(
        "{field} {value} is outside what a ClickHouse DateTime holds (1970-01-01 to 2106-02-07)"
    )]
    OutOfRange { field: &'static str, value: String },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Empty => "empty",
            Refusal::Undecodable(_) => "undecodable",
            Refusal::OutOfRange { .. } => "out_of_range",
        }
    }
}

fn datetime(field: &'static str, t: chrono::DateTime<chrono::Utc>) -> Result<u32, Refusal> {
    u32::try_from(t.timestamp()).map_err(|_| Refusal::OutOfRange {
        field,
        value: t.to_rfc3339(),
    })
}

/// Decode one record value into a row.
pub fn to_row(
    payload: Option<&[u8]>,
    partition: i32,
    offset: i64,
    shape: &RowShape,
) -> Result<EventRow, Refusal> {
    let bytes = payload.ok_or(Refusal::Empty)?;
    let e = EventEnvelope::decode(bytes).map_err(|e| Refusal::Undecodable(e.to_string()))?;
    from_envelope(e, partition, offset, shape)
}

/// An envelope (from Kafka or the lake) into a row.
pub fn from_envelope(
    e: EventEnvelope,
    partition: i32,
    offset: i64,
    shape: &RowShape,
) -> Result<EventRow, Refusal> {
    Ok(EventRow {
        dimensions: shape.dims.key(&e.properties),
        tenant_id: e.tenant(&shape.tenant_property).to_owned(),
        timestamp: datetime("timestamp", e.timestamp)?,
        timestamp_ms: e.timestamp.timestamp_millis(),
        received_at: datetime("received_at", e.received_at)?,
        properties: serde_json::to_string(&e.properties).expect("a JSON map serializes"),
        project_id: e.project_id,
        event: e.event,
        event_id: e.event_id.to_string(),
        user_id: e.user_id.unwrap_or_default(),
        anonymous_id: e.anonymous_id.unwrap_or_default(),
        session_id: e.session_id.unwrap_or_default(),
        value: e.value,
        schema_version: e.schema_version,
        kafka_partition: partition as u16,
        kafka_offset: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"schema_version":1,"project_id":"p","event_id":"0192f0a4-8a40-7cc0-8000-000000000001",
        "event":"e","user_id":"u","timestamp":"2026-01-01T00:00:00.250Z","received_at":"2026-01-01T00:00:01Z",
        "value":2.5,"properties":{"a":1,"org":"acme","x":{"org":"other"}},"from_the_future":true}"#;

    fn dims() -> RowShape {
        RowShape {
            dims: Dimensions {
                names: vec!["a".into(), "b".into()],
                max_len: 64,
            },
            tenant_property: "org".into(),
        }
    }

    #[test]
    fn a_record_becomes_a_row() {
        let r = to_row(Some(GOOD.as_bytes()), 3, 42, &dims()).unwrap();
        assert_eq!(r.timestamp, 1_767_225_600);
        assert_eq!(r.timestamp_ms, 1_767_225_600_250);
        assert_eq!(r.received_at, 1_767_225_601);
        assert_eq!((r.kafka_partition, r.kafka_offset), (3, 42));
        assert_eq!(r.properties, r#"{"a":1,"org":"acme","x":{"org":"other"}}"#);
        assert_eq!(r.tenant_id, "acme");
        assert_eq!(r.anonymous_id, "");
        assert_eq!(r.value, Some(2.5));
        assert_eq!(r.dimensions, r#"{"a":"1","b":""}"#);
    }

    #[test]
    fn poison_records_are_refused_with_a_reason() {
        assert_eq!(to_row(None, 0, 0, &dims()).unwrap_err(), Refusal::Empty);
        assert_eq!(
            to_row(Some(b"not json"), 0, 0, &dims()).unwrap_err().code(),
            "undecodable"
        );
        let early = GOOD.replace("2026-01-01T00:00:00.250Z", "1969-12-31T23:59:59Z");
        assert_eq!(
            to_row(Some(early.as_bytes()), 0, 0, &dims())
                .unwrap_err()
                .code(),
            "out_of_range"
        );
    }
}
