//! Delta Lake tables on the warehouse's own object store.
//!
//! Every table is a Delta table written with delta-rs through the store the warehouse opened
//! (one set of options, `[sink.options]`, for our files and Delta's), committed with the
//! put-if-absent log store: a commit is one create-if-absent put of `_delta_log/<version>.json`,
//! so of two writers of version N one wins and the other retries on top of it.

use std::collections::BTreeSet;
use std::path::Path as LocalPath;
use std::sync::{Arc, Once};

use deltalake::datafusion::prelude::{ParquetReadOptions, SessionContext, lit};
use deltalake::delta_datafusion::DeltaSessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::logstore::{LogStore, LogStoreFactory, StorageConfig, default_logstore};
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use serde::Serialize;
use url::Url;

use crate::error::SinkError;
use crate::store::Warehouse;

/// One table's part of a run: the files the transform wrote, and how they land.
#[derive(Debug, Clone)]
pub struct TableWrite<'a> {
    pub table: &'a str,
    /// Parquet files, Hive-partitioned by `score_date` (the column kept in the files) or not.
    pub local_dir: &'a LocalPath,
    /// The source dataset: a column of every row and the first partition column.
    pub dataset_id: &'a str,
    pub run_id: &'a str,
    /// Whether the table is partitioned by `score_date` under `dataset_id`; its score dates in
    /// this run are then replaced as a whole. Otherwise rows are appended.
    pub by_score_date: bool,
    /// Delta's transaction identifier: the pipeline, and the run's sequence number. A commit
    /// whose (app id, version) the table already holds is not made twice.
    pub app_id: &'a str,
    pub app_version: i64,
    /// Commit info: run id, batches, rows.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// What one table's commit did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableCommit {
    pub table: String,
    /// The Delta version that holds this run's rows.
    pub version: u64,
    /// False when the table already held this run's transaction (a rerun after a crash).
    pub committed: bool,
    /// Score dates replaced (empty for an appended table).
    pub replaced_dates: Vec<String>,
}

/// Delta's own put-if-absent log store over a store we built, for the cloud schemes (delta-rs
/// registers only `file://` and `memory://` without its AWS, Azure and GCP crates).
struct OwnStoreLogStores;

impl LogStoreFactory for OwnStoreLogStores {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_log_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in [
            "s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "adl://",
        ] {
            if let Ok(url) = Url::parse(scheme) {
                deltalake::logstore::logstore_factories().insert(url, Arc::new(OwnStoreLogStores));
            }
        }
    });
}

fn delta_err<'a>(table: &'a str, op: &'static str) -> impl Fn(DeltaTableError) -> SinkError + 'a {
    move |source| SinkError::Delta {
        table: table.to_string(),
        op,
        source: Box::new(source),
    }
}

impl Warehouse {
    /// The URL of a table's directory (with a trailing slash).
    pub fn table_url(&self, table: &str) -> Url {
        let mut u = self.file_url(table);
        if !u.path().ends_with('/') {
            let p = format!("{}/", u.path());
            u.set_path(&p);
        }
        u
    }

    /// A builder for a table on this warehouse's store.
    fn delta_builder(&self, table: &str) -> Result<DeltaTableBuilder, SinkError> {
        register_log_stores();
        let url = self.table_url(table);
        // Delta takes the store at the root of the bucket (or of the file system) and finds the
        // table under it by the URL's path.
        let root: Arc<dyn ObjectStore> = if url.scheme() == "file" {
            // delta-rs wants a local table's directory to exist, even to create the table.
            if let Ok(dir) = url.to_file_path() {
                std::fs::create_dir_all(&dir)
                    .map_err(|source| SinkError::Local { path: dir, source })?;
            }
            Arc::new(LocalFileSystem::new())
        } else {
            self.store.clone()
        };
        Ok(DeltaTableBuilder::from_url(url.clone())
            .map_err(delta_err(table, "open"))?
            .with_storage_backend(root, url))
    }

