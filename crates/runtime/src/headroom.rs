//! The memory pool of a transform run under a limit.
//!
//! DataFusion's greedy pool lets one sorting partition buffer nearly the whole limit, after
//! which the other cannot merge its spilled runs (merging cannot spill) and the run fails; its
//! fair pool lets the spilling operators together fill the pool, after which the parquet
//! writers and the merges of spill files (which cannot spill either) fail instead. This pool
//! gives operators that can spill half the limit, shared fairly (a sort cannot starve while a
//! repartition buffer holds the whole half), and keeps the rest for those that cannot, none of
//! which may hold more than a quarter: the merges of spill files take all the memory they are
//! given (merging more files at once), and would otherwise leave the writers none.

use std::fmt;
use std::sync::Mutex;

use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

#[derive(Debug)]
pub struct HeadroomPool {
    limit: usize,
    spillable_cap: usize,
    /// The most one consumer that cannot spill may hold.
    unspillable_each: usize,
    used: Mutex<Used>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Used {
    all: usize,
    /// Reserved by consumers that can spill.
    spillable: usize,
    /// Registered consumers that can spill.
    spillers: usize,
}

impl HeadroomPool {
    pub fn new(limit: usize) -> Self {
        HeadroomPool {
            limit,
            spillable_cap: limit / 2,
            unspillable_each: limit / 4,
            used: Mutex::new(Used::default()),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryPool for HeadroomPool {
    fn name(&self) -> &str {
        "headroom"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            self.used().spillers += 1;
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            let mut used = self.used();
            used.spillers = used.spillers.saturating_sub(1);
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        let mut used = self.used();
        used.all += additional;
        if reservation.consumer().can_spill() {
            used.spillable += additional;
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        let mut used = self.used();
        used.all = used.all.saturating_sub(shrink);
        if reservation.consumer().can_spill() {
            used.spillable = used.spillable.saturating_sub(shrink);
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let mut used = self.used();
        let spills = reservation.consumer().can_spill();
        let mut available = self.limit.saturating_sub(used.all);
        if spills {
            let share = self.spillable_cap / used.spillers.max(1);
            available = available
                .min(self.spillable_cap.saturating_sub(used.spillable))
                .min(share.saturating_sub(reservation.size()));
        } else {
            available = available.min(self.unspillable_each.saturating_sub(reservation.size()));
        }
        if additional > available {
            let Used { all, spillable, .. } = *used;
            drop(used);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "cannot reserve {additional} more bytes for {} ({} held, {available} available \
                 to it; {all} of {} bytes reserved, {spillable} by operators that can spill)",
                reservation.consumer().name(),
                reservation.size(),
                self.limit,
            )));
        }
        used.all += additional;
        if spills {
            used.spillable += additional;
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used().all
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

impl fmt::Display for HeadroomPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Used { all, spillable, .. } = *self.used();
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

    use super::*;

    #[test]
    fn spilling_consumers_share_half_fairly() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(100));
        let sort = MemoryConsumer::new("sort")
            .with_can_spill(true)
            .register(&pool);
        let buffer = MemoryConsumer::new("buffer")
            .with_can_spill(true)
            .register(&pool);
        buffer.try_grow(25).unwrap();
        assert!(buffer.try_grow(1).is_err(), "a quarter each");
        sort.try_grow(25).unwrap();
        drop(buffer);
        sort.try_grow(25).unwrap();
        assert!(sort.try_grow(1).is_err());
    }

    #[test]
    fn spilling_consumers_share_half_and_the_rest_is_kept_for_others() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(100));
        let sort = MemoryConsumer::new("sort")
            .with_can_spill(true)
            .register(&pool);
        let merge = MemoryConsumer::new("merge").register(&pool);
        let writer = MemoryConsumer::new("writer").register(&pool);
        sort.try_grow(50).unwrap();
        assert!(sort.try_grow(1).is_err(), "spilling share is capped");
        merge.try_grow(25).unwrap();
        assert!(
            merge.try_grow(1).is_err(),
            "a quarter for each that cannot spill"
        );
        writer.try_grow(25).unwrap();
        assert!(writer.try_grow(1).is_err(), "the limit holds");
        sort.shrink(20);
        assert!(merge.try_grow(1).is_err());
        drop(merge);
        assert_eq!(pool.reserved(), 55);
        sort.try_grow(20).unwrap();
    }
}
