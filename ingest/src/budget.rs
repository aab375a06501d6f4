//! The memory the requests in flight may hold. A request is charged as its
//! body arrives and as its events are decoded, so a slow upload holds only
//! what it has sent and a request is refused (503) at the moment it would
//! push ingest past its budget, not after it allocated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Decoded bytes are held about three times over until the broker
/// acknowledges: the events' raw copies, their encoded records, and the
/// producer's copy in its queue.
pub const DECODED_COPIES: usize = 3;

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
    pub fn add(&mut self, bytes: usize) -> Result<(), OverBudget> {
        let budget = &self.budget;
        let before = budget.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > budget.limit {
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
}
