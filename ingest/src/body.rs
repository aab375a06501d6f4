//! Request bodies: content type, content encoding, reading the body off the
//! connection within a size cap, a deadline and the memory budget, and a
//! decoder that inflates gzip or zstd as it is parsed, stopping at
//! `max_decoded_bytes`, at the budget, or at the first byte that is not
//! JSON: a compression bomb costs what is parsed before it fails, not its
//! inflated size.

use std::io::Read;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use http_body_util::BodyExt;

use crate::budget::{Charge, OverBudget};
use crate::lane::{Busy, LARGE_BODY_BYTES, LargeBodyLane};
use tokio::sync::OwnedSemaphorePermit;

/// Largest zstd window accepted (16 MiB): the decoded cap's size, so any
/// body within the cap decodes whatever level made it.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// How much of an oversized body is read and thrown away before the 413 is
/// sent: a client that is still sending when the connection closes sees a
/// reset, not the answer.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error(
        "content type {0:?} is not accepted: send application/json (or text/plain holding JSON)"
    )]
    UnsupportedType(String),
    #[error("content encoding {0:?} is not accepted: send identity, gzip or zstd")]
    UnsupportedEncoding(String),
    #[error("body is over {limit} bytes{stage}")]
    TooLarge { limit: usize, stage: &'static str },
    #[error("body is not valid {encoding}: {reason}")]
    Corrupt {
        encoding: &'static str,
        reason: String,
    },
    #[error("body could not be read: {0}")]
    Unreadable(String),
    #[error("body was not received within {secs} s")]
    TimedOut { secs: u64 },
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error(transparent)]
    Busy(#[from] Busy),
}

/// Refuse content types that cannot hold JSON. No content type at all is
/// taken as JSON (many HTTP clients omit it); `text/plain` is what
/// `navigator.sendBeacon` and CORS-simple requests send.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), BodyError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/plain" | "" => Ok(()),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(()),
        _ => Err(BodyError::UnsupportedType(text.to_owned())),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    pub fn of(headers: &HeaderMap) -> Result<Self, BodyError> {
        let encoding = headers
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
            .unwrap_or_default();
        match encoding.as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            _ => Err(BodyError::UnsupportedEncoding(encoding)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// Read the body as sent, charging `charge` for every byte as it arrives.
/// A body over `max` is refused with 413; unless the client waits for
/// `100 Continue`, the rest of it is read and dropped first so the client
/// is still listening when the answer comes.
pub async fn receive(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    deadline: Duration,
    charge: &mut Charge,
) -> Result<Bytes, BodyError> {
    let too_large = BodyError::TooLarge {
        limit: max,
        stage: "",
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let expects_continue = headers.contains_key(EXPECT);
    let read = async {
        let mut body = body;
        if declared.is_some_and(|n| n > max as u64) {
            if !expects_continue {
                drain(&mut body).await;
            }
            return Err(too_large);
        }
        // Charged as it arrives, so a slow upload holds only what it sent.
        let mut out = Vec::with_capacity(declared.map_or(0, |n| n.min(64 * 1024) as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if out.len() + data.len() > max {
                drain(&mut body).await;
                return Err(too_large);
            }
            charge.add(data.len())?;
            out.extend_from_slice(&data);
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut {
            secs: deadline.as_secs(),
        }))
}

async fn drain(body: &mut Body) {
    let mut dropped = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        dropped += frame.data_ref().map_or(0, |d| d.len() as u64);
        if dropped > DRAIN_LIMIT {
            return;
        }
    }
}

/// The decoded body as a stream: inflated from gzip or zstd as it is read,
/// at most `max` bytes, each decoded byte charged as it is produced.
/// Past [`LARGE_BODY_BYTES`] inflated it waits for a turn in the large-body
/// lane. After a read error, [`Decoder::failure`] says what went wrong.
/// Runs on a blocking thread.
pub struct Decoder<'a> {
    inner: Box<dyn Read + 'a>,
    encoding: Encoding,
    produced: usize,
    max: usize,
    charge: &'a mut Charge,
    lane: &'a LargeBodyLane,
    turn: Option<OwnedSemaphorePermit>,
    failure: Option<BodyError>,
}

impl<'a> Decoder<'a> {
    pub fn new(
        encoding: Encoding,
        raw: &'a [u8],
        max: usize,
        charge: &'a mut Charge,
        lane: &'a LargeBodyLane,
    ) -> Result<Self, BodyError> {
        let mut turn = None;
        let inner: Box<dyn Read + 'a> = match encoding {
            Encoding::Identity => Box::new(raw),
            Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Encoding::Zstd => {
                // The window is allocated when the frame starts (up to
                // 2^ZSTD_WINDOW_LOG_MAX bytes), so zstd takes its turn first.
                turn = Some(lane.enter_blocking()?);
                let corrupt = |e: std::io::Error| BodyError::Corrupt {
                    encoding: "zstd",
                    reason: e.to_string(),
                };
                let mut decoder = zstd::stream::read::Decoder::with_buffer(raw).map_err(corrupt)?;
                decoder
                    .window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(corrupt)?;
                Box::new(decoder)
            }
        };
        Ok(Self {
            inner,
            encoding,
            produced: 0,
            max,
            charge,
            lane,
            turn,
            failure: None,
        })
    }

    /// Why the last read failed, when it was the body's fault (and not the
    /// JSON parser's).
    pub fn failure(&mut self) -> Option<BodyError> {
        self.failure.take()
    }

    fn fail(&mut self, why: BodyError) -> std::io::Error {
        let e = std::io::Error::other(why.to_string());
        self.failure = Some(why);
        e
    }

    /// The whole decoded body, for the routes that take one event.
    pub fn read_all(mut self) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        match self.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => Err(self.failure().unwrap_or(BodyError::Corrupt {
                encoding: self.encoding.name(),
                reason: e.to_string(),
            })),
        }
    }
}

