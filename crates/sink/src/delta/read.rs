//! Reading the tables: the published versions, a table as of a version or a time, queries,
//! history, and a dataset's landed files (for a merge or a previous night).

use scoreland_runtime::engine::{ClusterEngine, ClusterPlanner};
use scoreland_runtime::reads::first_write;

use super::*;
use crate::PublishedTable;

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
    /// The commit info a run added (run id, batches, rows), or `forget`'s (`scoreland`:
    /// "forget", by, reason).
    pub run: serde_json::Map<String, serde_json::Value>,
}

/// One version of a table as plain Parquet files with their partition values: what an engine
/// that does not read Delta scans (the cluster's executors: delta-rs scans do not serialise).
#[derive(Debug, Clone)]
pub struct TableFiles {
    pub version: u64,
    /// The store the files are on (`file:///`, `s3://bucket/`…).
    pub store_url: Url,
    /// The table's columns as delta-rs's provider gives them: the files' columns, then the
    /// partition columns.
    pub schema: deltalake::arrow::datatypes::SchemaRef,
    pub partition_columns: Vec<String>,
    pub files: Vec<TableFile>,
}

/// A data file of a table version.
#[derive(Debug, Clone)]
pub struct TableFile {
    /// From the root of `TableFiles::store_url`.
    pub location: Path,
    pub size: u64,
    /// A value per partition column (`None`: null), as Delta keeps them (strings).
    pub partition_values: std::collections::HashMap<String, Option<String>>,
}

impl Warehouse {
    /// Every `_published/<pipeline>.json`, with its object path.
    pub(super) async fn published(
        &self,
    ) -> Result<Vec<(object_store::path::Path, Published)>, SinkError> {
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

    /// The data files of `name` at the snapshot `as_of` asks for; `None` when the table does
    /// not exist (yet). A file the log names by a URL of its own (a shallow clone; scoreland
    /// never writes one) is refused.
    pub async fn table_files(
        &self,
        name: &str,
        as_of: AsOf,
    ) -> Result<Option<TableFiles>, SinkError> {
        match self.table_as_of(name, as_of).await? {
            Some(table) => self.files_of(name, &table).map(Some),
            None => Ok(None),
        }
    }

    /// The data files of `table` (the warehouse's table `name`) at the version it was loaded
    /// at.
    pub fn files_of(&self, name: &str, table: &DeltaTable) -> Result<TableFiles, SinkError> {
        use deltalake::delta_datafusion::DataFusionMixins;
        let err = delta_err(name, "read");
        let snapshot = table.snapshot().map_err(&err)?;
        let table_url = self.table_url(name);
        let root = Path::from_url_path(table_url.path()).map_err(|e| SinkError::Url {
            url: table_url.to_string(),
            message: e.to_string(),
        })?;
        let mut files = Vec::with_capacity(snapshot.log_data().num_files());
        for f in snapshot.log_data().iter() {
            let rel = f.path();
            if rel.contains("://") {
                return Err(err(DeltaTableError::Generic(format!(
                    "the log names the data file {rel} by a URL of its own; only files under \
                     the table's directory can be read this way"
                ))));
            }
            files.push(TableFile {
                location: rel.split('/').fold(root.clone(), |p, part| p.join(part)),
                size: u64::try_from(f.size()).unwrap_or(0),
                partition_values: f.partition_values_map(),
            });
        }
        Ok(TableFiles {
            version: snapshot.version(),
            store_url: self.store_url(),
            schema: snapshot.snapshot().input_schema(),
            partition_columns: snapshot.metadata().partition_columns().to_vec(),
            files,
        })
    }

    /// Runs `sql` over `tables` at the snapshot `as_of` asks for. A table that does not exist
    /// (yet) is not registered. Only queries run ([`first_write`]): delta-rs's tables take
    /// `INSERT`, which would commit around the pipeline's publish, and `COPY … TO` writes files.
    pub async fn query(
        &self,
        tables: &[&str],
        as_of: AsOf,
        sql: &str,
    ) -> Result<QueryOutput, SinkError> {
        let ctx: SessionContext = DeltaSessionContext::new().into_inner();
        // Discovery as `serve` answers it: `SHOW TABLES`, `information_schema`.
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .catalog
            .information_schema = true;
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
        self.answer(&ctx, registered, sql).await
    }

    /// `sql`'s rows in `ctx`, where `registered` tables were registered (none: the warehouse
    /// has no table to query yet), if it only reads ([`first_write`]).
    async fn answer(
        &self,
        ctx: &SessionContext,
        registered: usize,
        sql: &str,
    ) -> Result<QueryOutput, SinkError> {
        if registered == 0 {
            return Err(SinkError::NoTables {
                url: self.url().to_string(),
            });
        }
        let query_err = |e: deltalake::datafusion::error::DataFusionError| SinkError::Query {
            message: e.to_string(),
        };
        let plan = ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(query_err)?;
        if let Some(what) = first_write(&plan).map_err(query_err)? {
            return Err(SinkError::ReadOnly { what });
        }
        let df = ctx.execute_logical_plan(plan).await.map_err(query_err)?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(query_err)?;
        Ok(QueryOutput { schema, batches })
    }

    /// Runs `sql` over `tables` at the snapshot `as_of` asks for on `engine`'s executors: each
    /// table is that version's files as a plain Parquet scan ([`PublishedTable`]), the plan is
    /// made here ([`ClusterPlanner`]). Only queries run: DDL, DML and `COPY` are refused
    /// before anything is submitted. The executors open the warehouse themselves (its path,
    /// or its bucket with their own credentials).
    pub async fn query_on(
        &self,
        engine: Arc<dyn ClusterEngine>,
        tables: &[&str],
        as_of: AsOf,
        sql: &str,
    ) -> Result<QueryOutput, SinkError> {
        use deltalake::datafusion::execution::SessionStateBuilder;
        let query_err = |e: deltalake::datafusion::error::DataFusionError| SinkError::Query {
            message: e.to_string(),
        };
        let state = SessionStateBuilder::new()
            .with_config(engine.session_config(SessionConfig::new().with_information_schema(true)))
            .with_default_features()
            .with_query_planner(Arc::new(ClusterPlanner::new(engine)))
            .build();
        let ctx = SessionContext::new_with_state(state);
        self.register_store(&ctx);
        let mut registered = 0;
        for &name in tables {
            let Some(files) = self.table_files(name, as_of).await? else {
                continue;
            };
            ctx.register_table(name, Arc::new(PublishedTable::new(files)))
                .map_err(query_err)?;
            registered += 1;
        }
        self.answer(&ctx, registered, sql).await
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
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "run_id" | "batches" | "rows" | "pipeline" | "scoreland" | "by" | "reason"
                    )
                })
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

