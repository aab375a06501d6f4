use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{ContractLimits, EventEnvelope, SCHEMA_VERSION};

/// Why one event of a batch was refused. The batch's other events go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("event is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("missing required field `event`")]
    MissingEvent,
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{field}` is {len} bytes, over the limit of {limit}")]
    TooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    #[error("field `{0}` holds a control character")]
    ControlCharacter(&'static str),
    #[error("one of `user_id` or `anonymous_id` is required")]
    MissingIdentity,
    #[error("`timestamp` is not an RFC 3339 date-time: {0}")]
    BadTimestamp(String),
    #[error(
        "`timestamp` is {timestamp}{skew}, more than {limit} {direction} the time it was received ({received}){hint}"
    )]
    TimestampOutOfRange {
        timestamp: String,
        skew: &'static str,
        limit: String,
        direction: &'static str,
        received: String,
        hint: &'static str,
    },
    #[error("`event_id` is not a UUID: {0}")]
    BadEventId(String),
    #[error("`value` must be a finite number")]
    BadValue,
    #[error("a number is out of range (beyond what a 64-bit float holds)")]
    NumberOutOfRange,
    #[error("`properties` nest deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("a string inside `properties` is {len} bytes, over the limit of {limit}")]
    PropertyTooLong { len: usize, limit: usize },
    #[error(
        "`properties.{property}` names the event's tenant: it must be a string of at most {limit} bytes without control characters"
    )]
    BadTenant { property: String, limit: usize },
    #[error(
        "unknown Segment `type` {0:?} (expected track, page, screen, identify, group or alias)"
    )]
    UnknownType(String),
}

impl Rejection {
    /// A short stable label, for metrics (bounded cardinality).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NotAnObject => "not_an_object",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::MissingEvent => "missing_event",
            Rejection::WrongType { .. } => "wrong_type",
            Rejection::TooLong { .. } => "too_long",
            Rejection::Empty(_) => "empty",
            Rejection::ControlCharacter(_) => "control_character",
            Rejection::MissingIdentity => "missing_identity",
            Rejection::BadTimestamp(_) => "bad_timestamp",
            Rejection::TimestampOutOfRange { .. } => "timestamp_out_of_range",
            Rejection::BadEventId(_) => "bad_event_id",
            Rejection::BadValue => "bad_value",
            Rejection::NumberOutOfRange => "number_out_of_range",
            Rejection::TooDeep { .. } => "too_deep",
            Rejection::PropertyTooLong { .. } => "property_too_long",
            Rejection::BadTenant { .. } => "invalid_tenant",
            Rejection::UnknownType(_) => "unknown_type",
        }
    }
}

pub(super) fn parse_time(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc))
}

/// An event's `timestamp` text, shifted by `received_at - sent_at` when the
/// batch says when it was sent (the client's clock skew), then held to
/// `[received_at - max_past_days, received_at + max_future_secs]`: a time
/// outside would poison the speed layer (a watermark years ahead closes
/// every window) or land in partitions nobody reads.
pub(super) fn event_time(
    text: &str,
    received_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    limits: &ContractLimits,
) -> Result<DateTime<Utc>, Rejection> {
    let t = parse_time(text).map_err(|e| Rejection::BadTimestamp(e.to_string()))?;
    let t = match sent_at {
        Some(sent) => t.checked_add_signed(received_at - sent),
        None => Some(t),
    };
    let show = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let out_of_range = |timestamp: String, future: bool| Rejection::TimestampOutOfRange {
        timestamp,
        skew: if sent_at.is_some() {
            " after the clock-skew correction (`sent_at`)"
        } else {
            ""
        },
        limit: if future {
            format!("{} s", limits.max_future_secs)
        } else {
            format!("{} days", limits.max_past_days)
        },
        direction: if future { "after" } else { "before" },
        received: show(received_at),
        hint: if future || limits.max_past_days >= limits.import_max_past_days {
            ""
        } else {
            "; older history goes through /v1/import"
        },
    };
    let Some(t) = t else {
        return Err(out_of_range(text.to_owned(), true));
    };
    if t > received_at + chrono::Duration::seconds(i64::from(limits.max_future_secs)) {
        return Err(out_of_range(show(t), true));
    }
    if t < received_at - chrono::Duration::days(i64::from(limits.max_past_days)) {
        return Err(out_of_range(show(t), false));
    }
    Ok(t)
}

/// `value` as a finite f64.
pub(super) fn finite_value(n: &serde_json::Number) -> Result<f64, Rejection> {
    n.as_f64()
        .filter(|v| v.is_finite())
        .ok_or(Rejection::BadValue)
}

/// Validate one raw event and normalize it into the Kafka envelope. Native
/// and Segment-shaped events are both accepted (see [`super::segment`]).
///
/// `sent_at` is the batch's client send time: when present the event time is
/// shifted by `received_at - sent_at`, correcting the client's clock skew the
/// way Segment does.
pub fn normalize(
    raw: &RawValue,
    project_id: &str,
    received_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    limits: &ContractLimits,
) -> Result<EventEnvelope, Rejection> {
    let size = raw.get().len();
    if size > limits.max_event_bytes {
        return Err(Rejection::TooLarge {
            size,
            limit: limits.max_event_bytes,
        });
    }
    let mut object = match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(Rejection::NotAnObject),
        // The batch parser already checked the syntax; what fails now is a
        // number no f64 holds, or serde_json's recursion limit.
        Err(e) if e.to_string().starts_with("number out of range") => {
            return Err(Rejection::NumberOutOfRange);
        }
        Err(_) => {
            return Err(Rejection::TooDeep {
                limit: limits.max_property_depth,
            });
        }
    };
    super::segment::to_native(&mut object)?;

    let event = match object.remove("event") {
        None | Some(Value::Null) => return Err(Rejection::MissingEvent),
        Some(v) => bounded_string(v, "event", limits.max_event_name_len)?,
    };
    let event = event.ok_or(Rejection::Empty("event"))?;
    let user_id = optional_id(&mut object, "user_id", limits)?;
    let anonymous_id = optional_id(&mut object, "anonymous_id", limits)?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(Rejection::MissingIdentity);
    }
    let session_id = optional_id(&mut object, "session_id", limits)?;

    let timestamp = match object.remove("timestamp") {
        None | Some(Value::Null) => received_at,
        Some(Value::String(s)) => event_time(&s, received_at, sent_at, limits)?,
        Some(_) => {
            return Err(Rejection::WrongType {
                field: "timestamp",
                expected: "an RFC 3339 string",
            });
        }
    };

    let event_id = match object.remove("event_id") {
        None | Some(Value::Null) => Uuid::now_v7(),
        Some(Value::String(s)) => {
            Uuid::parse_str(&s).map_err(|e| Rejection::BadEventId(e.to_string()))?
        }
        Some(_) => {
            return Err(Rejection::WrongType {
                field: "event_id",
                expected: "a UUID string",
            });
        }
    };

    let value = match object.remove("value") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(finite_value(&n)?),
        Some(_) => return Err(Rejection::BadValue),
    };

    let properties = match object.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => {
            check_nested(&map, 1, limits)?;
            check_tenant(map.get(&limits.tenant_property), limits)?;
            map
        }
        Some(_) => {
            return Err(Rejection::WrongType {
                field: "properties",
                expected: "a JSON object",
            });
        }
    };

    Ok(EventEnvelope {
        schema_version: SCHEMA_VERSION,
        project_id: project_id.to_owned(),
        event_id,
        event,
        user_id,
        anonymous_id,
        session_id,
        timestamp,
        received_at,
        value,
        properties,
    })
}

/// A string field, `None` when empty.
fn bounded_string(
    value: Value,
    field: &'static str,
    limit: usize,
) -> Result<Option<String>, Rejection> {
    let text = match value {
        Value::String(s) => s,
        // Numeric ids are common in the wild (Segment accepts them too).
        Value::Number(n) if field != "event" => n.to_string(),
        _ => {
            return Err(Rejection::WrongType {
                field,
                expected: "a string",
            });
        }
    };
    if text.len() > limit {
        return Err(Rejection::TooLong {
            field,
            len: text.len(),
            limit,
        });
    }
    // Names and ids become parts of rollup keys, Kafka keys and log lines,
    // where a control character (the key separator U+001F, a newline) could
    // forge another key or line.
    if text.chars().any(char::is_control) {
        return Err(Rejection::ControlCharacter(field));
    }
    Ok((!text.is_empty()).then_some(text))
}

/// The tenant property, when present, is a plain string: every layer reads
/// it as text (a number or object would be one tenant to the rollups and
/// another to the raw reads), and it scopes reads and deletions.
fn check_tenant(value: Option<&Value>, limits: &ContractLimits) -> Result<(), Rejection> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if valid_tenant(s, limits) => Ok(()),
        Some(_) => Err(Rejection::BadTenant {
            property: limits.tenant_property.clone(),
            limit: limits.max_id_len,
        }),
    }
}

pub(super) fn valid_tenant(tenant: &str, limits: &ContractLimits) -> bool {
    tenant.len() <= limits.max_id_len && !tenant.chars().any(char::is_control)
}

fn optional_id(
    object: &mut Map<String, Value>,
    field: &'static str,
    limits: &ContractLimits,
) -> Result<Option<String>, Rejection> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => bounded_string(v, field, limits.max_id_len),
    }
}

fn check_nested(
    map: &Map<String, Value>,
    depth: usize,
    limits: &ContractLimits,
) -> Result<(), Rejection> {
    if depth > limits.max_property_depth {
        return Err(Rejection::TooDeep {
            limit: limits.max_property_depth,
        });
    }
    for (key, value) in map {
        check_len(key, limits)?;
        check_value(value, depth, limits)?;
    }
    Ok(())
}

fn check_value(value: &Value, depth: usize, limits: &ContractLimits) -> Result<(), Rejection> {
    match value {
        Value::String(s) => check_len(s, limits),
        Value::Object(map) => check_nested(map, depth + 1, limits),
        Value::Array(items) => {
            if depth + 1 > limits.max_property_depth {
                return Err(Rejection::TooDeep {
                    limit: limits.max_property_depth,
                });
            }
            items
                .iter()
                .try_for_each(|v| check_value(v, depth + 1, limits))
        }
        _ => Ok(()),
    }
}

pub(super) fn check_len(s: &str, limits: &ContractLimits) -> Result<(), Rejection> {
    if s.len() > limits.max_string_len {
        return Err(Rejection::PropertyTooLong {
            len: s.len(),
            limit: limits.max_string_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_batch;
    use chrono::TimeZone;

    fn limits() -> ContractLimits {
        ContractLimits::default()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    fn one(json: &str) -> Result<EventEnvelope, Rejection> {
        let raw = RawValue::from_string(json.to_owned()).unwrap();
        normalize(&raw, "p1", now(), None, &limits())
    }

    #[test]
    fn minimal_event_is_normalized() {
        let e = one(r#"{"event":"signup","user_id":"u1"}"#).unwrap();
        assert_eq!(e.project_id, "p1");
        assert_eq!(e.timestamp, now(), "timestamp defaults to received time");
        assert_eq!(e.received_at, now());
        assert_eq!(e.event_id.get_version_num(), 7, "assigned ids are UUIDv7");
        assert_eq!(e.kafka_key(), "p1:u1");
        assert_eq!(e.schema_version, SCHEMA_VERSION);
    }

    #[test]
    fn full_event_keeps_every_field() {
        let e = one(
            r#"{"event":"api","user_id":"u","anonymous_id":"a","session_id":"s","timestamp":"2026-11-25T11:00:00.250Z",
                "event_id":"0192f0a4-8a40-7cc0-8000-000000000001","value":12.5,"properties":{"path":"/x"},"extra":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(e.anonymous_id.as_deref(), Some("a"));
        assert_eq!(e.session_id.as_deref(), Some("s"));
        assert_eq!(
            e.timestamp_millis(),
            now().timestamp_millis() - 3_600_000 + 250
        );
        assert_eq!(
            e.event_id.to_string(),
            "0192f0a4-8a40-7cc0-8000-000000000001"
        );
        assert_eq!(e.value, Some(12.5));
        assert_eq!(e.properties["path"], "/x");
    }

    #[test]
    fn sent_at_corrects_clock_skew() {
        // Client clock runs 10 minutes fast: sent_at says 12:10, we received at 12:00.
        let raw = RawValue::from_string(
            r#"{"event":"e","user_id":"u","timestamp":"2026-11-25T12:05:00Z"}"#.into(),
        )
        .unwrap();
        let sent = Utc.with_ymd_and_hms(2026, 11, 25, 12, 10, 0).unwrap();
        let e = normalize(&raw, "p", now(), Some(sent), &limits()).unwrap();
        assert_eq!(
            e.timestamp,
            Utc.with_ymd_and_hms(2026, 11, 25, 11, 55, 0).unwrap()
        );
    }

    fn at(
        timestamp: &str,
        sent_at: Option<&str>,
        limits: &ContractLimits,
    ) -> Result<DateTime<Utc>, Rejection> {
        let raw = RawValue::from_string(format!(
            r#"{{"event":"e","user_id":"u","timestamp":"{timestamp}"}}"#
        ))
        .unwrap();
        let sent = sent_at.map(|s| parse_time(s).unwrap());
        let slow = normalize(&raw, "p", now(), sent, limits).map(|e| e.timestamp);
        // The fast path gives the same answer (it falls back to the slow one
        // for anything it refuses).
        let fast = super::super::Normalizer::new("p", now(), sent, limits)
            .encode(&raw)
            .map(|_| ());
        assert_eq!(fast.is_ok(), slow.is_ok(), "{timestamp} {sent_at:?}");
        slow
    }

    fn out_of_range(r: Result<DateTime<Utc>, Rejection>) -> String {
        match r {
            Err(e @ Rejection::TimestampOutOfRange { .. }) => {
                assert_eq!(e.code(), "timestamp_out_of_range");
                e.to_string()
            }
            other => panic!("expected timestamp_out_of_range, got {other:?}"),
        }
    }

    #[test]
    fn event_times_outside_the_bounds_are_refused_with_the_bound() {
        let l = limits();
        // Far future and far past, as a hostile or broken client sends them.
        for t in [
            "2099-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
        ] {
            let msg = out_of_range(at(t, None, &l));
            assert!(msg.contains("received (2026-11-25T12:00:00.000Z)"), "{msg}");
        }
        assert!(
            out_of_range(at("2099-01-01T00:00:00Z", None, &l)).contains("more than 600 s after")
        );
        assert!(
            out_of_range(at("2026-10-01T00:00:00Z", None, &l))
                .contains("more than 31 days before the time it was received (2026-11-25T12:00:00.000Z); older history goes through /v1/import")
        );
        // Just inside either bound.
        assert!(at("2026-11-25T12:10:00Z", None, &l).is_ok());
        assert!(at("2026-10-25T12:00:00Z", None, &l).is_ok());
        assert!(at("2026-11-25T12:10:00.001Z", None, &l).is_err());
        assert!(at("2026-10-25T11:59:59.999Z", None, &l).is_err());
    }

    #[test]
    fn the_bounds_apply_after_the_clock_skew_correction() {
        let l = limits();
        // A client clock a year behind: its "now" is fine once corrected.
        assert_eq!(
            at("2025-11-25T11:59:00Z", Some("2025-11-25T12:00:00Z"), &l).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 25, 11, 59, 0).unwrap()
        );
        // A sane timestamp that a skewed `sent_at` throws into 2099, or past
        // what a date can hold.
        let msg = out_of_range(at("2026-11-25T12:00:00Z", Some("1954-01-01T00:00:00Z"), &l));
        assert!(msg.contains("after the clock-skew correction"), "{msg}");
        out_of_range(at("9999-12-31T00:00:00Z", Some("0001-01-01T00:00:00Z"), &l));
        out_of_range(at("2026-11-25T12:00:00Z", Some("2099-01-01T00:00:00Z"), &l));
    }

    #[test]
    fn import_accepts_history_up_to_its_own_bound() {
        let l = limits();
        let import = l.for_import();
        assert!(at("2024-01-01T00:00:00Z", None, &l).is_err());
        assert!(at("2024-01-01T00:00:00Z", None, &import).is_ok());
        let msg = out_of_range(at("2020-01-01T00:00:00Z", None, &import));
        assert!(
            msg.contains("1830 days before") && !msg.contains("/v1/import"),
            "{msg}"
        );
        // The future is no more open to an import.
        out_of_range(at("2099-01-01T00:00:00Z", None, &import));
    }

    #[test]
    fn every_rule_rejects_with_its_reason() {
        let long = "x".repeat(300);
        let cases: Vec<(String, &str)> = vec![
            ("[1]".into(), "not_an_object"),
            (r#""text""#.into(), "not_an_object"),
            (r#"{"user_id":"u"}"#.into(), "missing_event"),
            (r#"{"event":null,"user_id":"u"}"#.into(), "missing_event"),
            (r#"{"event":5,"user_id":"u"}"#.into(), "wrong_type"),
            (r#"{"event":"","user_id":"u"}"#.into(), "empty"),
            (format!(r#"{{"event":"{long}","user_id":"u"}}"#), "too_long"),
            (r#"{"event":"e"}"#.into(), "missing_identity"),
            (r#"{"event":"e","user_id":""}"#.into(), "missing_identity"),
            (r#"{"event":"e","user_id":{"a":1}}"#.into(), "wrong_type"),
            (format!(r#"{{"event":"e","user_id":"{long}"}}"#), "too_long"),
            (format!(r#"{{"event":"e","user_id":"u","session_id":"{long}"}}"#), "too_long"),
            (r#"{"event":"e","user_id":"u","timestamp":"yesterday"}"#.into(), "bad_timestamp"),
            (r#"{"event":"e","user_id":"u","timestamp":1700000000}"#.into(), "wrong_type"),
            (r#"{"event":"e","user_id":"u","event_id":"nope"}"#.into(), "bad_event_id"),
            (r#"{"event":"e","user_id":"u","event_id":7}"#.into(), "wrong_type"),
            (r#"{"event":"e","user_id":"u","value":"12"}"#.into(), "bad_value"),
            (r#"{"event":"a\u001fb","user_id":"u"}"#.into(), "control_character"),
            (r#"{"event":"e","user_id":"u\n2"}"#.into(), "control_character"),
            (r#"{"event":"e","anonymous_id":"a\u0000"}"#.into(), "control_character"),
            (r#"{"event":"e","user_id":"u","session_id":"s\u007f"}"#.into(), "control_character"),
            (r#"{"event":"e","user_id":"u","properties":[1]}"#.into(), "wrong_type"),
            (r#"{"event":"e","user_id":"u","properties":{"tenant_id":5}}"#.into(), "invalid_tenant"),
            (r#"{"event":"e","user_id":"u","properties":{"tenant_id":{"a":"t"}}}"#.into(), "invalid_tenant"),
            (r#"{"event":"e","user_id":"u","properties":{"tenant_id":"t\u001f2"}}"#.into(), "invalid_tenant"),
            (format!(r#"{{"event":"e","user_id":"u","properties":{{"tenant_id":"{long}"}}}}"#), "invalid_tenant"),
            (
                r#"{"event":"e","user_id":"u","properties":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}}"#.into(),
                "too_deep",
            ),
            (
                r#"{"event":"e","user_id":"u","properties":{"a":[[[[[[[[1]]]]]]]]}}"#.into(),
                "too_deep",
            ),
            (
                format!(r#"{{"event":"e","user_id":"u","properties":{{"k":"{}"}}}}"#, "y".repeat(9000)),
                "property_too_long",
            ),
            (
                format!(r#"{{"event":"e","user_id":"u","properties":{{"k":"{}"}}}}"#, "y".repeat(40_000)),
                "too_large",
            ),
        ];
        for (json, code) in cases {
            let err = one(&json).expect_err(&json);
            assert_eq!(err.code(), code, "{json}: {err}");
            assert!(!err.to_string().is_empty());
            let raw = RawValue::from_string(json.clone()).unwrap();
            let fast = super::super::Normalizer::new("p1", now(), None, &limits())
                .encode(&raw)
                .map(|_| ())
                .expect_err(&json);
            assert_eq!(fast.code(), code, "fast path, {json}");
        }
    }

    #[test]
    fn nesting_at_the_limit_is_accepted() {
        // properties itself is level 1; 8 levels in all.
        let e = one(
            r#"{"event":"e","user_id":"u","properties":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":1}}}}}}}}}"#,
        );
        assert!(e.is_ok(), "{e:?}");
    }

    #[test]
    fn numeric_user_ids_become_strings() {
        assert_eq!(
            one(r#"{"event":"e","user_id":42}"#)
                .unwrap()
                .user_id
                .as_deref(),
            Some("42")
        );
    }

    #[test]
    fn one_bad_event_does_not_spoil_the_batch() {
        let b = parse_batch(
            br#"[{"event":"a","user_id":"u"},{"user_id":"u"},{"event":"c","anonymous_id":"x"}]"#,
            &limits(),
        )
        .unwrap();
        let results: Vec<_> = b
            .events
            .iter()
            .map(|r| normalize(r, "p", now(), b.sent_at, &limits()))
            .collect();
        assert!(results[0].is_ok());
        assert_eq!(results[1].as_ref().unwrap_err(), &Rejection::MissingEvent);
        assert!(results[2].is_ok());
    }
}
