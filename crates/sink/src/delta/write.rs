//! Landing a table's files in one Delta commit: partition replace or append, the run's
//! transaction identifier, the schema check, a rerun after a crash not committed twice.

use std::collections::BTreeMap;

use super::*;

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
    /// Replace every row of `dataset_id`: with `by_score_date`, every score date, not only
    /// those of this run (the run holds the dataset's whole content: a full export, or a
    /// merge); without, the table's files of the dataset (a record dataset, written whole).
    pub replace_dataset: bool,
    /// With `by_score_date`: the files join their date partitions instead of replacing them
    /// (events, each landed once).
    pub append: bool,
    /// Columns the files have and the table lacks are added to the table, nullable, in the
    /// same commit (a field the dataset's schema gained); otherwise they are refused.
    pub evolve_schema: bool,
    /// Delta's transaction identifier: the pipeline, and the run's sequence number. A commit
    /// whose (app id, version) the table already holds is not made twice.
    pub app_id: &'a str,
    pub app_version: i64,
    /// Commit info: run id, batches, rows.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Table properties (Delta `configuration`) this run sets; an empty value removes one.
    /// Changed in the same commit as the rows.
    pub properties: BTreeMap<String, String>,
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

impl Warehouse {
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
        let replaces = if w.by_score_date {
            !w.append
        } else {
            w.replace_dataset
        };
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
                    let mut added: Vec<StructField> = Vec::new();
                    for f in &files {
                        for c in check_schema(&snapshot.schema(), &f.schema, w.evolve_schema)
                            .map_err(&schema_err)?
                        {
                            if !added.iter().any(|a| a.name() == c.name()) {
                                added.push(c);
                            }
                        }
                    }
                    let mut actions = adds.clone();
                    let config = snapshot.metadata().configuration();
                    let properties: Vec<(&String, &String)> = w
                        .properties
                        .iter()
                        .filter(|(k, v)| config.get(*k).map_or(!v.is_empty(), |c| c != *v))
                        .collect();
                    if !added.is_empty() || !properties.is_empty() {
                        tracing::info!(
                            table,
                            columns = ?added.iter().map(|c| c.name()).collect::<Vec<_>>(),
                            properties = ?properties,
                            "the table's columns or properties change with this night"
                        );
                        // A column the table has is replaced in place (its labels changed);
                        // a new one is added at the end.
                        let mut fields: Vec<StructField> = snapshot
                            .schema()
                            .fields()
                            .map(|t| {
                                added
                                    .iter()
                                    .find(|a| a.name() == t.name())
                                    .unwrap_or(t)
                                    .clone()
                            })
                            .collect();
                        fields.extend(
                            added
                                .iter()
                                .filter(|a| snapshot.schema().field(a.name()).is_none())
                                .cloned(),
                        );
                        let merged =
                            StructType::try_new(fields).map_err(|e| schema_err(e.to_string()))?;
                        let mut metadata = snapshot
                            .metadata()
                            .clone()
                            .with_schema(&merged)
                            .map_err(|e| schema_err(e.to_string()))?;
                        for (k, v) in properties {
                            metadata = if v.is_empty() {
                                metadata.remove_config_key(k)
                            } else {
                                metadata.add_config_key(k.to_string(), v.to_string())
                            }
                            .map_err(|e| schema_err(e.to_string()))?;
                        }
                        actions.push(Action::Metadata(metadata));
                    }
                    if replaces {
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
                        mode: if replaces {
                            SaveMode::Overwrite
                        } else {
                            SaveMode::Append
                        },
                        partition_by: Some(partitions.clone()),
                        predicate: replaces.then(|| predicate.clone()),
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
                        // scoreland's own properties are not Delta's.
                        .with_raise_if_key_not_exists(false)
                        .with_configuration(
                            w.properties
                                .iter()
                                .filter(|(_, v)| !v.is_empty())
                                .map(|(k, v)| (k.clone(), Some(v.clone()))),
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
                replaced_dates: if replaces { dates } else { Vec::new() },
            });
        }
        unreachable!("the second attempt returns")
    }

    /// The commit of this run's transaction if `current` holds it already (a rerun after a
    /// crash between commits): not made twice.
    pub(super) async fn holds_transaction(
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
pub(super) async fn with_run_id(
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
pub(super) fn is_plain_value(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with('.')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A new table's columns: the files' own (with `score_date`, kept in the files) and the
/// `dataset_id` partition column.
pub(super) fn table_columns(file: &ArrowSchema) -> Result<Vec<StructField>, String> {
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
/// refused unless `evolve` (then it is returned, nullable, for the table to gain): otherwise
/// the table's schema does not change under a nightly job.
/// The columns `file` adds to `table` (with `evolve`), or whose labels it changes; a type
/// change, or a new column without `evolve`, is refused with what differs.
pub(super) fn check_schema(
    table: &StructType,
    file: &ArrowSchema,
    evolve: bool,
) -> Result<Vec<StructField>, String> {
    let file_columns = table_columns(file)?;
    let mut new = Vec::new();
    for c in &file_columns {
        match table.field(c.name()) {
            None if evolve => {
                new.push(
                    StructField::nullable(c.name(), c.data_type().clone())
                        .with_metadata(c.metadata().clone()),
                );
            }
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
            // The column's data usage labels changed: the table's column takes the files'.
            Some(t)
                if evolve
                    && t.metadata().get(scoreland_runtime::labels::COLUMN_LABELS)
                        != c.metadata().get(scoreland_runtime::labels::COLUMN_LABELS) =>
            {
                let mut metadata = t.metadata().clone();
                match c.metadata().get(scoreland_runtime::labels::COLUMN_LABELS) {
                    Some(l) => metadata.insert(
                        scoreland_runtime::labels::COLUMN_LABELS.to_string(),
                        l.clone(),
                    ),
                    None => metadata.remove(scoreland_runtime::labels::COLUMN_LABELS),
                };
                new.push(t.clone().with_metadata(metadata));
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
    Ok(new)
}

/// `dataset_id = '…' AND score_date IN (DATE '…', …)`: the partitions a run replaces.
pub(super) fn replace_predicate(
    dataset: &str,
    date_column: &str,
    dates: Option<&[String]>,
) -> String {
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
