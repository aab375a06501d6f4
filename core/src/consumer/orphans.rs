//! Partitions no member of the group consumes.
//!
//! When rebalances race (a member died while another joined), tansu 0.6 can
//! answer SyncGroup with the assignments of an earlier generation: every live
//! member is steady and holds partitions, but those the old generation gave
//! the dead member belong to no one, for good. No member sees that in its
//! own assignment; the group's committed offsets show it: a partition that
//! has records past its commit, and whose commit has not moved for the
//! bound, while this member does not hold it. Then the member leaves and
//! rejoins, and the rebalance that follows hands every partition out again.
//!
//! The commits the consumers make (the aggregator's resume offset after a
//! flush, the loader's after a batch, the archiver's after its files) move
//! at least once a window with traffic, so the default bound (10 minutes)
//! sits above a window plus its grace. A group that is behind as a whole
//! (every member paused by a sink outage) looks the same; each rejoin that
//! found an orphan doubles the bound (up to [`MAX_BOUND`]), so that costs a
//! rebalance at growing intervals.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::watchdog::{MAX_BOUND, topic_partitions};

/// How often the group's commits and the partitions' ends are read (one
/// OffsetFetch and one ListOffsets per partition not held).
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// What one look saw of a partition this member does not hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionSeen {
    pub partition: i32,
    /// The group's committed offset (None: never committed).
    pub committed: Option<i64>,
    /// The partition's high watermark.
    pub end: i64,
}

pub struct OrphanWatch {
    topic: String,
    bound: Duration,
    current: Duration,
    /// Per lagging partition not held here: its commit and since when it
    /// has not moved.
    still: HashMap<i32, (Option<i64>, Instant)>,
    last_look: Instant,
}

impl OrphanWatch {
    /// `bound` zero turns the watch off.
    pub fn new(topic: &str, bound: Duration) -> Self {
        Self {
            topic: topic.to_owned(),
            bound,
            current: bound,
            still: HashMap::new(),
            last_look: Instant::now(),
        }
    }

    /// Forget what was seen (a rebalance hands the partitions out again).
    pub fn reset(&mut self) {
        self.still.clear();
    }

    /// Look (at most every few seconds) and return a partition that is
    /// orphaned: lagging, not held here, its commit still for the bound.
    pub fn check<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Option<i32> {
        if self.bound.is_zero() || self.last_look.elapsed() < LOOK_EVERY {
            return None;
        }
        self.last_look = Instant::now();
        let mine: HashSet<i32> = consumer
            .assignment()
            .ok()?
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let seen = self.look(consumer, &mine)?;
        self.observe(&seen, Instant::now())
    }

    /// The group's commits and the ends of every partition not held here;
    /// None when the broker does not answer (nothing is concluded then).
    fn look<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        mine: &HashSet<i32>,
    ) -> Option<Vec<PartitionSeen>> {
        let timeout = Duration::from_secs(2);
        let others: Vec<i32> = topic_partitions(consumer, &self.topic)?
            .into_iter()
            .filter(|p| !mine.contains(p))
            .collect();
        if others.is_empty() {
            return Some(Vec::new());
        }
        let mut asked = TopicPartitionList::new();
        for &p in &others {
            asked.add_partition(&self.topic, p);
        }
        let committed = consumer.committed_offsets(asked, timeout).ok()?;
        let mut seen = Vec::with_capacity(others.len());
        for p in others {
            let (_, end) = consumer.fetch_watermarks(&self.topic, p, timeout).ok()?;
            let committed =
                committed
                    .find_partition(&self.topic, p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
            seen.push(PartitionSeen {
                partition: p,
                committed,
                end,
            });
        }
        Some(seen)
    }

    /// The decision, given what a look saw: a partition whose commit is
    /// behind its end and has not moved for the current bound. Finding one
    /// doubles the bound and starts over; a look with no lagging partition
    /// brings the bound back.
    fn observe(&mut self, seen: &[PartitionSeen], now: Instant) -> Option<i32> {
        let lagging: Vec<&PartitionSeen> = seen
            .iter()
            .filter(|s| s.committed.unwrap_or(0) < s.end)
            .collect();
        self.still
            .retain(|p, _| lagging.iter().any(|s| s.partition == *p));
        if lagging.is_empty() {
            self.current = self.bound;
            return None;
        }
        let mut orphan = None;
        for s in lagging {
            let entry = self.still.entry(s.partition).or_insert((s.committed, now));
            if entry.0 != s.committed {
                *entry = (s.committed, now);
            } else if now.duration_since(entry.1) >= self.current && orphan.is_none() {
                orphan = Some(s.partition);
            }
        }
        if orphan.is_some() {
            self.still.clear();
            self.current = (self.current * 2).min(MAX_BOUND.max(self.bound));
        }
        orphan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(partition: i32, committed: Option<i64>, end: i64) -> PartitionSeen {
        PartitionSeen {
            partition,
            committed,
            end,
        }
    }

    #[test]
    fn a_lagging_partition_whose_commit_stands_still_for_the_bound_is_an_orphan() {
        let mut w = OrphanWatch::new("t", Duration::from_secs(20));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(w.observe(&[seen(6, Some(100), 500)], at(0)), None);
        assert_eq!(w.observe(&[seen(6, Some(100), 900)], at(19)), None);
        assert_eq!(
            w.observe(&[seen(6, Some(100), 900)], at(20)),
            Some(6),
            "still for 20 s with records past it"
        );
        assert_eq!(
            w.observe(&[seen(6, Some(100), 900)], at(21)),
            None,
            "starts over after a rejoin"
        );
        assert_eq!(w.observe(&[seen(6, Some(100), 900)], at(60)), None);
        assert_eq!(
            w.observe(&[seen(6, Some(100), 900)], at(61)),
            Some(6),
            "the bound doubled to 40 s"
        );
    }

    #[test]
    fn a_moving_commit_or_a_caught_up_partition_is_owned_by_someone() {
        let mut w = OrphanWatch::new("t", Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in 0..10 {
            let moving = seen(1, Some(100 + s as i64), 1_000);
            let caught_up = seen(2, Some(500), 500);
            assert_eq!(w.observe(&[moving, caught_up], at(s * 5)), None);
        }
        assert_eq!(
            w.observe(&[seen(3, None, 0)], at(100)),
            None,
            "an empty partition never committed is not lagging"
        );
        assert_eq!(w.observe(&[seen(3, None, 10)], at(101)), None);
        assert_eq!(
            w.observe(&[seen(3, None, 10)], at(111)),
            Some(3),
            "records, and no commit ever"
        );
    }

    #[test]
    fn no_lagging_partition_brings_the_bound_back() {
        let mut w = OrphanWatch::new("t", Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        w.observe(&[seen(0, Some(1), 2)], at(0));
        assert_eq!(w.observe(&[seen(0, Some(1), 2)], at(10)), Some(0));
        assert_eq!(w.current, Duration::from_secs(20));
        w.observe(&[], at(11));
        assert_eq!(w.current, Duration::from_secs(10));
    }
}
