//! `GET /v1/sessions`: sessions (events sharing a `session_id`) that had an
//! event in the range, each with its first and last event, duration, event
//! and error counts; and a summary over all of them, not only the page.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, TimeZone, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::params::{Params, raw_range};
use crate::sql::{Sql, events_scope};
use crate::state::AppState;

#[derive(Debug, Row, Deserialize)]
struct SessionRow {
    session_id: String,
    first_ms: i64,
    last_ms: i64,
    n: u64,
    errors: u64,
}

#[derive(Debug, Row, Deserialize)]
struct SummaryRow {
    sessions: u64,
    total: u64,
    avg_secs: f64,
    p95_secs: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub session_id: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub duration_secs: f64,
    pub events: u64,
    pub errors: u64,
    pub error_rate: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionSummary {
    pub unique_sessions: u64,
    pub total_events: u64,
    pub avg_duration_secs: f64,
    pub p95_duration_secs: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionsAnswer {
    pub summary: SessionSummary,
    pub sessions: Vec<Session>,
}

/// Parameters of `/v1/sessions` (documentation; parsed strictly by [`Params`]).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SessionsParams {
    /// Start (inclusive), RFC 3339 or Unix seconds; default `to` minus a day.
    from: Option<String>,
    /// End (exclusive); default now.
    to: Option<String>,
    /// Sessions returned, 1 to `query.max_page_size`.
    limit: Option<u32>,
    /// `duration` (default), `events` or `error_rate`, largest first.
    order: Option<String>,
}

/// `WHERE` of both queries: the scope, the range, sessions only.
fn base(scope: &Scope, from: i64, to: i64) -> Sql {
    let mut sql = Sql::default();
    sql.push(" FROM events WHERE");
    events_scope(&mut sql, scope);
    sql.push_bound(
        " AND session_id != '' AND timestamp >= toDateTime(?) AND timestamp < toDateTime(?)",
        [from.into(), to.into()],
    );
    sql
}

#[utoipa::path(
    get,
    path = "/v1/sessions",
    params(SessionsParams),
    responses(
        (status = 200, description = "Summary and the top sessions", body = SessionsAnswer),
        (status = 400, description = "A parameter is refused", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "sessions"
)]
pub async fn sessions(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    RawQuery(raw): RawQuery,
) -> Result<Json<SessionsAnswer>, ApiError> {
    let p = Params::parse(raw.as_deref(), &["from", "to", "limit", "order"])?;
    let q = &state.cfg.query;
    let (from, to) = raw_range(&p, q.max_raw_range_days)?;
    let limit = p.limit(q.default_page_size, q.max_page_size)?;
    let order = match p.get("order").unwrap_or("duration") {
        "duration" => "(last_ms - first_ms) DESC",
        "events" => "n DESC",
        "error_rate" => "errors / n DESC",
        other => {
            return Err(ApiError::bad(format!(
                "`order` must be duration, events or error_rate, not {other:?}"
            )));
        }
    };
    let (from_s, to_s) = (from.timestamp(), to.timestamp());

    // An event is an error when its name is one of query.error_events or its
    // query.error_property is true.
    let mut list = Sql::new(
        "SELECT session_id, min(timestamp_ms) AS first_ms, max(timestamp_ms) AS last_ms, count() AS n, ",
    );
    let names = vec!["?"; q.error_events.len().max(1)].join(", ");
    let mut error_values: Vec<crate::sql::Value> =
        q.error_events.iter().map(|e| e.as_str().into()).collect();
    if error_values.is_empty() {
        error_values.push("".into());
    }
    error_values.push(q.error_property.as_str().into());
    list.push_bound(
        &format!(
            "countIf(event IN ({names}) OR visitParamExtractBool(properties, ?) = 1) AS errors"
        ),
        error_values,
    );
    let b = base(&scope, from_s, to_s);
    list.append(b);
    list.push_bound(
        &format!(" GROUP BY session_id ORDER BY {order}, session_id LIMIT ?"),
        [i64::from(limit).into()],
    );

    let mut summary = Sql::new(
        "SELECT count() AS sessions, sum(n) AS total, avg(d) AS avg_secs, quantileExact(0.95)(d) AS p95_secs \
         FROM (SELECT count() AS n, (max(timestamp_ms) - min(timestamp_ms)) / 1000 AS d",
    );
    summary.append(base(&scope, from_s, to_s));
    summary.push(" GROUP BY session_id)");

    let fetch = async {
        let rows: Vec<SessionRow> = list.query(&state.reader).fetch_all().await?;
        let total: SummaryRow = summary.query(&state.reader).fetch_one().await?;
        Ok::<_, clickhouse::error::Error>((rows, total))
    };
    let (rows, total) = state.bounded(fetch).await?;
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    let empty = total.sessions == 0;
    Ok(Json(SessionsAnswer {
        summary: SessionSummary {
            unique_sessions: total.sessions,
            total_events: total.total,
            // No session: ClickHouse gives nan for avg; report 0.
            avg_duration_secs: if empty { 0.0 } else { total.avg_secs },
            p95_duration_secs: if empty { 0.0 } else { total.p95_secs },
        },
        sessions: rows
            .into_iter()
            .map(|r| Session {
                first_seen: at(r.first_ms),
                last_seen: at(r.last_ms),
                duration_secs: (r.last_ms - r.first_ms) as f64 / 1000.0,
                events: r.n,
                errors: r.errors,
                error_rate: r.errors as f64 / r.n.max(1) as f64,
                session_id: r.session_id,
            })
            .collect(),
    }))
}
