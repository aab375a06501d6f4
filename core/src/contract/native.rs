//! The ingest hot path: events already in our native shape are checked and
//! written straight into the Kafka record, without building a JSON tree.
//!
//! [`normalize`] parses every event into a `serde_json::Value`, rewrites
//! Segment fields, and serializes the envelope again: about two thirds of
//! ingest's CPU per event. Most traffic is native (our SDK shape), so for it
//! this module borrows each field from the request body, checks it by the
//! same rules, and copies `properties` through as sent after one walk that
//! checks its depth and string lengths. Anything else (Segment shapes,
//! camel-case aliases, fields outside the contract, duplicate fields, numbers
//! serde cannot hold) and every event that breaks a rule goes through
//! [`normalize`], so both paths give the same answer for every event and
//! every refusal comes from one place; a property test holds them to it.

use std::borrow::Cow;
use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::envelope::{kafka_key, rfc3339_millis};
use super::validate::{check_len, event_time, finite_value, normalize, valid_tenant};
use super::{ContractLimits, Enrichment, Rejection, SCHEMA_VERSION};

/// One validated event ready for Kafka: its record key (`project_id:user`)
/// and its JSON value, an [`super::EventEnvelope`] once decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    pub key: String,
    pub payload: Vec<u8>,
}

/// Validates and encodes the events of one batch: everything they share
/// (project, receive time, client send time, limits) is worked out once.
pub struct Normalizer<'l> {
    project_id: &'l str,
    received_at: DateTime<Utc>,
    received_at_text: String,
    sent_at: Option<DateTime<Utc>>,
    limits: &'l ContractLimits,
    enrichment: Option<&'l Enrichment>,
}

impl<'l> Normalizer<'l> {
    /// Enrich every event with `enrichment` ([`super::enrich`]).
    pub fn enriching(mut self, enrichment: &'l Enrichment) -> Self {
        self.enrichment = Some(enrichment);
        self
    }

    pub fn new(
        project_id: &'l str,
        received_at: DateTime<Utc>,
        sent_at: Option<DateTime<Utc>>,
        limits: &'l ContractLimits,
    ) -> Self {
        Self {
            project_id,
            received_at,
            received_at_text: rfc3339_millis(received_at),
            sent_at,
            limits,
            enrichment: None,
        }
    }

    /// Validate one raw event and encode its Kafka record. The answer is the
    /// one [`normalize`] gives; only the work differs.
    pub fn encode(&self, raw: &RawValue) -> Result<EncodedEvent, Rejection> {
        if let Some(encoded) = self.encode_native(raw) {
            return Ok(encoded);
        }
        let mut envelope = normalize(
            raw,
            self.project_id,
            self.received_at,
            self.sent_at,
            self.limits,
        )?;
        if let Some(enrichment) = self.enrichment {
            enrichment.apply(&mut envelope.properties);
        }
        Ok(EncodedEvent {
            key: envelope.kafka_key(),
            payload: envelope.encode(),
        })
    }

