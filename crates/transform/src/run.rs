//! Running the transform: union ▸ flatten ▸ dedupe ▸ summaries ▸ drift.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::file_options::parquet_writer::parse_compression_string;
use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, col, lit};
use scoreland_runtime::engine::ClusterEngine;
use serde::Serialize;

use crate::config::{OutputFormat, TransformConfig};
use crate::dedupe;
use crate::distributed;
use crate::drift::{ModelHistogram, drift_table};
use crate::error::{Context, TransformError};
use crate::flatten;
use crate::json::to_json;
use crate::scores::{self, Input, InputKind, Plan, WriteOptions, Written};
use crate::shared::SharedParts;

/// Parquet row group size (rows) when a memory limit is set and none is configured.
const LIMITED_ROW_GROUP: usize = 65_536;

/// A memory limit from which the writers keep their parallel encoding, full batches and row
/// groups: those buffers fit beside the pool. Below it (a limit set for a small machine, such
/// as the demo's 1 GiB), they are traded for memory.
const ROOMY_LIMIT: usize = 4 << 30;

/// One staged batch: its id, creation time (epoch ms) and verified parquet parts.
#[derive(Debug, Clone)]
pub struct StagedBatch {
    pub batch_id: String,
    pub created_ms: i64,
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TransformStats {
    /// Flat rows (one per scored identity and model) before deduplication.
    pub rows_in: u64,
    /// Rows in the scores table.
    pub rows_out: u64,
    /// Older scores of an (identity, model) that a newer one replaced.
    pub duplicates_dropped: u64,
    pub null_identity_dropped: u64,
    pub null_identity_kept: u64,
    pub models: Vec<String>,
    /// Passes of the dedupe over the key columns: 1, or more when its table of identities
    /// would not fit in half the memory limit and was built a range at a time.
    pub dedupe_passes: usize,
}

/// The three tables, written under `work_dir` in the output format.
#[derive(Debug)]
pub struct TransformOutput {
    /// Hive-partitioned by `score_date`.
    pub scores_dir: PathBuf,
    pub summary_dir: PathBuf,
    pub drift_dir: PathBuf,
    /// Per model, over this run's rows: the baseline for the next run's drift.
    pub histograms: Vec<ModelHistogram>,
    pub summary: Vec<RecordBatch>,
    pub drift: Vec<RecordBatch>,
    pub stats: TransformStats,
}

/// A configured DataFusion session; [`TransformConfig::build`] makes one.
pub struct Transformer {
    pub(crate) ctx: SessionContext,
    pub(crate) config: TransformConfig,
    /// Whether the memory limit is tight (under [`ROOMY_LIMIT`]), which keeps row groups small.
    limited: bool,
    /// The run whose rows these are: a `run_id` column of every table written, when set.
    run_id: Option<String>,
    /// Scores already landed, merged with the batches' rows (see [`Transformer::with_landed`]).
    landed: Vec<PathBuf>,
    /// The distributed engine the dedupe runs on (see [`Transformer::with_cluster`]).
    cluster: Option<Arc<dyn ClusterEngine>>,
}

impl TransformConfig {
    /// A transformer that spills to `spill_dir` beyond the memory limit.
    pub fn build(&self, spill_dir: &Path) -> Result<Transformer, TransformError> {
        self.validate()?;
        let partitions = self
            .target_partitions
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let mut config = SessionConfig::new()
            .with_target_partitions(partitions)
            .with_information_schema(false);
        // Files keep their partition column so each one is self-describing (and so
        // `scoreland sql` can read exactly the committed files).
        config.options_mut().execution.keep_partition_by_columns = true;
        // Plain strings rather than string views: what every writer and reader handles.
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit.bytes() {
            std::fs::create_dir_all(spill_dir).map_err(|source| TransformError::Io {
                path: spill_dir.to_path_buf(),
                source,
            })?;
            config.options_mut().execution.sort_spill_reservation_bytes =
                scoreland_runtime::sort_spill_reservation(limit, partitions);
            if limit < ROOMY_LIMIT {
                // Parallel column encoding buffers whole row groups per column, outside what
                // can spill; under a tight limit, encode serially.
                config
                    .options_mut()
                    .execution
                    .parquet
                    .allow_single_file_parallelism = false;
                // Merging spilled runs holds one batch per run: smaller batches, more runs fit.
                config = config.with_batch_size(2048);
            }
            runtime = runtime
                .with_memory_pool(scoreland_runtime::pool(
                    limit,
                    scoreland_runtime::Sharing::Headroom,
                ))
                .with_temp_file_path(spill_dir);
        }
        let runtime = runtime.build_arc().context("building the runtime")?;
        Ok(Transformer {
            ctx: SessionContext::new_with_config_rt(config, runtime),
            config: self.clone(),
            limited: self
                .memory_limit
                .bytes()
                .is_some_and(|limit| limit < ROOMY_LIMIT),
            run_id: None,
            landed: Vec::new(),
            cluster: None,
        })
    }
}

impl Transformer {
    /// Every table this transformer writes gets a `run_id` column holding `run_id` (the
    /// warehouse commits the files as they are, and each row names the run that landed it).
    pub fn with_run_id(mut self, run_id: &str) -> Self {
        self.run_id = Some(run_id.to_string());
        self
    }

