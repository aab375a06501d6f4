//! `GET /v1/metrics`: one event's rollups per bucket of 5m, 1h or 1d, from
//! the batch layer's rows where a batch pass covers the bucket and from
//! `rollup_5m`, `rollup_1h` or `rollup_1d` elsewhere ([`crate::layers`]). Distinct users are exact (user
//! hashes or their merged states); percentiles come from the merged
//! HdrHistogram buckets of the whole bucket (never averaged percentiles).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeZone, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use hourglass_core::histogram::quantile_from_buckets;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::params::{Params, show};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Step {
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl Step {
    fn parse(v: &str) -> Result<Self, ApiError> {
        match v {
            "5m" => Ok(Self::FiveMinutes),
            "1h" => Ok(Self::Hour),
            "1d" => Ok(Self::Day),
            _ => Err(ApiError::bad(format!(
                "`step` must be 5m, 1h or 1d, not {v:?}"
            ))),
        }
    }

    pub fn secs(self) -> i64 {
        match self {
            Self::FiveMinutes => 300,
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::FiveMinutes => "5m",
            Self::Hour => "1h",
            Self::Day => "1d",
        }
    }
}

/// Parameters of `/v1/metrics` (documentation; parsed strictly by [`Params`]).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct MetricsParams {
    /// Event name.
    event: String,
    /// Start (inclusive), RFC 3339 or Unix seconds, aligned to `step`.
    from: String,
    /// End (exclusive), aligned to `step`.
    to: String,
    /// `5m` (rollup_5m), `1h` (rollup_1h) or `1d` (rollup_1d).
    step: String,
    /// Comma-separated dimension names (only the aggregator's configured dimensions).
    group_by: Option<String>,
    /// `dimension:value`, repeatable; all must hold.
    #[serde(rename = "where")]
    where_: Option<Vec<String>>,
    /// Return empty buckets as zeros.
    fill: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Point {
    pub time: DateTime<Utc>,
    pub events: u64,
    pub users: u64,
    pub value_count: u64,
    pub value_sum: f64,
    pub value_min: Option<f64>,
    pub value_max: Option<f64>,
    pub value_avg: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    /// Which layer answered: `batch` (recomputed from the raw record once
    /// the hour settled) or `speed` (the streaming aggregator's rows);
    /// absent on a bucket filled with zeros.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<Layer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Speed,
    Batch,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Series {
    /// The `group_by` dimensions' values of this series (empty without `group_by`).
    pub group: BTreeMap<String, String>,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricsAnswer {
    pub event: String,
    pub step: Step,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: Vec<String>,
    pub series: Vec<Series>,
}

#[derive(Debug, Row, Deserialize)]
struct BucketRow {
    t: u32,
    g: Vec<String>,
    n: u64,
    u: u64,
    vc: u64,
    vs: f64,
    vmin: f64,
    vmax: f64,
    h: (Vec<u64>, Vec<u64>),
    /// p50, p90, p95, p99 when the row carries them finalized (batch
    /// totals); otherwise empty and read from `h`.
    q: Vec<f64>,
    layer: String,
}

const PARAMS: &[&str] = &["event", "from", "to", "step", "group_by", "where", "fill"];

/// Nearest bounds aligned to `step` around `t`.
fn check_aligned(name: &str, t: DateTime<Utc>, step: Step) -> Result<i64, ApiError> {
    let secs = t.timestamp();
    let down = secs - secs.rem_euclid(step.secs());
    if down == secs {
        return Ok(secs);
    }
    let at = |s: i64| show(Utc.timestamp_opt(s, 0).single().expect("in range"));
    Err(ApiError::bad(format!(
        "`{name}` {} is not aligned to {}: use {} or {}",
        show(t),
        step.name(),
        at(down),
        at(down + step.secs())
    )))
}

fn dimension<'a>(allowed: &'a [String], name: &str) -> Result<&'a str, ApiError> {
    allowed
        .iter()
        .find(|d| d.as_str() == name)
        .map(String::as_str)
        .ok_or_else(|| {
            ApiError::bad(format!(
                "unknown dimension {name:?}: the rollups are kept by {}",
                if allowed.is_empty() {
                    "no dimension (aggregator.dimensions is empty)".to_owned()
                } else {
                    allowed.join(", ")
                }
            ))
        })
}