    /// The record of a valid native event; `None` for anything else, which
    /// [`normalize`] then answers. Refusals are left to it too, because which
    /// rule an event breaks first depends on the order of the checks (it
    /// refuses a number beyond f64 anywhere in the event before looking at
    /// any field), and a refused event is rare enough to parse twice.
    fn encode_native(&self, raw: &RawValue) -> Option<EncodedEvent> {
        let limits = self.limits;
        let size = raw.get().len();
        if size > limits.max_event_bytes {
            return None;
        }
        let fields: NativeFields = serde_json::from_str(raw.get()).ok()?;
        if fields.segment_shaped() {
            return None;
        }

        let event = bounded_string(fields.event?, false, limits.max_event_name_len)?;
        if event.is_empty() {
            return None;
        }
        let user_id = optional_id(fields.user_id, limits)?;
        let anonymous_id = optional_id(fields.anonymous_id, limits)?;
        let user = match (&user_id, &anonymous_id) {
            (Some(u), _) | (None, Some(u)) => u,
            (None, None) => return None,
        };
        let session_id = optional_id(fields.session_id, limits)?;

        let timestamp = match fields.timestamp.map(json_kind) {
            None => None,
            Some(Json::Str(text)) => {
                Some(event_time(&unescape(text)?, self.received_at, self.sent_at, limits).ok()?)
            }
            Some(Json::Number(_) | Json::Other) => return None,
        };

        let event_id = match fields.event_id.map(json_kind) {
            None => Uuid::now_v7(),
            Some(Json::Str(text)) => Uuid::parse_str(&unescape(text)?).ok()?,
            Some(Json::Number(_) | Json::Other) => return None,
        };

        let value = match fields.value.map(json_kind) {
            None => None,
            Some(Json::Number(text)) => {
                let n: serde_json::Number = serde_json::from_str(text).ok()?;
                Some(finite_value(&n).ok()?)
            }
            Some(Json::Str(_) | Json::Other) => return None,
        };

        let properties = match fields.properties {
            None => None,
            Some(raw) if raw.get().starts_with('{') => {
                let entries = check_properties(raw, limits)?;
                (entries > 0).then_some(raw)
            }
            Some(_) => return None,
        };
        let enriched = self.enrichment.map_or("", Enrichment::request_fragment);
        // A `$` name the client sent may be one enrichment replaces: the
        // general path rewrites the object (rare, and only when enriching).
        if !enriched.is_empty() && properties.is_some_and(|p| p.get().contains("\"$")) {
            return None;
        }

        let mut out = Vec::with_capacity(size + 160);
        out.extend_from_slice(b"{\"schema_version\":");
        write!(out, "{SCHEMA_VERSION}").expect("writing to a Vec");
        out.extend_from_slice(b",\"project_id\":");
        write_str(&mut out, self.project_id);
        out.extend_from_slice(b",\"event_id\":\"");
        out.extend_from_slice(
            event_id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"event\":");
        write_str(&mut out, &event);
        for (name, id) in [
            ("user_id", &user_id),
            ("anonymous_id", &anonymous_id),
            ("session_id", &session_id),
        ] {
            if let Some(id) = id {
                write!(out, ",\"{name}\":").expect("writing to a Vec");
                write_str(&mut out, id);
            }
        }
        out.extend_from_slice(b",\"timestamp\":\"");
        match timestamp {
            Some(t) => out.extend_from_slice(rfc3339_millis(t).as_bytes()),
            None => out.extend_from_slice(self.received_at_text.as_bytes()),
        }
        out.extend_from_slice(b"\",\"received_at\":\"");
        out.extend_from_slice(self.received_at_text.as_bytes());
        out.push(b'"');
        if let Some(v) = value {
            out.extend_from_slice(b",\"value\":");
            serde_json::to_writer(&mut out, &v).expect("a finite f64 serializes");
        }
        match (properties, enriched.is_empty()) {
            (Some(raw), true) => {
                out.extend_from_slice(b",\"properties\":");
                out.extend_from_slice(raw.get().as_bytes());
            }
            (Some(raw), false) => {
                // The object without its closing brace, then ours.
                let object = raw.get().trim_end();
                out.extend_from_slice(b",\"properties\":");
                out.extend_from_slice(&object.as_bytes()[..object.len() - 1]);
                out.push(b',');
                out.extend_from_slice(enriched.as_bytes());
                out.push(b'}');
            }
            (None, false) => {
                out.extend_from_slice(b",\"properties\":{");
                out.extend_from_slice(enriched.as_bytes());
                out.push(b'}');
            }
            (None, true) => {}
        }
        out.push(b'}');

        Some(EncodedEvent {
            key: kafka_key(self.project_id, user),
            payload: out,
        })
    }
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("a str serializes");
}

/// The native fields, borrowed from the body. `null` reads as absent, as in
/// [`normalize`]. The Segment and camel-case fields are only noticed: their
/// presence sends the event down the general path, which rewrites them. Any
/// other field does too: [`normalize`] ignores unknown fields but still
/// refuses one it cannot parse (`1e400`, nesting past serde's limit), and
/// skipping them here would accept what it refuses.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeFields<'a> {
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    session_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    #[serde(default, rename = "type", deserialize_with = "present")]
    segment_type: bool,
    #[serde(default, deserialize_with = "present")]
    context: bool,
    #[serde(default, rename = "userId", deserialize_with = "present")]
    user_id_camel: bool,
    #[serde(default, rename = "anonymousId", deserialize_with = "present")]
    anonymous_id_camel: bool,
    #[serde(default, rename = "sessionId", deserialize_with = "present")]
    session_id_camel: bool,
    #[serde(default, rename = "eventId", deserialize_with = "present")]
    event_id_camel: bool,
    #[serde(default, rename = "messageId", deserialize_with = "present")]
    message_id: bool,
}

