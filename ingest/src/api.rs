//! The HTTP routes: `/v1/batch`, the single-event routes of Segment's
//! Tracking API (`/v1/track`, `/v1/page`, ...), and `/v1/beacon`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use hourglass_core::config::IngestConfig;
use hourglass_core::contract::{
    ContractLimits, EncodedEvent, Enrichment, Normalizer, ParsedBatch, parse_batch, read_batch,
};
use hourglass_core::http::PeerAddr;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::answer::{ApiError, BatchReport, Rejected};
use crate::body::{self, BodyError, Decoder, Encoding};
use crate::budget::{Charge, EVENT_COPIES, MemoryBudget};
use crate::enrich::EnrichPolicies;
use crate::keys::{Project, WriteKeys};
use crate::lane::{LARGE_BODY_BYTES, LargeBodyLane};
use crate::metrics;
use crate::publish::{PublishError, Publisher};
use crate::quota::ProjectQuotas;

pub struct AppState {
    pub keys: WriteKeys,
    pub publisher: Publisher,
    pub limits: ContractLimits,
    /// `limits` with the history allowance of `/v1/import`.
    import_limits: ContractLimits,
    pub cfg: IngestConfig,
    limiter: Option<DefaultKeyedRateLimiter<usize>>,
    quotas: ProjectQuotas,
    enrich: EnrichPolicies,
    in_flight: Semaphore,
    budget: Arc<MemoryBudget>,
    lane: LargeBodyLane,
}

impl AppState {
    pub fn new(
        keys: WriteKeys,
        publisher: Publisher,
        limits: ContractLimits,
        cfg: IngestConfig,
        quotas: ProjectQuotas,
        enrich: EnrichPolicies,
    ) -> Self {
        let limiter = NonZeroU32::new(cfg.rate_limit_events_per_sec).map(|rate| {
            let burst = NonZeroU32::new(cfg.rate_limit_burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let in_flight = Semaphore::new(cfg.max_in_flight_requests.max(1));
        let budget = MemoryBudget::new(cfg.max_in_flight_bytes);
        Self {
            budget,
            lane: LargeBodyLane::new(cfg.large_body_workers),
            keys,
            publisher,
            import_limits: limits.for_import(),
            limits,
            cfg,
            limiter,
            quotas,
            enrich,
            in_flight,
        }
    }
}

/// Which route a request came in on: it decides the body's shape.
#[derive(Clone, Copy)]
enum Route {
    Batch,
    /// A batch of history (`/v1/import`): older event times allowed.
    Import,
    /// One event; the Segment `type` the route implies when the body has none.
    Single(&'static str),
    Beacon,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Batch => "batch",
            Route::Import => "import",
            Route::Single(kind) => kind,
            Route::Beacon => "beacon",
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/v1/batch", post(batch))
        .route("/v1/import", post(import))
        .route("/v1/beacon", post(beacon));
    for kind in ["track", "page", "screen", "identify", "group", "alias"] {
        r = r.route(
            &format!("/v1/{kind}"),
            post(
                move |state: State<Arc<AppState>>,
                      peer: Option<Extension<PeerAddr>>,
                      headers: HeaderMap,
                      body: Body| {
                    handle(state, Route::Single(kind), peer, headers, None, body)
                },
            ),
        );
    }
    r.with_state(state)
}

async fn batch(
    state: State<Arc<AppState>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, Route::Batch, peer, headers, None, body).await
}

async fn import(
    state: State<Arc<AppState>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, Route::Import, peer, headers, None, body).await
}

#[derive(Deserialize)]
struct BeaconQuery {
    key: Option<String>,
}

async fn beacon(
    state: State<Arc<AppState>>,
    peer: Option<Extension<PeerAddr>>,
    Query(q): Query<BeaconQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, Route::Beacon, peer, headers, q.key, body).await
}

async fn handle(
    State(state): State<Arc<AppState>>,
    route: Route,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    query_key: Option<String>,
    body: Body,
) -> Response {
    let started = Instant::now();
    let peer = peer.map(|Extension(PeerAddr(addr))| addr.ip());
    let response = match accept(&state, route, peer, &headers, query_key, body).await {
        Ok(report) => report.into_response(),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(route = route.label(), error = %e, "request refused");
            }
            e.into_response()
        }
    };
    metrics::request(route.label(), response.status().as_u16(), started.elapsed());
    response
}

