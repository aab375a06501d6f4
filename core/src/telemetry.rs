//! Logs, Prometheus metrics and the health endpoints every service serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Install the global tracing subscriber (once; later calls are no-ops).
pub fn init_tracing(cfg: &TelemetryConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Like [`init_tracing`], into `path` (appended, no colours): for
/// `hourglass up`, whose terminal shows the live view instead.
pub fn init_tracing_to_file(cfg: &TelemetryConfig, path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Arc::new(file));
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}

/// Upper bounds of every `*_seconds` histogram: 0.5 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process-wide Prometheus recorder (installed on first call).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms, not summaries: buckets add up across pods, so
            // dashboards can take a fleet-wide p99 with histogram_quantile.
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// Readiness flag a component flips as its backends come and go.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `/health/live` (the process answers), `/health/ready` (its backends do),
/// `/metrics` (Prometheus text format).
pub fn health_router(readiness: Readiness) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route(
            "/health/ready",
            get(|State(r): State<Readiness>| async move {
                if r.get() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state(readiness)
        .route("/metrics", get(move || std::future::ready(handle.render())))
}

/// Serve `router` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health and metrics endpoint listening");
    crate::http::serve(
        listener,
        router,
        crate::http::DEFAULT_HEADER_READ_TIMEOUT,
        shutdown,
    )
    .await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A token cancelled on the first SIGINT or SIGTERM: every component's
/// `run(config, shutdown)` takes one.
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing the work in flight");
        token.cancel();
    });
    shutdown
}

/// What every long-running component starts with: the health and metrics
/// endpoint, a readiness flag, and the shutdown token.
pub struct Service {
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    stop_http: tokio::sync::oneshot::Sender<()>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Service {
    /// Serve health on `listen` (an `ip:port`; port 0 picks one) until
    /// [`Service::stop`]; `shutdown` is the component's token (`hourglass
    /// up` runs every component on one runtime, one token).
    pub fn start_with(
        listen: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, std::net::AddrParseError> {
        let addr: SocketAddr = listen.parse()?;
        let readiness = Readiness::default();
        let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
        let http = tokio::spawn(serve(addr, health_router(readiness.clone()), async {
            let _ = stopped.await;
        }));
        Ok(Self {
            readiness,
            shutdown,
            stop_http,
            http,
        })
    }

    /// Stop the health endpoint; returns its error if it failed.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop_http.send(());
        self.http.await.unwrap_or(Ok(()))
    }
}