impl NativeFields<'_> {
    fn segment_shaped(&self) -> bool {
        self.segment_type
            || self.context
            || self.user_id_camel
            || self.anonymous_id_camel
            || self.session_id_camel
            || self.event_id_camel
            || self.message_id
    }
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// What a raw JSON value is, by its first byte.
enum Json<'a> {
    /// A string literal, quotes included.
    Str(&'a str),
    Number(&'a str),
    Other,
}

fn json_kind(raw: &RawValue) -> Json<'_> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => Json::Str(text),
        Some(b'-' | b'0'..=b'9') => Json::Number(text),
        _ => Json::Other,
    }
}

/// A string literal's text: borrowed unless it has escapes.
fn unescape(literal: &str) -> Option<Cow<'_, str>> {
    if literal.contains('\\') {
        serde_json::from_str::<String>(literal).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(&literal[1..literal.len() - 1]))
    }
}

/// A string field within `limit`, possibly empty; ids may be numbers, taken
/// as their text as [`normalize`] does. `None` when not acceptable.
fn bounded_string(raw: &RawValue, numbers: bool, limit: usize) -> Option<Cow<'_, str>> {
    let text = match json_kind(raw) {
        Json::Str(literal) => unescape(literal)?,
        Json::Number(text) if numbers => {
            let n: serde_json::Number = serde_json::from_str(text).ok()?;
            Cow::Owned(n.to_string())
        }
        _ => return None,
    };
    (text.len() <= limit && !text.chars().any(char::is_control)).then_some(text)
}

/// An id field: `Some(None)` when absent or empty, `None` when not acceptable.
fn optional_id<'a>(
    raw: Option<&'a RawValue>,
    limits: &ContractLimits,
) -> Option<Option<Cow<'a, str>>> {
    match raw {
        None => Some(None),
        Some(raw) => {
            let id = bounded_string(raw, true, limits.max_id_len)?;
            Some((!id.is_empty()).then_some(id))
        }
    }
}

/// Walk `properties` once, checking nesting depth and string lengths (keys
/// included) without building anything. Returns its number of entries, or
/// `None` when it breaks a rule.
fn check_properties(raw: &RawValue, limits: &ContractLimits) -> Option<usize> {
    let walk = Walk { depth: 0, limits };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    walk.deserialize(&mut de).ok()
}

/// One value inside `properties`, sitting in a container at `depth` (the
/// `properties` object itself is at depth 1, as in [`normalize`]).
#[derive(Clone, Copy)]
struct Walk<'w> {
    depth: usize,
    limits: &'w ContractLimits,
}