/// Every check that costs little comes before the one that costs more: the
/// in-flight slot and the key before the body is read, the rate limit
/// (charged one event) before it is decompressed, the rest of the rate once
/// the events are counted.
async fn accept(
    state: &AppState,
    route: Route,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    query_key: Option<String>,
    body: Body,
) -> Result<BatchReport, ApiError> {
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return Err(ApiError::Unavailable {
            reason: format!(
                "{} requests already in flight",
                state.cfg.max_in_flight_requests
            ),
            retry_after: 1,
        });
    };
    // Keys in headers or the query are checked before the body is read, so
    // strangers cannot make us read or decompress anything.
    let header_key = presented_key(headers).or(query_key);
    let mut project = match &header_key {
        Some(key) => Some(state.keys.project_for(key).ok_or(ApiError::UnknownKey)?),
        None => None,
    };
    body::check_content_type(headers)?;
    let encoding = Encoding::of(headers)?;
    if let Some(project) = &project {
        rate_limit(state, project, 1)?;
    }
    let mut charge = state.budget.charge();
    let raw = body::receive(
        headers,
        body,
        state.cfg.max_body_bytes,
        Duration::from_secs(state.cfg.body_read_timeout_secs),
        &mut charge,
    )
    .await?;
    if project.is_none() {
        // Browser SDKs (analytics.js) send the key inside a text/plain body
        // to avoid a CORS preflight; only a body within the raw cap gets here.
        let key = (encoding == Encoding::Identity)
            .then(|| body_write_key(&raw))
            .flatten()
            .ok_or(ApiError::MissingKey)?;
        let found = state.keys.project_for(&key).ok_or(ApiError::UnknownKey)?;
        rate_limit(state, &found, 1)?;
        project = Some(found);
    }
    let project = project.ok_or(ApiError::MissingKey)?;
    let limits = match route {
        Route::Import => &state.import_limits,
        _ => &state.limits,
    };
    let (batch, _charge) = read_events(
        route,
        Decoding {
            encoding,
            limits: limits.clone(),
            max_decoded: state.cfg.max_decoded_bytes,
            lane: state.lane.clone(),
        },
        raw,
        charge,
    )
    .await?;
    if batch.events.len() > 1 {
        rate_limit(state, &project, batch.events.len() - 1)?;
    }
    let mut day = state
        .quotas
        .reserve_day(&project.id, batch.events.len(), Utc::now())
        .inspect_err(|q| metrics::over_quota(q, batch.events.len()))?;
    let enrichment = state.enrich.for_request(&project.id, headers, peer);
    let (valid, rejected) = validate(&batch, &project, limits, &enrichment);
    drop(batch);
    if !valid.is_empty() {
        state
            .publisher
            .publish(&valid)
            .await
            .map_err(|e| unavailable(e, state.cfg.retry_after_secs))?;
        day.keep(valid.len());
        metrics::accepted(&project.id, valid.len());
    }
    Ok(BatchReport {
        accepted: valid.len(),
        rejected,
    })
}

fn unavailable(e: PublishError, retry_after: u32) -> ApiError {
    ApiError::Unavailable {
        reason: e.to_string(),
        retry_after,
    }
}

/// The write key from `Authorization: Basic` (user name; Segment SDKs send
/// the key there with an empty password), `Authorization: Bearer`, or
/// `X-Hourglass-Key`.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = headers.get("x-hourglass-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_owned()).filter(|k| !k.is_empty());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = auth.split_once(' ')?;
    let rest = rest.trim();
    let key = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':').unwrap_or((&text, ""));
        if user.is_empty() {
            password.to_owned()
        } else {
            user.to_owned()
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_owned()
    } else {
        return None;
    };
    Some(key).filter(|k| !k.is_empty())
}

/// `writeKey` at the top level of an uncompressed JSON object body.
fn body_write_key(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()?
        .write_key
        .filter(|k| !k.is_empty())
}

/// How a body is to be decoded.
struct Decoding {
    encoding: Encoding,
    limits: ContractLimits,
    max_decoded: usize,
    lane: LargeBodyLane,
}

