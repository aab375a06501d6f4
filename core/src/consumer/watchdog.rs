//! A consumer its group leaves without partitions.
//!
//! tansu 0.6 keeps a dead member for its session, and a member that joins
//! meanwhile can be given an empty assignment that no later rebalance
//! corrects: it polls, heartbeats and reads nothing, forever. Leaving and
//! rejoining the group mends it once the dead member's session has ended.
//!
//! Whether the group owes this member partitions would take the member
//! count, which only DescribeGroups gives, and tansu 0.6 fails that request
//! (a JSON error on its stored group state) by dropping the connection. So
//! a member of a topic with partitions that holds none past the bound
//! rejoins, and each rejoin that still leaves it empty doubles the bound (up
//! to [`MAX_BOUND`]): a member that is surplus by design (more members than
//! partitions, which the chart refuses) costs its group a rebalance at
//! growing intervals, not every bound.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// Counter of rejoins, labelled by group.
pub const REJOINS: &str = "hourglass_consumer_rejoins_total";

/// The longest the bound grows to.
pub const MAX_BOUND: Duration = Duration::from_secs(600);

/// How often the assignment is looked at (a local call, no request).
const LOOK_EVERY: Duration = Duration::from_millis(500);

pub struct AssignmentWatchdog {
    topic: String,
    group: String,
    bound: Duration,
    /// `bound`, doubled by each rejoin that left the consumer empty.
    current: Duration,
    empty_since: Option<Instant>,
    last_look: Instant,
}

impl AssignmentWatchdog {
    /// `bound` zero turns the watchdog off.
    pub fn new(topic: &str, group: &str, bound: Duration) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            bound,
            current: bound,
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
        let empty = consumer.assignment().is_ok_and(|a| a.count() == 0);
        if !self.observe(empty, Instant::now()) {
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
        metrics::counter!(REJOINS, "group" => self.group.clone()).increment(1);
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(&[&self.topic]) {
            tracing::error!(error = %e, "subscribing again failed; retried after the next bound");
        }
        true
    }

    /// Track how long the assignment has been empty; true when a rejoin is
    /// due (and then the bound doubles for the next one).
    fn observe(&mut self, empty: bool, now: Instant) -> bool {
        if !empty {
            self.empty_since = None;
            self.current = self.bound;
            return false;
        }
        let since = *self.empty_since.get_or_insert(now);
        if now.duration_since(since) < self.current {
            return false;
        }
        self.empty_since = Some(now);
        self.current = (self.current * 2).min(MAX_BOUND.max(self.bound));
        true
    }

    /// The topic's partition count, as the broker says.
    fn partitions<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Option<usize> {
        match consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(2)) {
            Ok(m) => m
                .topics()
                .iter()
                .find(|t| t.name() == self.topic)
                .map(|t| t.partitions().len()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the topic's partitions");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoins_after_the_bound_then_waits_twice_as_long_until_given_partitions() {
        let mut w = AssignmentWatchdog::new("t", "g", Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!w.observe(true, at(0)));
        assert!(!w.observe(true, at(9)));
        assert!(w.observe(true, at(10)), "empty for the bound: rejoin");
        assert!(!w.observe(true, at(29)));
        assert!(w.observe(true, at(30)), "still empty: next after 20 s");
        assert!(!w.observe(false, at(31)), "given partitions");
        assert!(!w.observe(true, at(32)));
        assert!(w.observe(true, at(42)), "the bound is back to 10 s");
    }

    #[test]
    fn the_bound_stops_growing() {
        let mut w = AssignmentWatchdog::new("t", "g", Duration::from_secs(300));
        let t0 = Instant::now();
        assert!(!w.observe(true, t0));
        let mut t = t0;
        for _ in 0..5 {
            t += w.current;
            assert!(w.observe(true, t));
        }
        assert_eq!(w.current, MAX_BOUND);
    }
}
