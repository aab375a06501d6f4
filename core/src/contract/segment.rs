//! Segment's HTTP Tracking API shape, mapped onto our event before validation,
//! so Segment SDKs work unchanged when pointed at Hourglass.
//!
//! | Segment                         | Hourglass                                        |
//! |---------------------------------|--------------------------------------------------|
//! | `userId`, `anonymousId`         | `user_id`, `anonymous_id`                        |
//! | `messageId`                     | `event_id` (a non-UUID id becomes a UUIDv5 of it)|
//! | `sessionId`, `context.sessionId`| `session_id`                                     |
//! | `type: track` + `event`         | `event`                                          |
//! | `type: page` / `screen`         | `event: "$page"` / `"$screen"`; `name`, `category` into `properties` |
//! | `type: identify`                | `event: "$identify"`; `traits` into `properties` |
//! | `type: group`                   | `event: "$group"`; `traits` + `group_id` into `properties` |
//! | `type: alias`                   | `event: "$alias"`; `previous_id` into `properties` |
//! | `properties.value` (a number)   | `value`, when the event has no top-level `value` |
//! | `context`                       | `properties.context` (kept whole)                |
//! | `integrations`, `writeKey`, …   | dropped (routing hints for Segment's destinations) |

use serde_json::{Map, Value};
use uuid::Uuid;

use super::Rejection;

/// Namespace of the UUIDv5 ids derived from Segment `messageId`s that are
/// not UUIDs themselves (the Node SDK sends `node-next-…` ids): the same
/// message id always maps to the same event id, so client retries stay
/// recognisable as duplicates.
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c52_94a4_4b53_9d0e_2a6f_8e1c_7d40);

/// Camel-case spellings accepted for native fields (what Segment and most
/// JavaScript clients send).
const ALIASES: [(&str, &str); 4] = [
    ("userId", "user_id"),
    ("anonymousId", "anonymous_id"),
    ("sessionId", "session_id"),
    ("eventId", "event_id"),
];

/// Rewrite a Segment-shaped event into our field names, in place. Native
/// events pass through untouched (when both spellings are present the native
/// one wins).
pub(super) fn to_native(object: &mut Map<String, Value>) -> Result<(), Rejection> {
    for (camel, native) in ALIASES {
        if let Some(v) = object.remove(camel) {
            object.entry(native).or_insert(v);
        }
    }
    if let Some(v) = object.remove("messageId")
        && !object.contains_key("event_id")
    {
        object.insert("event_id".into(), message_id_to_event_id(v));
    }
    if !object.contains_key("session_id")
        && let Some(s) = object
            .get("context")
            .and_then(|c| c.get("sessionId").or_else(|| c.get("session_id")))
    {
        object.insert("session_id".into(), s.clone());
    }

    let kind = match object.remove("type") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(Rejection::WrongType {
                field: "type",
                expected: "a string (track, page, screen, identify, group, alias)",
            });
        }
    };
    let segment_shaped = kind.is_some() || object.contains_key("context");
    if let Some(kind) = kind {
        apply_type(&kind, object)?;
    }
    if segment_shaped {
        fold_context_and_value(object);
    }
    Ok(())
}

fn apply_type(kind: &str, object: &mut Map<String, Value>) -> Result<(), Rejection> {
    let (event, moved): (&str, &[(&str, &str)]) = match kind {
        "track" => return Ok(()),
        "page" => ("$page", &[("name", "name"), ("category", "category")]),
        "screen" => ("$screen", &[("name", "name"), ("category", "category")]),
        "identify" => ("$identify", &[]),
        "group" => ("$group", &[("groupId", "group_id")]),
        "alias" => ("$alias", &[("previousId", "previous_id")]),
        other => return Err(Rejection::UnknownType(other.chars().take(40).collect())),
    };
    object.insert("event".into(), Value::from(event));
    let mut props = match object.remove("properties") {
        Some(Value::Object(m)) => m,
        Some(Value::Null) | None => Map::new(),
        Some(other) => {
            // Let validation report the wrong type.
            object.insert("properties".into(), other);
            return Ok(());
        }
    };
    if let Some(Value::Object(traits)) = object.remove("traits") {
        for (k, v) in traits {
            props.entry(k).or_insert(v);
        }
    }
    for (from, to) in moved {
        if let Some(v) = object.remove(*from) {
            props.entry(*to).or_insert(v);
        }
    }
    object.insert("properties".into(), Value::Object(props));
    Ok(())
}

