//! How every consumer starts and stops.

use rdkafka::ClientConfig;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::{AssignmentWatchdog, ConsumerError};
use crate::Config;
use crate::telemetry::{Readiness, Service};

/// Which consumer is starting.
pub struct Component<'a> {
    /// As in logs and errors: `aggregator`, `loader`, `archiver`.
    pub name: &'static str,
    pub http_listen: &'a str,
    pub group_id: &'a str,
}

/// What a consumer's loop is built from.
pub struct Started {
    pub readiness: Readiness,
    /// Cancelled on SIGINT/SIGTERM (or by `hourglass up`): the loop finishes
    /// the work in flight and returns.
    pub shutdown: CancellationToken,
    /// The async runtime the blocking loop hands its writes to.
    pub runtime: Handle,
    /// The consumer settings shared by all three: offsets owned by the
    /// component, lag statistics, range assignment (a partition's records
    /// stay with one member between rebalances that do not move it).
    pub consumer_config: ClientConfig,
    /// The group's watchdog, for the loop to call between polls.
    pub watchdog: AssignmentWatchdog,
}

/// Check the config, serve health and metrics, build the loop with `build`
/// (which creates the consumer from [`Started::consumer_config`]), run it
/// on a blocking thread until it returns, and stop the health endpoint.
pub async fn run_consumer<F, Fut, L>(
    cfg: &Config,
    component: Component<'_>,
    shutdown: CancellationToken,
    describe_metrics: fn(),
    build: F,
) -> Result<(), ConsumerError>
where
    F: FnOnce(Started) -> Fut,
    Fut: Future<Output = Result<L, ConsumerError>>,
    L: FnOnce() -> Result<(), ConsumerError> + Send + 'static,
{
    let name = component.name;
    cfg.validate().map_err(|e| ConsumerError::config(name, e))?;
    let service = Service::start_with(component.http_listen, shutdown.clone())
        .map_err(|e| ConsumerError::config(name, format!("{name}.http_listen: {e}")))?;
    // After the recorder exists (Service installs it), or the descriptions are lost.
    describe_metrics();
    let mut consumer_config =
        crate::kafka::lag_reporting_consumer_config(&cfg.kafka, component.group_id);
    consumer_config.set("partition.assignment.strategy", "range");
    let started = Started {
        readiness: service.readiness.clone(),
        shutdown,
        runtime: Handle::current(),
        consumer_config,
        watchdog: AssignmentWatchdog::new(
            &cfg.kafka.topic,
            component.group_id,
            std::time::Duration::from_secs(cfg.consumers.stuck_assignment_secs),
            std::time::Duration::from_secs(cfg.consumers.orphan_partition_secs),
        ),
    };
    let main = match build(started).await {
        Ok(main) => main,
        Err(e) => {
            let _ = service.stop().await;
            return Err(e);
        }
    };
    tracing::info!(component = name, topic = %cfg.kafka.topic, group = component.group_id, "starting");
    let result = tokio::task::spawn_blocking(main)
        .await
        .map_err(|_| ConsumerError::Panicked(name));
    service.stop().await?;
    match &result {
        Ok(Ok(())) => tracing::info!(component = name, "stopped"),
        Ok(Err(e)) => tracing::error!(component = name, error = %e, "stopped on an error"),
        Err(_) => tracing::error!(component = name, "its thread panicked"),
    }
    result?
}
