//! The memory the requests in flight may hold. A request is charged as its
//! body arrives and as its events are decoded, so a slow upload holds only
//! what it has sent and a request is refused (503) at the moment it would
//! push ingest past its budget, not after it allocated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::lane::LARGE_BODY_BYTES;

/// An event is held about three times over until the broker acknowledges:
/// its raw copy from the body, its encoded record, and the producer's copy
/// in its queue. A compressed body is charged once for every byte it
/// inflates to, as it inflates (that covers the raw copies and the parser's
/// scratch), and twice more for its events once they are parsed; a plain
/// body is charged three times for its events once they are parsed.
pub const EVENT_COPIES: usize = hourglass_core::config::INGEST_EVENT_COPIES;

#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("ingest is at its memory budget of {limit} bytes for requests in flight")]
pub struct OverBudget {
    pub limit: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// A charge of nothing yet, given back in full when dropped.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What one request holds of the budget.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Charge {
    /// A request past [`LARGE_BODY_BYTES`] may only use three quarters of
    /// the budget: the rest is kept for ordinary batches, so large bodies
    /// waiting for their turn cannot crowd them out.
    pub fn add(&mut self, bytes: usize) -> Result<(), OverBudget> {
        let budget = &self.budget;
        let limit = if self.bytes + bytes > LARGE_BODY_BYTES {
            budget.limit - budget.limit / 4
        } else {
            budget.limit
        };
        let before = budget.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > limit {
            budget.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(OverBudget {
                limit: budget.limit,
            });
        }
        self.bytes += bytes;
        crate::metrics::in_flight_bytes(before + bytes);
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let before = self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
            crate::metrics::in_flight_bytes(before - self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_the_limit_and_given_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.charge();
        a.add(60).unwrap();
        let mut b = budget.charge();
        assert_eq!(b.add(41), Err(OverBudget { limit: 100 }));
        b.add(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn large_bodies_leave_a_quarter_for_small_ones() {
        let budget = MemoryBudget::new(4 * LARGE_BODY_BYTES * 4);
        let mut large = Vec::new();
        for _ in 0..11 {
            let mut c = budget.charge();
            c.add(LARGE_BODY_BYTES + 1).unwrap();
            large.push(c);
        }
        let mut one_more = budget.charge();
        one_more.add(LARGE_BODY_BYTES).unwrap();
        assert!(
            one_more.add(1).is_err(),
            "past three quarters for large bodies"
        );
        let mut small = budget.charge();
        small.add(LARGE_BODY_BYTES).unwrap();
    }
}
