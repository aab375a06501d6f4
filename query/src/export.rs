//! `GET /v1/users/{user}/export`: every raw event ClickHouse holds of a user
//! in the token's project (and tenant), as NDJSON, streamed: one JSON
//! object per line, oldest first, one per `event_id`. Needs the admin claim,
//! as deleting does: it is the user's personal data.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::raw::{COLUMNS, EventRow, to_event};
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
    let mut sql = Sql::new(COLUMNS);
    events_scope(&mut sql, &scope);
    user_filter(&mut sql, &user);
    // Extra copies of one event (a retried load not merged yet) are one.
    sql.push(" ORDER BY timestamp_ms, event_id LIMIT 1 BY event_id");
    // The writer's client: an export is not held to the page-sized result
    // limits of the read API, and it streams, so memory stays flat.
    let mut cursor = sql.query(&state.writer).fetch::<EventRow>()?;
    // The first row before the answer: a failing query is a proper error.
    let first = cursor.next().await?;
    let rows = futures::stream::unfold(
        (cursor, first, false),
        |(mut cursor, next, done)| async move {
            if done {
                return None;
            }
            let row = match next {
                Some(row) => row,
                None => return None,
            };
            let mut line = serde_json::to_vec(&to_event(row)).expect("an event serializes");
            line.push(b'\n');
            match cursor.next().await {
                Ok(following) => Some((Ok(Bytes::from(line)), (cursor, following, false))),
                Err(e) => {
                    // The status is sent already: the body ends short and the
                    // client sees an incomplete chunked answer.
                    tracing::warn!(error = %e, "export failed part way");
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from(line)),
                        (cursor, None, true),
                    ))
                }
            }
        },
    );
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