/// The request's events, decoded and parsed under the caps, the memory
/// budget and the large-body lane. A compressed body is inflated as it is
/// parsed: a bomb costs CPU up to the decoded cap (in its turn), never the
/// memory. Small plain bodies, the common case, are parsed at once.
async fn read_events(
    route: Route,
    how: Decoding,
    raw: Bytes,
    mut charge: Charge,
) -> Result<(ParsedBatch, Charge), ApiError> {
    let Decoding {
        encoding,
        limits,
        max_decoded,
        lane,
    } = how;
    if encoding == Encoding::Identity {
        if raw.len() > max_decoded {
            return Err(BodyError::TooLarge {
                limit: max_decoded,
                stage: "",
            }
            .into());
        }
        let large = raw.len() > LARGE_BODY_BYTES;
        let parse = move |mut charge: Charge| {
            let batch = parse_events(route, &raw, &limits)?;
            charge
                .add(events_bytes(&batch) * EVENT_COPIES)
                .map_err(BodyError::from)?;
            Ok((batch, charge))
        };
        if !large {
            return parse(charge);
        }
        let _turn = lane.enter().await.map_err(BodyError::from)?;
        return tokio::task::spawn_blocking(move || parse(charge))
            .await
            .map_err(|e| ApiError::Malformed(format!("parsing the body failed: {e}")))?;
    }
    tokio::task::spawn_blocking(move || {
        let batch = {
            let mut decoder = Decoder::new(encoding, &raw, max_decoded, &mut charge, &lane)?;
            if matches!(route, Route::Batch | Route::Import) {
                let parsed = read_batch(std::io::BufReader::new(&mut decoder), &limits);
                parsed.map_err(|e| match decoder.failure() {
                    Some(body) => ApiError::Body(body),
                    None => ApiError::Malformed(e.to_string()),
                })?
            } else {
                parse_events(route, &decoder.read_all()?, &limits)?
            }
        };
        // The inflated bytes were charged once as they came.
        charge
            .add(events_bytes(&batch) * (EVENT_COPIES - 1))
            .map_err(BodyError::from)?;
        Ok((batch, charge))
    })
    .await
    .map_err(|e| ApiError::Malformed(format!("decoding the body failed: {e}")))?
}

fn events_bytes(batch: &ParsedBatch) -> usize {
    batch.events.iter().map(|e| e.get().len()).sum()
}

/// The events of a decoded body, by the shape its route implies.
fn parse_events(
    route: Route,
    body: &[u8],
    limits: &ContractLimits,
) -> Result<ParsedBatch, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let is_batch = match route {
        Route::Batch | Route::Import => true,
        Route::Single(_) => false,
        // A beacon carries an array, a batch object, or one event.
        Route::Beacon => first == Some(b'[') || has_batch_field(body),
    };
    if is_batch {
        return parse_batch(body, limits).map_err(|e| ApiError::Malformed(e.to_string()));
    }
    let kind = match route {
        Route::Single(kind) => kind,
        _ => "track",
    };
    single_event(body, kind)
}

fn has_batch_field(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        batch: Option<&'a RawValue>,
    }
    serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.batch.is_some())
}

/// One event posted alone; its own `sentAt` corrects its clock skew.
fn single_event(body: &[u8], kind: &'static str) -> Result<ParsedBatch, ApiError> {
    let mut object: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::Malformed(format!("body is not a JSON object: {e}")))?;
    let sent_at = object
        .remove("sentAt")
        .or_else(|| object.remove("sent_at"))
        .and_then(|v| v.as_str().map(str::to_owned));
    let sent_at = sent_at
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::Malformed(format!("`sentAt` is not an RFC 3339 date-time: {s}"))
                })
        })
        .transpose()?;
    if kind != "track" || object.contains_key("type") {
        object.entry("type").or_insert_with(|| Value::from(kind));
    }
    let raw =
        serde_json::value::to_raw_value(&object).map_err(|e| ApiError::Malformed(e.to_string()))?;
    Ok(ParsedBatch {
        events: vec![raw],
        sent_at,
    })
}

