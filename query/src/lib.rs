//! `hourglass query`: the read API for apps. A separate service from ingest
//! (different auth, different scaling): JWT-scoped reads over the rollups,
//! raw events and sessions in ClickHouse, and deleting a user's data.

pub mod auth;
pub mod deletion;
pub mod error;
pub mod event_names;
pub mod export;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod params;
pub mod raw;
pub mod rollups;
pub mod sessions;
pub mod sql;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get};
use utoipa::OpenApi;

use hourglass_core::Config;
use hourglass_core::telemetry::{self, Readiness};
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Config(#[from] hourglass_core::config::InvalidConfig),
    #[error("query.listen {0:?} is not an ip:port")]
    Listen(String),
    #[error(transparent)]
    Auth(#[from] auth::AuthConfigError),
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The API's routes (health and metrics included).
pub fn router(state: Arc<AppState>, readiness: Readiness) -> Router {
    let api = Router::new()
        .route("/v1/metrics", get(rollups::metrics))
        .route("/v1/event-names", get(event_names::event_names))
        .route("/v1/events", get(raw::list))
        .route("/v1/events/{event_id}", get(raw::one))
        .route("/v1/users/{user}/events", get(raw::user_timeline))
        .route("/v1/users/{user}", delete(deletion::delete_user))
        .route("/v1/users/{user}/export", get(export::export_user))
        .route("/v1/sessions", get(sessions::sessions))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::ApiDoc::openapi()) }),
        )
        .merge(page::routes())
        .layer(middleware::from_fn(record))
        .with_state(state);
    api.merge(telemetry::health_router(readiness))
}

async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// Serve until `shutdown` is cancelled; requests in flight are answered first.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), QueryError> {
    cfg.validate()?;
    let addr: SocketAddr = cfg
        .query
        .listen
        .parse()
        .map_err(|_| QueryError::Listen(cfg.query.listen.clone()))?;
    let verifier = Verifier::from_config(&cfg.query)?;
    // The recorder exists once the handle does; describe after it.
    let _ = telemetry::metrics_handle();
    metrics::describe();
    let state = Arc::new(AppState::new(cfg, verifier));
    let readiness = Readiness::default();
    tokio::spawn(watch_clickhouse(
        state.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| QueryError::Serve { addr, source })?;
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "query API listening");
    hourglass_core::http::serve(
        listener,
        router(state, readiness),
        hourglass_core::http::DEFAULT_HEADER_READ_TIMEOUT,
        shutdown.cancelled_owned(),
    )
    .await
    .map_err(|source| QueryError::Serve { addr, source })?;
    tracing::info!("query API stopped");
    Ok(())
}

/// Warn when the user the API reads as can write: a hostile query string
/// must never meet a login that could change data. True once known.
async fn check_read_only(state: &AppState) -> bool {
    let readonly: Result<String, _> = state
        .reader
        .query("SELECT value FROM system.settings WHERE name = 'readonly'")
        .fetch_one()
        .await;
    let Ok(readonly) = readonly else {
        return false;
    };
    let read_only = readonly != "0";
    metrics::reader_read_only(read_only);
    if !read_only {
        let q = &state.cfg.query;
        let user = if q.read_user.is_empty() {
            &state.cfg.clickhouse.user
        } else {
            &q.read_user
        };
        tracing::warn!(
            user = %user,
            "the query API reads as a ClickHouse user that can write: create a read-only user (profile readonly = 2) and set query.read_user"
        );
    }
    true
}

/// Ready while ClickHouse answers; also forgets idle tokens' rate state.
async fn watch_clickhouse(state: Arc<AppState>, readiness: Readiness, shutdown: CancellationToken) {
    let mut login_checked = false;
    while !shutdown.is_cancelled() {
        if !login_checked {
            login_checked = check_read_only(&state).await;
        }
        let ok = state
            .reader
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .is_ok();
        if ok != readiness.get() {
            tracing::info!(ready = ok, "ClickHouse readiness changed");
        }
        readiness.set(ok);
        state.forget_idle_tokens();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
