//! A consumer its group leaves without partitions, and (with
//! [`OrphanWatch`]) partitions its group leaves without a consumer.
//!
//! tansu 0.6 keeps a dead member for its session, and a member that joins
//! meanwhile can be given an empty assignment that no later rebalance
//! corrects: it polls, heartbeats and reads nothing, forever. Leaving and
//! rejoining the group mends it once the dead member's session has ended.
//!
//! The stuck state is read from librdkafka's own statistics of the group
//! (every 5 s): the member is `steady` (not joining, syncing or assigning),
//! holds no partition, and its last rebalance is older than the bound. A
//! member in the middle of a rebalance is never disturbed. Whether the group
//! owes it partitions would take the member count, which only DescribeGroups
//! gives, and tansu 0.6 fails that request by dropping the connection; so
//! each rejoin that still leaves the member empty doubles the bound (up to
//! [`MAX_BOUND`]), and a member that is surplus by design (more members than
//! partitions, which the chart refuses) costs its group a rebalance at
//! growing intervals.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;

use super::orphans::OrphanWatch;

/// Counter of rejoins, labelled by group.
pub const REJOINS: &str = "hourglass_consumer_rejoins_total";

/// The longest the bound grows to.
pub const MAX_BOUND: Duration = Duration::from_secs(600);

/// How often the assignment is looked at (a local call, no request).
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// A sample older than this is not acted on (statistics come every 5 s).
const FRESH: Duration = Duration::from_secs(12);

/// The group state librdkafka last reported for this consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSample {
    /// `steady` once joined and assigned; `wait-join`, `wait-sync` … while
    /// a rebalance runs.
    pub join_state: String,
    pub assignment_size: i32,
    pub rebalance_age: Duration,
}

/// Where a consumer context keeps the latest [`GroupSample`] (from its
/// statistics callback) for the watchdog.
#[derive(Debug, Clone, Default)]
pub struct GroupHealth(Arc<Mutex<Option<(Instant, GroupSample)>>>);

impl GroupHealth {
    /// Call from the context's `stats` callback.
    pub fn record(&self, stats: &Statistics) {
        let Some(cgrp) = &stats.cgrp else {
            return;
        };
        let sample = GroupSample {
            join_state: cgrp.join_state.clone(),
            assignment_size: cgrp.assignment_size,
            rebalance_age: Duration::from_millis(cgrp.rebalance_age.max(0) as u64),
        };
        *self.0.lock().expect("not poisoned") = Some((Instant::now(), sample));
    }

    fn latest(&self) -> Option<GroupSample> {
        let guard = self.0.lock().expect("not poisoned");
        let (at, sample) = guard.as_ref()?;
        (at.elapsed() < FRESH).then(|| sample.clone())
    }
}

/// A consumer context that keeps its group's health for the watchdog.
pub trait WatchedContext: ConsumerContext {
    fn group_health(&self) -> &GroupHealth;
}

pub struct AssignmentWatchdog {
    topic: String,
    group: String,
    bound: Duration,
    /// `bound`, doubled by each rejoin that left the consumer empty.
    current: Duration,
    /// When the last rejoin was asked (its rebalance resets the age).
    last_rejoin: Option<Instant>,
    last_look: Instant,
    /// The other half: partitions the group gave no live member.
    orphans: OrphanWatch,
}

