//! Raw events from `events`, newest first, with keyset pagination: the
//! cursor is the (timestamp_ms, event_id) of the last event of a page, so a
//! page never repeats or skips an event even while new ones arrive.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::params::{Params, raw_range};
use crate::sql::{Sql, events_scope, user_filter};
use crate::state::AppState;

#[derive(Debug, Row, Deserialize)]
pub(crate) struct EventRow {
    project_id: String,
    event_id: String,
    event: String,
    user_id: String,
    anonymous_id: String,
    session_id: String,
    timestamp_ms: i64,
    received_at: u32,
    value: Option<f64>,
    properties: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub project_id: String,
    pub event_id: String,
    pub event: String,
    pub user_id: String,
    pub anonymous_id: String,
    pub session_id: String,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub value: Option<f64>,
    #[schema(value_type = Object)]
    pub properties: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Parameters of `/v1/events` (documentation; parsed strictly by [`Params`]).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventsParams {
    /// Only this event name.
    event: Option<String>,
    /// Only this user (`user_id` or `anonymous_id`).
    user: Option<String>,
    /// Only this session.
    session: Option<String>,
    /// Start (inclusive), RFC 3339 or Unix seconds; default `to` minus a day.
    from: Option<String>,
    /// End (exclusive); default now. At most `query.max_raw_range_days` after `from`.
    to: Option<String>,
    /// Page size, 1 to `query.max_page_size`.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

pub(crate) const COLUMNS: &str = "SELECT project_id, event_id, event, user_id, anonymous_id, session_id, timestamp_ms, \
                       toUInt32(received_at) AS received_at, value, properties FROM events WHERE";

pub(crate) fn to_event(r: EventRow) -> Event {
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    Event {
        properties: serde_json::from_str(&r.properties).unwrap_or(serde_json::Value::Null),
        timestamp: at(r.timestamp_ms),
        received_at: at(i64::from(r.received_at) * 1000),
        project_id: r.project_id,
        event_id: r.event_id,
        event: r.event,
        user_id: r.user_id,
        anonymous_id: r.anonymous_id,
        session_id: r.session_id,
        value: r.value,
    }
}

fn encode_cursor(ts_ms: i64, event_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{ts_ms}:{event_id}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad("`cursor` is not one this API returned");
    let text = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (ts, id) = text.split_once(':').ok_or_else(bad)?;
    Ok((ts.parse().map_err(|_| bad())?, id.to_owned()))
}

async fn page(
    state: &AppState,
    scope: &Scope,
    p: &Params,
    user: Option<&str>,
) -> Result<EventPage, ApiError> {
    let q = &state.cfg.query;
    let (from, to) = raw_range(p, q.max_raw_range_days)?;
    let limit = p.limit(q.default_page_size, q.max_page_size)?;
    let mut sql = Sql::new(COLUMNS);
    events_scope(&mut sql, scope);
    sql.push_bound(
        " AND timestamp >= toDateTime(?) AND timestamp < toDateTime(?)",
        [from.timestamp().into(), to.timestamp().into()],
    );
    if let Some(event) = p.get("event") {
        sql.push_bound(" AND event = ?", [event.into()]);
    }
    if let Some(user) = user {
        user_filter(&mut sql, user);
    }
    if let Some(session) = p.get("session") {
        sql.push_bound(" AND session_id = ?", [session.into()]);
    }
    if let Some(cursor) = p.get("cursor") {
        let (ts, id) = decode_cursor(cursor)?;
        sql.push_bound(
            " AND (timestamp_ms < ? OR (timestamp_ms = ? AND event_id < ?))",
            [ts.into(), ts.into(), id.into()],
        );
    }
    // One row past the page tells whether another page follows.
    sql.push_bound(
        " ORDER BY timestamp_ms DESC, event_id DESC LIMIT ?",
        [i64::from(limit + 1).into()],
    );
    let mut rows: Vec<EventRow> = state.bounded(sql.query(&state.reader).fetch_all()).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| encode_cursor(r.timestamp_ms, &r.event_id))
        })
        .flatten();
    Ok(EventPage {
        events: rows.into_iter().map(to_event).collect(),
        next_cursor,
    })
}

const PAGE_PARAMS: &[&str] = &["event", "user", "session", "from", "to", "limit", "cursor"];