    /// A table at its newest version, or at `version`; `None` when it does not exist yet.
    pub async fn delta_table(
        &self,
        table: &str,
        version: Option<u64>,
    ) -> Result<Option<DeltaTable>, SinkError> {
        let mut t = self
            .delta_builder(table)?
            .build()
            .map_err(delta_err(table, "open"))?;
        let loaded = match version {
            Some(v) => t.load_version(v).await,
            None => t.load().await,
        };
        match loaded {
            Ok(()) => Ok(Some(t)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(delta_err(table, "open")(e)),
        }
    }

    /// Lands one table's files in one Delta commit: a replace of exactly the (dataset, score
    /// date) partitions they hold, or an append, with the run's transaction identifier.
    pub async fn write_table(&self, w: &TableWrite<'_>) -> Result<TableCommit, SinkError> {
        let table = w.table;
        let err = delta_err(table, "write");
        let mut current = self
            .delta_builder(table)?
            .build()
            .map_err(delta_err(table, "open"))?;
        let exists = match current.load().await {
            Ok(()) => true,
            Err(DeltaTableError::NotATable(_)) => false,
            Err(e) => return Err(delta_err(table, "open")(e)),
        };
        let dates = score_dates(w.local_dir)?;
        if exists {
            let state = current.snapshot().map_err(&err)?;
            let done = state
                .transaction_version(current.log_store().as_ref(), w.app_id)
                .await
                .map_err(&err)?;
            if done.is_some_and(|v| v >= w.app_version) {
                tracing::info!(
                    table,
                    app_id = w.app_id,
                    version = w.app_version,
                    "the table already holds this run's commit; not committing it twice"
                );
                return Ok(TableCommit {
                    table: table.to_string(),
                    version: current.version().unwrap_or(0),
                    committed: false,
                    replaced_dates: Vec::new(),
                });
            }
        }
        // delta-rs plans its write with a planner of its own: the plan is made in its session.
        let ctx: SessionContext = DeltaSessionContext::new().into_inner();
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let dir = format!("{}/", w.local_dir.display());
        let df = ctx
            .read_parquet(dir, ParquetReadOptions::default())
            .await
            .map_err(|e| err(DeltaTableError::from(e)))?
            .with_column("dataset_id", lit(w.dataset_id))
            .and_then(|df| df.with_column("run_id", lit(w.run_id)))
            .map_err(|e| err(DeltaTableError::from(e)))?;
        let plan = df.logical_plan().clone();
        let mut partitions = vec!["dataset_id".to_string()];
        if w.by_score_date {
            partitions.push("score_date".into());
        }
        let commit = CommitProperties::default()
            .with_application_transaction(Transaction::new(w.app_id, w.app_version))
            .with_metadata(w.metadata.clone());
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
            ))
            .build();
        let mut write = current
            .write(Vec::new())
            .with_input_plan(plan)
            .with_session_state(Arc::new(ctx.state()))
            .with_partition_columns(partitions)
            .with_writer_properties(props)
            .with_commit_properties(commit);
        write = if w.by_score_date {
            write
                .with_save_mode(SaveMode::Overwrite)
                .with_replace_where(replace_predicate(w.dataset_id, &dates))
        } else {
            write.with_save_mode(SaveMode::Append)
        };
        let written = write.await.map_err(&err)?;
        Ok(TableCommit {
            table: table.to_string(),
            version: written.version().unwrap_or(0),
            committed: true,
            replaced_dates: if w.by_score_date { dates } else { Vec::new() },
        })
    }
}

/// `dataset_id = '…' AND score_date IN (DATE '…', …)`: the partitions a run replaces.
fn replace_predicate(dataset: &str, dates: &[String]) -> String {
    let quoted = dataset.replace('\'', "''");
    let list = dates
        .iter()
        .map(|d| format!("DATE '{d}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("dataset_id = '{quoted}' AND score_date IN ({list})")
}

/// The `score_date=…` partition directories of a transform's output.
fn score_dates(dir: &LocalPath) -> Result<Vec<String>, SinkError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SinkError::Local {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut dates = BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(d) = name.strip_prefix("score_date=") {
            // Only dates: the value goes into a predicate.
            if chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok() {
                dates.insert(d.to_string());
            }
        }
    }
    Ok(dates.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replace_predicate_quotes_its_values() {
        assert_eq!(
            replace_predicate("d'1", &["2026-11-16".into(), "2026-11-17".into()]),
            "dataset_id = 'd''1' AND score_date IN (DATE '2026-11-16', DATE '2026-11-17')"
        );
    }
}
