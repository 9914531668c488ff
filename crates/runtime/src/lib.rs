//! The memory a DataFusion job may use, built one way for the transform, `optimize` and
//! `serve`: the limit as settings write it ([`MemoryLimit`]), the pool that shares it among a
//! job's operators ([`pool`]), and what each sorting partition keeps aside to merge its spilled
//! runs ([`sort_spill_reservation`]). And where data usage labels live in a warehouse
//! ([`labels`]), which the transform, the sink and `serve` share; the distributed engine a plan
//! may run on ([`engine`]); and the object store of a bucket URL, which the warehouse and the
//! engine's executors build alike ([`stores`]); and whether a query's plan only reads
//! ([`reads`]), for `serve` and `scoreland sql`.

pub mod engine;
mod headroom;
pub mod labels;
pub mod reads;
pub mod stores;

use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use serde::{Deserialize, Serialize};

pub use headroom::HeadroomPool;

/// How a pool shares its limit among a job's operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The transform: operators that can spill share half the limit fairly, the rest is kept
    /// for those that cannot ([`HeadroomPool`]); the largest consumers are named when it runs
    /// out.
    Headroom,
    /// A query or `optimize`: the spilling operators share the limit fairly (DataFusion's
    /// `FairSpillPool`).
    Fair,
}

/// A pool of `limit` bytes.
pub fn pool(limit: usize, sharing: Sharing) -> Arc<dyn MemoryPool> {
    match sharing {
        Sharing::Headroom => Arc::new(TrackConsumersPool::new(
            HeadroomPool::new(limit),
            NonZeroUsize::new(5).expect("5 is not zero"),
        )),
        Sharing::Fair => Arc::new(FairSpillPool::new(limit)),
    }
}

/// What each of `partitions` sorting partitions keeps aside to merge its spilled runs: when it
/// spills it releases this to merge its sorted in-memory runs (which needs the sort keys of
/// every buffered row in row format, about a third of the rows' size), and at the end the same
/// reservation starts the merge of the spill files. Sorts buffer at most half a pool together,
/// so a quarter of the limit across the partitions covers both merges; without it one
/// partition's sort can take the whole pool and leave another nothing to merge with.
pub fn sort_spill_reservation(limit: usize, partitions: usize) -> usize {
    limit / (4 * partitions.max(1))
}

/// A memory budget, as pipeline files and flags write it: `"2GiB"` (any size bytesize reads,
/// more than zero), `"unlimited"`, or nothing for the default, half of the machine's memory
/// ([`default_memory_limit`]). Parsed once, where it is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemoryLimit {
    #[default]
    Default,
    Unlimited,
    Bytes(u64),
}

impl MemoryLimit {
    /// The budget in bytes; `None` when unlimited (or the default cannot be known here).
    pub fn bytes(self) -> Option<usize> {
        match self {
            MemoryLimit::Default => default_memory_limit(),
            MemoryLimit::Unlimited => None,
            MemoryLimit::Bytes(b) => Some(usize::try_from(b).unwrap_or(usize::MAX)),
        }
    }

    pub fn is_unlimited(self) -> bool {
        self == MemoryLimit::Unlimited
    }

    pub fn is_default(&self) -> bool {
        *self == MemoryLimit::Default
    }
}

impl std::str::FromStr for MemoryLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "unlimited" => Ok(MemoryLimit::Unlimited),
            t => match t.parse::<bytesize::ByteSize>() {
                Ok(b) if b.as_u64() > 0 => Ok(MemoryLimit::Bytes(b.as_u64())),
                Ok(_) => Err(format!(
                    "memory_limit = {s:?}: must be more than zero (or \"unlimited\")"
                )),
                Err(e) => Err(format!(
                    "memory_limit = {s:?} is not a size like \"2GiB\" or \"unlimited\": {e}"
                )),
            },
        }
    }
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryLimit::Default => f.write_str("default"),
            MemoryLimit::Unlimited => f.write_str("unlimited"),
            MemoryLimit::Bytes(b) => write!(f, "{}", bytesize::ByteSize::b(*b).display().iec()),
        }
    }
}

impl Serialize for MemoryLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Half of the memory this process may use: the machine's (`MemTotal`), or its cgroup's
/// limit when lower. An unlimited transform peaked at 17.5 GB on 20 M rows on a 24 GB machine;
/// half leaves room for the page cache and whatever else runs beside it. `None` if neither
/// can be read (not Linux).
pub fn default_memory_limit() -> Option<usize> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let usable = match (total, cgroup) {
        (Some(t), Some(c)) => t.min(c),
        (t, c) => t.or(c)?,
    };
    Some((usable / 2) as usize)
}
