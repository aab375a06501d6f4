//! Reading a Kafka record into the core's [`EventRef`]: only the fields the
//! aggregator needs, borrowed from the record's bytes, and only the
//! configured dimensions out of `properties` (building a map of every
//! property was the largest cost per record).

use std::borrow::Cow;
use std::fmt;

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;
use serde_json::value::RawValue;

/// The fields of a record the aggregator reads, borrowed from its bytes,
/// with the configured dimensions picked out of `properties` in the same
/// pass (reading `properties` raw and then again for the dimensions walked
/// every property twice).
pub struct RecordView<'a> {
    pub project_id: Cow<'a, str>,
    pub event: Cow<'a, str>,
    pub user_id: Option<Cow<'a, str>>,
    pub anonymous_id: Option<Cow<'a, str>>,
    pub timestamp: Cow<'a, str>,
    pub value: Option<f64>,
    /// The values of the dimension names given to [`RecordView::decode`],
    /// with the meaning of [`crate::window::dimension_values`]: all empty
    /// when `properties` is missing or not an object.
    pub dimensions: Vec<Cow<'a, str>>,
}

impl<'a> RecordView<'a> {
    /// None when the record is not a JSON object with `project_id`,
    /// `event` and `timestamp` strings (or names a field twice).
    pub fn decode(bytes: &'a [u8], dimensions: &[String]) -> Option<Self> {
        // One UTF-8 check of the whole record: `from_slice` checks each
        // string again as it reads it.
        let text = std::str::from_utf8(bytes).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let view = RecordSeed { dimensions }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(view)
    }

    pub fn user(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }
}

/// A string borrowed from the record when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

struct RecordSeed<'n> {
    dimensions: &'n [String],
}

impl<'n> RecordSeed<'n> {
    fn pick(&self) -> PickDimensions<'n> {
        PickDimensions {
            names: self.dimensions,
        }
    }
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = RecordView<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

/// `slot` takes the field's value, unless the record named it before.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = RecordView<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut project_id, mut event, mut timestamp) = (None, None, None);
        let (mut user_id, mut anonymous_id, mut value, mut dimensions) = (None, None, None, None);
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match key.as_ref() {
                "project_id" => once(&mut project_id, map.next_value::<Text>()?.0, "project_id")?,
                "event" => once(&mut event, map.next_value::<Text>()?.0, "event")?,
                "timestamp" => once(&mut timestamp, map.next_value::<Text>()?.0, "timestamp")?,
                "user_id" => once(
                    &mut user_id,
                    map.next_value::<Option<Text>>()?.map(|t| t.0),
                    "user_id",
                )?,
                "anonymous_id" => once(
                    &mut anonymous_id,
                    map.next_value::<Option<Text>>()?.map(|t| t.0),
                    "anonymous_id",
                )?,
                "value" => once(&mut value, map.next_value::<Option<f64>>()?, "value")?,
                // Counted as named even when skipped, so a record naming
                // it twice is refused whatever the configuration.
                "properties" => once(
                    &mut dimensions,
                    map.next_value_seed(self.pick())?,
                    "properties",
                )?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RecordView {
            project_id: project_id.ok_or_else(|| de::Error::missing_field("project_id"))?,
            event: event.ok_or_else(|| de::Error::missing_field("event"))?,
            timestamp: timestamp.ok_or_else(|| de::Error::missing_field("timestamp"))?,
            user_id: user_id.flatten(),
            anonymous_id: anonymous_id.flatten(),
            value: value.flatten(),
            dimensions: dimensions.unwrap_or_else(|| self.pick().empty()),
        })
    }
}

/// Walks a `properties` value once, keeping the raw values of the named
/// keys of an object (the last one wins when a key repeats, as in a JSON
/// map) and skipping everything else unparsed; anything but an object gives
/// every dimension empty.
struct PickDimensions<'n> {
    names: &'n [String],
}

impl PickDimensions<'_> {
    fn empty<'de>(&self) -> Vec<Cow<'de, str>> {
        vec![Cow::Borrowed(""); self.names.len()]
    }
}

impl<'de> DeserializeSeed<'de> for PickDimensions<'_> {
    type Value = Vec<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.names.is_empty() {
            // No dimensions configured: nothing to look for.
            IgnoredAny::deserialize(d)?;
            return Ok(Vec::new());
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PickDimensions<'_> {
    type Value = Vec<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = self.empty();
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match self.names.iter().position(|n| *n == key) {
                Some(i) => values[i] = dimension_text(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.empty())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.empty())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.empty())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(self.empty())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(self.empty())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(self.empty())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(self.empty())
    }
}

