//! `GET /v1/event-names`: which events a project has rollups of in a range,
//! so a client (the built-in page, a dashboard) can ask `/v1/metrics` for
//! each without knowing the names in advance.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::params::{Params, raw_range};
use crate::rollups::tenant_filter;
use crate::sql::Sql;
use crate::state::AppState;

/// Parameters of `/v1/event-names` (documentation; parsed strictly by [`Params`]).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventNamesParams {
    /// Start (inclusive), RFC 3339 or Unix seconds; default a day before `to`.
    from: Option<String>,
    /// End (exclusive); default now. At most `query.max_raw_range_days` after `from`.
    to: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventNames {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Names in byte order, at most `query.max_page_size`.
    pub events: Vec<String>,
}

const PARAMS: &[&str] = &["from", "to"];

/// Hours from the speed layer's hourly rollups and the batch layer's hourly
/// rows (an hour only the batch layer knows, e.g. an import of history,
/// counts too), widened to whole hours.
fn names_sql(
    project_id: &str,
    tenant: Option<&(&str, String)>,
    from: i64,
    to: i64,
    limit: u32,
) -> Sql {
    let mut sql = Sql::new("SELECT event FROM (");
    for (i, (table, extra)) in [
        ("rollup_1h", ""),
        ("batch_rollups", " AND period_secs = 3600"),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push_bound(
            &format!(
                "SELECT DISTINCT event FROM {table} PREWHERE project_id = ? \
                 AND bucket_start >= toStartOfHour(toDateTime(?)) AND bucket_start < toDateTime(?){extra}"
            ),
            [project_id.into(), from.into(), to.into()],
        );
        if let Some((d, v)) = tenant {
            sql.push_bound(
                " AND visitParamExtractString(dimensions, ?) = ?",
                [(*d).into(), v.as_str().into()],
            );
        }
    }
    sql.push_bound(
        ") GROUP BY event ORDER BY event LIMIT ?",
        [i64::from(limit).into()],
    );
    sql
}

#[utoipa::path(
    get,
    path = "/v1/event-names",
    params(EventNamesParams),
    responses(
        (status = 200, description = "Event names with rollups in the range", body = EventNames),
        (status = 400, description = "A parameter is refused", body = crate::error::ErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
        (status = 403, description = "The token may not read this", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "rollups"
)]
pub async fn event_names(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventNames>, ApiError> {
    let p = Params::parse(raw.as_deref(), PARAMS)?;
    let cfg = &state.cfg;
    let (from, to) = raw_range(&p, cfg.query.max_raw_range_days)?;
    let tenant = tenant_filter(cfg, &scope)?;
    let sql = names_sql(
        &scope.project_id,
        tenant.as_ref(),
        from.timestamp(),
        to.timestamp(),
        cfg.query.max_page_size,
    );
    let events: Vec<String> = state.bounded(sql.query(&state.reader).fetch_all()).await?;
    Ok(Json(EventNames { from, to, events }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layers_and_the_tenant_are_bound_never_spliced() {
        let t = ("tenant_id", "acme' OR 1=1".to_owned());
        let sql = names_sql("web", Some(&t), 0, 3600, 100);
        assert!(!sql.text().contains("acme"), "{}", sql.text());
        assert!(sql.text().contains("FROM rollup_1h"));
        assert!(sql.text().contains("FROM batch_rollups"));
        assert_eq!(sql.text().matches("visitParamExtractString").count(), 2);
    }
}
