//! `GET /v1/users/{user}/export`: every raw event Hourglass holds of a user
//! in the token's project (and tenant), as NDJSON, streamed: one JSON
//! object per line, oldest first, one per `event_id`. Needs the admin claim,
//! as deleting does: it is the user's personal data.
//!
//! Two sources: ClickHouse's `events`, streamed, and (`query.export_from_lake`)
//! the lake, where events raw retention dropped from ClickHouse remain. The
//! lake is scanned first for the user's events ClickHouse does not hold
//! ([`hourglass_lake::export`]), and those are merged into the stream in
//! time order. Events a deletion request covers are left out of both, so an
//! export made before the erasure pass has rewritten the lake does not
//! return them either.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Scope;
use crate::error::ApiError;
use hourglass_core::clickhouse::deletions::DeletedUsers;
use hourglass_core::contract::EventEnvelope;
use hourglass_lake::export::UserScope;

use crate::raw::{COLUMNS, Event, EventRow, to_event};
use crate::sql::{Sql, events_scope, user_filter};
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/users/{user}/export",
    params(("user" = String, Path, description = "user_id or anonymous_id")),
    responses(
        (status = 200, description = "The user's events as NDJSON (one `Event` per line), oldest first", content_type = "application/x-ndjson", body = crate::raw::Event),
        (status = 403, description = "The token has no admin claim", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "users"
)]
pub async fn export_user(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    if !scope.admin {
        return Err(ApiError::Forbidden(format!(
            "exporting a user's data needs a token with `{}: true`",
            state.cfg.query.admin_claim
        )));
    }
    if user.is_empty() {
        return Err(ApiError::bad("the user is empty"));
    }
    let deleted = Arc::new(DeletedUsers::read(&state.writer).await?);
    let lake = if state.cfg.query.export_from_lake {
        from_lake(&state, &scope, &user, &deleted).await?
    } else {
        VecDeque::new()
    };
    let tenant_property = state.cfg.contract.tenant_property.clone();
    let mut sql = Sql::new(COLUMNS);
    events_scope(&mut sql, &scope);
    user_filter(&mut sql, &user);
    // Extra copies of one event (a retried load not merged yet) are one.
    sql.push(" ORDER BY timestamp_ms, event_id LIMIT 1 BY event_id");
    // The writer's client: an export is not held to the page-sized result
    // limits of the read API, and it streams, so memory stays flat.
    let mut cursor = sql.query(&state.writer).fetch::<EventRow>()?;
    // The first row before the answer: a failing query is a proper error.
    let first = cursor.next().await?.map(to_event);
    let merged = Merge {
        cursor,
        next_row: first,
        lake,
        failed: false,
    };
    let rows = futures::stream::unfold(merged, move |mut merged| {
        let (deleted, tenant_property) = (deleted.clone(), tenant_property.clone());
        async move {
            loop {
                let event = merged.next().await?;
                if covered(&deleted, &tenant_property, &event) {
                    continue;
                }
                let mut line = serde_json::to_vec(&event).expect("an event serializes");
                line.push(b'\n');
                return Some((Ok::<_, std::io::Error>(Bytes::from(line)), merged));
            }
        }
    });
    let mut response = Body::from_stream(rows).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-export.ndjson\"",
        user.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_"
        )
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// The user's events in the lake that ClickHouse does not hold, oldest first.
async fn from_lake(
    state: &AppState,
    scope: &Scope,
    user: &str,
    deleted: &DeletedUsers,
) -> Result<VecDeque<Event>, ApiError> {
    let mut sql = Sql::new("SELECT DISTINCT event_id FROM events WHERE");
    events_scope(&mut sql, scope);
    user_filter(&mut sql, user);
    let known: HashSet<String> = sql
        .query(&state.writer)
        .fetch_all::<String>()
        .await?
        .into_iter()
        .collect();
    let _one_scan = state.lake_scans.acquire().await.expect("never closed");
    let store = state
        .lake
        .get_or_try_init(|| async { hourglass_lake::store::open(&state.cfg).await.map(Arc::from) })
        .await
        .map_err(|e| ApiError::LakeUnavailable(e.to_string()))?;
    let lake_scope = UserScope {
        project_id: scope.project_id.clone(),
        tenant_id: scope.tenant_id.clone(),
        tenant_property: state.cfg.contract.tenant_property.clone(),
        user: user.to_owned(),
    };
    let started = std::time::Instant::now();
    let found = hourglass_lake::export::user_events(store.as_ref(), &lake_scope, &known, deleted)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "export: reading the lake failed");
            ApiError::LakeUnavailable(e.to_string())
        })?;
    tracing::info!(
        files_read = found.files_read,
        events = found.events.len(),
        in_clickhouse = known.len(),
        seconds = started.elapsed().as_secs_f64(),
        "export: lake scanned"
    );
    Ok(found.events.into_iter().map(from_envelope).collect())
}

/// A lake event as the API shows an event (times as ClickHouse keeps them:
/// `received_at` to the second).
fn from_envelope(e: EventEnvelope) -> Event {
    Event {
        project_id: e.project_id,
        event_id: e.event_id.to_string(),
        event: e.event,
        user_id: e.user_id.unwrap_or_default(),
        anonymous_id: e.anonymous_id.unwrap_or_default(),
        session_id: e.session_id.unwrap_or_default(),
        timestamp: e.timestamp,
        received_at: chrono::DateTime::from_timestamp(e.received_at.timestamp(), 0)
            .unwrap_or_default(),
        value: e.value,
        properties: serde_json::Value::Object(e.properties),
    }
}

/// Whether a deletion request covers an exported event (ClickHouse's rows
/// were deleted with the request; one loaded later is left out here).
fn covered(deleted: &DeletedUsers, tenant_property: &str, e: &Event) -> bool {
    let tenant = e
        .properties
        .get(tenant_property)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    deleted.covers(
        &e.project_id,
        tenant,
        &e.user_id,
        &e.anonymous_id,
        e.received_at.timestamp(),
    )
}

/// ClickHouse's rows and the lake's events, merged oldest first.
struct Merge {
    cursor: clickhouse::query::RowCursor<EventRow>,
    next_row: Option<Event>,
    lake: VecDeque<Event>,
    /// The stream broke: what is left of ClickHouse's rows is not sent.
    failed: bool,
}

impl Merge {
    async fn next(&mut self) -> Option<Event> {
        let lake_first = match (&self.next_row, self.lake.front()) {
            (None, None) => return None,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(row), Some(lake)) => {
                (lake.timestamp, &lake.event_id) < (row.timestamp, &row.event_id)
            }
        };
        if lake_first {
            return self.lake.pop_front();
        }
        let row = self.next_row.take();
        if !self.failed {
            match self.cursor.next().await {
                Ok(following) => self.next_row = following.map(to_event),
                Err(e) => {
                    // The status is sent already: the body ends short and the
                    // client sees an incomplete chunked answer.
                    tracing::warn!(error = %e, "export failed part way");
                    self.failed = true;
                    self.lake.clear();
                }
            }
        }
        row
    }
}
