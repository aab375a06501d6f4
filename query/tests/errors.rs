//! Every refusal of the query API, in-process (`Router::oneshot`, no server;
//! ClickHouse is a port nothing listens on), held to its status, its
//! `code`, its `Retry-After` and, for 401, `WWW-Authenticate`. What needs
//! data (tenancy, exact numbers, limits ClickHouse enforces) is in the
//! end-to-end suite (tests/e2e/query_api.rs).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hourglass_core::Config;
use hourglass_core::telemetry::Readiness;
use hourglass_query::auth::Verifier;
use hourglass_query::state::AppState;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &str = "query-errors-test-secret-0123456789abcdef";
const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.clickhouse.url = "http://127.0.0.1:9".into();
    cfg.query.jwt_secret = SECRET.into();
    cfg.query.allow_project_wide_tokens = true;
    cfg
}

fn app_for(cfg: &Config) -> Router {
    let verifier = Verifier::from_config(&cfg.query).unwrap();
    hourglass_query::router(
        Arc::new(AppState::new(cfg.clone(), verifier)),
        Readiness::default(),
    )
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn good_token() -> String {
    token(json!({"project_id": "web", "sub": "t", "exp": chrono::Utc::now().timestamp() + 600}))
}

struct Answer {
    status: StatusCode,
    code: String,
    retry_after: Option<String>,
    challenge: Option<String>,
    body: Value,
}

async fn call(app: &Router, method: &str, path: &str, bearer: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(t) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let text = |name| {
        headers
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned())
    };
    Answer {
        status,
        code: body["code"].as_str().unwrap_or_default().to_owned(),
        retry_after: text(header::RETRY_AFTER),
        challenge: text(header::WWW_AUTHENTICATE),
        body,
    }
}

fn expect(a: &Answer, status: StatusCode, code: &str, retry_after: Option<&str>) {
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

fn metrics(query: &str) -> String {
    format!("/v1/metrics?{query}")
}

#[tokio::test]
async fn each_refusal_has_its_status_code_and_headers() {
    let cfg = config();
    let app = app_for(&cfg);
    let good = good_token();
    let valid = metrics(&format!("event=e&step=1h&from={T0}&to={}", T0 + 86_400));

    // Tokens: none, not a JWT, wrong signature, expired.
    let now = chrono::Utc::now().timestamp();
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"project_id": "web", "exp": now + 600}),
        &EncodingKey::from_secret(b"some-other-secret-0123456789abcdef"),
    )
    .unwrap();
    for (what, bearer) in [
        ("no token", None),
        ("not a JWT", Some("garbage".to_owned())),
        ("wrong signature", Some(wrong_key)),
        (
            "expired",
            Some(token(json!({"project_id": "web", "exp": now - 3600}))),
        ),
    ] {
        let a = call(&app, "GET", &valid, bearer.as_deref()).await;
        expect(&a, StatusCode::UNAUTHORIZED, "invalid_token", None);
        assert_eq!(
            a.challenge.as_deref(),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
    }

    // A genuine token that names no project may read nothing: 403.
    let unscoped = token(json!({"sub": "t", "exp": now + 600}));
    let a = call(&app, "GET", &valid, Some(&unscoped)).await;
    expect(&a, StatusCode::FORBIDDEN, "forbidden", None);

    // Parameters, refused before ClickHouse is asked.
    for query in [
        format!("event=e&step=1h&from={T0}&to={}&colour=red", T0 + 3600),
        format!("step=1h&from={T0}&to={}", T0 + 3600),
        format!("event=e&step=7m&from={T0}&to={}", T0 + 3600),
        format!("event=e&step=1h&from={}&to={}", T0 + 60, T0 + 3600),
        format!("event=e&step=1h&from={}&to={T0}", T0 + 3600),
        format!("event=e&step=1h&from=yesterday&to={}", T0 + 3600),
        format!("event=e&step=1h&from={T0}&to={}&step=1d", T0 + 3600),
        format!("event=e&step=5m&from={T0}&to={}", T0 + 400 * 86_400),
        format!("event=e&step=1h&from={T0}&to={}&group_by=nope", T0 + 3600),
    ] {
        let a = call(&app, "GET", &metrics(&query), Some(&good)).await;
        expect(&a, StatusCode::BAD_REQUEST, "invalid_parameter", None);
    }
    let a = call(
        &app,
        "GET",
        &format!("/v1/events?from={T0}&to={}&limit=0", T0 + 3600),
        Some(&good),
    )
    .await;
    expect(&a, StatusCode::BAD_REQUEST, "invalid_parameter", None);

    // Deleting a user's data needs the admin claim.
    let a = call(&app, "DELETE", "/v1/users/u1", Some(&good)).await;
    expect(&a, StatusCode::FORBIDDEN, "forbidden", None);

    // ClickHouse unreachable: 503 with Retry-After, and no detail leaked.
    let a = call(&app, "GET", &valid, Some(&good)).await;
    expect(
        &a,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        Some("5"),
    );
    assert!(
        !a.body["message"].as_str().unwrap().contains("127.0.0.1"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn a_token_over_its_rate_waits_what_retry_after_says() {
    let mut cfg = config();
    cfg.query.rate_limit_per_sec = 1;
    cfg.query.rate_limit_burst = 1;
    let app = app_for(&cfg);
    let good = good_token();
    let bad_step = metrics(&format!("event=e&step=7m&from={T0}&to={}", T0 + 3600));
    let a = call(&app, "GET", &bad_step, Some(&good)).await;
    expect(&a, StatusCode::BAD_REQUEST, "invalid_parameter", None);
    let a = call(&app, "GET", &bad_step, Some(&good)).await;
    expect(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some("1"));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let a = call(&app, "GET", &bad_step, Some(&good)).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "past the limiter: {}",
        a.body
    );
}