/// The write key's rate limit, then the project's per-second quota.
fn rate_limit(state: &AppState, project: &Project, events: usize) -> Result<(), ApiError> {
    // Taken in parts (one event before the body is read, the rest once it
    // is parsed), so `events` may be 1 less than the batch.
    key_rate_limit(state, project, events)?;
    state
        .quotas
        .take_rate(&project.id, events)
        .inspect_err(|q| metrics::over_quota(q, events))?;
    Ok(())
}

fn key_rate_limit(state: &AppState, project: &Project, events: usize) -> Result<(), ApiError> {
    let Some(limiter) = &state.limiter else {
        return Ok(());
    };
    let cost = NonZeroU32::new(u32::try_from(events.max(1)).unwrap_or(u32::MAX))
        .unwrap_or(NonZeroU32::MIN);
    match limiter.check_key_n(&project.index, cost) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(ApiError::RateLimited(
            not_until.wait_time_from(DefaultClock::default().now()),
        )),
        // A batch bigger than the bucket can never pass; config validation
        // keeps the burst at least one full batch, so this is a safety net.
        Err(_) => Err(ApiError::Malformed(format!(
            "batch of {events} events is larger than the rate limit burst of {}",
            state.cfg.rate_limit_burst
        ))),
    }
}

fn validate(
    batch: &ParsedBatch,
    project: &Project,
    limits: &ContractLimits,
    enrichment: &Enrichment,
) -> (Vec<EncodedEvent>, Vec<Rejected>) {
    let normalizer =
        Normalizer::new(&project.id, Utc::now(), batch.sent_at, limits).enriching(enrichment);
    let mut valid = Vec::with_capacity(batch.events.len());
    let mut rejected = Vec::new();
    for (index, raw) in batch.events.iter().enumerate() {
        match normalizer.encode(raw) {
            Ok(event) => valid.push(event),
            Err(why) => {
                metrics::rejected(why.code());
                rejected.push(Rejected {
                    index,
                    code: why.code(),
                    reason: why.to_string(),
                });
            }
        }
    }
    (valid, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn keys_are_found_where_clients_put_them() {
        let basic = base64::engine::general_purpose::STANDARD.encode("wk_1:");
        assert_eq!(
            presented_key(&with("authorization", &format!("Basic {basic}"))).as_deref(),
            Some("wk_1")
        );
        let pw_only = base64::engine::general_purpose::STANDARD.encode(":wk_2");
        assert_eq!(
            presented_key(&with("authorization", &format!("Basic {pw_only}"))).as_deref(),
            Some("wk_2")
        );
        assert_eq!(
            presented_key(&with("authorization", "Bearer wk_3")).as_deref(),
            Some("wk_3")
        );
        assert_eq!(
            presented_key(&with("x-hourglass-key", "wk_4")).as_deref(),
            Some("wk_4")
        );
        assert_eq!(presented_key(&with("authorization", "Digest abc")), None);
        assert_eq!(presented_key(&with("authorization", "Bearer ")), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn single_routes_imply_their_type() {
        let b = single_event(
            br#"{"userId":"u","name":"Home","sentAt":"2026-11-25T12:00:00Z"}"#,
            "page",
        )
        .unwrap();
        assert!(b.sent_at.is_some());
        let v: Value = serde_json::from_str(b.events[0].get()).unwrap();
        assert_eq!(v["type"], "page");
        assert!(v.get("sentAt").is_none());
        let b = single_event(br#"{"event":"e","user_id":"u"}"#, "track").unwrap();
        let v: Value = serde_json::from_str(b.events[0].get()).unwrap();
        assert!(v.get("type").is_none(), "native events stay native");
    }

    #[test]
    fn beacons_hold_an_array_a_batch_or_one_event() {
        let limits = ContractLimits::default();
        assert_eq!(
            parse_events(Route::Beacon, br#"[{"event":"a"},{"event":"b"}]"#, &limits)
                .unwrap()
                .events
                .len(),
            2
        );
        assert_eq!(
            parse_events(Route::Beacon, br#"{"batch":[{"event":"a"}]}"#, &limits)
                .unwrap()
                .events
                .len(),
            1
        );
        assert_eq!(
            parse_events(Route::Beacon, br#"{"event":"a","user_id":"u"}"#, &limits)
                .unwrap()
                .events
                .len(),
            1
        );
        assert!(parse_events(Route::Beacon, b"not json", &limits).is_err());
    }
}
