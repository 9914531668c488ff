//! scoreland on an Apache DataFusion Ballista cluster: the scheduler and executor processes
//! (`scoreland cluster scheduler|executor|local`) and SQL over the warehouse on it
//! (`scoreland sql --cluster`).
//!
//! - `processes.rs`: a scheduler and an executor as scoreland runs them.
//! - `local.rs`: a scheduler and N executor processes on this machine.
//! - `engine.rs`: [`scoreland_runtime::engine::ClusterEngine`] for a scheduler: the
//!   transform's scores job (its dedupe plan) and queries (`sql --cluster`, `serve --cluster`)
//!   run on the executors, the rows streamed back.
//! - `query.rs`: SQL planned here over each table's version as plain Parquet files
//!   ([`scoreland_sink::PublishedTable`]: delta-rs scans do not serialise to executors,
//!   delta-rs #4171) and executed on the cluster's executors (the plan, not the SQL, crosses
//!   the wire); `job.rs` submits it and reads the result partitions, refusing a job that lists
//!   one twice.

mod engine;
mod error;
mod job;
mod local;
mod processes;
mod query;

pub use error::ClusterError;
pub use local::LocalCluster;
pub use processes::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};
pub use query::{Cluster, ClusterUrl};