impl Read for Decoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the cap tells "exactly at the cap" from "over it".
        let room = (self.max + 1 - self.produced).min(buf.len());
        let n = match self.inner.read(&mut buf[..room]) {
            Ok(n) => n,
            Err(e) => {
                let encoding = self.encoding.name();
                return Err(self.fail(BodyError::Corrupt {
                    encoding,
                    reason: e.to_string(),
                }));
            }
        };
        self.produced += n;
        if self.produced > LARGE_BODY_BYTES && self.turn.is_none() {
            match self.lane.enter_blocking() {
                Ok(turn) => self.turn = Some(turn),
                Err(busy) => return Err(self.fail(busy.into())),
            }
        }
        if self.produced > self.max {
            let limit = self.max;
            return Err(self.fail(BodyError::TooLarge {
                limit,
                stage: " once decompressed",
            }));
        }
        if let Err(over) = self.charge.add(n) {
            return Err(self.fail(over.into()));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::io::Write;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn decode(headers: &HeaderMap, body: &[u8], max: usize) -> Result<Vec<u8>, BodyError> {
        let budget = crate::budget::MemoryBudget::new(usize::MAX / 2);
        let mut charge = budget.charge();
        let lane = LargeBodyLane::new(1);
        let _runtime = runtime();
        let _inside = _runtime.enter();
        Decoder::new(Encoding::of(headers)?, body, max, &mut charge, &lane)?.read_all()
    }

    #[test]
    fn plain_gzip_and_zstd_bodies_decode() {
        let json = br#"{"batch":[]}"#;
        let h = headers(&[]);
        assert_eq!(decode(&h, json, 100).unwrap(), json);
        let h = headers(&[("content-encoding", "gzip")]);
        assert_eq!(decode(&h, &gzip(json), 100).unwrap(), json);
        let h = headers(&[("content-encoding", "zstd")]);
        let z = zstd::encode_all(&json[..], 3).unwrap();
        assert_eq!(decode(&h, &z, 100).unwrap(), json);
        assert_eq!(
            decode(&h, &z, json.len()).unwrap(),
            json,
            "exactly at the cap"
        );
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_cap() {
        // 64 MiB of zeros compress to ~64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        let h = headers(&[("content-encoding", "gzip")]);
        assert_eq!(
            decode(&h, &bomb, 1 << 20).unwrap_err(),
            BodyError::TooLarge {
                limit: 1 << 20,
                stage: " once decompressed"
            }
        );
    }

    #[test]
    fn decoding_stops_at_the_memory_budget() {
        let budget = crate::budget::MemoryBudget::new(300_000);
        let mut charge = budget.charge();
        let bomb = zstd::encode_all(&vec![b' '; 1 << 20][..], 3).unwrap();
        let lane = LargeBodyLane::new(1);
        let _runtime = runtime();
        let _inside = _runtime.enter();
        let err = Decoder::new(Encoding::Zstd, &bomb, 16 << 20, &mut charge, &lane)
            .unwrap()
            .read_all()
            .unwrap_err();
        assert_eq!(err, BodyError::OverBudget(OverBudget { limit: 300_000 }));
        assert!(budget.used() <= 300_000);
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn corrupt_and_unknown_encodings_are_named() {
        let h = headers(&[("content-encoding", "gzip")]);
        assert!(matches!(
            decode(&h, b"not gzip", 100),
            Err(BodyError::Corrupt {
                encoding: "gzip",
                ..
            })
        ));
        let h = headers(&[("content-encoding", "br")]);
        assert_eq!(
            decode(&h, b"x", 100).unwrap_err(),
            BodyError::UnsupportedEncoding("br".into())
        );
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain;charset=UTF-8",
            "application/vnd.x+json",
        ] {
            assert!(
                check_content_type(&headers(&[("content-type", ok)])).is_ok(),
                "{ok}"
            );
        }
        assert!(check_content_type(&headers(&[])).is_ok());
        for bad in [
            "application/xml",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert!(
                check_content_type(&headers(&[("content-type", bad)])).is_err(),
                "{bad}"
            );
        }
    }
}
