//! The warehouse: Delta Lake tables on any object_store URL (local path, `file://`, `s3://`,
//! `gs://`, `az://`, `abfss://`), written by delta-rs through the stores this crate opens, with
//! one commit per table per run; and the pipeline's own small objects beside them.
//!
//! Layout of a warehouse:
//! ```text
//! <table>/_delta_log/…                                     the Delta log
//! <table>/dataset_id=…/score_date=2026-11-16/part-….parquet data (scores, summary)
//! _published/<pipeline>.json   the table versions the pipeline's last complete run made
//! _state/<pipeline>.json       what the pipeline landed last (batches, histograms)
//! _runs/<pipeline>/<run>.json  run records
//! _locks/<pipeline>.lock       the pipeline lock
//! ```
//! Warehouses of the old layout (`_commits/`, `_latest.json`) are read only to convert them.

mod datafiles;
mod delta;
mod durable;
mod error;
mod legacy;
mod pause;
mod store;

pub use delta::{
    AsOf, CHECKPOINT_INTERVAL, FORGET_POINTER, ForgetReport, OptimizeReport, Published,
    PublishedTable, QueryOutput, TableCommit, TableFile, TableFiles, TableLabels, TableVersion,
    TableWrite,
};
pub use error::SinkError;
pub use legacy::{Commit, CommitFile};
pub use pause::pause_point;
pub use store::{Lock, PUBLISH_LOCK, SinkConfig, Warehouse};
