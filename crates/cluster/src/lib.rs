//! scoreland on an Apache DataFusion Ballista cluster: the scheduler and executor processes
//! (`scoreland cluster scheduler|executor|local`), and the scores transform and SQL over the
//! warehouse on it (`run`, `sql` and `serve --cluster`).
//!
//! - `processes.rs`: a scheduler and an executor as scoreland runs them.
//! - `local.rs`: a scheduler and N executor processes on this machine.
//! - `engine.rs`: [`scoreland_runtime::engine::ClusterEngine`] for a scheduler: the
//!   transform's scores job (its dedupe plan) and queries (`sql --cluster`, `serve --cluster`)
//!   run on the executors, the rows streamed back.
//! - `codec.rs`: how plans are encoded between the processes: Ballista's nodes and scoreland's
//!   own (`NodeCodec`, the transform's writer of kept rows), which every process is given.
//! - `stores.rs`: the object stores the scheduler and executors open from their own
//!   environment, for warehouses and staging on buckets.
//! - `client.rs`: the scheduler's address, reaching it, and which failures mean a lost
//!   executor. Queries over the warehouse are planned by the sink (`Warehouse::query_on`, each
//!   table's version as plain Parquet files: delta-rs scans do not serialise to executors,
//!   delta-rs #4171) and submitted through `engine.rs`; `job.rs` submits a plan and reads the
//!   result partitions, refusing a job that lists one twice.

mod client;
mod codec;
mod engine;
mod error;
mod job;
mod local;
mod processes;
mod stores;

pub use client::{Cluster, ClusterUrl};
pub use error::ClusterError;
pub use local::LocalCluster;
pub use processes::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};
