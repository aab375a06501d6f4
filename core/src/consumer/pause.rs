//! Retrying a write with the consumer's assignment paused.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{Backoff, ConsumerError};
use crate::config::ConsumersConfig;
use crate::telemetry::Readiness;

/// Seeks tried before [`Paused::resume`] gives up.
const SEEK_ATTEMPTS: u32 = 5;

/// A consumer's whole assignment paused while a write is retried: the
/// component keeps polling (so the group keeps it and rebalances are served)
/// without taking records; partitions whose records still arrive are re-read
/// from the component's own position after [`Paused::resume`].
pub struct Paused {
    assignment: TopicPartitionList,
    touched: BTreeSet<i32>,
}

impl Paused {
    pub fn start<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<Self> {
        let assignment = consumer.assignment().ok()?;
        if let Err(e) = consumer.pause(&assignment) {
            // Records then keep arriving while the write is retried; each
            // one is marked and its partition re-sought on resume.
            tracing::warn!(error = %e, "pausing the assignment failed");
        }
        Some(Self {
            assignment,
            touched: BTreeSet::new(),
        })
    }

    /// Poll for `wait` without processing anything.
    pub fn poll_for<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                self.touched.insert(m.partition());
            }
        }
    }

    /// Resume, and seek every partition that delivered a record while paused
    /// to `next_offset(partition)` (None: no longer ours). A seek is retried
    /// a few times; one that still fails is an error the caller must stop
    /// on: the records between its position and what was fetched while
    /// paused would otherwise be skipped. A restart resumes from the
    /// component's durable position, which is always right.
    pub fn resume<C: ConsumerContext>(
        self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        next_offset: impl Fn(i32) -> Option<i64>,
    ) -> Result<(), ConsumerError> {
        if let Err(e) = consumer.resume(&self.assignment) {
            // Still paused: nothing is read, so nothing is skipped; the
            // group's next rebalance or a restart resumes it.
            tracing::error!(error = %e, "resuming the paused partitions failed");
        }
        for partition in self.touched {
            let Some(offset) = next_offset(partition) else {
                continue;
            };
            let mut wait = Duration::from_millis(100);
            for attempt in 1.. {
                match consumer.seek(
                    topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                ) {
                    Ok(()) => break,
                    Err(e) if attempt < SEEK_ATTEMPTS => {
                        tracing::warn!(partition, offset, attempt, error = %e, "seek after a pause failed; retrying");
                        std::thread::sleep(wait);
                        wait *= 2;
                    }
                    Err(error) => {
                        tracing::error!(partition, offset, error = %error, "seek after a pause failed for good: stopping, to resume from the durable position");
                        return Err(ConsumerError::PositionLost {
                            partition,
                            offset,
                            error,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// The retries of one failed write: the first [`PausedRetry::wait`] pauses
/// the assignment and marks the component not ready; each wait polls for
/// the next backoff; [`PausedRetry::finish`] resumes at the component's own
/// positions and marks it ready again. The caller keeps its own loop (what
/// to retry, whether it landed meanwhile, whether to give up).
pub struct PausedRetry {
    backoff: Backoff,
    paused: Option<Paused>,
    readiness: Readiness,
    attempts: u32,
}

impl PausedRetry {
    pub fn new(cfg: &ConsumersConfig, readiness: &Readiness) -> Self {
        Self {
            backoff: Backoff::new(cfg),
            paused: None,
            readiness: readiness.clone(),
            attempts: 0,
        }
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// After a failed attempt of `what`: pause (once), log, and keep polling
    /// for the next backoff.
    pub fn wait<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        what: &str,
        error: &dyn Display,
    ) {
        self.attempts += 1;
        self.readiness.set(false);
        if self.paused.is_none() {
            self.paused = Paused::start(consumer);
        }
        let wait = self.backoff.next_wait();
        tracing::warn!(attempt = self.attempts, retry_in = ?wait, error = %error, "{what} failed; partitions paused");
        match self.paused.as_mut() {
            Some(paused) => paused.poll_for(consumer, wait),
            // No assignment to pause: nothing to read either.
            None => std::thread::sleep(wait),
        }
    }

    /// Resume after the write landed or was given up: partitions that
    /// delivered records while paused are sought to `next_offset`.
    pub fn finish<C: ConsumerContext>(
        self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        next_offset: impl Fn(i32) -> Option<i64>,
    ) -> Result<(), ConsumerError> {
        if let Some(paused) = self.paused {
            paused.resume(consumer, topic, next_offset)?;
        }
        if self.attempts > 0 {
            self.readiness.set(true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;

    /// A real consumer that reaches no broker (nothing listens on the
    /// discard port): it holds no partition, so every seek fails.
    fn consumer_without_partitions() -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "pause-unit-test")
            .set("log_level", "0")
            .create()
            .expect("a consumer is created without a broker")
    }

    fn paused_with_records_from(partition: i32) -> Paused {
        Paused {
            assignment: TopicPartitionList::new(),
            touched: BTreeSet::from([partition]),
        }
    }

    #[test]
    fn a_seek_that_keeps_failing_stops_the_consumer_with_the_lost_position() {
        let consumer = consumer_without_partitions();
        let error = paused_with_records_from(3)
            .resume(&consumer, "events", |_| Some(42))
            .expect_err("reading on would skip the records fetched while paused");
        assert!(
            matches!(
                error,
                ConsumerError::PositionLost {
                    partition: 3,
                    offset: 42,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error.is_transient(),
            "a restart resumes from the durable position"
        );
    }

    #[test]
    fn a_partition_no_longer_ours_is_not_sought() {
        let consumer = consumer_without_partitions();
        paused_with_records_from(3)
            .resume(&consumer, "events", |_| None)
            .expect("nothing to seek");
    }
}
