//! Every error ingest answers, in-process (`Router::oneshot`, no server, no
//! broker: the producer points at a port nothing listens on), held to its
//! status, its `code`, its `Retry-After` and, for 401, `WWW-Authenticate`.
//! The end-to-end suite (tests/e2e/ingest_http.rs) sends the same kinds of
//! input over HTTP against the real broker.

use std::io::Write;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use hourglass_core::Config;
use hourglass_core::config::WriteKey;
use hourglass_core::telemetry::Readiness;
use hourglass_ingest::keys::{WriteKeys, hash_key};
use hourglass_ingest::publish::Publisher;
use hourglass_ingest::quota::ProjectQuotas;
use hourglass_ingest::{AppState, app};
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "wk_errors_test";

fn config() -> Config {
    let mut cfg = Config::default();
    // Nothing listens here: every publish fails after the delivery timeout.
    cfg.kafka.brokers = "127.0.0.1:9".into();
    cfg.ingest.delivery_timeout_ms = 1_500;
    cfg.ingest.retry_after_secs = 7;
    cfg.ingest.body_read_timeout_secs = 1;
    cfg.ingest.max_body_bytes = 64 * 1024;
    cfg.ingest.keys = vec![WriteKey {
        project_id: "web".into(),
        sha256: hash_key(KEY),
    }];
    cfg
}

fn app_for(cfg: &Config) -> Router {
    let readiness = Readiness::default();
    let publisher = Publisher::new(&cfg.kafka, &cfg.ingest, readiness.clone()).unwrap();
    let state = AppState::new(
        WriteKeys::from_config(&cfg.ingest).unwrap(),
        publisher,
        cfg.contract.clone(),
        cfg.ingest.clone(),
        ProjectQuotas::from_config(cfg),
        hourglass_ingest::enrich::EnrichPolicies::from_config(cfg),
    );
    app(Arc::new(state), &cfg.ingest, readiness)
}

struct Answer {
    status: StatusCode,
    code: String,
    retry_after: Option<String>,
    authenticate: bool,
    body: Value,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        code: body["code"].as_str().unwrap_or_default().to_owned(),
        retry_after: headers
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned()),
        authenticate: headers.contains_key(header::WWW_AUTHENTICATE),
        body,
    }
}

fn batch() -> axum::http::request::Builder {
    Request::post("/v1/batch").header(header::CONTENT_TYPE, "application/json")
}

fn keyed(body: impl Into<Body>) -> Request<Body> {
    batch()
        .header("x-hourglass-key", KEY)
        .body(body.into())
        .unwrap()
}

fn event(name: &str) -> Value {
    json!({"event": name, "user_id": "u1", "timestamp": chrono::Utc::now().to_rfc3339()})
}

fn assert_answer(a: &Answer, status: StatusCode, code: &str, retry_after: Option<&str>) {
    assert_eq!(
        (a.status, a.code.as_str(), a.retry_after.as_deref()),
        (status, code, retry_after),
        "{}",
        a.body
    );
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a reason: {}",
        a.body
    );
}

