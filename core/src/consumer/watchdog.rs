//! A consumer its group leaves without partitions while it is owed some.
//!
//! tansu 0.6 keeps a dead member for its session, and a member that joins
//! meanwhile can be given an empty assignment that no later rebalance
//! corrects: it polls, heartbeats and reads nothing, forever. A healthy
//! group gives every member at least one partition when the members are no
//! more than the partitions (range and round-robin assignors alike), so an
//! empty assignment that lasts past a bound under that condition is the bug,
//! and leaving and rejoining the group mends it (once the dead member's
//! session ended: the check repeats every bound until then).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// Counter of rejoins, labelled by group.
pub const REJOINS: &str = "hourglass_consumer_rejoins_total";

pub struct AssignmentWatchdog {
    topic: String,
    group: String,
    bound: Duration,
    empty_since: Option<Instant>,
    last_look: Instant,
}

/// How often the assignment is looked at (a local call, no request).
const LOOK_EVERY: Duration = Duration::from_millis(500);

impl AssignmentWatchdog {
    /// `bound` zero turns the watchdog off.
    pub fn new(topic: &str, group: &str, bound: Duration) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            bound,
            empty_since: None,
            last_look: Instant::now(),
        }
    }

    /// Call from the consumer's loop, between polls. Returns whether the
    /// consumer rejoined its group.
    pub fn check<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> bool {
        if self.bound.is_zero() || self.last_look.elapsed() < LOOK_EVERY {
            return false;
        }
        self.last_look = Instant::now();
        let empty = consumer
            .assignment()
            .map(|a| a.count() == 0)
            .unwrap_or(false);
        if !empty {
            self.empty_since = None;
            return false;
        }
        let since = *self.empty_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.bound {
            return false;
        }
        // Asked again after another bound whatever the answer.
        self.empty_since = Some(Instant::now());
        let (partitions, members) = self.group_shape(consumer);
        let owed = match (partitions, members) {
            (Some(p), Some(m)) => p > 0 && m <= p,
            // Without the member count (a broker that does not describe
            // groups), a topic with partitions is owed to us: a rejoin of a
            // surplus member costs its group one rebalance per bound.
            (Some(p), None) => p > 0,
            (None, _) => false,
        };
        if !owed {
            tracing::debug!(?partitions, ?members, group = %self.group, "no partitions, and none owed");
            return false;
        }
        tracing::warn!(
            group = %self.group,
            ?partitions,
            ?members,
            empty_for = ?self.bound,
            "the group left this consumer without partitions although it owes it some; rejoining"
        );
        metrics::counter!(REJOINS, "group" => self.group.clone()).increment(1);
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(&[&self.topic]) {
            tracing::error!(error = %e, "subscribing again failed; retried after the next bound");
        }
        true
    }

    /// The topic's partitions and the group's members, as the broker says.
    fn group_shape<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
    ) -> (Option<usize>, Option<usize>) {
        let timeout = Duration::from_secs(2);
        let partitions = match consumer.fetch_metadata(Some(&self.topic), timeout) {
            Ok(m) => m
                .topics()
                .iter()
                .find(|t| t.name() == self.topic)
                .map(|t| t.partitions().len()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the topic's partitions");
                None
            }
        };
        let members = match consumer.fetch_group_list(Some(&self.group), timeout) {
            Ok(list) => list
                .groups()
                .iter()
                .find(|g| g.name() == self.group)
                .map(|g| g.members().len())
                .filter(|m| *m > 0),
            Err(e) => {
                tracing::debug!(error = %e, "cannot describe the group");
                None
            }
        };
        (partitions, members)
    }
}
