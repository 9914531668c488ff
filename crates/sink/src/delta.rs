//! Delta Lake tables on the warehouse's own object store.
//!
//! Every table is a Delta table written with delta-rs through the store the warehouse opened
//! (one set of options, `[sink.options]`, for our files and Delta's), committed with the
//! put-if-absent log store: a commit is one create-if-absent put of `_delta_log/<version>.json`,
//! so of two writers of version N one wins and the other retries on top of it.

use std::collections::BTreeSet;
use std::path::Path as LocalPath;
use std::sync::{Arc, Once};

use arrow::datatypes::Schema as ArrowSchema;
use deltalake::datafusion::dataframe::DataFrameWriteOptions;
use deltalake::datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, lit};
use deltalake::delta_datafusion::DeltaSessionContext;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{
    Action, Add, DataType as KernelType, StructField, StructType, Transaction,
};
use deltalake::logstore::{LogStore, LogStoreFactory, StorageConfig, default_logstore};
use deltalake::operations::create::CreateBuilder;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use serde::Serialize;
use url::Url;

use crate::datafiles::data_files;
use crate::error::SinkError;
use crate::store::{Warehouse, upload};

/// Rows per row group in the files `optimize` writes.
const OPTIMIZED_ROW_GROUP_ROWS: usize = 128 * 1024;

/// Commits between two checkpoints of a table's log.
pub const CHECKPOINT_INTERVAL: &str = "10";

