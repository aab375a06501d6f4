//! The configured dimensions of an event, as every layer keys them.
//!
//! The aggregator keys a window by `{"dim":"value",...}` (the configured
//! names in order, values as text, each cut at `max_len` bytes); the loader
//! writes the same text into `events.dimensions` so the batch layer groups
//! by exactly the speed layer's keys.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// Which dimensions the rollups keep (`aggregator.dimensions`) and how long a
/// value may be: what turns `properties` into a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dimensions {
    pub names: Vec<String>,
    pub max_len: usize,
}

impl From<&crate::config::AggregatorConfig> for Dimensions {
    fn from(c: &crate::config::AggregatorConfig) -> Self {
        Self {
            names: c.dimensions.clone(),
            max_len: c.max_dimension_len,
        }
    }
}

impl Dimensions {
    /// The key text of an event with these `properties`.
    pub fn key(&self, properties: &Map<String, Value>) -> String {
        key_json(&self.names, properties, self.max_len)
    }

    /// The key text of an event without any of the dimensions.
    pub fn empty_key(&self) -> String {
        self.key(&Map::new())
    }
}

/// The values of `names` in `properties`: strings as they are, other JSON
/// values as their compact JSON text, missing or null as empty.
pub fn dimension_values<'a>(
    names: &[String],
    properties: Option<&'a Map<String, Value>>,
) -> Vec<Cow<'a, str>> {
    names
        .iter()
        .map(|name| dimension_text(properties.and_then(|p| p.get(name))))
        .collect()
}

/// One dimension's value as text: a string as it is, missing or null as
/// empty, anything else as its compact JSON text.
pub fn dimension_text(value: Option<&Value>) -> Cow<'_, str> {
    match value {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

/// Append the canonical JSON object of `names` and their `values` (missing
/// values count as empty) to `buf`, each value cut at `max_len` bytes.
pub fn write_key_json<S: AsRef<str>>(
    buf: &mut Vec<u8>,
    names: &[String],
    values: &[S],
    max_len: usize,
) {
    buf.push(b'{');
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let _ = serde_json::to_writer(&mut *buf, name);
        buf.push(b':');
        let text = values.get(i).map_or("", |v| v.as_ref());
        let _ = serde_json::to_writer(&mut *buf, truncate(text, max_len));
    }
    buf.push(b'}');
}

/// The canonical JSON object of an event's dimensions, read from its
/// `properties`.
pub fn key_json(names: &[String], properties: &Map<String, Value>, max_len: usize) -> String {
    let values = dimension_values(names, Some(properties));
    let mut buf = Vec::with_capacity(16 * names.len() + 2);
    write_key_json(&mut buf, names, &values, max_len);
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_every_dimension_in_order_and_cuts_long_values() {
        let names = vec!["path".to_owned(), "n".to_owned(), "gone".to_owned()];
        let props: Map<String, Value> =
            serde_json::from_str(r#"{"n":1.5,"path":"/très/long/path","x":1}"#).unwrap();
        assert_eq!(
            key_json(&names, &props, 7),
            r#"{"path":"/très/","n":"1.5","gone":""}"#
        );
        assert_eq!(key_json(&[], &props, 7), "{}");
    }
}