    /// Merges rows already landed (files of the `scores` table) with the batches': the
    /// newest row of each (identity, model) across both is kept, and the summaries are those
    /// of the merged rows. This is how an incremental export lands.
    pub fn with_landed(mut self, files: Vec<PathBuf>) -> Self {
        self.landed = files;
        self
    }

    /// Runs the scores job's dedupe on `cluster`'s executors (the engine `[transform] engine`
    /// names); the rows it keeps are written and summarised here.
    pub fn with_cluster(mut self, cluster: Arc<dyn ClusterEngine>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// `df` with the run's `run_id` column, if the transformer has a run.
    fn tagged(&self, df: DataFrame) -> Result<DataFrame, TransformError> {
        match &self.run_id {
            Some(id) => df
                .with_column("run_id", lit(id.as_str()))
                .context("adding the run_id column"),
            None => Ok(df),
        }
    }

    /// Transforms `batches` and writes the tables under `work_dir/{scores,summary,drift}`.
    /// `previous` is the last landed run's histograms, for drift.
    pub async fn run(
        &self,
        batches: &[StagedBatch],
        format: &OutputFormat,
        previous: &[ModelHistogram],
        work_dir: &Path,
    ) -> Result<TransformOutput, TransformError> {
        if batches.iter().all(|b| b.files.is_empty()) {
            return Err(TransformError::NoInput);
        }
        // Each open parquet writer buffers a row group in memory, outside what can spill:
        // under a memory limit, keep row groups small unless configured.
        let limited;
        let format = match format {
            OutputFormat::Parquet {
                compression,
                compression_level,
                row_group_size: None,
            } if self.limited => {
                limited = OutputFormat::Parquet {
                    compression: compression.clone(),
                    compression_level: *compression_level,
                    row_group_size: Some(LIMITED_ROW_GROUP),
                };
                &limited
            }
            f => f,
        };
        let scores_dir = work_dir.join("scores");
        let summary_dir = work_dir.join("summary");
        let drift_dir = work_dir.join("drift");
        for d in [&scores_dir, &summary_dir, &drift_dir] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(|source| TransformError::Io {
                    path: d.clone(),
                    source,
                })?;
            }
        }
        // The scores are written as parquet with their nested columns; a text format, or
        // factors as JSON text, are written from that copy at the end.
        let rewrite =
            !matches!(format, OutputFormat::Parquet { .. }) || self.config.factors_as_json;
        let internal_parquet = OutputFormat::default();
        let parquet_format = match format {
            OutputFormat::Parquet { .. } => format,
            _ => &internal_parquet,
        };
        let parquet_dir = if rewrite {
            work_dir.join("scores-internal")
        } else {
            scores_dir.clone()
        };
        let workers = self.workers();
        let options = WriteOptions {
            dir: parquet_dir.clone(),
            props: writer_properties(parquet_format)?,
            run_id: self.run_id.clone(),
            workers,
        };
        let stage = Instant::now();
        let (written, has_factors) = match &self.cluster {
            Some(cluster) => {
                self.write_on(cluster.as_ref(), batches, options, parquet_format)
                    .await?
            }
            None => {
                if let Some(engine) = &self.config.engine {
                    return Err(TransformError::Config(format!(
                        "[transform] engine names the cluster {}, but this scoreland cannot \
                         reach one: build it with the `cluster` feature (cargo build --features \
                         scoreland/cluster)",
                        engine.cluster
                    )));
                }
                let plan = self.plan(batches, None).await?;
                let has_factors = has_factors(&plan);
                // The dedupe's table takes at most half of the memory limit.
                let budget = self.config.memory_limit.bytes().map(|limit| limit / 2);
                let written = tokio::task::spawn_blocking(move || {
                    let winners = dedupe::winners(&plan, workers, budget)?;
                    scores::write(&plan, &winners, &options)
                })
                .await
                .map_err(|e| {
                    TransformError::Config(format!("the transform's workers failed: {e}"))
                })??;
                (written, has_factors)
            }
        };
        let (rows_in, null_identity, rows_out) =
            (written.rows_in, written.null_identities, written.rows_out);
        tracing::info!(
            seconds = stage.elapsed().as_secs_f64(),
            rows_in,
            rows_out,
            "scores deduplicated and written"
        );
        let kept_nulls = if self.config.keep_null_identities {
            null_identity
        } else {
            0
        };
        let mut stats = TransformStats {
            rows_in,
            rows_out,
            duplicates_dropped: (rows_in - null_identity).saturating_sub(rows_out - kept_nulls),
            null_identity_dropped: null_identity - kept_nulls,
            null_identity_kept: kept_nulls,
            models: Vec::new(),
            dedupe_passes: written.dedupe_passes,
        };