/// [`crate::window::dimension_text`] of a raw value: a string without
/// escapes is borrowed as it is; anything else is parsed first.
fn dimension_text(raw: &RawValue) -> Cow<'_, str> {
    let text = raw.get();
    if text.starts_with('"') && !text.contains('\\') {
        return Cow::Borrowed(&text[1..text.len() - 1]);
    }
    let value = serde_json::from_str::<Value>(text).ok();
    Cow::Owned(crate::window::dimension_text(value.as_ref()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn fields_are_read_as_the_contract_writes_them() {
        let names = vec!["path".to_string()];
        let record = br#"{"schema_version":2,"project_id":"p\u00e9","event_id":"x","event":"e","user_id":null,
            "anonymous_id":"a1","session_id":null,"timestamp":"2026-01-01T00:00:00.000Z",
            "received_at":"2026-01-01T00:00:01.000Z","value":null,"properties":{"p\u0061th":"/x"},"later":[1,{"a":2}]}"#;
        let view = RecordView::decode(record, &names).unwrap();
        assert_eq!(view.project_id, "pé");
        assert!(matches!(view.project_id, Cow::Owned(_)));
        assert!(matches!(view.event, Cow::Borrowed("e")));
        assert_eq!(view.user(), "a1");
        assert_eq!(view.timestamp, "2026-01-01T00:00:00.000Z");
        assert_eq!(view.value, None);
        assert_eq!(view.dimensions, vec![Cow::Borrowed("/x")]);
        // No dimensions configured: `properties` is skipped, whatever it holds.
        let view = RecordView::decode(record, &[]).unwrap();
        assert!(view.dimensions.is_empty());
        // Without `properties`, every dimension is empty.
        let bare = br#"{"project_id":"p","event":"e","user_id":"u","timestamp":"t","value":3}"#;
        let view = RecordView::decode(bare, &names).unwrap();
        assert_eq!((view.user(), view.value), ("u", Some(3.0)));
        assert_eq!(view.dimensions, vec![Cow::Borrowed("")]);
    }

    #[test]
    fn records_the_aggregator_cannot_count_are_refused() {
        for bad in [
            &br#"{"event":"e","timestamp":"t"}"#[..],
            br#"{"project_id":"p","timestamp":"t"}"#,
            br#"{"project_id":"p","event":"e"}"#,
            br#"{"project_id":"p","event":"e","timestamp":"t","event":"f"}"#,
            br#"{"project_id":"p","event":"e","timestamp":"t","properties":{},"properties":{}}"#,
            br#"{"project_id":1,"event":"e","timestamp":"t"}"#,
            br#"{"project_id":"p","event":"e","timestamp":"t","value":"1"}"#,
            br#"{"project_id":"p","event":"e","timestamp":"t"} x"#,
            br#"[1]"#,
            b"{\"project_id\":\"\xff\",\"event\":\"e\",\"timestamp\":\"t\"}",
        ] {
            for names in [&["path".to_string()][..], &[]] {
                assert!(
                    RecordView::decode(bad, names).is_none(),
                    "{} with {names:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    #[test]
    fn dimensions_read_as_from_a_map() {
        let names: Vec<String> = ["path", "n", "flag", "obj", "missing", "nul", "esc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for props in [
            r#"{"path":"/a","n":1.50,"flag":true,"obj":{"b":[1, 2],"a":null},"nul":null,"esc":"caf\u00e9","other":{"x":1}}"#,
            r#"{ "path" : "/a" , "path" : "/b" , "n" : 12 }"#,
            r#"{}"#,
        ] {
            let record = format!(
                r#"{{"project_id":"p","event":"e","user_id":"u","timestamp":"2026-01-01T00:00:00Z","properties":{props}}}"#
            );
            let view = RecordView::decode(record.as_bytes(), &names).unwrap();
            let map: Map<String, Value> = serde_json::from_str(props).unwrap();
            assert_eq!(
                view.dimensions,
                crate::window::dimension_values(&names, Some(&map)),
                "{props}"
            );
        }
    }

    #[test]
    fn properties_that_are_not_an_object_give_empty_dimensions() {
        let names = vec!["path".to_string()];
        for props in ["[1, {\"path\": \"/a\"}]", "\"x\"", "null", "12.5", "true"] {
            let record = format!(
                r#"{{"project_id":"p","event":"e","timestamp":"2026-01-01T00:00:00Z","properties":{props},"value":2}}"#
            );
            let view = RecordView::decode(record.as_bytes(), &names).unwrap();
            assert_eq!(view.dimensions, vec![Cow::Borrowed("")], "{props}");
            assert_eq!(view.value, Some(2.0), "{props}");
        }
    }
}