/// One table's part of a run: the files the transform wrote, and how they land.
#[derive(Debug, Clone)]
pub struct TableWrite<'a> {
    pub table: &'a str,
    /// Parquet files, Hive-partitioned by `score_date` (the column kept in the files) or not.
    pub local_dir: &'a LocalPath,
    /// The source dataset: a column of every row and the first partition column.
    pub dataset_id: &'a str,
    pub run_id: &'a str,
    /// Whether the table is partitioned by a date under `dataset_id`; its dates in this run are
    /// then replaced as a whole. Otherwise rows are appended.
    pub by_score_date: bool,
    /// The date partition column (kept in the files): `score_date` for the scores tables,
    /// `night` for the audience tables.
    pub date_column: &'a str,
    /// With `by_score_date`: replace every score date of `dataset_id`, not only those of this
    /// run (the run holds the dataset's whole content: a full export, or a merge).
    pub replace_dataset: bool,
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
            Arc::new(crate::durable::DurableLocal::new())
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
        self.open_table(table, version.map_or(At::Newest, At::Version))
            .await
    }

    /// A table as of `at`; `None` when it does not exist yet. The log is asked for first, so
    /// that a first run does not make delta-rs log an error for a table it is about to create.
    async fn open_table(&self, table: &str, at: At) -> Result<Option<DeltaTable>, SinkError> {
        if !self.has_objects(&format!("{table}/_delta_log")).await? {
            return Ok(None);
        }
        let builder = self.delta_builder(table)?;
        let builder = match at {
            At::Newest => builder,
            At::Version(v) => builder.with_version(v),
            At::Time(t) => builder
                .with_datestring(t.to_rfc3339())
                .map_err(delta_err(table, "time travel"))?,
        };
        match builder.load().await {
            Ok(t) => Ok(Some(t)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(delta_err(table, "open")(e)),
        }
    }

    /// Lands one table's files in one Delta commit: a replace of exactly the (dataset, score
    /// date) partitions they hold, or an append, with the run's transaction identifier. The
    /// files are the transform's own, uploaded into the table as they are and committed as
    /// `add` actions with statistics from their footers; they must carry the `run_id` column
    /// with this run's id.
    pub async fn write_table(&self, w: &TableWrite<'_>) -> Result<TableCommit, SinkError> {
        let table = w.table;
        let err = delta_err(table, "write");
        if !is_plain_value(w.dataset_id) {
            return Err(SinkError::Schema {
                table: table.to_string(),
                message: format!(
                    "the dataset id {:?} is not usable as a partition directory name; use \
                     letters, digits, '.', '_' and '-' (AEP dataset ids are hex)",
                    w.dataset_id
                ),
            });
        }
        // The table is read once here; again only if the commit below has to be retried.
        let mut current = self.delta_table(table, None).await?;
        if let Some(c) = &current
            && let Some(done) = self.holds_transaction(c, w).await?
        {
            return Ok(done);
        }
        let files = {
            let dir = w.local_dir.to_path_buf();
            {
                let date_column = w.date_column.to_string();
                tokio::task::spawn_blocking(move || {
                    data_files(&dir, &["dataset_id", date_column.as_str()], &date_column)
                })
            }
            .await
            .map_err(|e| SinkError::Query {
                message: format!("reading the footers of {table}'s files: {e}"),
            })??
        };
        let schema_err = |message: String| SinkError::Schema {
            table: table.to_string(),
            message,
        };
        for f in &files {
            if f.only_value("run_id") != Some(&serde_json::json!(w.run_id)) && f.rows() > 0 {
                return Err(schema_err(format!(
                    "{} does not hold run {} alone in its run_id column",
                    f.local.display(),
                    w.run_id
                )));
            }
            if w.by_score_date && f.date.is_none() {
                return Err(schema_err(format!(
                    "{} is not in a {}= directory",
                    f.local.display(),
                    w.date_column
                )));
            }
        }
        let dates: Vec<String> = if w.by_score_date {
            let d: BTreeSet<&String> = files.iter().filter_map(|f| f.date.as_ref()).collect();
            d.into_iter().cloned().collect()
        } else {
            Vec::new()
        };
        let mut partitions = vec!["dataset_id".to_string()];
        if w.by_score_date {
            partitions.push(w.date_column.into());
        }

        // The data files first, under names of their own: a crash before the commit
        // leaves files no version names (vacuum removes them), never a half-written table.
        let unloaded = self
            .delta_builder(table)?
            .build()
            .map_err(delta_err(table, "open"))?;
        let store = unloaded.log_store().object_store(None);
        let now = chrono::Utc::now().timestamp_millis();
        // Names unique to this write: no two commits ever name one file.
        let write_id = uuid::Uuid::new_v4();
        let adds: Vec<Action> = futures::stream::iter(files.iter().enumerate())
            .map(|(i, f)| {
                let store = store.clone();
                let mut dir = format!("dataset_id={}/", w.dataset_id);
                let mut partition_values = std::collections::HashMap::from([(
                    "dataset_id".to_string(),
                    Some(w.dataset_id.to_string()),
                )]);
                if w.by_score_date {
                    let date = f.date.clone().unwrap_or_default();
                    dir.push_str(&format!("{}={date}/", w.date_column));
                    partition_values.insert(w.date_column.into(), Some(date));
                }
                let rel = format!("{dir}part-{i:05}-{write_id}.zstd.parquet");
                async move {
                    let size = upload(store.as_ref(), &f.local, &Path::from(rel.as_str())).await?;
                    Ok::<_, SinkError>(Action::Add(Add {
                        path: rel,
                        partition_values,
                        size: size as i64,
                        modification_time: now,
                        data_change: true,
                        stats: Some(f.stats.to_string()),
                        tags: None,
                        deletion_vector: None,
                        base_row_id: None,
                        default_row_commit_version: None,
                        clustering_provider: None,
                    }))
                }
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;

        let commit = || {
            CommitProperties::default()
                .with_application_transaction(Transaction::new(w.app_id, w.app_version))
                .with_metadata(w.metadata.clone())
        };
        let predicate = replace_predicate(
            w.dataset_id,
            w.date_column,
            (!w.replace_dataset).then_some(&dates[..]),
        );
        // Two attempts: a table another pipeline created while this one got ready is then
        // committed to like any other.
        for attempt in 0..2 {
            if attempt > 0 {
                current = self.delta_table(table, None).await?;
                if let Some(c) = &current
                    && let Some(done) = self.holds_transaction(c, w).await?
                {
                    return Ok(done);
                }
            }
            crate::pause_point("delta_commit");
            let version = match current.take() {
                Some(current) => {
                    let snapshot = current.snapshot().map_err(&err)?;
                    if let Some(f) = files.first() {
                        check_schema(&snapshot.schema(), &f.schema).map_err(&schema_err)?;
                    }
                    let mut actions = adds.clone();
                    if w.by_score_date {
                        actions.extend(
                            snapshot
                                .log_data()
                                .iter()
                                .filter(|f| {
                                    let pv = f.partition_values_map();
                                    pv.get("dataset_id") == Some(&Some(w.dataset_id.to_string()))
                                        && (w.replace_dataset
                                            || pv
                                                .get(w.date_column)
                                                .and_then(|d| d.as_ref())
                                                .is_some_and(|d| dates.contains(d)))
                                })
                                .map(|f| Action::Remove(f.remove_action(true))),
                        );
                    }
                    let operation = DeltaOperation::Write {
                        mode: if w.by_score_date {
                            SaveMode::Overwrite
                        } else {
                            SaveMode::Append
                        },
                        partition_by: Some(partitions.clone()),
                        predicate: w.by_score_date.then(|| predicate.clone()),
                    };
                    let done = CommitBuilder::from(commit())
                        .with_actions(actions)
                        .build(Some(snapshot), current.log_store(), operation)
                        .await
                        .map_err(&err)?;
                    done.version() as u64
                }
                None => {
                    let Some(first) = files.first() else {
                        // Nothing to land into a table that does not exist: it has no schema.
                        return Ok(TableCommit {
                            table: table.to_string(),
                            version: 0,
                            committed: false,
                            replaced_dates: Vec::new(),
                        });
                    };
                    let columns = table_columns(&first.schema).map_err(&schema_err)?;
                    let created = CreateBuilder::new()
                        .with_log_store(unloaded.log_store())
                        .with_columns(columns)
                        .with_partition_columns(partitions.clone())
                        // A checkpoint every ten commits keeps opening a table after a
                        // thousand nights as cheap as after ten.
                        .with_configuration_property(
                            TableProperty::CheckpointInterval,
                            Some(CHECKPOINT_INTERVAL),
                        )
                        .with_actions(adds.clone())
                        .with_commit_properties(commit())
                        .await;
                    match created {
                        Ok(t) => t.version().unwrap_or(0),
                        Err(e)
                            if attempt == 0
                                && self.has_objects(&format!("{table}/_delta_log")).await? =>
                        {
                            tracing::info!(table, error = %e, "the table was created meanwhile; committing to it");
                            continue;
                        }
                        Err(e) => return Err(delta_err(table, "create")(e)),
                    }
                }
            };
            return Ok(TableCommit {
                table: table.to_string(),
                version,
                committed: true,
                replaced_dates: dates,
            });
        }
        unreachable!("the second attempt returns")
    }

    /// Copies the newest version's data files of `dataset_id` in `table` into `dir` (for a
    /// merge: the rows already landed), or only those of one partition (`only`: column and
    /// value). An absent table has none.
    pub async fn fetch_dataset_files(
        &self,
        table: &str,
        dataset_id: &str,
        only: Option<(&str, &str)>,
        dir: &LocalPath,
    ) -> Result<Vec<std::path::PathBuf>, SinkError> {
        let Some(current) = self.delta_table(table, None).await? else {
            return Ok(Vec::new());
        };
        let err = delta_err(table, "read");
        let snapshot = current.snapshot().map_err(&err)?;
        let paths: Vec<String> = snapshot
            .log_data()
            .iter()
            .filter(|f| {
                let pv = f.partition_values_map();
                pv.get("dataset_id") == Some(&Some(dataset_id.to_string()))
                    && only.is_none_or(|(c, v)| pv.get(c) == Some(&Some(v.to_string())))
            })
            .map(|f| f.path().into_owned())
            .collect();
        let store = current.log_store().object_store(None);
        std::fs::create_dir_all(dir).map_err(|source| SinkError::Local {
            path: dir.to_path_buf(),
            source,
        })?;
        futures::stream::iter(paths.into_iter().enumerate())
            .map(|(i, rel)| {
                let store = store.clone();
                let local = dir.join(format!("landed-{i:05}.parquet"));
                async move {
                    let read_err = |source| SinkError::Store {
                        op: "reading",
                        path: format!("{table}/{rel}"),
                        source,
                    };
                    let got = object_store::ObjectStoreExt::get(&store, &Path::from(rel.as_str()))
                        .await
                        .map_err(read_err)?;
                    let bytes = got.bytes().await.map_err(read_err)?;
                    std::fs::write(&local, &bytes).map_err(|source| SinkError::Local {
                        path: local.clone(),
                        source,
                    })?;
                    Ok::<_, SinkError>(local)
                }
            })
            .buffered(4)
            .try_collect()
            .await
    }

    /// The greatest value of the date partition `column` that `dataset_id` has in `table`'s
    /// newest version before `before` (`YYYY-MM-DD`): the previous night landed.
    pub async fn previous_date(
        &self,
        table: &str,
        dataset_id: &str,
        column: &str,
        before: &str,
    ) -> Result<Option<String>, SinkError> {
        let Some(current) = self.delta_table(table, None).await? else {
            return Ok(None);
        };
        let snapshot = current.snapshot().map_err(delta_err(table, "read"))?;
        Ok(snapshot
            .log_data()
            .iter()
            .filter_map(|f| {
                let pv = f.partition_values_map();
                if pv.get("dataset_id") != Some(&Some(dataset_id.to_string())) {
                    return None;
                }
                pv.get(column)?.clone().filter(|d| d.as_str() < before)
            })
            .max())
    }

    /// The commit of this run's transaction if `current` holds it already (a rerun after a
    /// crash between commits): not made twice.
    async fn holds_transaction(
        &self,
        current: &DeltaTable,
        w: &TableWrite<'_>,
    ) -> Result<Option<TableCommit>, SinkError> {
        let err = delta_err(w.table, "write");
        let state = current.snapshot().map_err(&err)?;
        let done = state
            .transaction_version(current.log_store().as_ref(), w.app_id)
            .await
            .map_err(&err)?;
        if done.is_none_or(|v| v < w.app_version) {
            return Ok(None);
        }
        tracing::info!(
            table = w.table,
            app_id = w.app_id,
            version = w.app_version,
            "the table already holds this run's commit; not committing it twice"
        );
        Ok(Some(TableCommit {
            table: w.table.to_string(),
            version: current.version().unwrap_or(0),
            committed: false,
            replaced_dates: Vec::new(),
        }))
    }
}

/// Rewrites the parquet files under `from` into `to` with a `run_id` column, keeping the
/// `score_date=` directories (and the column) when `by_score_date`.
async fn with_run_id(
    from: &LocalPath,
    to: &LocalPath,
    run_id: &str,
    by_score_date: bool,
) -> deltalake::datafusion::error::Result<()> {
    let mut config = SessionConfig::new();
    config.options_mut().execution.keep_partition_by_columns = true;
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    config.options_mut().execution.parquet.compression = Some("zstd(3)".into());
    let ctx = SessionContext::new_with_config(config);
    let df = ctx
        .read_parquet(
            format!("{}/", from.display()),
            ParquetReadOptions::default(),
        )
        .await?
        .with_column("run_id", lit(run_id))?;
    let mut opts = DataFrameWriteOptions::new();
    if by_score_date {
        opts = opts.with_partition_by(vec!["score_date".into()]);
    }
    df.write_parquet(&format!("{}/", to.display()), opts, None)
        .await?;
    Ok(())
}

/// Whether `v` can name a partition directory as it is, with no escaping.
fn is_plain_value(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with('.')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A new table's columns: the files' own (with `score_date`, kept in the files) and the
/// `dataset_id` partition column.
fn table_columns(file: &ArrowSchema) -> Result<Vec<StructField>, String> {
    let mut columns: Vec<StructField> = file
        .fields()
        .iter()
        .map(|f| f.as_ref().try_into_kernel())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a column has no Delta type: {e}"))?;
    if !columns.iter().any(|c| c.name() == "dataset_id") {
        columns.push(StructField::nullable("dataset_id", KernelType::STRING));
    }
    Ok(columns)
}

/// The files' columns against the table's: every column the table has that the files lack
/// must be nullable, and every column they share has one type. A column the table lacks is
/// refused: the table's schema does not change under a nightly job.
fn check_schema(table: &StructType, file: &ArrowSchema) -> Result<(), String> {
    let file_columns = table_columns(file)?;
    for c in &file_columns {
        match table.field(c.name()) {
            None => {
                return Err(format!(
                    "the files have a column {} that the table does not; land into a new \
                     warehouse, or add the column to the table first",
                    c.name()
                ));
            }
            Some(t) if t.data_type() != c.data_type() => {
                return Err(format!(
                    "column {} is {} in the table and {} in the files",
                    c.name(),
                    t.data_type(),
                    c.data_type()
                ));
            }
            Some(_) => {}
        }
    }
    for t in table.fields() {
        if !t.is_nullable() && !file_columns.iter().any(|c| c.name() == t.name()) {
            return Err(format!(
                "the files lack the table's non-null column {}",
                t.name()
            ));
        }
    }
    Ok(())
}

/// Which version of one table to open.
#[derive(Debug, Clone, Copy)]
enum At {
    Newest,
    Version(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

/// Which snapshot of each table a reader sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The versions the newest complete runs published (`_published/`), or the newest
    /// version of a table no run has published.
    Published,
    /// This version of every table.
    Version(u64),
    /// Every table as it was at this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// What a run published: the version of each table its commits made, written once all of
/// them are committed. Readers take these versions, so a crash between two tables' commits is
/// invisible to them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub run_id: String,
    pub versions: std::collections::BTreeMap<String, u64>,
}

/// The result of a query.
#[derive(Debug)]
pub struct QueryOutput {
    pub schema: deltalake::arrow::datatypes::SchemaRef,
    pub batches: Vec<deltalake::arrow::array::RecordBatch>,
}

/// One version of a table, for `scoreland history`.
#[derive(Debug, Clone, Serialize)]
pub struct TableVersion {
    pub version: Option<u64>,
    pub timestamp: Option<i64>,
    pub operation: Option<String>,
    /// The commit info a run added: run id, batches, rows.
    pub run: serde_json::Map<String, serde_json::Value>,
}

impl Warehouse {
    /// Every `_published/<pipeline>.json`, with its object path.
    async fn published(&self) -> Result<Vec<(object_store::path::Path, Published)>, SinkError> {
        let mut out = Vec::new();
        for meta in self.list(&self.path("_published")).await? {
            if let Some(p) = self.get_json_at(&meta.location).await? {
                out.push((meta.location, p));
            }
        }
        Ok(out)
    }

    /// The version of each table that readers see: per table, the newest version any
    /// pipeline published (`_published/<pipeline>.json`).
    pub async fn published_versions(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, SinkError> {
        let mut out = std::collections::BTreeMap::new();
        for (_, published) in self.published().await? {
            for (table, v) in published.versions {
                let e = out.entry(table).or_insert(v);
                *e = (*e).max(v);
            }
        }
        Ok(out)
    }

    /// A table at the snapshot `as_of` asks for; `None` when it does not exist (yet).
    pub async fn table_as_of(
        &self,
        name: &str,
        as_of: AsOf,
    ) -> Result<Option<DeltaTable>, SinkError> {
        let at = match as_of {
            AsOf::Published => self
                .published_versions()
                .await?
                .get(name)
                .copied()
                .map_or(At::Newest, At::Version),
            AsOf::Version(v) => At::Version(v),
            AsOf::Time(t) => At::Time(t),
        };
        self.open_table(name, at).await
    }

    /// Runs `sql` over `tables` at the snapshot `as_of` asks for. A table that does not exist
    /// (yet) is not registered.
    pub async fn query(
        &self,
        tables: &[&str],
        as_of: AsOf,
        sql: &str,
    ) -> Result<QueryOutput, SinkError> {
        let ctx: SessionContext = DeltaSessionContext::new().into_inner();
        let mut registered = 0;
        for &name in tables {
            let Some(table) = self.table_as_of(name, as_of).await? else {
                continue;
            };
            table
                .update_datafusion_session(&ctx.state())
                .map_err(delta_err(name, "read"))?;
            let provider = table
                .table_provider()
                .await
                .map_err(|e| delta_err(name, "read")(DeltaTableError::from(e)))?;
            ctx.register_table(name, provider)
                .map_err(|e| delta_err(name, "read")(DeltaTableError::from(e)))?;
            registered += 1;
        }
        if registered == 0 {
            return Err(SinkError::NoTables {
                url: self.url().to_string(),
            });
        }
        let query_err = |e: deltalake::datafusion::error::DataFusionError| SinkError::Query {
            message: e.to_string(),
        };
        let df = ctx.sql(sql).await.map_err(query_err)?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(query_err)?;
        Ok(QueryOutput { schema, batches })
    }

    /// Deletes, in each of `tables`, the files no version within `retention` needs (Delta's
    /// vacuum, full mode): files replaced longer ago than that, and files no version names
    /// (uploads of runs that failed before their commit, files `convert` left) older than
    /// that. The version readers are given (`_published`, read once) keeps its files whatever
    /// the retention. Returns the files deleted per table. Call it under the publish lock
    /// ([`crate::PUBLISH_LOCK`]): a publish's uploads are files no version names until its
    /// commit.
    pub async fn vacuum_tables(
        &self,
        tables: &[&str],
        retention: std::time::Duration,
    ) -> Result<Vec<(String, Vec<String>)>, SinkError> {
        let published = self.published_versions().await?;
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let mut out = Vec::new();
        for &table in tables {
            let Some(t) = self.delta_table(table, None).await? else {
                out.push((table.to_string(), Vec::new()));
                continue;
            };
            let keep: Vec<u64> = published.get(table).copied().into_iter().collect();
            let (_, metrics) = t
                .vacuum()
                .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
                .with_keep_versions(&keep)
                .with_retention_period(retention)
                .with_enforce_retention_duration(false)
                .await
                .map_err(delta_err(table, "vacuum"))?;
            out.push((table.to_string(), metrics.files_deleted));
        }
        Ok(out)
    }

    /// The versions of a table, newest first.
    pub async fn history(
        &self,
        table: &str,
        limit: Option<usize>,
    ) -> Result<Vec<TableVersion>, SinkError> {
        use futures::StreamExt;
        let Some(t) = self.delta_table(table, None).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut stream = t.history(limit);
        while let Some(info) = stream.next().await {
            let info = info.map_err(delta_err(table, "history"))?;
            let run = info
                .info
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "run_id" | "batches" | "rows" | "pipeline"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            out.push(TableVersion {
                version: None,
                timestamp: info.timestamp,
                operation: info.operation.clone(),
                run,
            });
        }
        // History comes newest first; number the versions from the newest down.
        let newest = t.version().unwrap_or(0);
        for (i, v) in out.iter_mut().enumerate() {
            v.version = newest.checked_sub(i as u64);
        }
        Ok(out)
    }
}

impl Warehouse {
    /// The datasets that landed runs recorded (`_runs/<pipeline>/<run>.json`), sorted.
    pub async fn landed_datasets(&self) -> Result<Vec<String>, SinkError> {
        let mut found = BTreeSet::new();
        for meta in self.list(&self.path("_runs")).await? {
            let record: Option<serde_json::Value> = self.get_json_at(&meta.location).await?;
            if let Some(r) = record
                && r.get("status").and_then(|s| s.as_str()) == Some("landed")
                && let Some(d) = r.get("dataset").and_then(|d| d.as_str())
            {
                found.insert(d.to_string());
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Whether a table is still in scoreland's old layout (`<table>/_commits/`).
    pub async fn is_legacy(&self, table: &str) -> Result<bool, SinkError> {
        self.has_objects(&format!("{table}/_commits")).await
    }

    /// Turns a table of the old layout into a Delta table holding the same rows (its live
    /// files, as the newest commit record lists them), then removes the old commit records.
    /// The old data files stay until `vacuum` (Delta does not reference them). Returns the
    /// rows' score dates, or `None` when the table had nothing committed.
    pub async fn convert_legacy(
        &self,
        table: &str,
        dataset_id: &str,
        by_score_date: bool,
        scratch: &LocalPath,
    ) -> Result<Option<TableCommit>, SinkError> {
        use object_store::ObjectStoreExt;
        let Some(latest) = self.latest_commit(table).await? else {
            return Ok(None);
        };
        let commit = if latest.live.is_empty() {
            None
        } else {
            Some(
                self.convert_files(table, dataset_id, by_score_date, scratch, &latest)
                    .await?,
            )
        };
        // The rows are in Delta now: the old records go, so the table is no longer "legacy".
        for meta in self.list(&self.path(&format!("{table}/_commits"))).await? {
            self.store
                .delete(&meta.location)
                .await
                .map_err(|source| SinkError::Store {
                    op: "delete",
                    path: meta.location.to_string(),
                    source,
                })?;
        }
        let latest_json = self.path(&format!("{table}/_latest.json"));
        match self.store.delete(&latest_json).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(commit),
            Err(source) => Err(SinkError::Store {
                op: "delete",
                path: latest_json.to_string(),
                source,
            }),
        }
    }

    /// Copies an old commit's live files to `scratch` and commits them as a Delta table.
    async fn convert_files(
        &self,
        table: &str,
        dataset_id: &str,
        by_score_date: bool,
        scratch: &LocalPath,
        latest: &crate::legacy::Commit,
    ) -> Result<TableCommit, SinkError> {
        use object_store::ObjectStoreExt;
        let local = scratch.join(table);
        for f in &latest.live {
            let path = self.path(&format!("{table}/{}", f.path));
            let bytes = self
                .store
                .get(&path)
                .await
                .map_err(|source| SinkError::Store {
                    op: "read",
                    path: path.to_string(),
                    source,
                })?
                .bytes()
                .await
                .map_err(|source| SinkError::Store {
                    op: "read",
                    path: path.to_string(),
                    source,
                })?;
            let to = local.join(&f.path);
            let io = |source| SinkError::Local {
                path: to.clone(),
                source,
            };
            std::fs::create_dir_all(to.parent().unwrap_or(&local)).map_err(io)?;
            std::fs::write(&to, &bytes).map_err(io)?;
        }
        // The old files have no run_id column: rewritten once with it, then landed as a run.
        let tagged = scratch.join(format!("{table}-tagged"));
        with_run_id(&local, &tagged, &latest.run_id, by_score_date)
            .await
            .map_err(|e| delta_err(table, "convert")(DeltaTableError::from(e)))?;
        let commit = self
            .write_table(&TableWrite {
                table,
                local_dir: &tagged,
                dataset_id,
                run_id: &latest.run_id,
                by_score_date,
                date_column: "score_date",
                replace_dataset: false,
                app_id: "scoreland-convert",
                app_version: latest.seq as i64 + 1,
                metadata: serde_json::Map::from_iter([
                    ("run_id".to_string(), serde_json::json!(latest.run_id)),
                    ("batches".to_string(), serde_json::json!(latest.batches)),
                    ("rows".to_string(), serde_json::json!(latest.rows())),
                    (
                        "converted_from_commit".to_string(),
                        serde_json::json!(latest.seq),
                    ),
                ]),
            })
            .await?;
        Ok(commit)
    }
}

/// What `optimize` did to a table.
#[derive(Debug, Clone, Serialize)]
pub struct OptimizeReport {
    pub table: String,
    pub files_added: u64,
    pub files_removed: u64,
    /// The version optimize committed (the rows are the same as before it).
    pub version: u64,
}

impl Warehouse {
    /// Compacts a table's small files within each partition and, with `zorder`, orders each
    /// partition's rows by those columns, so that a lookup by them reads few row groups. The
    /// rows do not change: `_published/` versions that were the newest move to the new one.
    ///
    /// The ordering sorts within `memory_limit` and spills to the temporary directory beyond it
    /// (delta-rs on its own holds a whole partition in memory: 16 GB for 32.6 M rows).
    pub async fn optimize_table(
        &self,
        table: &str,
        zorder: &[&str],
        memory_limit: usize,
    ) -> Result<Option<OptimizeReport>, SinkError> {
        use deltalake::operations::optimize::OptimizeType;
        let Some(t) = self.delta_table(table, None).await? else {
            return Ok(None);
        };
        let before = t.version().unwrap_or(0);
        let kind = if zorder.is_empty() {
            OptimizeType::Compact
        } else {
            OptimizeType::ZOrder(zorder.iter().map(|c| c.to_string()).collect())
        };
        // zstd as the transform writes, and row groups small enough that a sorted file's
        // statistics narrow a lookup by the sort column to a few of them.
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
            ))
            .set_max_row_group_row_count(Some(OPTIMIZED_ROW_GROUP_ROWS))
            .build();
        let runtime = deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(
                deltalake::datafusion::execution::memory_pool::FairSpillPool::new(memory_limit),
            ))
            .build_arc()
            .map_err(|e| delta_err(table, "optimize")(DeltaTableError::from(e)))?;
        let ctx = DeltaSessionContext::with_runtime_env(runtime).into_inner();
        // Each sorting partition keeps this much aside to merge its spilled runs (the
        // transform's rule, `transform/src/run.rs`); without it one partition's sort can take
        // the whole pool and leave the other nothing to merge with.
        let partitions = ctx.state().config().target_partitions().max(1);
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .execution
            .sort_spill_reservation_bytes = memory_limit / (4 * partitions);
        let session = ctx.state();
        let (optimized, metrics) = t
            .optimize()
            .with_type(kind)
            .with_writer_properties(props)
            .with_session_state(Arc::new(session))
            .await
            .map_err(delta_err(table, "optimize"))?;
        let after = optimized.version().unwrap_or(before);
        if after != before {
            for (path, mut p) in self.published().await? {
                if p.versions.get(table) == Some(&before) {
                    p.versions.insert(table.to_string(), after);
                    self.put_json_at(&path, &p).await?;
                }
            }
        }
        Ok(Some(OptimizeReport {
            table: table.to_string(),
            files_added: metrics.num_files_added,
            files_removed: metrics.num_files_removed,
            version: after,
        }))
    }
}

/// `dataset_id = '…' AND score_date IN (DATE '…', …)`: the partitions a run replaces.
fn replace_predicate(dataset: &str, date_column: &str, dates: Option<&[String]>) -> String {
    let quoted = dataset.replace('\'', "''");
    let Some(dates) = dates else {
        return format!("dataset_id = '{quoted}'");
    };
    let list = dates
        .iter()
        .map(|d| format!("DATE '{d}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("dataset_id = '{quoted}' AND {date_column} IN ({list})")
}

/// The `score_date=…` partition directories of a transform's output.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replace_predicate_quotes_its_values() {
        assert_eq!(
            replace_predicate(
                "d'1",
                "score_date",
                Some(&["2026-11-16".into(), "2026-11-17".into()])
            ),
            "dataset_id = 'd''1' AND score_date IN (DATE '2026-11-16', DATE '2026-11-17')"
        );
        assert_eq!(
            replace_predicate("d1", "score_date", None),
            "dataset_id = 'd1'"
        );
    }
}
