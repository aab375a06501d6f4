//! Ingest: apps' batches over HTTP → validated, normalized events on Kafka.
//!
//! A request is authenticated by its write key ([`keys`]), its body decoded
//! with a cap on the inflated size ([`body`]), every event validated on its
//! own by the shared contract (native and Segment shapes), and the valid ones
//! published with `acks=all` ([`publish`]). The answer is sent only once the
//! broker has acknowledged every accepted event: 200 with the per-index
//! rejections, or 503 with Retry-After when the broker is away or the
//! producer queue is full. Memory is bounded by the body caps, the in-flight
//! request limit and the producer queue.

mod answer;
mod api;
pub mod body;
pub mod broker_health;
pub mod budget;
pub mod enrich;
pub mod keys;
pub mod lane;
pub mod metrics;
pub mod publish;
pub mod quota;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, header};
use hourglass_core::Config;
use hourglass_core::config::IngestConfig;
use hourglass_core::telemetry::{self, Readiness};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use api::AppState;
use keys::WriteKeys;
use publish::Publisher;
use quota::ProjectQuotas;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid ingest configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    #[error("Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Serve until `shutdown` is cancelled; then stop accepting, let the
/// requests in flight finish (each waits for its broker acknowledgements),
/// and flush the producer.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), IngestError> {
    let addr: SocketAddr =
        cfg.ingest.listen.parse().map_err(|e| {
            IngestError::Config(format!("ingest.listen {:?}: {e}", cfg.ingest.listen))
        })?;
    cfg.validate()
        .map_err(|e| IngestError::Config(e.to_string()))?;
    let keys = WriteKeys::from_config(&cfg.ingest)?;
    telemetry::metrics_handle();
    metrics::describe();
    let readiness = Readiness::default();
    let publisher = Publisher::new(&cfg.kafka, &cfg.ingest, readiness.clone())?;
    hourglass_core::kafka::topics::check_pipeline_topics_in_background(&cfg.kafka);
    let stop_watch = CancellationToken::new();
    let watcher = {
        let publisher = publisher.clone();
        let stop = stop_watch.clone();
        tokio::spawn(async move { publisher.watch_broker(Duration::from_secs(1), stop).await })
    };
    let projects = keys.len();
    let state = Arc::new(AppState::new(
        keys,
        publisher.clone(),
        cfg.contract.clone(),
        cfg.ingest.clone(),
        ProjectQuotas::from_config(&cfg),
        enrich::EnrichPolicies::from_config(&cfg),
    ));
    let app = app(state, &cfg.ingest, readiness.clone());

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| IngestError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(%addr, topic = %cfg.kafka.topic, write_keys = projects, "ingest listening");
    let draining = publisher.clone();
    let stopping = stop_watch.clone();
    let served = hourglass_core::http::serve(
        listener,
        app,
        Duration::from_secs(cfg.ingest.header_read_timeout_secs),
        async move {
            shutdown.cancelled().await;
            tracing::info!("ingest shutting down: no new requests, finishing those in flight");
            stopping.cancel();
            draining.stop_being_ready();
        },
    )
    .await;
    stop_watch.cancel();
    watcher.abort();
    if let Err(e) = publisher
        .flush(Duration::from_millis(cfg.ingest.delivery_timeout_ms))
        .await
    {
        tracing::warn!(error = %e, "producer flush on shutdown incomplete");
    }
    tracing::info!("ingest stopped");
    served.map_err(IngestError::Serve)
}

/// Every route of ingest as it is served: the API, CORS and the health
/// endpoints. Bodies are read by the handlers themselves (`body::receive`),
/// under the caps, the deadline and the memory budget.
pub fn app(state: Arc<AppState>, cfg: &IngestConfig, readiness: Readiness) -> axum::Router {
    api::router(state)
        .layer(DefaultBodyLimit::disable())
        .layer(cors(&cfg.cors_origins))
        .merge(telemetry::health_router(readiness))
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
            HeaderName::from_static("x-hourglass-key"),
        ])
        .max_age(Duration::from_secs(86_400))
}
