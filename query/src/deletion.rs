//! `DELETE /v1/users/{user}`: removes the user's rows from `events` and
//! records the request in `deletions`, which the loader and replay from the
//! lake read so neither brings the rows back. Needs a token with the admin
//! claim; a tenant's token deletes within its tenant only.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use clickhouse::Row;
use hourglass_core::clickhouse::cluster::{mutated_table, mutation_target};
use serde::Serialize;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::sql::{Sql, events_scope, user_filter};
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deletion {
    pub user: String,
    pub project_id: String,
    /// The tenant the request was made for (the token's); absent for a
    /// project-wide token, whose request covers every tenant.
    pub tenant_id: Option<String>,
    pub requested_at: DateTime<Utc>,
    /// Rows removed from `events`.
    pub events_removed: u64,
    /// True once ClickHouse has applied the delete; false if it was still
    /// running when the answer was sent (it completes on its own).
    pub completed: bool,
    /// Where the user's data still is, and why.
    pub still_held: Vec<String>,
}

#[derive(Row, Serialize)]
struct DeletionRow {
    project_id: String,
    user: String,
    requested_at: u32,
    requested_by: String,
    events_removed: u64,
    /// Empty for a project-wide request.
    tenant_id: String,
}

fn user_rows(scope: &Scope, user: &str) -> Sql {
    let mut sql = Sql::default();
    events_scope(&mut sql, scope);
    user_filter(&mut sql, user);
    sql
}

#[utoipa::path(
    delete,
    path = "/v1/users/{user}",
    params(("user" = String, Path, description = "user_id or anonymous_id")),
    responses(
        (status = 200, description = "Removed from `events`; what still holds the data", body = Deletion),
        (status = 202, description = "Recorded; ClickHouse is still applying the delete", body = Deletion),
        (status = 403, description = "The token has no admin claim", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "users"
)]
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    Path(user): Path<String>,
) -> Result<(StatusCode, Json<Deletion>), ApiError> {
    if !scope.admin {
        return Err(ApiError::Forbidden(format!(
            "deleting a user's data needs a token with `{}: true`",
            state.cfg.query.admin_claim
        )));
    }
    if user.is_empty() {
        return Err(ApiError::bad("the user is empty"));
    }
    let ch = &state.writer;
    let requested_at = Utc::now();
    let mut count = Sql::new("SELECT count() FROM events WHERE");
    count.append(user_rows(&scope, &user));
    let removed: u64 = count.query(ch).fetch_one().await?;
    // Recorded first: if the delete below fails, a replay already skips the user.
    let mut insert = ch.insert::<DeletionRow>("deletions").await?;
    insert
        .write(&DeletionRow {
            project_id: scope.project_id.clone(),
            user: user.clone(),
            requested_at: requested_at.timestamp() as u32,
            requested_by: scope.subject.clone(),
            events_removed: removed,
            tenant_id: scope.tenant_id.clone().unwrap_or_default(),
        })
        .await?;
    insert.end().await?;
    if removed > 0 {
        // What the delete takes from each event hour, counted before it runs
        // in distinct events (extra copies of one are duplicates, whether or
        // not a merge has collapsed them yet): the batch layer recomputes
        // those hours, and its reconciliation explains the drop.
        let mut ledger = Sql::new(
            "INSERT INTO deleted_events (hour, project_id, event, user, events, requested_at) \
             SELECT toStartOfHour(timestamp) AS hour, project_id, event, ",
        );
        ledger.push_bound(
            "?, uniqExact(event_id), toDateTime(?) FROM events WHERE",
            [user.as_str().into(), requested_at.timestamp().into()],
        );
        ledger.append(user_rows(&scope, &user));
        ledger.push(" GROUP BY hour, project_id, event");
        ledger.query(ch).execute().await?;
        let mut delete = Sql::new(&format!(
            "ALTER TABLE {} DELETE WHERE",
            mutation_target(&state.cfg.clickhouse, "events")
        ));
        delete.append(user_rows(&scope, &user));
        delete.query(ch).execute().await?;
    }
    let completed = hourglass_core::clickhouse::mutations_done(
        ch,
        &mutated_table(&state.cfg.clickhouse, "events"),
        Duration::from_secs(30),
    )
    .await?;
    tracing::info!(project = %scope.project_id, tenant = scope.tenant_id.as_deref().unwrap_or(""), by = %scope.subject, removed, completed, "user data deleted");
    crate::metrics::deletion(removed);
    let answer = Deletion {
        user,
        project_id: scope.project_id,
        tenant_id: scope.tenant_id,
        requested_at,
        events_removed: removed,
        completed,
        still_held: vec![
            "rollup_5m, rollup_1h and rollup_1d (the speed layer): aggregates (counts, value histograms, hashed user ids in distinct-user sets) that include the user's past events; the next erasure pass once those buckets are closed takes the user's hash out of the sets (counts and values stay: they name no one), and the batch layer recomputes every hour the user had events in without them (`deleted_events`), its rows replacing the speed rows once the hour settles".into(),
            "the Parquet lake: until the next erasure pass (`hourglass batch` runs one every `retention.interval_secs`, `hourglass erase` by hand) rewrites every file holding the user's events without them; replay skips them meanwhile (the request is in `deletions`), and the archiver leaves out those it has not archived yet".into(),
            "Kafka: the raw events stay on the topic until its retention removes them".into(),
        ],
    };
    let status = if completed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(answer)))
}
