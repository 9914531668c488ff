//! scoreland on an Apache DataFusion Ballista cluster: the scheduler and executor processes
//! (`scoreland cluster scheduler|executor|local`) and SQL over the warehouse on it
//! (`scoreland sql --cluster`).
//!
//! - `processes.rs`: a scheduler and an executor as scoreland runs them.
//! - `local.rs`: a scheduler and N executor processes on this machine.
//! - `table.rs`: a table's published version as plain Parquet files with their partition
//!   values: delta-rs scans do not serialise to executors (delta-rs #4171), plain Parquet scans
//!   do, so what a query reads is still exactly one published version.
//! - `engine.rs`: the transform's scores job (its dedupe plan) run on the executors, the kept
//!   rows streamed back to be written here.
//! - `query.rs`: SQL planned here over those files and executed on the cluster's executors
//!   (the plan, not the SQL, crosses the wire); `job.rs` submits it and reads the result
//!   partitions, refusing a job that lists one twice.

mod engine;
mod error;
mod job;
mod local;
mod processes;
mod query;
mod table;

pub use error::ClusterError;
pub use local::LocalCluster;
pub use processes::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};
pub use query::{Cluster, ClusterUrl};
