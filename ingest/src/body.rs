//! Request bodies: content type, content encoding, and a cap on the decoded
//! size that is enforced while decompressing, so a gzip bomb costs at most
//! `max_decoded_bytes` of memory before it is refused.

use std::io::Read;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error(
        "content type {0:?} is not accepted: send application/json (or text/plain holding JSON)"
    )]
    UnsupportedType(String),
    #[error("content encoding {0:?} is not accepted: send identity, gzip or zstd")]
    UnsupportedEncoding(String),
    #[error("body is over {limit} bytes {stage}")]
    TooLarge { limit: usize, stage: &'static str },
    #[error("body is not valid {encoding}: {reason}")]
    Corrupt {
        encoding: &'static str,
        reason: String,
    },
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

/// The decoded body: as sent, or inflated from gzip or zstd with at most
/// `max_decoded` bytes produced.
pub fn decode(headers: &HeaderMap, body: Bytes, max_decoded: usize) -> Result<Bytes, BodyError> {
    let encoding = headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => {
            if body.len() > max_decoded {
                return Err(BodyError::TooLarge {
                    limit: max_decoded,
                    stage: "",
                });
            }
            Ok(body)
        }
        "gzip" | "x-gzip" => inflate(
            flate2::read::MultiGzDecoder::new(&body[..]),
            "gzip",
            max_decoded,
        ),
        "zstd" => {
            let decoder = zstd::stream::read::Decoder::with_buffer(&body[..]).map_err(|e| {
                BodyError::Corrupt {
                    encoding: "zstd",
                    reason: e.to_string(),
                }
            })?;
            inflate(decoder, "zstd", max_decoded)
        }
        _ => Err(BodyError::UnsupportedEncoding(encoding)),
    }
}

fn inflate(reader: impl Read, encoding: &'static str, max: usize) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    // One byte past the cap tells "exactly at the cap" from "over it".
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt {
            encoding,
            reason: e.to_string(),
        })?;
    if out.len() > max {
        return Err(BodyError::TooLarge {
            limit: max,
            stage: "once decompressed",
        });
    }
    Ok(Bytes::from(out))
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

    #[test]
    fn plain_gzip_and_zstd_bodies_decode() {
        let json = br#"{"batch":[]}"#;
        let h = headers(&[]);
        assert_eq!(
            &decode(&h, Bytes::from_static(json), 100).unwrap()[..],
            json
        );
        let h = headers(&[("content-encoding", "gzip")]);
        assert_eq!(&decode(&h, gzip(json).into(), 100).unwrap()[..], json);
        let h = headers(&[("content-encoding", "zstd")]);
        let z = zstd::encode_all(&json[..], 3).unwrap();
        assert_eq!(&decode(&h, z.into(), 100).unwrap()[..], json);
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_cap() {
        // 64 MiB of zeros compress to ~64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        let h = headers(&[("content-encoding", "gzip")]);
        assert_eq!(
            decode(&h, bomb.into(), 1 << 20).unwrap_err(),
            BodyError::TooLarge {
                limit: 1 << 20,
                stage: "once decompressed"
            }
        );
    }

    #[test]
    fn corrupt_and_unknown_encodings_are_named() {
        let h = headers(&[("content-encoding", "gzip")]);
        assert!(matches!(
            decode(&h, Bytes::from_static(b"not gzip"), 100),
            Err(BodyError::Corrupt {
                encoding: "gzip",
                ..
            })
        ));
        let h = headers(&[("content-encoding", "br")]);
        assert_eq!(
            decode(&h, Bytes::from_static(b"x"), 100).unwrap_err(),
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