        let stage = Instant::now();
        let summary =
            written
                .groups
                .finish(self.config.top_factors.unwrap_or(3), has_factors, workers);
        tracing::info!(
            seconds = stage.elapsed().as_secs_f64(),
            "summaries computed"
        );
        let histograms = crate::drift::histograms(&summary);
        let batch_ids: Vec<&str> = batches.iter().map(|b| b.batch_id.as_str()).collect();
        let drift = drift_table(&histograms, previous, &batch_ids.join(","));
        // Summaries are per score date: a re-landed date replaces its partition. Drift rows
        // are a log, one per model and run.
        self.write_batches(summary.clone(), &summary_dir, format, Some("score_date"))
            .await?;
        self.write_batches(vec![drift.clone()], &drift_dir, format, None)
            .await?;
        if rewrite {
            if has_files(&parquet_dir) {
                let df = self
                    .ctx
                    .read_parquet(dir_url(&parquet_dir), ParquetReadOptions::default())
                    .await
                    .context("reading the scores")?;
                write(nested_as_json(df)?, &scores_dir, format, Some("score_date")).await?;
            }
            let _ = std::fs::remove_dir_all(&parquet_dir);
        }
        stats.models = histograms.iter().map(|h| h.model.clone()).collect();
        Ok(TransformOutput {
            scores_dir,
            summary_dir,
            drift_dir,
            histograms,
            summary,
            drift: vec![drift],
            stats,
        })
    }