/// The rollups' filter that keeps a tenant-scoped token to its tenant:
/// rollups know tenants only where the aggregator keeps the tenant
/// property as a dimension, so such a token is refused elsewhere.
pub fn tenant_filter<'a>(
    cfg: &'a hourglass_core::Config,
    scope: &Scope,
) -> Result<Option<(&'a str, String)>, ApiError> {
    let Some(tenant) = &scope.tenant_id else {
        return Ok(None);
    };
    let d = dimension(&cfg.aggregator.dimensions, &cfg.contract.tenant_property).map_err(|_| {
        ApiError::Forbidden(format!(
            "this token is scoped to a tenant, and the rollups are not kept per tenant (add {:?} to aggregator.dimensions)",
            cfg.contract.tenant_property
        ))
    })?;
    Ok(Some((d, tenant.clone())))
}

#[utoipa::path(
    get,
    path = "/v1/metrics",
    params(MetricsParams),
    responses(
        (status = 200, description = "Buckets per group", body = MetricsAnswer),
        (status = 400, description = "A parameter is refused", body = crate::error::ErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
        (status = 403, description = "The token may not read this", body = crate::error::ErrorBody),
        (status = 429, description = "Over this token's rate", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "rollups"
)]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(raw.as_deref(), PARAMS)?;
    let cfg = &state.cfg;
    let event = p.required("event")?.to_owned();
    let step = Step::parse(p.required("step")?)?;
    let from = p
        .time("from")?
        .ok_or_else(|| ApiError::bad("parameter `from` is required"))?;
    let to = p
        .time("to")?
        .ok_or_else(|| ApiError::bad("parameter `to` is required"))?;
    let from_s = check_aligned("from", from, step)?;
    let to_s = check_aligned("to", to, step)?;
    if to_s <= from_s {
        return Err(ApiError::bad(format!(
            "`to` ({}) must be after `from` ({})",
            show(to),
            show(from)
        )));
    }
    let buckets = (to_s - from_s) / step.secs();
    let max = i64::from(cfg.query.max_buckets);
    if buckets > max {
        return Err(ApiError::bad(format!(
            "{} .. {} holds {buckets} buckets of {}; at most {max} are returned: narrow the range or use a larger step",
            show(from),
            show(to),
            step.name()
        )));
    }
    let dims = &cfg.aggregator.dimensions;
    let mut group_by = Vec::new();
    for name in p
        .get("group_by")
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let d = dimension(dims, name.trim())?;
        if group_by.contains(&d) {
            return Err(ApiError::bad(format!("`group_by` names {d:?} twice")));
        }
        group_by.push(d);
    }
    let mut filters = Vec::new();
    for w in p.all("where") {
        let (name, value) = w
            .split_once(':')
            .ok_or_else(|| ApiError::bad(format!("`where` must be dimension:value, not {w:?}")))?;
        filters.push((dimension(dims, name)?, value.to_owned()));
    }
    if let Some(tenant) = tenant_filter(cfg, &scope)? {
        filters.push(tenant);
    }
    let fill = p.flag("fill")?;
    let closed = to_s <= closed_before(cfg);
    let cache = closed && cfg.query.cache_closed_answers;
    // A batch commit changes closed buckets: the visible commits are part of the key.
    // One instant for the fingerprint and both layers of the answer.
    let as_of = chrono::Utc::now().timestamp();
    let commits: (u64, u64) = if cache {
        state
            .bounded(
                crate::layers::commits_fingerprint(as_of)
                    .query(&state.reader)
                    .fetch_one(),
            )
            .await?
    } else {
        (0, 0)
    };
    let key = format!(
        "{commits:?}\u{1f}{}\u{1f}{:?}\u{1f}{event}\u{1f}{}\u{1f}{from_s}\u{1f}{to_s}\u{1f}{group_by:?}\u{1f}{filters:?}\u{1f}{fill}",
        scope.project_id,
        scope.tenant_id,
        step.name()
    );
    if cache && let Some(body) = state.closed_answers.get(&key).await {
        crate::metrics::closed_answer(true);
        return Ok(json_response(body, true));
    }

    let sql = crate::layers::metrics_sql(&crate::layers::Request {
        step,
        project_id: &scope.project_id,
        event: &event,
        from: from_s,
        to: to_s,
        group_by: &group_by,
        filters: &filters,
        as_of,
    });
    let rows: Vec<BucketRow> = state.bounded(sql.query(&state.reader).fetch_all()).await?;

    let mut series: BTreeMap<Vec<String>, Vec<Point>> = BTreeMap::new();
    for r in rows {
        series.entry(r.g.clone()).or_default().push(point(r));
    }
    if fill {
        if series.is_empty() && group_by.is_empty() {
            series.insert(Vec::new(), Vec::new());
        }
        for points in series.values_mut() {
            *points = filled(std::mem::take(points), from_s, to_s, step.secs());
        }
    }
    let answer = MetricsAnswer {
        event,
        step,
        from,
        to,
        group_by: group_by.iter().map(|d| (*d).to_owned()).collect(),
        series: series
            .into_iter()
            .map(|(g, points)| Series {
                group: group_by.iter().map(|d| (*d).to_owned()).zip(g).collect(),
                points,
            })
            .collect(),
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&answer).expect("an answer serializes"));
    if cache {
        crate::metrics::closed_answer(false);
        state.closed_answers.insert(key, body.clone()).await;
    }
    Ok(json_response(body, closed))
}

