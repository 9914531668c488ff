//! The memory pool of a transform run under a limit.
//!
//! DataFusion's greedy pool lets one sorting partition buffer nearly the whole limit, after
//! which the other cannot merge its spilled runs (merging cannot spill) and the run fails; its
//! fair pool lets the spilling operators together fill the pool, after which the parquet
//! writers and the merges of spill files (which cannot spill either) fail instead. This pool
//! caps what operators that can spill hold together at half the limit, first come first
//! served, and keeps the rest for those that cannot.

use std::fmt;
use std::sync::Mutex;

use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};

#[derive(Debug)]
pub(crate) struct HeadroomPool {
    limit: usize,
    spillable_cap: usize,
    /// (all reserved bytes, bytes reserved by consumers that can spill)
    used: Mutex<(usize, usize)>,
}

impl HeadroomPool {
    pub(crate) fn new(limit: usize) -> Self {
        HeadroomPool {
            limit,
            spillable_cap: limit / 2,
            used: Mutex::new((0, 0)),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryPool for HeadroomPool {
    fn name(&self) -> &str {
        "headroom"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        let mut used = self.used();
        used.0 += additional;
        if reservation.consumer().can_spill() {
            used.1 += additional;
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        let mut used = self.used();
        used.0 = used.0.saturating_sub(shrink);
        if reservation.consumer().can_spill() {
            used.1 = used.1.saturating_sub(shrink);
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let mut used = self.used();
        let spills = reservation.consumer().can_spill();
        let available = if spills {
            (self.limit.saturating_sub(used.0)).min(self.spillable_cap.saturating_sub(used.1))
        } else {
            self.limit.saturating_sub(used.0)
        };
        if additional > available {
            let (all, spillable) = *used;
            drop(used);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "cannot reserve {additional} more bytes for {} ({} held, {available} available \
                 to it; {all} of {} bytes reserved, {spillable} by operators that can spill)",
                reservation.consumer().name(),
                reservation.size(),
                self.limit,
            )));
        }
        used.0 += additional;
        if spills {
            used.1 += additional;
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used().0
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

impl fmt::Display for HeadroomPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (all, spillable) = *self.used();
        write!(
            f,
            "headroom pool: {all} of {} bytes reserved, {spillable} of them by operators that can spill (at most {})",
            self.limit, self.spillable_cap
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::execution::memory_pool::MemoryConsumer;

    use super::*;

    #[test]
    fn spilling_consumers_share_half_and_the_rest_is_kept_for_others() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(100));
        let sort = MemoryConsumer::new("sort")
            .with_can_spill(true)
            .register(&pool);
        let merge = MemoryConsumer::new("merge").register(&pool);
        sort.try_grow(50).unwrap();
        assert!(sort.try_grow(1).is_err(), "spilling share is capped");
        merge.try_grow(50).unwrap();
        assert!(merge.try_grow(1).is_err(), "the limit holds");
        sort.shrink(20);
        assert!(merge.try_grow(20).is_ok());
        assert!(sort.try_grow(1).is_err(), "the pool is full");
        drop(merge);
        assert_eq!(pool.reserved(), 30);
        sort.try_grow(20).unwrap();
    }
}