/// The data usage labels a table carries at its newest version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableLabels {
    /// The dataset's own labels (every field of it carries them).
    pub dataset: Vec<String>,
    /// Labels whose columns `serve` masks (the pipeline's `[serve] deny_labels`).
    pub denied: Vec<String>,
    /// Columns with labels of their own: (column, labels).
    pub columns: Vec<(String, Vec<String>)>,
}

impl Warehouse {
    /// The column names of `table` at its newest version; `None` when it does not exist.
    pub async fn table_columns(&self, table: &str) -> Result<Option<Vec<String>>, SinkError> {
        let Some(t) = self.delta_table(table, None).await? else {
            return Ok(None);
        };
        let snapshot = t.snapshot().map_err(delta_err(table, "read"))?;
        Ok(Some(
            snapshot
                .schema()
                .fields()
                .map(|f| f.name().clone())
                .collect(),
        ))
    }

    /// The labels of `table` (none when it does not exist).
    pub async fn table_labels(&self, table: &str) -> Result<TableLabels, SinkError> {
        use scoreland_runtime::labels::{COLUMN_LABELS, DENY_LABELS, TABLE_LABELS, parse_labels};
        let Some(t) = self.delta_table(table, None).await? else {
            return Ok(TableLabels::default());
        };
        let snapshot = t.snapshot().map_err(delta_err(table, "read"))?;
        let config = snapshot.metadata().configuration();
        let listed = |key: &str| {
            parse_labels(config.get(key).map_or("", String::as_str))
                .into_iter()
                .collect()
        };
        let columns = snapshot
            .schema()
            .fields()
            .filter_map(|f| {
                let own = f.metadata().get(COLUMN_LABELS)?.to_string();
                let own = own.trim_matches('"');
                Some((f.name().clone(), parse_labels(own).into_iter().collect()))
            })
            .collect();
        Ok(TableLabels {
            dataset: listed(TABLE_LABELS),
            denied: listed(DENY_LABELS),
            columns,
        })
    }

    /// Copies the newest version's data files of `dataset_id` in `table` into `dir` (for a
    /// merge: the rows already landed), or only those of some partitions (`only`: a column and
    /// its values). An absent table has none.
    pub async fn fetch_dataset_files(
        &self,
        table: &str,
        dataset_id: &str,
        only: Option<(&str, &[&str])>,
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
                    && only.is_none_or(|(c, values)| {
                        pv.get(c)
                            .and_then(|v| v.as_deref())
                            .is_some_and(|v| values.contains(&v))
                    })
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
}