impl AssignmentWatchdog {
    /// `bound` zero turns the empty-assignment check off, `orphan_bound`
    /// zero the orphaned-partition check ([`OrphanWatch`]).
    pub fn new(topic: &str, group: &str, bound: Duration, orphan_bound: Duration) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            bound,
            current: bound,
            last_rejoin: None,
            last_look: Instant::now(),
            orphans: OrphanWatch::new(topic, orphan_bound),
        }
    }

    /// Call from the consumer's loop, between polls. Returns whether the
    /// consumer rejoined its group.
    pub fn check<C: WatchedContext>(&mut self, consumer: &BaseConsumer<C>) -> bool {
        if self.last_look.elapsed() < LOOK_EVERY {
            return false;
        }
        self.last_look = Instant::now();
        let Some(sample) = consumer.context().group_health().latest() else {
            return false;
        };
        if sample.join_state != "steady" {
            self.orphans.reset();
        } else if let Some(partition) = self.orphans.check(consumer) {
            tracing::warn!(
                group = %self.group,
                partition,
                "a partition has records past the group's commit that no member has moved; rejoining so the group hands it out again"
            );
            self.rejoin(consumer);
            return true;
        }
        if self.bound.is_zero() {
            return false;
        }
        let empty = consumer.assignment().is_ok_and(|a| a.count() == 0);
        if !self.observe(&sample, empty, Instant::now()) {
            return false;
        }
        let partitions = self.partitions(consumer);
        if partitions == Some(0) || partitions.is_none() {
            tracing::debug!(group = %self.group, ?partitions, "no partitions, and none to be had");
            return false;
        }
        tracing::warn!(
            group = %self.group,
            ?partitions,
            next_check_in = ?self.current,
            "the group left this consumer without partitions; rejoining"
        );
        self.rejoin(consumer);
        true
    }

    fn rejoin<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        metrics::counter!(REJOINS, "group" => self.group.clone()).increment(1);
        self.orphans.reset();
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(&[&self.topic]) {
            tracing::error!(error = %e, "subscribing again failed; retried after the next bound");
        }
    }

    /// Whether a rejoin is due: the member is steady with no partition
    /// (librdkafka's sample and its local assignment agree), its last
    /// rebalance is older than the current bound, and so is the last rejoin
    /// (whose rebalance the sample may not show yet). A rejoin doubles the
    /// bound; partitions bring it back.
    fn observe(&mut self, sample: &GroupSample, empty: bool, now: Instant) -> bool {
        if sample.assignment_size > 0 || !empty {
            self.current = self.bound;
            return false;
        }
        let stuck = sample.join_state == "steady"
            && sample.rebalance_age >= self.current
            && self
                .last_rejoin
                .is_none_or(|at| now.duration_since(at) >= self.current);
        if !stuck {
            return false;
        }
        self.last_rejoin = Some(now);
        self.current = (self.current * 2).min(MAX_BOUND.max(self.bound));
        true
    }

    /// The topic's partition count, as the broker says.
    fn partitions<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Option<usize> {
        topic_partitions(consumer, &self.topic).map(|p| p.len())
    }
}

/// The topic's partitions, as the broker says (None: it did not answer).
pub(super) fn topic_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Option<Vec<i32>> {
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(2)) {
        Ok(m) => m
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the topic's partitions");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(join_state: &str, assigned: i32, age_secs: u64) -> GroupSample {
        GroupSample {
            join_state: join_state.into(),
            assignment_size: assigned,
            rebalance_age: Duration::from_secs(age_secs),
        }
    }

    #[test]
    fn rejoins_a_steady_empty_member_then_waits_twice_as_long_until_given_partitions() {
        let mut w = AssignmentWatchdog::new("t", "g", Duration::from_secs(10), Duration::ZERO);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!w.observe(&sample("steady", 0, 9), true, at(0)));
        assert!(
            !w.observe(&sample("wait-join", 0, 60), true, at(1)),
            "never in the middle of a rebalance"
        );
        assert!(w.observe(&sample("steady", 0, 10), true, at(2)), "rejoin");
        assert!(
            !w.observe(&sample("steady", 0, 30), true, at(3)),
            "the sample predates the rejoin"
        );
        assert!(!w.observe(&sample("steady", 0, 19), true, at(30)));
        assert!(
            w.observe(&sample("steady", 0, 20), true, at(30)),
            "next after 20 s"
        );
        assert!(
            !w.observe(&sample("steady", 4, 1), false, at(31)),
            "given partitions"
        );
        assert!(
            w.observe(&sample("steady", 0, 10), true, at(50)),
            "back to 10 s"
        );
    }

    #[test]
    fn a_member_holding_partitions_is_left_alone() {
        let mut w = AssignmentWatchdog::new("t", "g", Duration::from_secs(1), Duration::ZERO);
        let now = Instant::now();
        assert!(!w.observe(&sample("steady", 3, 600), false, now));
        assert!(
            !w.observe(&sample("steady", 0, 600), false, now),
            "the local assignment says otherwise"
        );
    }

    #[test]
    fn the_bound_stops_growing() {
        let mut w = AssignmentWatchdog::new("t", "g", Duration::from_secs(300), Duration::ZERO);
        let mut t = Instant::now();
        for _ in 0..5 {
            t += MAX_BOUND;
            assert!(w.observe(&sample("steady", 0, 3_600), true, t));
        }
        assert_eq!(w.current, MAX_BOUND);
    }
}
