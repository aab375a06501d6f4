//! Reading a Kafka record into the core's [`EventRef`]: only the fields the
//! aggregator needs, borrowed from the record's bytes, and only the
//! configured dimensions out of `properties` (building a map of every
//! property was the largest cost per record).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// The fields of a record the aggregator reads, borrowed from its bytes.
#[derive(Deserialize)]
pub struct RecordView<'a> {
    #[serde(borrow)]
    pub project_id: Cow<'a, str>,
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(borrow, default)]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub anonymous_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(borrow, default)]
    pub properties: Option<&'a RawValue>,
}

impl<'a> RecordView<'a> {
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        // One UTF-8 check of the whole record: `from_slice` checks each
        // string again as it reads it.
        serde_json::from_str(std::str::from_utf8(bytes).ok()?).ok()
    }

    pub fn user(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }

    /// The values of `names` in `properties`, with the meaning of
    /// [`crate::window::dimension_values`]; all empty when `properties` is
    /// missing or not an object.
    pub fn dimension_values(&self, names: &[String]) -> Vec<Cow<'a, str>> {
        if names.is_empty() {
            return Vec::new();
        }
        let picked = self.properties.and_then(|raw| {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            PickDimensions { names }.deserialize(&mut de).ok()
        });
        picked.unwrap_or_else(|| vec![Cow::Borrowed(""); names.len()])
    }
}

/// Walks a `properties` object once, keeping the raw values of the named
/// keys (the last one wins when a key repeats, as in a JSON map) and skipping
/// everything else unparsed.
struct PickDimensions<'n> {
    names: &'n [String],
}

impl<'de> DeserializeSeed<'de> for PickDimensions<'_> {
    type Value = Vec<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PickDimensions<'_> {
    type Value = Vec<Cow<'de, str>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![Cow::Borrowed(""); self.names.len()];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.names.iter().position(|n| *n == key) {
                Some(i) => values[i] = dimension_text(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
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
            let view = RecordView::decode(record.as_bytes()).unwrap();
            let map: Map<String, Value> = serde_json::from_str(props).unwrap();
            assert_eq!(
                view.dimension_values(&names),
                crate::window::dimension_values(&names, Some(&map)),
                "{props}"
            );
        }
    }

    #[test]
    fn properties_that_are_not_an_object_give_empty_dimensions() {
        let names = vec!["path".to_string()];
        for props in ["[1]", "\"x\"", "null"] {
            let record = format!(
                r#"{{"project_id":"p","event":"e","timestamp":"2026-01-01T00:00:00Z","properties":{props}}}"#
            );
            let view = RecordView::decode(record.as_bytes()).unwrap();
            assert_eq!(view.dimension_values(&names), vec![Cow::Borrowed("")]);
        }
    }
}