    /// Worker threads: one per core, or as configured.
    fn workers(&self) -> usize {
        self.config
            .target_partitions
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Writes the parquet table under `source` as one file `file` in `format`: a plain copy for
    /// consumers that cannot read Delta (an extract). Nested columns become JSON text in CSV
    /// and NDJSON.
    pub async fn write_extract(
        &self,
        source: &Path,
        format: &OutputFormat,
        file: &Path,
    ) -> Result<(), TransformError> {
        let mut df = self
            .ctx
            .read_parquet(dir_url(source), ParquetReadOptions::default())
            .await
            .context(format!("reading {}", source.display()))?;
        if !matches!(format, OutputFormat::Parquet { .. }) {
            df = nested_as_json(df)?;
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TransformError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let opts = DataFrameWriteOptions::new().with_single_file_output(true);
        write_to(df, &file.display().to_string(), format, opts).await
    }

    /// Rewrites the parquet table under `source` into `out_dir` in `format`, optionally
    /// Hive-partitioned: the write the transform ends with, without the dedupe before it (the
    /// sink benchmark measures it).
    pub async fn write_table(
        &self,
        source: &Path,
        format: &OutputFormat,
        out_dir: &Path,
        partition_by: Option<&str>,
    ) -> Result<(), TransformError> {
        let df = self
            .ctx
            .read_parquet(dir_url(source), ParquetReadOptions::default())
            .await
            .context(format!("reading {}", source.display()))?;
        write(self.tagged(df)?, out_dir, format, partition_by).await
    }

    /// The scores job on `cluster`: planned here, deduplicated, written and summarised there.
    /// With `engine.staging`, the staged parts are copied there first for the executors to
    /// read, the executors write there too, and the copies are removed however the job ends.
    async fn write_on(
        &self,
        cluster: &dyn ClusterEngine,
        batches: &[StagedBatch],
        options: WriteOptions,
        format: &OutputFormat,
    ) -> Result<(Written, bool), TransformError> {
        let staging = self
            .config
            .engine
            .as_ref()
            .and_then(|e| e.staging.as_deref());
        let shared = match staging {
            Some(url) => {
                let files: Vec<PathBuf> = batches
                    .iter()
                    .flat_map(|b| b.files.iter().cloned())
                    .chain(self.landed.iter().cloned())
                    .collect();
                let run = self.run_id.clone().unwrap_or_else(|| {
                    format!(
                        "{}-{}",
                        chrono::Utc::now().format("%Y%m%dT%H%M%S%6f"),
                        std::process::id()
                    )
                });
                let url = crate::shared::staging_url(url)?;
                Some(SharedParts::copy(&url, &run, &files, &self.ctx).await?)
            }
            None => None,
        };
        let written = async {
            let plan = self.plan(batches, shared.as_ref()).await?;
            let has_factors = has_factors(&plan);
            let base = self.ctx.copied_config();
            let output = match &shared {
                Some(shared) => distributed::Output::Staging(shared),
                None => distributed::Output::Shared,
            };
            let runtime = self.ctx.runtime_env();
            distributed::write(cluster, base, runtime, plan, options, format, output)
                .await
                .map(|w| (w, has_factors))
        }
        .await;
        if let Some(shared) = &shared {
            shared.remove().await;
        }
        written
    }

    /// What the transform reads, and the scores table's columns: those of the union of every
    /// batch's parts flattened into one row per scored (row, model), as DataFusion types them
    /// (with the landed scores, when merging). `shared`: where the cluster reads the staged
    /// parts, when they were copied for it.
    async fn plan(
        &self,
        batches: &[StagedBatch],
        shared: Option<&SharedParts>,
    ) -> Result<Plan, TransformError> {
        // Group each batch's files by schema: a group reads as one table on all cores, and
        // groups are flattened to the same columns, so drift between parts is merged by name.
        struct Group {
            batch: usize,
            schema: SchemaRef,
            files: Vec<PathBuf>,
        }
        let mut groups: Vec<Group> = Vec::new();
        // Footers are read on a blocking thread: file I/O and parsing stay off the threads
        // that drive the async work.
        let files: Vec<(usize, PathBuf)> = batches
            .iter()
            .enumerate()
            .flat_map(|(bi, b)| b.files.iter().map(move |f| (bi, f.clone())))
            .collect();
        let schemas = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|(bi, f)| file_schema(&f).map(|s| (bi, f, s)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| TransformError::Io {
            path: PathBuf::from("reading parquet footers"),
            source: std::io::Error::other(e),
        })??;
        let mut footers: HashMap<PathBuf, Arc<ParquetMetaData>> = HashMap::new();
        for (bi, file, (schema, footer)) in schemas {
            footers.insert(file.clone(), footer);
            match groups
                .iter_mut()
                .find(|g| g.batch == bi && g.schema.fields() == schema.fields())
            {
                Some(g) => g.files.push(file),
                None => groups.push(Group {
                    batch: bi,
                    schema,
                    files: vec![file],
                }),
            }
        }
        let mapping = match &self.config.mapping {
            Some(m) => m.clone(),
            None => {
                let found = groups
                    .iter()
                    .map(|g| flatten::discover(&g.schema, &g.files[0]))
                    .collect::<Result<Vec<_>, _>>()?;
                flatten::merge_mappings(found).ok_or(TransformError::NoInput)?
            }
        };
        // The identity and score must exist; other columns may be absent (null).
        for g in &groups {
            if flatten::path_type(&g.schema, &mapping.identity).is_none() {
                return Err(TransformError::MissingColumn {
                    file: g.files[0].clone(),
                    column: mapping.identity.clone(),
                });
            }
        }
        let mut seen: HashMap<String, (DataType, PathBuf)> = HashMap::new();
        for path in flatten::mapped_paths(&mapping) {
            for g in &groups {
                let Some(ty) = flatten::path_type(&g.schema, &path) else {
                    continue;
                };
                match seen.get(&path) {
                    Some((first, file)) if !flatten::compatible(first, &ty) => {
                        return Err(TransformError::IncompatibleColumn {
                            column: path.clone(),
                            file: g.files[0].clone(),
                            found: ty.to_string(),
                            other: file.clone(),
                            expected: first.to_string(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(path.clone(), (ty, g.files[0].clone()));
                    }
                }
            }
        }
        let factors_type = mapping
            .models
            .iter()
            .filter_map(|m| m.influential_factors.as_ref())
            .find_map(|p| seen.get(p).map(|(t, _)| t.clone()));
        let mut union: Option<DataFrame> = None;
        for g in &groups {
            let batch = &batches[g.batch];
            let paths: Vec<String> = g.files.iter().map(|f| location(shared, f)).collect();
            let source = self
                .ctx
                .read_parquet(paths, ParquetReadOptions::default())
                .await
                .context(format!("reading the parts of batch {}", batch.batch_id))?;
            for model in &mapping.models {
                let (exprs, filter) = flatten::model_select(
                    &g.schema,
                    &mapping,
                    model,
                    &factors_type,
                    &batch.batch_id,
                    batch.created_ms,
                );
                let mut df = source.clone();
                if let Some(f) = filter {
                    df = df.filter(f).context("filtering a model's rows")?;
                }
                let df = df
                    .select(exprs)
                    .context(format!("flattening model {}", model.name))?;
                union = Some(match union {
                    None => df,
                    Some(u) => u.union(df).context("combining parts")?,
                });
            }
        }
        let mut union = union.ok_or(TransformError::NoInput)?;
        let mut ranks: Vec<(i64, String)> = batches
            .iter()
            .map(|b| (b.created_ms * 1000, b.batch_id.clone()))
            .collect();
        let mut models: Vec<String> = mapping.models.iter().map(|m| m.name.clone()).collect();
        let mut landed_inputs = Vec::new();
        if !self.landed.is_empty() {
            let paths: Vec<String> = self.landed.iter().map(|f| location(shared, f)).collect();
            let landed = self
                .ctx
                .read_parquet(paths, ParquetReadOptions::default())
                .await
                .context("reading the scores already landed")?;
            // The flat columns, by name, as the new rows type them; `run_id` is the new run's.
            let exprs: Vec<datafusion::prelude::Expr> = union
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    datafusion::logical_expr::cast(
                        datafusion::logical_expr::ident(f.name()),
                        f.data_type().clone(),
                    )
                    .alias(f.name())
                })
                .collect();
            let landed = landed
                .select(exprs)
                .context("matching the landed scores to the new rows")?;
            union = union
                .union(landed)
                .context("merging with the landed scores")?;
            // The landed rows' models and batches, so that every row's batch has a rank.
            let files = self.landed.clone();
            let scanned = tokio::task::spawn_blocking(move || {
                files
                    .iter()
                    .map(|f| scores::landed_contents(f))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| TransformError::Io {
                path: PathBuf::from("reading the landed scores"),
                source: std::io::Error::other(e),
            })??;
            for (file, contents) in self.landed.iter().zip(scanned) {
                for m in contents.models {
                    if !models.contains(&m) {
                        models.push(m);
                    }
                }
                ranks.extend(contents.batches);
                landed_inputs.push(Input {
                    path: file.clone(),
                    kind: InputKind::Landed,
                    rows: contents.rows,
                    identity_bytes: contents.identity_bytes,
                });
            }
        }
        ranks.sort();
        ranks.dedup();
        if ranks.len() > u16::MAX as usize {
            return Err(TransformError::Config(format!(
                "{} batches to merge: at most {} can be deduplicated at once",
                ranks.len(),
                u16::MAX
            )));
        }
        let rank_of = |created_us: i64, id: &str| {
            ranks
                .binary_search(&(created_us, id.to_string()))
                .unwrap_or_default() as u16
        };
        let mut inputs = Vec::new();
        for g in &groups {
            let batch = &batches[g.batch];
            for file in &g.files {
                let footer = &footers[file];
                inputs.push(Input {
                    path: file.clone(),
                    kind: InputKind::Staged {
                        schema: g.schema.clone(),
                        rank: rank_of(batch.created_ms * 1000, &batch.batch_id),
                        batch_id: batch.batch_id.clone(),
                        created_us: batch.created_ms * 1000,
                    },
                    rows: footer.file_metadata().num_rows() as u64,
                    identity_bytes: scores::leaf_bytes(footer, &mapping.identity),
                });
            }
        }
        inputs.extend(landed_inputs);
        let ranks = ranks
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i as u16))
            .collect();
        Ok(Plan {
            inputs,
            mapping,
            models,
            ranks,
            schema: Arc::new(union.schema().as_arrow().clone()),
            keep_null_identities: self.config.keep_null_identities,
            union,
        })
    }
}

/// A string column as `Utf8`, whatever string type DataFusion chose.
pub(crate) fn utf8(col: &ArrayRef) -> Result<ArrayRef, TransformError> {
    cast_to(col, &DataType::Utf8)
}

/// A column as `to` (what DataFusion types a string or a count as varies with the plan).
pub(crate) fn cast_to(col: &ArrayRef, to: &DataType) -> Result<ArrayRef, TransformError> {
    datafusion::arrow::compute::cast(col, to).map_err(|e| TransformError::DataFusion {
        context: format!("reading a column as {to}"),
        source: e.into(),
    })
}

/// A part's schema and footer.
/// Whether the scores carry their influential factors as a list (of structs).
fn has_factors(plan: &Plan) -> bool {
    plan.schema
        .field_with_name("influential_factors")
        .is_ok_and(|f| matches!(f.data_type(), DataType::List(_)))
}

/// Where a plan reads `file`: its copy for the cluster, if it was copied, else its path.
fn location(shared: Option<&SharedParts>, file: &Path) -> String {
    match shared {
        Some(s) => s.location(file),
        None => file.display().to_string(),
    }
}

fn file_schema(file: &Path) -> Result<(SchemaRef, Arc<ParquetMetaData>), TransformError> {
    let builder = scores::reader_builder(file)?;
    Ok((builder.schema().clone(), builder.metadata().clone()))
}

/// What a written table holds: rows, bytes and columns (name, Arrow type), from its files'
/// footers (lineage describes each landed table with them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableFacts {
    pub rows: u64,
    pub bytes: u64,
    pub fields: Vec<(String, String)>,
}

/// The [`TableFacts`] of the parquet files under `dir` (Hive directories included).
pub fn table_facts(dir: &Path) -> Result<TableFacts, TransformError> {
    let mut facts = TableFacts::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| TransformError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let (schema, footer) = file_schema(&path)?;
                facts.rows += footer.file_metadata().num_rows().max(0) as u64;
                facts.bytes += entry.metadata().map_or(0, |m| m.len());
                if facts.fields.is_empty() {
                    facts.fields = schema
                        .fields()
                        .iter()
                        .map(|f| (f.name().clone(), f.data_type().to_string()))
                        .collect();
                }
            }
        }
    }
    Ok(facts)
}