/// Windows that ended (plus grace) before this instant have closed: only a
/// replay changes them now.
fn closed_before(cfg: &hourglass_core::Config) -> i64 {
    Utc::now().timestamp()
        - i64::from(cfg.aggregator.window_secs)
        - i64::from(cfg.aggregator.grace_secs)
}

/// Closed windows may be cached by the client for an hour; open ones revalidate.
fn json_response(body: bytes::Bytes, closed: bool) -> Response {
    let cache = if closed {
        HeaderValue::from_static("private, max-age=3600")
    } else {
        HeaderValue::from_static("private, no-cache")
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

fn point(r: BucketRow) -> Point {
    let has_values = r.vc > 0;
    let finalized = |i: usize| r.q.get(i).copied();
    let q = |i: usize, q: f64| {
        has_values.then(|| finalized(i).unwrap_or_else(|| quantile_from_buckets(&r.h.0, &r.h.1, q)))
    };
    Point {
        time: Utc
            .timestamp_opt(i64::from(r.t), 0)
            .single()
            .expect("in range"),
        events: r.n,
        users: r.u,
        value_count: r.vc,
        value_sum: r.vs,
        value_min: has_values.then_some(r.vmin),
        value_max: has_values.then_some(r.vmax),
        value_avg: has_values.then(|| r.vs / r.vc as f64),
        p50: q(0, 0.50),
        p90: q(1, 0.90),
        p95: q(2, 0.95),
        p99: q(3, 0.99),
        layer: Some(if r.layer == "batch" {
            Layer::Batch
        } else {
            Layer::Speed
        }),
    }
}

fn empty(t: i64) -> Point {
    Point {
        time: Utc.timestamp_opt(t, 0).single().expect("in range"),
        events: 0,
        users: 0,
        value_count: 0,
        value_sum: 0.0,
        value_min: None,
        value_max: None,
        value_avg: None,
        p50: None,
        p90: None,
        p95: None,
        p99: None,
        layer: None,
    }
}

/// Every bucket of [from, to): the found ones, zeros between.
fn filled(points: Vec<Point>, from: i64, to: i64, step: i64) -> Vec<Point> {
    let mut found = points.into_iter().peekable();
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        match found.peek() {
            Some(p) if p.time.timestamp() == t => out.push(found.next().expect("peeked")),
            _ => out.push(empty(t)),
        }
        t += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misaligned_bounds_name_the_nearest_aligned_ones() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 0).unwrap();
        let e = check_aligned("from", t, Step::Hour)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2026-01-01T10:00:00Z or 2026-01-01T11:00:00Z"),
            "{e}"
        );
        let e = check_aligned("to", t, Step::FiveMinutes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("10:05:00Z or 2026-01-01T10:10:00Z"), "{e}");
        assert!(
            check_aligned(
                "from",
                Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
                Step::Day
            )
            .is_ok()
        );
    }

    #[test]
    fn fill_puts_zeros_between_found_buckets() {
        let p = |t: i64, n: u64| Point {
            events: n,
            ..empty(t)
        };
        let out = filled(vec![p(300, 4), p(900, 2)], 0, 1200, 300);
        let events: Vec<u64> = out.iter().map(|p| p.events).collect();
        assert_eq!(events, [0, 4, 0, 2]);
    }

    #[test]
    fn only_configured_dimensions() {
        let dims = vec!["path".to_owned()];
        assert!(dimension(&dims, "path").is_ok());
        let e = dimension(&dims, "path) OR 1=1 --").unwrap_err().to_string();
        assert!(e.contains("unknown dimension"), "{e}");
    }
}
