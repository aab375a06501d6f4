use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Version of the envelope written by this build. Consumers accept any
/// version and ignore fields they do not know.
pub const SCHEMA_VERSION: u16 = 1;

/// Kafka header carrying [`SCHEMA_VERSION`] so consumers can route without
/// decoding the value.
pub const SCHEMA_VERSION_HEADER: &str = "hourglass-schema-version";

/// A validated, normalized event: the value of every record on the `events`
/// topic, and the row shape of the raw `events` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub schema_version: u16,
    pub project_id: String,
    pub event_id: Uuid,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Event time, corrected for client clock skew when the batch had `sent_at`.
    #[serde(with = "millis_rfc3339")]
    pub timestamp: DateTime<Utc>,
    #[serde(with = "millis_rfc3339")]
    pub received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
}

/// `project_id:user`, the record key of [`EventEnvelope::kafka_key`].
pub(super) fn kafka_key(project_id: &str, user: &str) -> String {
    let mut key = String::with_capacity(project_id.len() + 1 + user.len());
    key.push_str(project_id);
    key.push(':');
    key.push_str(user);
    key
}

/// The envelope's time format: RFC 3339, milliseconds, `Z`.
pub(super) fn rfc3339_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, thiserror::Error)]
#[error("record value is not a valid event envelope: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl EventEnvelope {
    /// The identity whose events must stay ordered: `user_id`, else `anonymous_id`.
    pub fn user(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }

    /// Kafka record key `project_id:user`: one user's events share a partition,
    /// which is what lets per-partition distinct counts add up exactly.
    pub fn kafka_key(&self) -> String {
        kafka_key(&self.project_id, self.user())
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The event's tenant: the top-level `property` of `properties` (see
    /// `contract.tenant_property`), empty when absent. Ingest lets through
    /// only strings; anything else, as in a record older than that rule,
    /// counts as no tenant.
    pub fn tenant(&self, property: &str) -> &str {
        self.properties
            .get(property)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    }

    pub fn timestamp_millis(&self) -> i64 {
        self.timestamp.timestamp_millis()
    }
}

/// RFC 3339 with millisecond precision: what the envelope stores, so a
/// decode/encode round trip is exact.
mod millis_rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-zA-Z0-9 ]{0,12}".prop_map(Value::from),
        ]
    }

    prop_compose! {
        fn envelope()(
            project in "[a-z0-9]{1,8}",
            event in "[a-z_]{1,16}",
            user in proptest::option::of("[a-z0-9-]{1,12}"),
            anon in proptest::option::of("[a-z0-9-]{1,12}"),
            session in proptest::option::of("[a-z0-9]{1,12}"),
            ts in 0i64..4_000_000_000_000,
            rx in 0i64..4_000_000_000_000,
            value in proptest::option::of(-1e12f64..1e12),
            id in any::<u128>(),
            props in proptest::collection::btree_map("[a-z]{1,6}", json_leaf(), 0..5),
        ) -> EventEnvelope {
            EventEnvelope {
                schema_version: SCHEMA_VERSION,
                project_id: project,
                event_id: Uuid::from_u128(id),
                event,
                user_id: user,
                anonymous_id: anon,
                session_id: session,
                timestamp: Utc.timestamp_millis_opt(ts).unwrap(),
                received_at: Utc.timestamp_millis_opt(rx).unwrap(),
                value,
                properties: props.into_iter().collect(),
            }
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(e in envelope()) {
            let back = EventEnvelope::decode(&e.encode()).unwrap();
            prop_assert_eq!(back, e);
        }
    }

    #[test]
    fn decode_tolerates_unknown_fields() {
        let json = r#"{"schema_version":2,"project_id":"p","event_id":"0192f0a4-8a40-7cc0-8000-000000000001",
            "event":"e","user_id":"u","timestamp":"2026-01-01T00:00:00.000Z",
            "received_at":"2026-01-01T00:00:01.000Z","a_field_from_the_future":{"x":1}}"#;
        let e = EventEnvelope::decode(json.as_bytes()).unwrap();
        assert_eq!(e.schema_version, 2);
        assert_eq!(e.kafka_key(), "p:u");
    }

    #[test]
    fn key_falls_back_to_anonymous_id() {
        let json = r#"{"schema_version":1,"project_id":"p","event_id":"0192f0a4-8a40-7cc0-8000-000000000001",
            "event":"e","anonymous_id":"a1","timestamp":"2026-01-01T00:00:00Z","received_at":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(
            EventEnvelope::decode(json.as_bytes()).unwrap().kafka_key(),
            "p:a1"
        );
    }
}