#[utoipa::path(
    get,
    path = "/v1/events",
    params(EventsParams),
    responses(
        (status = 200, description = "One page, newest first", body = EventPage),
        (status = 400, description = "A parameter is refused", body = crate::error::ErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "raw events"
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventPage>, ApiError> {
    let p = Params::parse(raw.as_deref(), PAGE_PARAMS)?;
    let user = p.get("user").map(str::to_owned);
    Ok(Json(page(&state, &scope, &p, user.as_deref()).await?))
}

#[utoipa::path(
    get,
    path = "/v1/users/{user}/events",
    params(("user" = String, Path, description = "user_id or anonymous_id"), EventsParams),
    responses(
        (status = 200, description = "The user's events, newest first", body = EventPage),
        (status = 400, description = "A parameter is refused", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "raw events"
)]
pub async fn user_timeline(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    Path(user): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventPage>, ApiError> {
    let p = Params::parse(
        raw.as_deref(),
        &["event", "session", "from", "to", "limit", "cursor"],
    )?;
    Ok(Json(page(&state, &scope, &p, Some(&user)).await?))
}

/// Parameters of `/v1/events/{event_id}` (documentation; parsed strictly).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventByIdParams {
    /// Earliest event time searched (RFC 3339 or Unix seconds).
    from: Option<String>,
    /// End of the event times searched (exclusive).
    to: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/events/{event_id}",
    params(("event_id" = String, Path, description = "The event's id"), EventByIdParams),
    responses(
        (status = 200, description = "The event", body = Event),
        (status = 404, description = "No such event in this project within the times searched", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "raw events"
)]
pub async fn one(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    Path(event_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Event>, ApiError> {
    let p = Params::parse(raw.as_deref(), &["from", "to"])?;
    let q = &state.cfg.query;
    let (from, to) = if p.get("from").is_some() || p.get("to").is_some() {
        raw_range(&p, q.max_raw_range_days)?
    } else {
        id_range(&event_id, q.max_raw_range_days, Utc::now())
    };
    let mut sql = Sql::new(COLUMNS);
    events_scope(&mut sql, &scope);
    sql.push_bound(
        " AND timestamp >= toDateTime(?) AND timestamp < toDateTime(?) AND event_id = ? LIMIT 1",
        [
            from.timestamp().into(),
            to.timestamp().into(),
            event_id.as_str().into(),
        ],
    );
    let row: Option<EventRow> = state
        .bounded(sql.query(&state.reader).fetch_optional())
        .await?;
    row.map(|r| Json(to_event(r))).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no event {event_id:?} in this project dated {} .. {} (pass `from` and `to` to search other times)",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ))
    })
}

/// The event times searched for an id when no range is given, so a lookup
/// never scans the whole table: around the time a UUIDv7 carries (an event
/// is dated at most `max_days` before its id was made, as by an import, and
/// not much after), otherwise the last `max_days`.
fn id_range(event_id: &str, max_days: u32, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let made = uuid::Uuid::parse_str(event_id)
        .ok()
        .filter(|id| id.get_version() == Some(uuid::Version::SortRand))
        .and_then(|id| id.get_timestamp())
        .and_then(|t| {
            let (secs, nanos) = t.to_unix();
            Utc.timestamp_opt(i64::try_from(secs).ok()?, nanos).single()
        });
    let anchor = made.unwrap_or(now);
    (
        anchor - chrono::Duration::days(i64::from(max_days)),
        anchor + chrono::Duration::days(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = encode_cursor(1_767_225_600_123, "0190-abc");
        assert_eq!(
            decode_cursor(&c).unwrap(),
            (1_767_225_600_123, "0190-abc".into())
        );
        assert!(decode_cursor("' OR 1=1 --").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("x:y")).is_err());
    }

    #[test]
    fn an_id_lookup_is_bounded_by_the_time_in_a_uuid_v7() {
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let made = Utc.timestamp_opt(1_767_225_600, 0).unwrap();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_767_225_600, 0);
        let v7 = uuid::Uuid::new_v7(ts).to_string();
        let (from, to) = id_range(&v7, 31, now);
        assert_eq!(from, made - chrono::Duration::days(31));
        assert_eq!(to, made + chrono::Duration::days(1));
        // Not a UUIDv7: the last 31 days.
        for other in ["order-17", &uuid::Uuid::new_v4().to_string()] {
            let (from, to) = id_range(other, 31, now);
            assert_eq!(
                (from, to),
                (
                    now - chrono::Duration::days(31),
                    now + chrono::Duration::days(1)
                )
            );
        }
    }
}