fn has_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() { has_files(&p) } else { true }
    })
}

/// `dir` as a directory URL DataFusion lists recursively.
pub(crate) fn dir_url(dir: &Path) -> String {
    let mut s = dir.display().to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// Writes a frame into `dir` in `format`, optionally Hive-partitioned.
async fn write(
    df: DataFrame,
    dir: &Path,
    format: &OutputFormat,
    partition: Option<&str>,
) -> Result<(), TransformError> {
    std::fs::create_dir_all(dir).map_err(|source| TransformError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut opts = DataFrameWriteOptions::new();
    if let Some(p) = partition {
        opts = opts.with_partition_by(vec![p.to_string()]);
    }
    write_to(df, &dir_url(dir), format, opts).await
}

/// The parquet writer's settings for the scores table.
pub(crate) fn writer_properties(format: &OutputFormat) -> Result<WriterProperties, TransformError> {
    let mut builder = WriterProperties::builder();
    if let Some(c) = format.parquet_compression() {
        let codec = parse_compression_string(&c).context(format!("compression {c}"))?;
        builder = builder.set_compression(codec);
    }
    if let OutputFormat::Parquet {
        row_group_size: Some(n),
        ..
    } = format
    {
        builder = builder.set_max_row_group_row_count(Some(*n));
    }
    Ok(builder.build())
}

/// Writes `df` to `target` (a directory URL, or a file with single-file output) in `format`.
async fn write_to(
    df: DataFrame,
    target: &str,
    format: &OutputFormat,
    opts: DataFrameWriteOptions,
) -> Result<(), TransformError> {
    let what = format!("writing {target}");
    match format {
        OutputFormat::Parquet { row_group_size, .. } => {
            let mut po = datafusion::config::TableParquetOptions::default();
            po.global.compression = format.parquet_compression();
            if let Some(n) = row_group_size {
                po.global.max_row_group_size = *n;
            }
            df.write_parquet(target, opts, Some(po))
                .await
                .context(what)?;
        }
        OutputFormat::Csv => {
            df.write_csv(target, opts, None).await.context(what)?;
        }
        OutputFormat::Ndjson => {
            df.write_json(target, opts, None).await.context(what)?;
        }
    }
    Ok(())
}

/// Every nested column of `df` (`influential_factors`) as JSON text, for text formats and for
/// `factors_as_json`.
fn nested_as_json(mut df: DataFrame) -> Result<DataFrame, TransformError> {
    let nested: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .filter(|f| f.data_type().is_nested())
        .map(|f| f.name().clone())
        .collect();
    for name in nested {
        df = df
            .with_column(&name, to_json(col(name.as_str())))
            .context(format!("writing {name} as JSON text"))?;
    }
    Ok(df)
}

impl Transformer {
    /// Writes small in-memory tables (summaries, drift) like the scores.
    pub(crate) async fn write_batches(
        &self,
        batches: Vec<RecordBatch>,
        dir: &Path,
        format: &OutputFormat,
        partition: Option<&str>,
    ) -> Result<(), TransformError> {
        let Some(schema) = batches.first().map(|b| b.schema()) else {
            return Ok(());
        };
        let table = MemTable::try_new(schema, vec![batches]).context("staging a small table")?;
        let df = self
            .ctx
            .read_table(Arc::new(table))
            .context("reading a small table")?;
        write(self.tagged(df)?, dir, format, partition).await
    }
}