#[tokio::test]
async fn each_refusal_has_its_status_code_and_retry_after() {
    let cfg = config();
    let app = app_for(&cfg);
    let valid = json!({"batch": [event("a")]}).to_string();

    // No key, and a key nobody issued: 401 with a challenge, body unread.
    let a = send(&app, batch().body(Body::from(valid.clone())).unwrap()).await;
    assert_answer(&a, StatusCode::UNAUTHORIZED, "missing_key", None);
    assert!(a.authenticate);
    let a = send(
        &app,
        batch()
            .header("x-hourglass-key", "wk_nobody")
            .body(Body::from(valid.clone()))
            .unwrap(),
    )
    .await;
    assert_answer(&a, StatusCode::UNAUTHORIZED, "unknown_key", None);
    assert!(a.authenticate);

    // What the body is, and how it is encoded.
    let a = send(
        &app,
        Request::post("/v1/batch")
            .header(header::CONTENT_TYPE, "application/xml")
            .header("x-hourglass-key", KEY)
            .body(Body::from("<batch/>"))
            .unwrap(),
    )
    .await;
    assert_answer(
        &a,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_content_type",
        None,
    );
    let a = send(
        &app,
        batch()
            .header("x-hourglass-key", KEY)
            .header(header::CONTENT_ENCODING, "br")
            .body(Body::from(valid.clone()))
            .unwrap(),
    )
    .await;
    assert_answer(
        &a,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_content_encoding",
        None,
    );
    let a = send(
        &app,
        batch()
            .header("x-hourglass-key", KEY)
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from(&b"\x1f\x8b\x08\x00 not gzip at all"[..]))
            .unwrap(),
    )
    .await;
    assert_answer(&a, StatusCode::BAD_REQUEST, "corrupt_encoding", None);
    let a = send(&app, keyed(vec![b' '; cfg.ingest.max_body_bytes + 1])).await;
    assert_answer(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None);
    // A gzip bomb: small on the wire, over the decoded cap.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; cfg.ingest.max_decoded_bytes + 1])
        .unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < cfg.ingest.max_body_bytes);
    let a = send(
        &app,
        batch()
            .header("x-hourglass-key", KEY)
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from(bomb))
            .unwrap(),
    )
    .await;
    assert_answer(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None);
    let a = send(&app, keyed("{\"batch\": [")).await;
    assert_answer(&a, StatusCode::BAD_REQUEST, "malformed", None);

    // A body that stops arriving: 408 after body_read_timeout_secs.
    let stalled = futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from("{")) })
        .chain(futures::stream::pending());
    let a = send(&app, keyed(Body::from_stream(stalled))).await;
    assert_answer(&a, StatusCode::REQUEST_TIMEOUT, "body_timeout", None);

    // Every event refused: 400 naming each index and reason, nothing stored.
    let a = send(
        &app,
        keyed(json!({"batch": [{"event": ""}, {"user_id": "u"}]}).to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(a.body["accepted"], 0);
    let indexes: Vec<u64> = a.body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![0, 1], "{}", a.body);
    assert!(
        a.body["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["reason"].as_str().unwrap_or_default().is_empty())
    );

    // The broker cannot be reached: 503 with the configured Retry-After,
    // never a silent 200.
    let a = send(&app, keyed(valid.clone())).await;
    assert_answer(
        &a,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        Some("7"),
    );
}

#[tokio::test]
async fn a_key_over_its_rate_waits_what_retry_after_says() {
    let mut cfg = config();
    cfg.ingest.rate_limit_events_per_sec = 1;
    cfg.ingest.rate_limit_burst = 2;
    let app = app_for(&cfg);
    let two = json!({"batch": [{"event": ""}, {"event": ""}]}).to_string();
    // Refused events still count against the rate: 2 fit the burst...
    let a = send(&app, keyed(two.clone())).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    // ...and more within the second do not: refused before the body is
    // read, with the wait for the next event's token.
    let a = send(&app, keyed(two)).await;
    assert_answer(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some("1"));
    // Waiting what it says is enough for an event.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let one = json!({"batch": [{"event": ""}]}).to_string();
    let a = send(&app, keyed(one)).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "past the limiter: {}",
        a.body
    );
}

#[tokio::test]
async fn a_project_over_its_quotas_gets_429_naming_the_quota() {
    let mut cfg = config();
    cfg.contract.max_batch_events = 2;
    cfg.ingest.rate_limit_events_per_sec = 0;
    cfg.projects.insert(
        "web".into(),
        hourglass_core::config::ProjectConfig {
            events_per_sec: 1,
            events_per_day: 3,
            ..Default::default()
        },
    );
    let app = app_for(&cfg);
    let two = json!({"batch": [{"event": ""}, {"event": ""}]}).to_string();
    // Two invalid events pass the bucket (one batch) and the day; none is
    // kept, so the day gets them back.
    let a = send(&app, keyed(two.clone())).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    let a = send(&app, keyed(two.clone())).await;
    assert_answer(
        &a,
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        Some("1"),
    );
    assert_eq!(a.body["quota"], "events_per_sec", "{}", a.body);
    assert!(
        a.body["message"].as_str().unwrap().contains("\"web\""),
        "{}",
        a.body
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // Three events a day: a batch of 2 fits (they were given back), then
    // 2 + 2 would not: 429 until midnight UTC.
    cfg.projects.get_mut("web").unwrap().events_per_sec = 0;
    let app = app_for(&cfg);
    let a = send(&app, keyed(two.clone())).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    let a = send(&app, keyed(two.clone())).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    let four = json!({"batch": [{"event": ""}, {"event": ""}, {"event": ""}, {"event": ""}]});
    let a = send(&app, keyed(four.to_string())).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "too large for one batch: {}",
        a.body
    );
    cfg.contract.max_batch_events = 4;
    let app = app_for(&cfg);
    let a = send(&app, keyed(four.to_string())).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(
        (a.code.as_str(), a.body["quota"].as_str()),
        ("quota_exceeded", Some("events_per_day")),
        "{}",
        a.body
    );
    let now = chrono::Utc::now().timestamp();
    let to_midnight = (now.div_euclid(86_400) + 1) * 86_400 - now;
    let said: i64 = a.retry_after.unwrap().parse().unwrap();
    assert!(
        (to_midnight - said).abs() <= 2,
        "{said} s, midnight in {to_midnight} s"
    );
}

#[tokio::test]
async fn too_many_requests_in_flight_is_503_with_retry_after() {
    let mut cfg = config();
    cfg.ingest.max_in_flight_requests = 1;
    let app = app_for(&cfg);
    // One request holds the only slot, its body never finishing...
    let stalled = futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from("{")) })
        .chain(futures::stream::pending());
    let holder = tokio::spawn({
        let app = app.clone();
        async move { send(&app, keyed(Body::from_stream(stalled))).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // ...so the next is turned away at once, and told when to come back.
    let a = send(&app, keyed(json!({"batch": [event("a")]}).to_string())).await;
    assert_answer(
        &a,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        Some("1"),
    );
    assert_eq!(holder.await.unwrap().status, StatusCode::REQUEST_TIMEOUT);
}