fn fold_context_and_value(object: &mut Map<String, Value>) {
    let context = object.remove("context");
    let needs_value = object.get("value").is_none_or(Value::is_null);
    let props = object
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(props) = props else {
        return; // validation reports the wrong type
    };
    let value = props.get("value").filter(|v| v.is_number()).cloned();
    if let Some(context @ Value::Object(_)) = context {
        props.entry("context").or_insert(context);
    }
    if needs_value && let Some(v) = value {
        object.insert("value".into(), v);
    }
}

fn message_id_to_event_id(v: Value) -> Value {
    match v {
        Value::String(s) if Uuid::parse_str(&s).is_err() => {
            Value::from(Uuid::new_v5(&MESSAGE_ID_NAMESPACE, s.as_bytes()).to_string())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapped(v: Value) -> Map<String, Value> {
        let Value::Object(mut m) = v else {
            unreachable!()
        };
        to_native(&mut m).unwrap();
        m
    }

    #[test]
    fn track_maps_ids_and_keeps_context() {
        let m = mapped(json!({
            "type": "track", "event": "Signed Up", "userId": "u1", "anonymousId": "a1",
            "messageId": "0192f0a4-8a40-7cc0-8000-000000000001",
            "properties": {"plan": "pro", "value": 49.5},
            "context": {"library": {"name": "analytics-python"}, "sessionId": "s9"},
            "integrations": {"All": true}
        }));
        assert_eq!(m["event"], "Signed Up");
        assert_eq!(m["user_id"], "u1");
        assert_eq!(m["anonymous_id"], "a1");
        assert_eq!(m["event_id"], "0192f0a4-8a40-7cc0-8000-000000000001");
        assert_eq!(m["session_id"], "s9");
        assert_eq!(m["value"], 49.5);
        assert_eq!(
            m["properties"]["context"]["library"]["name"],
            "analytics-python"
        );
        // integrations stays behind; normalize ignores fields it does not know.
    }

    #[test]
    fn non_uuid_message_ids_map_to_a_stable_uuid() {
        let a =
            mapped(json!({"type":"track","event":"e","userId":"u","messageId":"node-next-1-abc"}));
        let b =
            mapped(json!({"type":"track","event":"e","userId":"u","messageId":"node-next-1-abc"}));
        let id = Uuid::parse_str(a["event_id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 5);
        assert_eq!(a["event_id"], b["event_id"]);
    }

    #[test]
    fn page_identify_group_alias_become_dollar_events() {
        let p = mapped(
            json!({"type":"page","name":"Pricing","category":"Docs","userId":"u","properties":{"path":"/pricing"}}),
        );
        assert_eq!(p["event"], "$page");
        assert_eq!(p["properties"]["name"], "Pricing");
        assert_eq!(p["properties"]["category"], "Docs");
        assert_eq!(p["properties"]["path"], "/pricing");

        let s = mapped(json!({"type":"screen","name":"Home","userId":"u"}));
        assert_eq!(s["event"], "$screen");
        assert_eq!(s["properties"]["name"], "Home");

        let i = mapped(json!({"type":"identify","userId":"u","traits":{"email":"a@b.c"}}));
        assert_eq!(i["event"], "$identify");
        assert_eq!(i["properties"]["email"], "a@b.c");

        let g =
            mapped(json!({"type":"group","userId":"u","groupId":"acme","traits":{"plan":"pro"}}));
        assert_eq!(g["event"], "$group");
        assert_eq!(g["properties"]["group_id"], "acme");
        assert_eq!(g["properties"]["plan"], "pro");

        let a = mapped(json!({"type":"alias","userId":"u","previousId":"anon-1"}));
        assert_eq!(a["event"], "$alias");
        assert_eq!(a["properties"]["previous_id"], "anon-1");
    }

    #[test]
    fn native_spelling_wins_and_native_events_pass_through() {
        let m = mapped(json!({"event":"e","user_id":"native","userId":"camel","value":3}));
        assert_eq!(m["user_id"], "native");
        assert_eq!(m["value"], 3);
        assert!(
            !m.contains_key("properties"),
            "native events are not reshaped"
        );
    }

    #[test]
    fn unknown_type_is_rejected() {
        let Value::Object(mut m) = json!({"type":"purchase","userId":"u"}) else {
            unreachable!()
        };
        assert_eq!(
            to_native(&mut m).unwrap_err().code(),
            "unknown_type",
            "an unknown Segment type is named, not guessed"
        );
    }
}
