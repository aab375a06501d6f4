//! Ingest against the local broker: what is accepted lands on Kafka exactly,
//! what is refused gets its own 4xx, and the official Segment SDK works
//! unchanged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use crate::common::{Ingest, TestEnv, read_topic};
use chrono::{DateTime, Utc};
use hourglass_core::contract::{EventEnvelope, SCHEMA_VERSION_HEADER};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::{Value, json};
use uuid::Uuid;

/// What the generator knows about one event it made.
enum Planned {
    Valid {
        id: Uuid,
        user: String,
        event: String,
        value: f64,
        ts: DateTime<Utc>,
    },
    Invalid {
        code: &'static str,
    },
}

/// A seeded mix of native and Segment-shaped events, about one in five
/// invalid in a known way.
fn plan(seed: u64, n: usize) -> Vec<(Value, Planned)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    // Two days back, whole hours: inside `contract.max_past_days` on any day.
    let base =
        DateTime::<Utc>::from_timestamp((Utc::now().timestamp() / 3600 - 48) * 3600, 0).unwrap();
    (0..n)
        .map(|i| {
            let id = Uuid::from_u128(rng.random());
            let user = format!("user-{}", rng.random_range(0..50));
            let event = ["page_view", "click", "signup"][rng.random_range(0..3)].to_string();
            let value = f64::from(rng.random_range(0..10_000u32)) / 8.0;
            let ts = base + chrono::Duration::milliseconds(rng.random_range(0..3_600_000));
            let t = ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            match rng.random_range(0..11) {
                0 => (json!({"user_id": user, "event_id": id, "timestamp": t}), Planned::Invalid { code: "missing_event" }),
                10 => {
                    // Dated where no clock is, before or after the skew correction.
                    let far = ["2099-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"][rng.random_range(0..3)];
                    (json!({"event": event, "user_id": user, "event_id": id, "timestamp": far}), Planned::Invalid { code: "timestamp_out_of_range" })
                }
                1 => (json!({"event": event, "user_id": user, "timestamp": "last tuesday"}), Planned::Invalid { code: "bad_timestamp" }),
                2 => (json!({"event": event, "user_id": user, "value": "12"}), Planned::Invalid { code: "bad_value" }),
                3..=5 => (
                    json!({"type": "track", "event": event, "userId": user, "messageId": id, "timestamp": t,
                           "properties": {"value": value, "i": i}, "context": {"library": {"name": "test"}}}),
                    Planned::Valid { id, user, event, value, ts },
                ),
                _ => (
                    json!({"event": event, "user_id": user, "event_id": id, "timestamp": t, "value": value,
                           "properties": {"i": i}}),
                    Planned::Valid { id, user, event, value, ts },
                ),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_batch_lands_exactly_its_valid_events() {
    let env = TestEnv::new("ingest_mixed").await;
    env.create_topic(8).await;
    let ingest = Ingest::start(&env, "shop", &[]).await;

    let planned = plan(7, 1_000);
    // The client's clock runs an hour slow: event times shift by +1 h.
    let sent_at = Utc::now() - chrono::Duration::hours(1);
    let mut accepted = 0;
    for (b, chunk) in planned.chunks(100).enumerate() {
        let body =
            json!({"batch": chunk.iter().map(|(v, _)| v).collect::<Vec<_>>(), "sentAt": sent_at});
        let response = ingest.post("/v1/batch", body.to_string()).await;
        assert_eq!(response.status(), 200, "batch {b}");
        let report: Value = response.json().await.unwrap();
        let expected: Vec<(usize, &str)> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, (_, p))| match p {
                Planned::Invalid { code } => Some((i, *code)),
                Planned::Valid { .. } => None,
            })
            .collect();
        let got: Vec<(usize, &str)> = report["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["index"].as_u64().unwrap() as usize,
                    r["code"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, expected, "batch {b}: rejections by index");
        assert_eq!(
            report["accepted"].as_u64().unwrap() as usize,
            chunk.len() - expected.len()
        );
        accepted += chunk.len() - expected.len();
    }
    let valid: HashMap<Uuid, &Planned> = planned
        .iter()
        .filter_map(|(_, p)| match p {
            Planned::Valid { id, .. } => Some((*id, p)),
            Planned::Invalid { .. } => None,
        })
        .collect();
    assert_eq!(valid.len(), accepted);

    let records = read_topic(
        &env.cfg.kafka,
        accepted,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    assert_eq!(
        records.len(),
        accepted,
        "exactly the valid events are on the topic"
    );
    let mut seen = HashSet::new();
    for r in &records {
        let e = EventEnvelope::decode(r.payload().unwrap()).unwrap();
        assert!(seen.insert(e.event_id), "event {} twice", e.event_id);
        let Some(Planned::Valid {
            user,
            event,
            value,
            ts,
            ..
        }) = valid.get(&e.event_id)
        else {
            panic!("unexpected event {}", e.event_id)
        };
        assert_eq!(
            std::str::from_utf8(r.key().unwrap()).unwrap(),
            format!("shop:{user}")
        );
        assert_eq!(e.project_id, "shop");
        assert_eq!(&e.event, event);
        assert_eq!(e.value, Some(*value));
        let shift = (e.timestamp - *ts - chrono::Duration::hours(1))
            .num_milliseconds()
            .abs();
        assert!(shift < 10_000, "clock skew corrected (off by {shift} ms)");
        let header = r
            .headers()
            .unwrap()
            .iter()
            .find(|h| h.key == SCHEMA_VERSION_HEADER)
            .unwrap();
        assert_eq!(header.value, Some(&b"1"[..]));
    }
    drop(ingest);
    env.teardown().await;
}

/// History older than `contract.max_past_days` is refused on the live
/// endpoint, naming `/v1/import`, and taken there; the far future neither.
#[tokio::test(flavor = "multi_thread")]
async fn history_goes_through_import_and_the_far_future_nowhere() {
    let env = TestEnv::new("ingest_import").await;
    env.create_topic(2).await;
    let ingest = Ingest::start(&env, "shop", &[]).await;
    let year_ago = (Utc::now() - chrono::Duration::days(400))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = |id: u128, t: &str| {
        json!({"batch": [
            {"event": "old", "user_id": "u1", "event_id": Uuid::from_u128(id), "timestamp": t},
            {"event": "far", "user_id": "u1", "event_id": Uuid::from_u128(id + 1), "timestamp": "2099-01-01T00:00:00Z"},
            {"event": "now", "user_id": "u1", "event_id": Uuid::from_u128(id + 2)}
        ]})
        .to_string()
    };
    let live: Value = ingest
        .post("/v1/batch", body(10, &year_ago))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(live["accepted"], 1, "{live}");
    let reasons: Vec<(u64, &str, &str)> = live["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["code"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{live}");
    assert_eq!((reasons[0].0, reasons[0].1), (0, "timestamp_out_of_range"));
    assert!(
        reasons[0].2.contains("more than 31 days before") && reasons[0].2.contains("/v1/import"),
        "{}",
        reasons[0].2
    );
    assert_eq!((reasons[1].0, reasons[1].1), (1, "timestamp_out_of_range"));
    assert!(
        reasons[1].2.contains("more than 600 s after"),
        "{}",
        reasons[1].2
    );

    let import: Value = ingest
        .post("/v1/import", body(20, &year_ago))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(import["accepted"], 2, "{import}");
    assert_eq!(import["rejected"][0]["index"], 1, "{import}");
    assert_eq!(import["rejected"][0]["code"], "timestamp_out_of_range");

    let records = read_topic(
        &env.cfg.kafka,
        3,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let mut ids: Vec<Uuid> = records
        .iter()
        .map(|r| {
            EventEnvelope::decode(r.payload().unwrap())
                .unwrap()
                .event_id
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            Uuid::from_u128(12),
            Uuid::from_u128(20),
            Uuid::from_u128(22)
        ],
        "the live batch's current event and the import's two"
    );
    drop(ingest);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_segment_python_sdk_works_unchanged() {
    let env = TestEnv::new("ingest_segment").await;
    env.create_topic(4).await;
    let ingest = Ingest::start(&env, "app", &[]).await;
    let python = crate::common::python();
    let n = 600;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/segment_sdk.py");
    let out = std::process::Command::new(&python)
        .args([script, &ingest.url, &ingest.key, &n.to_string()])
        .output()
        .unwrap_or_else(|e| {
            panic!("run {python}: {e} (scripts/test installs the Segment SDK venv)")
        });
    assert!(
        out.status.success(),
        "segment SDK script failed (scripts/test installs segment-analytics-python): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], json!([]), "the SDK reported errors");
    let mut expected: BTreeMap<String, HashSet<Uuid>> = BTreeMap::new();
    for (kind, ids) in report["sent"].as_object().unwrap() {
        let name = if kind == "track" {
            "Order Completed".to_string()
        } else {
            format!("${kind}")
        };
        expected.insert(
            name,
            ids.as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().parse().unwrap())
                .collect(),
        );
    }
    assert_eq!(expected.values().map(HashSet::len).sum::<usize>(), n);

    let records = read_topic(
        &env.cfg.kafka,
        n,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    assert_eq!(records.len(), n, "one record per SDK call");
    let mut got: BTreeMap<String, HashSet<Uuid>> = BTreeMap::new();
    for r in &records {
        let e = EventEnvelope::decode(r.payload().unwrap()).unwrap();
        assert_eq!(
            std::str::from_utf8(r.key().unwrap()).unwrap(),
            format!("app:{}", e.user())
        );
        match e.event.as_str() {
            "Order Completed" => assert!(e.value.is_some(), "properties.value becomes value"),
            "$page" => assert!(e.properties["path"].as_str().unwrap().starts_with("/docs/")),
            "$identify" => assert!(
                e.properties["email"]
                    .as_str()
                    .unwrap()
                    .ends_with("@example.com")
            ),
            "$group" => assert!(
                e.properties["group_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("org-")
            ),
            "$alias" => assert!(
                e.properties["previous_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("anon-")
            ),
            _ => {}
        }
        assert_eq!(
            e.properties["context"]["library"]["name"],
            "analytics-python"
        );
        got.entry(e.event.clone()).or_default().insert(e.event_id);
    }
    assert_eq!(
        got, expected,
        "messageId becomes event_id, type becomes the event name"
    );
    drop(ingest);
    env.teardown().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_its_own_4xx_and_good_requests_keep_flowing() {
    let env = TestEnv::new("ingest_corpus").await;
    env.create_topic(2).await;
    let ingest = Ingest::start(
        &env,
        "corp",
        &[
            ("HOURGLASS_INGEST__MAX_BODY_BYTES", "65536".into()),
            ("HOURGLASS_INGEST__MAX_DECODED_BYTES", "1048576".into()),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", ingest.url);
    let good = || json!({"batch": [{"event": "ok", "user_id": "u"}]}).to_string();
    let nested = format!(
        r#"[{{"event":"e","user_id":"u","properties":{}1{}}}]"#,
        r#"{"a":"#.repeat(300),
        "}".repeat(300)
    );
    let deep_props = json!([{"event": "e", "user_id": "u", "properties": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}}]);
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"event": "e", "user_id": "u"}))
        .collect();
    let bomb = gzip(&vec![b' '; 50 << 20]);

    type Case = (&'static str, reqwest::RequestBuilder, u16, &'static str);
    let post = |path: &str| {
        client
            .post(url(path))
            .basic_auth(&ingest.key, Some(""))
            .header("content-type", "application/json")
    };
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            post("/v1/batch").body("{\"batch\": [ {\"event\": "),
            400,
            "malformed",
        ),
        (
            "batch of the wrong type",
            post("/v1/batch").body(r#"{"batch": "all of them"}"#),
            400,
            "malformed",
        ),
        (
            "events of the wrong types",
            post("/v1/batch")
                .body(r#"[{"event": 5, "user_id": "u"}, {"event": "e", "user_id": []}]"#),
            400,
            "event:wrong_type",
        ),
        (
            "invalid UTF-8",
            post("/v1/batch").body(b"[{\"event\": \"\xff\xfe\", \"user_id\": \"u\"}]".to_vec()),
            400,
            "malformed",
        ),
        (
            "oversized body",
            post("/v1/batch").body(vec![b' '; 70_000]),
            413,
            "body_too_large",
        ),
        (
            "gzip bomb",
            post("/v1/batch")
                .header("content-encoding", "gzip")
                .body(bomb),
            413,
            "body_too_large",
        ),
        (
            "corrupt gzip",
            post("/v1/batch")
                .header("content-encoding", "gzip")
                .body("not gzip at all"),
            400,
            "corrupt_encoding",
        ),
        (
            "deeply nested body",
            post("/v1/batch").body(nested),
            400,
            "event:too_deep",
        ),
        (
            "properties nested too deep",
            post("/v1/batch").body(deep_props.to_string()),
            400,
            "event:too_deep",
        ),
        (
            "too many events",
            post("/v1/batch").body(Value::from(too_many).to_string()),
            400,
            "malformed",
        ),
        (
            "no key",
            client
                .post(url("/v1/batch"))
                .header("content-type", "application/json")
                .body(good()),
            401,
            "missing_key",
        ),
        (
            "wrong key",
            client
                .post(url("/v1/batch"))
                .basic_auth("hgk_wrong", Some(""))
                .body(good()),
            401,
            "unknown_key",
        ),
        (
            "wrong key in the body",
            client
                .post(url("/v1/batch"))
                .header("content-type", "text/plain")
                .body(r#"{"writeKey":"nope","batch":[]}"#),
            401,
            "unknown_key",
        ),
        (
            "unknown content type",
            client
                .post(url("/v1/batch"))
                .basic_auth(&ingest.key, Some(""))
                .header("content-type", "application/xml")
                .body("<batch/>"),
            415,
            "unsupported_content_type",
        ),
        (
            "unknown content encoding",
            post("/v1/batch")
                .header("content-encoding", "br")
                .body(good()),
            415,
            "unsupported_content_encoding",
        ),
    ];
    let mut accepted = 0;
    for (name, request, status, code) in cases {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{name}");
        if status == 401 {
            assert!(
                response.headers().contains_key("www-authenticate"),
                "{name}"
            );
        }
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: answer is not JSON: {e}"));
        if let Some(code) = code.strip_prefix("event:") {
            // Every event refused on its own: 400 with the per-index reasons.
            assert_eq!(body["accepted"], 0, "{name}");
            assert_eq!(body["rejected"][0]["index"], 0, "{name}");
            assert_eq!(body["rejected"][0]["code"], code, "{name}: {body}");
        } else {
            assert_eq!(body["code"], code, "{name}: {body}");
            assert!(!body["message"].as_str().unwrap().is_empty(), "{name}");
        }
        // The service keeps serving good requests in between.
        let ok = ingest.post("/v1/batch", good()).await;
        assert_eq!(ok.status(), 200, "good request after {name}");
        accepted += 1;
    }

    // Every other way in that must work.
    let doc = br#"{"batch":[{"event":"gz","user_id":"u"},{"event":"gz","user_id":"v"}]}"#;
    let r = post("/v1/batch")
        .header("content-encoding", "gzip")
        .body(gzip(doc))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "gzip body");
    accepted += 2;
    let r = post("/v1/batch")
        .header("content-encoding", "zstd")
        .body(zstd::encode_all(&doc[..], 3).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "zstd body");
    accepted += 2;
    let r = client
        .post(url("/v1/track"))
        .bearer_auth(&ingest.key)
        .json(&json!({"event": "one", "userId": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "single track with a bearer key");
    accepted += 1;
    let r = client
        .post(url("/v1/page"))
        .header("x-hourglass-key", &ingest.key)
        .json(&json!({"userId": "u", "name": "Home"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "single page with X-Hourglass-Key");
    accepted += 1;
    let r = client
        .post(url(&format!("/v1/beacon?key={}", ingest.key)))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(r#"[{"event":"beacon","anonymous_id":"a1"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "sendBeacon");
    accepted += 1;
    let body_key = json!({"writeKey": ingest.key, "batch": [{"type": "track", "event": "browser", "anonymousId": "a2"}]});
    let r = client
        .post(url("/v1/batch"))
        .header("content-type", "text/plain")
        .body(body_key.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "write key in the body, as analytics.js sends it"
    );
    accepted += 1;
    let preflight = client
        .request(reqwest::Method::OPTIONS, url("/v1/batch"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "CORS preflight");
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    let records = read_topic(
        &env.cfg.kafka,
        accepted,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    assert_eq!(
        records.len(),
        accepted,
        "exactly the accepted events reached the topic"
    );
    drop(ingest);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let env = TestEnv::new("ingest_rate").await;
    env.create_topic(1).await;
    let ingest = Ingest::start(
        &env,
        "rl",
        &[
            ("HOURGLASS_INGEST__RATE_LIMIT_EVENTS_PER_SEC", "50".into()),
            ("HOURGLASS_INGEST__RATE_LIMIT_BURST", "1000".into()),
        ],
    )
    .await;
    let full: Vec<Value> = (0..1000)
        .map(|i| json!({"event": "e", "user_id": format!("u{i}")}))
        .collect();
    let r = ingest
        .post("/v1/batch", Value::from(full.clone()).to_string())
        .await;
    assert_eq!(r.status(), 200, "a full burst passes");
    // 100 more need 2 s of refill at 50/s.
    let hundred = Value::from(full[..100].to_vec()).to_string();
    let r = ingest.post("/v1/batch", hundred.clone()).await;
    assert_eq!(r.status(), 429, "the bucket is empty");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&wait), "Retry-After {wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = ingest.post("/v1/batch", hundred).await;
    assert_eq!(r.status(), 200, "tokens come back at the configured rate");
    drop(ingest);

    // One event a second: after a full batch the bucket stays empty long
    // enough to see that the rate is checked before a body is decompressed.
    let ingest = Ingest::start(
        &env,
        "rl",
        &[
            ("HOURGLASS_INGEST__RATE_LIMIT_EVENTS_PER_SEC", "1".into()),
            ("HOURGLASS_INGEST__RATE_LIMIT_BURST", "1000".into()),
        ],
    )
    .await;
    let r = ingest
        .post("/v1/batch", Value::from(full).to_string())
        .await;
    assert_eq!(r.status(), 200);
    // A bomb sent with an exhausted key costs nothing and says why.
    let bomb = reqwest::Client::new()
        .post(format!("{}/v1/batch", ingest.url))
        .basic_auth(&ingest.key, Some(""))
        .header("content-encoding", "gzip")
        .body(gzip(&vec![b' '; 50 << 20]))
        .send()
        .await
        .unwrap();
    assert_eq!(bomb.status(), 429, "rate limit before decompression");
    drop(ingest);
    env.teardown().await;
}

/// A raw HTTP/1.1 request on its own connection: headers and the first
/// `sent` bytes of a `declared`-byte body, the rest never sent.
async fn stalled_request(
    url: &str,
    key: &str,
    declared: usize,
    sent: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{key}:"),
    );
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(sent).await.unwrap();
    conn
}

/// What the server sent before closing (or within `wait`).
async fn answer(conn: &mut tokio::net::TcpStream, wait: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_oversized_clients_get_answers_and_hold_nothing() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new("ingest_hostile").await;
    env.create_topic(1).await;
    let ingest = Ingest::start(
        &env,
        "hostile",
        &[
            ("HOURGLASS_INGEST__MAX_BODY_BYTES", "65536".into()),
            ("HOURGLASS_INGEST__MAX_DECODED_BYTES", "65536".into()),
            // One largest body and its decoded copies, no more.
            (
                "HOURGLASS_INGEST__MAX_IN_FLIGHT_BYTES",
                (65536 * 4).to_string(),
            ),
            ("HOURGLASS_INGEST__MAX_IN_FLIGHT_REQUESTS", "2".into()),
            ("HOURGLASS_INGEST__HEADER_READ_TIMEOUT_SECS", "1".into()),
            ("HOURGLASS_INGEST__BODY_READ_TIMEOUT_SECS", "2".into()),
        ],
    )
    .await;
    let good = || json!([{"event": "ok", "user_id": "u"}]).to_string();
    // 55 kB of events: charged once as sent and three times as decoded.
    let big: Vec<Value> = (0..500)
        .map(|i| json!({"event": "big", "user_id": format!("u{i}"), "properties": {"pad": "x".repeat(70)}}))
        .collect();
    let big = Value::from(big).to_string();
    assert!((52_000..65_536).contains(&big.len()), "{}", big.len());
    assert_eq!(
        ingest.post("/v1/batch", big.clone()).await.status(),
        200,
        "alone it fits"
    );

    // A slow upload holds an in-flight slot from its headers on (not only
    // once its body is in) and is charged for what it has sent.
    let mut slow = stalled_request(&ingest.url, &ingest.key, 65_000, &[b' '; 60_000]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = ingest.post("/v1/batch", big.clone()).await;
    assert_eq!(
        r.status(),
        503,
        "over the memory budget while the slow upload holds 60 kB"
    );
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "over_memory_budget", "{body}");
    let mut slower = stalled_request(&ingest.url, &ingest.key, 100, b"[").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = ingest.post("/v1/batch", good()).await;
    assert_eq!(
        r.status(),
        503,
        "both in-flight slots are held by bodies still arriving"
    );
    // The body deadline answers both with 408 and frees everything.
    for conn in [&mut slow, &mut slower] {
        let text = answer(conn, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("body_timeout"), "{text}");
    }
    assert_eq!(ingest.post("/v1/batch", big.clone()).await.status(), 200);

    // Headers trickled slower than the header deadline: the connection is closed.
    let addr = ingest.url.trim_start_matches("http://");
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let text = answer(&mut trickle, Duration::from_secs(8)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connection still open after {:?}: {text}",
        started.elapsed()
    );

    // A body far over the cap, sent in full without `Expect`: the client
    // hears the 413 and its reason, not a reset connection.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/batch", ingest.url))
        .basic_auth(&ingest.key, Some(""))
        .body(vec![b' '; 20 << 20])
        .send()
        .await
        .expect("an answer, not a broken pipe");
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "body_too_large", "{body}");
    assert_eq!(ingest.post("/v1/batch", good()).await.status(), 200);
    drop(ingest);
    env.teardown().await;
}

/// Enrichment on the wire: the request's user agent and (truncated, by the
/// project's policy) address on native events, a Segment event's own
/// `context.userAgent` and `context.ip` winning over the request's, a
/// client's forged `$browser` replaced, and the device class usable as a
/// rollup dimension.
#[tokio::test(flavor = "multi_thread")]
async fn events_carry_their_parsed_user_agent_and_the_projects_ip_policy() {
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";
    const GOOGLEBOT: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; +http://www.google.com/bot.html) Chrome/131.0.6778.69 Safari/537.36";
    let env = TestEnv::new("ingest_enrich").await;
    env.migrate().await;
    env.create_topic(1).await;
    let ingest = Ingest::start_projects(
        &env,
        &["web", "app"],
        &[
            (
                "HOURGLASS_INGEST__CLIENT_IP_HEADER",
                "X-Forwarded-For".into(),
            ),
            ("HOURGLASS_PROJECTS__WEB", "{ip_policy=\"truncate\"}".into()),
        ],
    )
    .await;
    let t = (Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let send = |project: &'static str, batch: Value| {
        let url = format!("{}/v1/batch", ingest.url);
        let key = Ingest::key_of(&env, project);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .basic_auth(key, Some(""))
                .header("user-agent", IPHONE)
                .header("x-forwarded-for", "198.51.100.23, 10.0.0.1")
                .json(&json!({ "batch": batch }))
                .send()
                .await
                .unwrap();
            let answer: Value = r.json().await.unwrap();
            assert_eq!(answer["rejected"], json!([]), "{answer}");
        }
    };
    send(
        "web",
        json!([
            {"event": "plain", "user_id": "u1", "timestamp": t},
            {"event": "forged", "user_id": "u2", "timestamp": t, "properties": {"$browser": "Netscape", "$ip": "1.2.3.4", "k": 1}},
            {"type": "track", "event": "server", "userId": "u3", "timestamp": t,
             "context": {"userAgent": GOOGLEBOT, "ip": "2001:db8:85a3:1234::99", "library": {"name": "analytics-python"}}}
        ]),
    )
    .await;
    // Another project, the default policy: no address kept at all.
    send(
        "app",
        json!([{"type": "track", "event": "server", "userId": "u4", "timestamp": t, "context": {"ip": "203.0.113.5"}}]),
    )
    .await;

    let records = read_topic(
        &env.cfg.kafka,
        4,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let by_event: BTreeMap<(String, String), Value> = records
        .iter()
        .map(|r| {
            let e = EventEnvelope::decode(r.payload().unwrap()).unwrap();
            (
                (e.project_id.clone(), e.event.clone()),
                Value::Object(e.properties),
            )
        })
        .collect();
    let iphone = json!({"$browser": "Safari", "$browser_version": "18.1", "$os": "iPhone",
                        "$os_version": "18.1", "$device_class": "mobile", "$ip": "198.51.100.0"});
    assert_eq!(by_event[&("web".into(), "plain".into())], iphone);
    let mut forged = iphone.clone();
    forged["k"] = json!(1);
    assert_eq!(by_event[&("web".into(), "forged".into())], forged);
    assert_eq!(
        by_event[&("web".into(), "server".into())],
        json!({"$browser": "Googlebot", "$device_class": "bot", "$ip": "2001:db8:85a3::",
               "context": {"userAgent": GOOGLEBOT, "library": {"name": "analytics-python"}}})
    );
    let app = &by_event[&("app".into(), "server".into())];
    assert_eq!(app["context"], json!({}), "context.ip removed: {app}");
    assert!(app.get("$ip").is_none(), "{app}");
    assert_eq!(app["$device_class"], "mobile", "the request's agent: {app}");

    // The device class as a rollup dimension.
    let mut aggregator = env.spawn(
        &["aggregate"],
        &[
            (
                "HOURGLASS_AGGREGATOR__DIMENSIONS",
                "[\"$device_class\"]".into(),
            ),
            ("HOURGLASS_AGGREGATOR__IDLE_TIMEOUT_SECS", "3".into()),
            ("HOURGLASS_AGGREGATOR__FLUSH_INTERVAL_MS", "300".into()),
        ],
    );
    crate::common::rollup_truth::wait_all_flushed(&env, 4).await;
    let rows: Vec<(String, String, u64)> = env
        .clickhouse()
        .query("SELECT project_id, dimensions, sum(events) FROM rollup_5m GROUP BY project_id, dimensions ORDER BY project_id, dimensions")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            ("app".into(), r#"{"$device_class":"mobile"}"#.into(), 1),
            ("web".into(), r#"{"$device_class":"bot"}"#.into(), 1),
            ("web".into(), r#"{"$device_class":"mobile"}"#.into(), 2),
        ]
    );
    crate::common::sigterm(&mut aggregator);
    env.teardown().await;
}
