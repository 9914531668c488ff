//! Publishes tables to any object_store URL (local path, `file://`, `s3://`, `gs://`, `az://`,
//! `abfss://`) atomically: data files first, under names unique to the run, then one commit
//! record per table, written last with a create-if-absent put. Readers that follow the commit
//! records (`scoreland sql`, or the `_latest.json` manifest) never see a half-landed night.
//!
//! Layout of a table in the warehouse:
//! ```text
//! <table>/score_date=2026-11-16/part-<run>-00000.parquet   data (Hive-partitioned)
//! <table>/_commits/00000000000000000007.json              commit records, one per run
//! <table>/_latest.json                                    the live files, for other readers
//! ```
//! The warehouse also keeps `_state/`, `_runs/` and `_locks/` objects for the pipeline.

mod commit;
mod delta;
mod error;
mod store;

pub use commit::{Commit, CommitFile, UploadedTable, VacuumReport};
pub use delta::{TableCommit, TableWrite};
pub use error::SinkError;
pub use store::{Lock, SinkConfig, Warehouse};
