//! A batch body's envelope: `{"batch": [...], "sent_at": "..."}` (`sentAt`
//! also accepted) or a bare JSON array of events.
//!
//! The events are counted while they are read and reading stops at the first
//! one past `max_batch_events`: a body of millions of tiny elements
//! (`[0,0,0,…]`) costs a few kilobytes, not a boxed value per element. The
//! same parser reads a slice or a stream (a decompressor), so a compressed
//! body that is not JSON stops at its first bad byte instead of being
//! inflated in full.

use std::cell::Cell;
use std::fmt;
use std::io::Read;

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::ContractLimits;
use super::validate::parse_time;

/// Why a whole batch was refused (nothing of it can be read).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("body is not a JSON batch (an array, or an object with `batch`): {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("batch holds more than {limit} events")]
    TooManyEvents { limit: usize },
    #[error("`sent_at` is not an RFC 3339 date-time: {0}")]
    BadSentAt(String),
}

/// A batch whose envelope parsed; its events are still raw, to be validated
/// one by one with [`super::normalize`].
#[derive(Debug)]
pub struct ParsedBatch {
    pub events: Vec<Box<RawValue>>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// Parse a batch body held in memory.
pub fn parse_batch(body: &[u8], limits: &ContractLimits) -> Result<ParsedBatch, BatchError> {
    parse(serde_json::Deserializer::from_slice(body), limits)
}

/// Parse a batch body as it is read from `reader` (buffer it: the parser
/// reads byte by byte). An error of the reader itself comes back as
/// [`BatchError::Malformed`] holding an I/O error.
pub fn read_batch(reader: impl Read, limits: &ContractLimits) -> Result<ParsedBatch, BatchError> {
    parse(serde_json::Deserializer::from_reader(reader), limits)
}

fn parse<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    limits: &ContractLimits,
) -> Result<ParsedBatch, BatchError> {
    let over = Cell::new(false);
    let parsed = (&mut de)
        .deserialize_any(Envelope {
            limit: limits.max_batch_events,
            over: &over,
        })
        .and_then(|envelope| de.end().map(|()| envelope));
    let (events, sent_at) = parsed.map_err(|e| {
        if over.get() {
            BatchError::TooManyEvents {
                limit: limits.max_batch_events,
            }
        } else {
            BatchError::Malformed(e)
        }
    })?;
    let sent_at = sent_at
        .map(|s| parse_time(&s).map_err(|_| BatchError::BadSentAt(s)))
        .transpose()?;
    Ok(ParsedBatch { events, sent_at })
}

/// The whole body: an array of events, or an object holding one.
struct Envelope<'a> {
    limit: usize,
    over: &'a Cell<bool>,
}

impl<'de> Visitor<'de> for Envelope<'_> {
    type Value = (Vec<Box<RawValue>>, Option<String>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events or an object with `batch`")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let events = Events {
            limit: self.limit,
            over: self.over,
        };
        Ok((events.visit_seq(seq)?, None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut events = None;
        let mut sent_at = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "batch" if events.is_some() => return Err(de::Error::duplicate_field("batch")),
                "batch" => {
                    events = Some(map.next_value_seed(Events {
                        limit: self.limit,
                        over: self.over,
                    })?);
                }
                "sent_at" | "sentAt" => sent_at = map.next_value::<Option<String>>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let events = events.ok_or_else(|| de::Error::missing_field("batch"))?;
        Ok((events, sent_at))
    }
}

/// The events array, counted as it is read.
struct Events<'a> {
    limit: usize,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Events<'_> {
    type Value = Vec<Box<RawValue>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Events<'_> {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::new();
        while let Some(event) = seq.next_element::<Box<RawValue>>()? {
            if events.len() == self.limit {
                self.over.set(true);
                return Err(de::Error::custom(format!(
                    "more than {} events",
                    self.limit
                )));
            }
            events.push(event);
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ContractLimits {
        ContractLimits::default()
    }

    #[test]
    fn batch_shapes_parse() {
        let b = parse_batch(
            br#"{"batch":[{"event":"a"},{"event":"b"}],"sent_at":"2026-11-25T12:00:00Z"}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(b.events.len(), 2);
        assert_eq!(b.events[1].get(), r#"{"event":"b"}"#);
        assert!(b.sent_at.is_some());
        let b = parse_batch(
            br#"{"context":{"x":[1,2]},"batch":[],"sentAt":"2026-11-25T12:00:00Z","writeKey":"k"}"#,
            &limits(),
        )
        .unwrap();
        assert!(b.sent_at.is_some());
        assert_eq!(
            parse_batch(br#" [{"event":"a"}] "#, &limits())
                .unwrap()
                .events
                .len(),
            1
        );
        let streamed = read_batch(
            &br#"{"batch":[{"event":"a"}],"sent_at":null}"#[..],
            &limits(),
        )
        .unwrap();
        assert_eq!(streamed.events.len(), 1);
        assert_eq!(streamed.sent_at, None);
    }

    #[test]
    fn batch_level_errors() {
        for bad in [
            &b"{not json"[..],
            br#"{"events":[]}"#,
            br#"{"batch":[],"batch":[]}"#,
            br#"{"batch":"all of them"}"#,
            br#"[{"event":"a"}] trailing"#,
            b"5",
        ] {
            assert!(
                matches!(parse_batch(bad, &limits()), Err(BatchError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_batch(br#"{"batch":[],"sent_at":"soon"}"#, &limits()),
            Err(BatchError::BadSentAt(_))
        ));
        let at_limit = format!("[{}]", vec!["{}"; 1000].join(","));
        assert_eq!(
            parse_batch(at_limit.as_bytes(), &limits())
                .unwrap()
                .events
                .len(),
            1000
        );
        let many = format!(r#"{{"batch":[{}]}}"#, vec!["{}"; 1001].join(","));
        assert!(matches!(
            parse_batch(many.as_bytes(), &limits()),
            Err(BatchError::TooManyEvents { limit: 1000 })
        ));
    }

    /// Reading stops at the first element past the limit: the rest of a
    /// stream of millions of elements is never read.
    #[test]
    fn a_flood_of_tiny_elements_stops_at_the_limit() {
        struct Counting<'a> {
            inner: &'a [u8],
            read: &'a Cell<usize>,
        }
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.inner.read(buf)?;
                self.read.set(self.read.get() + n);
                Ok(n)
            }
        }
        let mut flood = b"[0".to_vec();
        flood.extend(std::iter::repeat_n(&b",0"[..], 4_000_000).flatten());
        flood.push(b']');
        let read = Cell::new(0);
        let reader = std::io::BufReader::with_capacity(
            8192,
            Counting {
                inner: &flood,
                read: &read,
            },
        );
        assert!(matches!(
            read_batch(reader, &limits()),
            Err(BatchError::TooManyEvents { limit: 1000 })
        ));
        assert!(read.get() <= 16_384, "read {} bytes", read.get());
    }
}
