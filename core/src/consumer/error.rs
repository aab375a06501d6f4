//! How a consumer stops.

use rdkafka::error::KafkaError;

use crate::clickhouse::errors::Failure;

/// Why a consumer stopped. Transient ones (the broker, a lost position, a
/// panic) may go away with a restart, which resumes from the component's
/// durable position; permanent ones (bad configuration, a write the sink
/// refuses for good) need an operator.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("invalid {component} configuration: {reason}")]
    Config {
        component: &'static str,
        reason: String,
    },
    #[error("Kafka client failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("health endpoint failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("{0} thread panicked")]
    Panicked(&'static str),
    #[error(
        "seeking partition {partition} back to offset {offset} after a pause failed for good ({error}); a restart resumes from the durable position"
    )]
    PositionLost {
        partition: i32,
        offset: i64,
        error: KafkaError,
    },
    /// A write the sink refuses whatever the retries: `what` names the
    /// records (partition, offsets), `failure` how it was classified.
    #[error("{what} refused for good ({}): {error}", failure.label())]
    Refused {
        what: String,
        failure: Failure,
        error: String,
    },
    #[error("{what}: {error}")]
    Sink { what: &'static str, error: String },
}

impl ConsumerError {
    pub fn config(component: &'static str, reason: impl ToString) -> Self {
        Self::Config {
            component,
            reason: reason.to_string(),
        }
    }

    /// Whether restarting the consumer can help (a supervisor's question).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kafka(_) | Self::PositionLost { .. } | Self::Panicked(_) | Self::Http(_) => true,
            Self::Refused { failure, .. } => *failure == Failure::Transient,
            Self::Config { .. } | Self::Sink { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_configuration_are_permanent_the_broker_is_not() {
        let refused = ConsumerError::Refused {
            what: "the windows of partition 3 (offsets 10..20)".into(),
            failure: Failure::Refused,
            error: "Code: 395 throwIf".into(),
        };
        assert!(!refused.is_transient());
        assert_eq!(
            refused.to_string(),
            "the windows of partition 3 (offsets 10..20) refused for good (refused): Code: 395 throwIf"
        );
        assert!(!ConsumerError::config("loader", "x").is_transient());
        assert!(ConsumerError::Kafka(KafkaError::Canceled).is_transient());
    }
}