impl Walk<'_> {
    fn check_len<E: de::Error>(&self, s: &str) -> Result<(), E> {
        check_len(s, self.limits).map_err(|_| E::custom("string too long"))
    }

    /// A container one level down, refused past the depth limit.
    fn deeper<E: de::Error>(&self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > self.limits.max_property_depth {
            return Err(E::custom("too deep"));
        }
        Ok(Walk { depth, ..*self })
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<usize, E> {
        self.check_len(s).map(|()| 0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let inner = self.deeper()?;
        let mut entries = 0;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            inner.check_len::<A::Error>(&key)?;
            if self.depth == 0 && key == self.limits.tenant_property.as_str() {
                // The tenant: a string or null (anything else is refused by
                // `normalize`, which names the rule).
                let tenant: Option<Cow<'de, str>> = map.next_value()?;
                if !tenant.is_none_or(|t| valid_tenant(&t, self.limits)) {
                    return Err(de::Error::custom("invalid tenant"));
                }
            } else {
                map.next_value_seed(inner)?;
            }
            entries += 1;
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::EventEnvelope;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    fn slow(json: &str, sent_at: Option<DateTime<Utc>>) -> Result<EventEnvelope, Rejection> {
        slow_enriched(json, sent_at, None)
    }

    fn slow_enriched(
        json: &str,
        sent_at: Option<DateTime<Utc>>,
        enrichment: Option<&Enrichment>,
    ) -> Result<EventEnvelope, Rejection> {
        let raw = RawValue::from_string(json.to_owned()).unwrap();
        let mut envelope = normalize(&raw, "p1", now(), sent_at, &ContractLimits::default())?;
        if let Some(e) = enrichment {
            e.apply(&mut envelope.properties);
        }
        Ok(envelope)
    }

    fn fast(json: &str, sent_at: Option<DateTime<Utc>>) -> Result<EncodedEvent, Rejection> {
        fast_enriched(json, sent_at, None)
    }

    fn fast_enriched(
        json: &str,
        sent_at: Option<DateTime<Utc>>,
        enrichment: Option<&Enrichment>,
    ) -> Result<EncodedEvent, Rejection> {
        let raw = RawValue::from_string(json.to_owned()).unwrap();
        let limits = ContractLimits::default();
        let n = Normalizer::new("p1", now(), sent_at, &limits);
        match enrichment {
            Some(e) => n.enriching(e).encode(&raw),
            None => n.encode(&raw),
        }
    }

    /// A request from Chrome on Windows whose address is kept truncated.
    fn chrome_request() -> Enrichment {
        Enrichment::new(
            crate::contract::EnrichPolicy {
                ip: crate::config::IpPolicy::Truncate,
                ..Default::default()
            },
            Some(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            ),
            Some("203.0.113.77".parse().unwrap()),
        )
    }

    /// Both paths agree, plain and enriched: same rejection code, or
    /// records that decode to the same envelope under the same key (ids
    /// compared only when sent).
    fn agree(json: &str, sent_at: Option<DateTime<Utc>>) -> Result<(), TestCaseError> {
        agree_with(json, sent_at, None)?;
        agree_with(json, sent_at, Some(&chrome_request()))
    }

    fn agree_with(
        json: &str,
        sent_at: Option<DateTime<Utc>>,
        enrichment: Option<&Enrichment>,
    ) -> Result<(), TestCaseError> {
        match (
            slow_enriched(json, sent_at, enrichment),
            fast_enriched(json, sent_at, enrichment),
        ) {
            (Ok(want), Ok(got)) => {
                let mut back = EventEnvelope::decode(&got.payload)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
                prop_assert_eq!(&got.key, &want.kafka_key());
                // Ids assigned on receipt (UUIDv7) differ between two calls.
                if back.event_id.get_version_num() == 7 && want.event_id.get_version_num() == 7 {
                    back.event_id = want.event_id;
                }
                prop_assert_eq!(back, want, "{}", json);
            }
            (Err(want), Err(got)) => prop_assert_eq!(got.code(), want.code(), "{}", json),
            (want, got) => {
                return Err(TestCaseError::fail(format!(
                    "{json}: normalize {want:?}, fast path {got:?}"
                )));
            }
        }
        Ok(())
    }

    fn field_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            Just("\"\"".to_owned()),
            Just("true".to_owned()),
            Just("{\"a\":1}".to_owned()),
            Just("[1]".to_owned()),
            "[a-z0-9/ -]{1,12}".prop_map(|s| format!("\"{s}\"")),
            Just("\"caf\\u00e9 \\\"q\\\"\"".to_owned()),
            Just("\"x\\/y\"".to_owned()),
            (0u64..1_000_000).prop_map(|n| n.to_string()),
            Just("-12.5e2".to_owned()),
            Just("1e400".to_owned()),
            Just("{\"deep\":[-1e400]}".to_owned()),
            Just("\"2026-11-25T11:59:00.123Z\"".to_owned()),
            Just("\"2026-11-25T11:59:00+02:00\"".to_owned()),
            Just("\"0192f0a4-8a40-7cc0-8000-000000000001\"".to_owned()),
            Just("\"0192F0A48A407CC08000000000000001\"".to_owned()),
            Just(format!("\"{}\"", "z".repeat(300))),
        ]
    }

    fn properties() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{}".to_owned()),
            Just("null".to_owned()),
            Just("[1,2]".to_owned()),
            Just("\"text\"".to_owned()),
            Just("{ \"path\" : \"/a\", \"n\": 1.50, \"big\": 18446744073709551615 }".to_owned()),
            Just("{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":1}}}}}}}".to_owned()),
            Just("{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":1}}}}}}}}".to_owned()),
            Just("{\"a\":[[[[[[1]]]]]]}".to_owned()),
            Just("{\"a\":[[[[[[[1]]]]]]]}".to_owned()),
            Just(format!("{{\"k\":\"{}\"}}", "y".repeat(9000))),
            Just(format!("{{\"{}\":1}}", "k".repeat(9000))),
            Just(
                "{\"esc\":\"tab\\there\",\"u\":\"\\ud83d\\ude00\",\"nested\":{\"x\":[true,null]}}"
                    .to_owned()
            ),
            // Names enrichment writes, sent by the client.
            Just("{\"$browser\":\"forged\",\"$ip\":\"1.2.3.4\",\"x\":1}".to_owned()),
            Just("{\"price\":\"$5\"}".to_owned()),
        ]
    }

    prop_compose! {
        fn native_event()(
            fields in proptest::collection::vec(
                (prop_oneof![
                    Just("event"), Just("user_id"), Just("anonymous_id"), Just("session_id"),
                    Just("timestamp"), Just("event_id"), Just("value"), Just("extra"),
                    Just("userId"), Just("type"), Just("context"), Just("messageId"),
                ], field_value()),
                0..7,
            ),
            event in proptest::option::of("[a-z_]{1,10}"),
            user in proptest::option::of("[a-z0-9]{1,8}"),
            props in proptest::option::of(properties()),
        ) -> String {
            let mut parts = Vec::new();
            if let Some(e) = event { parts.push(format!("\"event\":\"{e}\"")); }
            if let Some(u) = user { parts.push(format!("\"user_id\":\"{u}\"")); }
            for (name, value) in fields { parts.push(format!("\"{name}\":{value}")); }
            if let Some(p) = props { parts.push(format!("\"properties\":{p}")); }
            format!("{{{}}}", parts.join(","))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn fast_path_answers_as_normalize(json in native_event(), skew in proptest::bool::ANY) {
            let sent_at = skew.then(|| Utc.with_ymd_and_hms(2026, 11, 25, 12, 10, 0).unwrap());
            agree(&json, sent_at)?;
        }
    }

    #[test]
    fn numbers_beyond_f64_are_refused_by_both_paths() {
        for json in [
            r#"{"event":"e","user_id":"u","value":1e400}"#,
            r#"{"event":"e","user_id":1e400}"#,
            r#"{"event":"e","user_id":"u","properties":{"n":-1e400}}"#,
            r#"{"event":"e","user_id":"u","extra":1e400}"#,
            r#"{"event":"e","user_id":"u","extra":{"n":[1e400]}}"#,
        ] {
            assert_eq!(
                slow(json, None).unwrap_err(),
                Rejection::NumberOutOfRange,
                "{json}"
            );
            assert_eq!(
                fast(json, None).unwrap_err(),
                Rejection::NumberOutOfRange,
                "{json}"
            );
        }
    }

    #[test]
    fn native_events_take_the_fast_path() {
        let limits = ContractLimits::default();
        let n = Normalizer::new("p1", now(), None, &limits);
        let raw = RawValue::from_string(
            r#"{"event":"view","user_id":"u1","properties":{"path":"/a"}}"#.into(),
        )
        .unwrap();
        assert!(n.encode_native(&raw).is_some());
        // Only the top-level tenant is the tenant; the same key deeper is data.
        let tenant = RawValue::from_string(
            r#"{"event":"view","user_id":"u1","properties":{"tenant_id":"acme","a":{"tenant_id":5}}}"#.into(),
        )
        .unwrap();
        assert!(n.encode_native(&tenant).is_some());
        let segment =
            RawValue::from_string(r#"{"type":"track","event":"view","userId":"u1"}"#.into())
                .unwrap();
        assert!(n.encode_native(&segment).is_none());
        assert_eq!(n.encode(&segment).unwrap().key, "p1:u1");
    }

    #[test]
    fn properties_are_copied_as_sent() {
        let got = fast(
            r#"{"event":"e","user_id":"u","properties":{"b":1,"a":"x"}}"#,
            None,
        )
        .unwrap();
        let text = String::from_utf8(got.payload).unwrap();
        assert!(
            text.ends_with(r#","properties":{"b":1,"a":"x"}}"#),
            "{text}"
        );
    }
}
