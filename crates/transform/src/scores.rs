//! The scores table, read and written part by part without a query plan.
//!
//! Two passes over the inputs (staged parts, and with an incremental export the scores already
//! landed). The first reads only the keys of every flat row (see `dedupe.rs`) and decides which
//! row of each (identity, model) is kept. The second reads each input once, in order, flattens
//! it into one row per scored (row, model), keeps the winners, and writes them as parquet
//! partitioned by `score_date`, while it accumulates the summaries (see `summary.rs`) from the
//! rows in hand. Each worker thread takes the next input and writes its own file per score
//! date, so decoding, filtering and encoding all run on every core at once, and nothing is
//! sorted, spilled or read back.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, RecordBatch, StringArray, new_null_array,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::FilterBuilder;
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use datafusion::parquet::arrow::{ArrowWriter, ProjectionMask};
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::SchemaDescriptor;

use crate::config::Mapping;
use crate::dedupe::{KeyRow, Winners};
use crate::error::TransformError;
use crate::flatten::{cast_to, leaves, model_paths, path_array};
use crate::summary::Groups;
use crate::workers::on_workers;

/// Rows per record batch read from a part.
const READ_BATCH: usize = 8192;

/// One file to read: a staged part, or a file of the landed scores.
pub(crate) struct Input {
    pub path: PathBuf,
    pub kind: InputKind,
    pub rows: u64,
    /// The identities' size in the file's footer (uncompressed): for the dedupe's estimate.
    pub identity_bytes: u64,
}

pub(crate) enum InputKind {
    /// A part of a staged batch, in its own schema, of the batch ranked `rank`.
    Staged {
        schema: SchemaRef,
        rank: u16,
        batch_id: String,
        created_us: i64,
    },
    /// A file of the scores table already landed: flat rows, each naming its model and batch.
    Landed,
}

/// What the two passes read, and the table they write.
pub(crate) struct Plan {
    pub inputs: Vec<Input>,
    pub mapping: Mapping,
    /// The mapping's models, then any only the landed rows have; a model is its position.
    pub models: Vec<String>,
    /// The rank of each batch (created, µs since the epoch; id): the newer, the higher.
    pub ranks: HashMap<(i64, String), u16>,
    /// The scores table's columns, as the flattening types them (`run_id` is added on write).
    pub schema: SchemaRef,
    pub keep_null_identities: bool,
    /// The flat rows of every input as one DataFusion plan (typed as `schema`), which a
    /// distributed engine deduplicates (`distributed.rs`).
    pub union: datafusion::dataframe::DataFrame,
}

impl Plan {
    /// Calls `f` with every chunk of input `i`'s flat rows that have an identity, as keys: the
    /// chunk's first row in the file, its identities and, per flat row, the row, model, batch
    /// rank and score date.
    pub(crate) fn keys(
        &self,
        i: usize,
        mut f: impl FnMut(u64, &StringArray, &[KeyRow]),
    ) -> Result<(), TransformError> {
        let input = &self.inputs[i];
        let mut first = 0u64;
        let mut rows = Vec::new();
        match &input.kind {
            InputKind::Staged { rank, .. } => {
                let models = self.present_models(input);
                let mut paths = vec![(self.mapping.identity.as_str(), false)];
                for (_, m) in &models {
                    paths.push((present_path(m), true));
                    paths.extend(m.score_date.as_deref().map(|p| (p, false)));
                }
                for batch in open(&input.path, |d| leaves(d, paths))? {
                    let batch = batch.map_err(|e| parquet_err(&input.path, e))?;
                    let identity = self.identity(input, &batch)?;
                    rows.clear();
                    let columns = models
                        .iter()
                        .map(|(k, m)| {
                            let present = path_array(&batch, present_path(m));
                            let date =
                                self.date_column(&input.path, &batch, m.score_date.as_deref())?;
                            Ok((*k as u16, present, date))
                        })
                        .collect::<Result<Vec<_>, TransformError>>()?;
                    for r in 0..batch.num_rows() {
                        if identity.is_null(r) {
                            continue;
                        }
                        for (model, present, date) in &columns {
                            if present.as_ref().is_some_and(|p| p.is_valid(r)) {
                                rows.push(KeyRow {
                                    row: r as u32,
                                    model: *model,
                                    rank: *rank,
                                    date: date_key(date.as_ref(), r),
                                });
                            }
                        }
                    }
                    f(first, &identity, &rows);
                    first += batch.num_rows() as u64;
                }
            }
            InputKind::Landed => {
                let names = [
                    "identity",
                    "model",
                    "score_date",
                    "batch_id",
                    "batch_created",
                ];
                for batch in open(&input.path, |d| roots(d, &names))? {
                    let batch = batch.map_err(|e| parquet_err(&input.path, e))?;
                    let identity = self.identity(input, &batch)?;
                    let landed = self.landed_keys(&input.path, &batch)?;
                    let dates = self.date_column(&input.path, &batch, Some("score_date"))?;
                    rows.clear();
                    for (r, (model, rank)) in landed.into_iter().enumerate() {
                        if !identity.is_null(r) {
                            rows.push(KeyRow {
                                row: r as u32,
                                model,
                                rank,
                                date: date_key(dates.as_ref(), r),
                            });
                        }
                    }
                    f(first, &identity, &rows);
                    first += batch.num_rows() as u64;
                }
            }
        }
        Ok(())
    }

    /// Calls `f` with every chunk of input `i`'s record ids (the last tie-break), and the
    /// chunk's first row.
    pub(crate) fn record_ids(
        &self,
        i: usize,
        mut f: impl FnMut(u64, usize, Option<&StringArray>),
    ) -> Result<(), TransformError> {
        let input = &self.inputs[i];
        let path = match input.kind {
            InputKind::Staged { .. } => self.mapping.record_id.as_deref().unwrap_or("_id"),
            InputKind::Landed => "record_id",
        };
        let mut first = 0u64;
        for batch in open(&input.path, |d| leaves(d, [(path, false)]))? {
            let batch = batch.map_err(|e| parquet_err(&input.path, e))?;
            let ids = path_array(&batch, path)
                .map(|a| cast_to(&a, &DataType::Utf8))
                .transpose()
                .map_err(|e| parquet_err(&input.path, e))?;
            f(
                first,
                batch.num_rows(),
                ids.as_ref().map(|a| a.as_string::<i32>()),
            );
            first += batch.num_rows() as u64;
        }
        Ok(())
    }

    /// The models whose rows this part can have (their presence path is in its schema), with
    /// their index.
    fn present_models(&self, input: &Input) -> Vec<(usize, &crate::config::ModelMapping)> {
        let InputKind::Staged { schema, .. } = &input.kind else {
            return Vec::new();
        };
        self.mapping
            .models
            .iter()
            .enumerate()
            .filter(|(_, m)| crate::flatten::path_type(schema, present_path(m)).is_some())
            .collect()
    }

    fn identity(&self, input: &Input, batch: &RecordBatch) -> Result<StringArray, TransformError> {
        let file = &input.path;
        let path = match input.kind {
            InputKind::Staged { .. } => self.mapping.identity.as_str(),
            InputKind::Landed => "identity",
        };
        let column = path_array(batch, path).ok_or_else(|| TransformError::MissingColumn {
            file: file.to_path_buf(),
            column: path.to_string(),
        })?;
        let column = cast_to(&column, &DataType::Utf8).map_err(|e| parquet_err(file, e))?;
        Ok(column.as_string::<i32>().clone())
    }

    fn date_column(
        &self,
        file: &Path,
        batch: &RecordBatch,
        path: Option<&str>,
    ) -> Result<Option<Date32Array>, TransformError> {
        let Some(column) = path.and_then(|p| path_array(batch, p)) else {
            return Ok(None);
        };
        let column = cast_to(&column, &DataType::Date32).map_err(|e| parquet_err(file, e))?;
        Ok(Some(column.as_primitive().clone()))
    }

    /// Each landed row's model and batch rank.
    fn landed_keys(
        &self,
        file: &Path,
        batch: &RecordBatch,
    ) -> Result<Vec<(u16, u16)>, TransformError> {
        let column = |name: &str, ty: &DataType| named_column(file, batch, name, ty);
        let model = column("model", &DataType::Utf8)?;
        let batch_id = column("batch_id", &DataType::Utf8)?;
        let created = column("batch_created", &DataType::Int64)?;
        let (model, batch_id) = (model.as_string::<i32>(), batch_id.as_string::<i32>());
        let created = created.as_primitive::<Int64Type>();
        let mut last_model: Option<(&str, u16)> = None;
        let mut last_batch: Option<((i64, &str), u16)> = None;
        (0..batch.num_rows())
            .map(|r| {
                let name = model.value(r);
                let m = match last_model {
                    Some((n, m)) if n == name => m,
                    _ => {
                        let m = self.models.iter().position(|x| x == name).ok_or_else(|| {
                            parquet_err(file, format!("model {name} is not in the plan"))
                        })? as u16;
                        last_model = Some((name, m));
                        m
                    }
                };
                let key = (created.value(r), batch_id.value(r));
                let rank = match last_batch {
                    Some((k, rank)) if k == key => rank,
                    _ => {
                        let rank =
                            *self.ranks.get(&(key.0, key.1.to_string())).ok_or_else(|| {
                                parquet_err(
                                    file,
                                    format!("batch {} changed while it was read", key.1),
                                )
                            })?;
                        last_batch = Some((key, rank));
                        rank
                    }
                };
                Ok((m, rank))
            })
            .collect()
    }

    /// The flat rows of one chunk of a staged part for `model`, as the table's columns.
    fn staged_columns(
        &self,
        file: &Path,
        batch: &RecordBatch,
        model: &crate::config::ModelMapping,
        batch_id: &str,
        created_us: i64,
    ) -> Result<Vec<ArrayRef>, TransformError> {
        let n = batch.num_rows();
        let record = self.mapping.record_id.as_deref().unwrap_or("_id");
        self.schema
            .fields()
            .iter()
            .map(|field| {
                let constant = match field.name().as_str() {
                    "model" => Some(ScalarValue::Utf8(Some(model.name.clone()))),
                    "batch_id" => Some(ScalarValue::Utf8(Some(batch_id.to_string()))),
                    "batch_created" => Some(ScalarValue::TimestampMicrosecond(
                        Some(created_us),
                        Some("UTC".into()),
                    )),
                    _ => None,
                };
                if let Some(value) = constant {
                    let array = value
                        .to_array_of_size(n)
                        .map_err(|e| parquet_err(file, e))?;
                    return cast_to(&array, field.data_type()).map_err(|e| parquet_err(file, e));
                }
                let path = match field.name().as_str() {
                    "identity" => Some(self.mapping.identity.as_str()),
                    "identity_namespace" => self.mapping.identity_namespace.as_deref(),
                    "score" => Some(model.score.as_str()),
                    "probability" => model.probability.as_deref(),
                    "percentile" => model.percentile.as_deref(),
                    "propensity_type" => model.propensity_type.as_deref(),
                    "score_date" => model.score_date.as_deref(),
                    "influential_factors" => model.influential_factors.as_deref(),
                    "record_id" => Some(record),
                    other => {
                        return Err(parquet_err(file, format!("no source for column {other}")));
                    }
                };
                match path.and_then(|p| path_array(batch, p)) {
                    Some(a) => cast_to(&a, field.data_type()).map_err(|e| parquet_err(file, e)),
                    None => Ok(new_null_array(field.data_type(), n)),
                }
            })
            .collect()
    }

    /// One chunk of a landed file, as the table's columns.
    fn landed_columns(
        &self,
        file: &Path,
        batch: &RecordBatch,
    ) -> Result<Vec<ArrayRef>, TransformError> {
        self.schema
            .fields()
            .iter()
            .map(|field| named_column(file, batch, field.name(), field.data_type()))
            .collect()
    }
}

fn present_path(m: &crate::config::ModelMapping) -> &str {
    m.present.as_deref().unwrap_or(&m.score)
}

/// A score date as a key: the newer, the larger; null is older than any date.
fn date_key(date: Option<&Date32Array>, r: usize) -> i32 {
    match date {
        Some(d) if d.is_valid(r) => d.value(r),
        _ => i32::MIN,
    }
}

/// Column `name` of a batch of `file`, as `ty`.
fn named_column(
    file: &Path,
    batch: &RecordBatch,
    name: &str,
    ty: &DataType,
) -> Result<ArrayRef, TransformError> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| TransformError::MissingColumn {
            file: file.to_path_buf(),
            column: name.to_string(),
        })?;
    cast_to(c, ty).map_err(|e| parquet_err(file, e))
}

/// A parquet file opened and its footer read, ready to be read.
pub(crate) fn reader_builder(
    path: &Path,
) -> Result<ParquetRecordBatchReaderBuilder<File>, TransformError> {
    let file = File::open(path).map_err(|source| TransformError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| TransformError::Footer {
        file: path.to_path_buf(),
        source,
    })
}

fn open(
    path: &Path,
    mask: impl FnOnce(&SchemaDescriptor) -> ProjectionMask,
) -> Result<ParquetRecordBatchReader, TransformError> {
    let builder = reader_builder(path)?;
    let mask = mask(builder.parquet_schema());
    builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH)
        .build()
        .map_err(|e| parquet_err(path, e))
}

/// The leaves of the named top-level columns.
fn roots(descr: &SchemaDescriptor, names: &[&str]) -> ProjectionMask {
    leaves(descr, names.iter().map(|n| (*n, false)))
}

pub(crate) fn parquet_err(file: &Path, e: impl std::fmt::Display) -> TransformError {
    TransformError::Parquet {
        file: file.to_path_buf(),
        message: e.to_string(),
    }
}

/// How the write pass writes.
pub(crate) struct WriteOptions {
    pub dir: PathBuf,
    pub props: WriterProperties,
    pub run_id: Option<String>,
    pub workers: usize,
}

/// What the write pass saw.
#[derive(Default)]
pub(crate) struct Written {
    /// Flat rows read (one per scored row and model).
    pub rows_in: u64,
    /// Of which without an identity.
    pub null_identities: u64,
    pub rows_out: u64,
    pub groups: Groups,
    /// Passes of the dedupe over the keys (see `dedupe.rs`).
    pub dedupe_passes: usize,
}

/// One worker's writers (one per score date) and counts.
pub(crate) struct Worker {
    /// Its files' name: `part-<name>.parquet` in each score date's directory.
    name: String,
    writers: HashMap<Option<i32>, ArrowWriter<File>>,
    seen: Written,
}

/// The second pass: reads every input once, keeps the winners, writes them under `opts.dir`
/// in `score_date=…` directories, and summarises them.
pub(crate) fn write(
    plan: &Plan,
    winners: &Winners,
    opts: &WriteOptions,
) -> Result<Written, TransformError> {
    let schema = output_schema(&plan.schema, opts)?;
    let workers = on_workers(opts.workers, plan.inputs.len(), Worker::new, |w, i| {
        w.input(plan, winners, opts, &schema, i)
    })?;
    let mut all = finish(workers, opts)?;
    all.dedupe_passes = winners.passes;
    Ok(all)
}

/// The written table's columns: the plan's, and `run_id` when the run has one. The directory
/// exists even when no row is kept (an empty batch lands empty tables).
pub(crate) fn output_schema(
    scores: &SchemaRef,
    opts: &WriteOptions,
) -> Result<SchemaRef, TransformError> {
    let mut fields: Vec<Arc<Field>> = scores.fields().iter().cloned().collect();
    if opts.run_id.is_some() {
        fields.push(Arc::new(Field::new("run_id", DataType::Utf8, false)));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|source| TransformError::Io {
        path: opts.dir.clone(),
        source,
    })?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Closes every worker's files and adds up what they saw.
fn finish(workers: Vec<Worker>, opts: &WriteOptions) -> Result<Written, TransformError> {
    let mut all = Written::default();
    for w in workers {
        all.add(w.close(opts)?.0);
    }
    Ok(all)
}

impl Written {
    /// Adds what another writer saw.
    pub(crate) fn add(&mut self, other: Written) {
        self.rows_in += other.rows_in;
        self.null_identities += other.null_identities;
        self.rows_out += other.rows_out;
        self.groups.merge(other.groups);
    }
}

/// The file a worker writes a score date's rows into. A null score date goes where
/// DataFusion's partitioned writer put it, the directory of day 0.
fn part_path(dir: &Path, date: Option<i32>, worker: &str) -> PathBuf {
    let epoch = chrono::NaiveDate::default();
    let day = epoch
        .checked_add_signed(chrono::TimeDelta::days(date.unwrap_or(0).into()))
        .unwrap_or(epoch);
    dir.join(format!("score_date={}", day.format("%Y-%m-%d")))
        .join(format!("part-{worker}.parquet"))
}

impl Worker {
    fn new(id: usize) -> Self {
        Worker::named(format!("{id:03}"))
    }

    /// A worker whose files are named `part-<name>.parquet`.
    pub(crate) fn named(name: String) -> Self {
        Worker {
            name,
            writers: HashMap::new(),
            seen: Written::default(),
        }
    }

    /// Closes the worker's files: what it saw, and the files it wrote.
    pub(crate) fn close(
        self,
        opts: &WriteOptions,
    ) -> Result<(Written, Vec<PathBuf>), TransformError> {
        let mut files = Vec::with_capacity(self.writers.len());
        for (date, writer) in self.writers {
            let path = part_path(&opts.dir, date, &self.name);
            writer.close().map_err(|e| parquet_err(&path, e))?;
            files.push(path);
        }
        Ok((self.seen, files))
    }

    /// One batch of rows a distributed engine kept (`scores`' columns, then the count of flat
    /// rows each stood for): written per model of `models`, with the flat rows they stood for
    /// counted as read.
    pub(crate) fn deduplicated(
        &mut self,
        (scores, models, keep_null_identities): (&SchemaRef, &[String], bool),
        opts: &WriteOptions,
        schema: &SchemaRef,
        batch: &RecordBatch,
    ) -> Result<(), TransformError> {
        let source = Path::new("the rows the cluster kept");
        let bad = |e: &dyn std::fmt::Display| parquet_err(source, e);
        let width = scores.fields().len();
        if batch.num_columns() != width + 1 {
            return Err(bad(&format!(
                "{} columns where {} were planned",
                batch.num_columns(),
                width + 1
            )));
        }
        let stood_for = batch
            .column(width)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad(&"the row count is not a 64-bit integer"))?;
        let index = |name: &str| scores.index_of(name).map_err(|e| bad(&e));
        let identity = batch.column(index("identity")?);
        let model = crate::run::utf8(batch.column(index("model")?))?;
        let model = model.as_string::<i32>();
        self.seen.rows_in += stood_for
            .iter()
            .flatten()
            .map(|n| n.max(0) as u64)
            .sum::<u64>();
        self.seen.null_identities += identity.null_count() as u64;
        let columns = batch.columns()[..width].to_vec();
        for name in models {
            let keep = BooleanBuffer::collect_bool(batch.num_rows(), |r| {
                model.is_valid(r)
                    && model.value(r) == name
                    && (identity.is_valid(r) || keep_null_identities)
            });
            if keep.count_set_bits() > 0 {
                self.emit((scores, name), opts, schema, source, columns.clone(), &keep)?;
            }
        }
        Ok(())
    }

    fn input(
        &mut self,
        plan: &Plan,
        winners: &Winners,
        opts: &WriteOptions,
        schema: &SchemaRef,
        i: usize,
    ) -> Result<(), TransformError> {
        let input = &plan.inputs[i];
        let path = &input.path;
        let mut first = 0u64;
        match &input.kind {
            InputKind::Staged {
                batch_id,
                created_us,
                ..
            } => {
                let models = plan.present_models(input);
                let mut paths = vec![(plan.mapping.identity.as_str(), false)];
                paths.extend(
                    plan.mapping
                        .identity_namespace
                        .as_deref()
                        .map(|p| (p, false)),
                );
                paths.push((plan.mapping.record_id.as_deref().unwrap_or("_id"), false));
                for (_, m) in &models {
                    paths.push((present_path(m), true));
                    paths.extend(model_paths(m).map(|p| (p, false)));
                }
                for batch in open(path, |d| leaves(d, paths))? {
                    let batch = batch.map_err(|e| parquet_err(path, e))?;
                    let identity = plan.identity(input, &batch)?;
                    for (k, m) in &models {
                        let present = path_array(&batch, present_path(m));
                        let keep = self.keep(plan, winners, i, first, &identity, |r| {
                            present
                                .as_ref()
                                .is_some_and(|p| p.is_valid(r))
                                .then_some(*k)
                        });
                        if keep.count_set_bits() > 0 {
                            let columns =
                                plan.staged_columns(path, &batch, m, batch_id, *created_us)?;
                            self.emit(
                                (&plan.schema, &plan.models[*k]),
                                opts,
                                schema,
                                path,
                                columns,
                                &keep,
                            )?;
                        }
                    }
                    first += batch.num_rows() as u64;
                }
            }
            InputKind::Landed => {
                for batch in open(path, |_| ProjectionMask::all())? {
                    let batch = batch.map_err(|e| parquet_err(path, e))?;
                    let identity = plan.identity(input, &batch)?;
                    let models: Vec<u16> = plan
                        .landed_keys(path, &batch)?
                        .into_iter()
                        .map(|(m, _)| m)
                        .collect();
                    let columns = plan.landed_columns(path, &batch)?;
                    for k in 0..plan.models.len() {
                        let keep = self.keep(plan, winners, i, first, &identity, |r| {
                            (models[r] as usize == k).then_some(k)
                        });
                        if keep.count_set_bits() > 0 {
                            self.emit(
                                (&plan.schema, &plan.models[k]),
                                opts,
                                schema,
                                path,
                                columns.clone(),
                                &keep,
                            )?;
                        }
                    }
                    first += batch.num_rows() as u64;
                }
            }
        }
        Ok(())
    }

    /// Which rows of a chunk to keep: `model(r)` is the model of row `r` when it is one of
    /// this view's flat rows. Counts them on the way.
    fn keep(
        &mut self,
        plan: &Plan,
        winners: &Winners,
        input: usize,
        first: u64,
        identity: &StringArray,
        model: impl Fn(usize) -> Option<usize>,
    ) -> BooleanBuffer {
        let (mut rows, mut nulls) = (0u64, 0u64);
        let keep = BooleanBuffer::collect_bool(identity.len(), |r| {
            let Some(m) = model(r) else {
                return false;
            };
            rows += 1;
            if identity.is_null(r) {
                nulls += 1;
                plan.keep_null_identities
            } else {
                winners.get(input, first + r as u64, m)
            }
        });
        self.seen.rows_in += rows;
        self.seen.null_identities += nulls;
        keep
    }

    /// Writes the kept rows of one view (one model's flat rows of a chunk), a score date at a
    /// time, and adds them to the summaries.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        (scores, model): (&SchemaRef, &str),
        opts: &WriteOptions,
        schema: &SchemaRef,
        file: &Path,
        mut columns: Vec<ArrayRef>,
        keep: &BooleanBuffer,
    ) -> Result<(), TransformError> {
        if let Some(id) = &opts.run_id {
            columns.push(Arc::new(StringArray::from_iter_values(
                std::iter::repeat_n(id.as_str(), keep.len()),
            )));
        }
        let date_index = scores
            .index_of("score_date")
            .map_err(|e| parquet_err(file, e))?;
        let dates = columns[date_index].as_primitive_opt::<Date32Type>();
        // The score dates of the kept rows, and which rows have each.
        let mut by_date: Vec<(Option<i32>, Vec<bool>)> = Vec::new();
        for r in keep.set_indices() {
            let d = dates.and_then(|d| d.is_valid(r).then(|| d.value(r)));
            let slot = match by_date.iter().position(|(x, _)| *x == d) {
                Some(s) => s,
                None => {
                    by_date.push((d, vec![false; keep.len()]));
                    by_date.len() - 1
                }
            };
            by_date[slot].1[r] = true;
        }
        for (date, mask) in by_date {
            let filter = FilterBuilder::new(&BooleanArray::from(mask))
                .optimize()
                .build();
            let kept = columns
                .iter()
                .map(|c| filter.filter(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| parquet_err(file, e))?;
            let batch =
                RecordBatch::try_new(schema.clone(), kept).map_err(|e| parquet_err(file, e))?;
            self.seen.rows_out += batch.num_rows() as u64;
            self.seen.groups.add(model, date, &batch);
            let writer = match self.writers.entry(date) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let path = part_path(&opts.dir, date, &self.name);
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir).map_err(|source| TransformError::Io {
                            path: dir.to_path_buf(),
                            source,
                        })?;
                    }
                    let f = File::create(&path).map_err(|source| TransformError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    e.insert(
                        ArrowWriter::try_new(f, schema.clone(), Some(opts.props.clone()))
                            .map_err(|e| parquet_err(&path, e))?,
                    )
                }
            };
            writer
                .write(&batch)
                .map_err(|e| parquet_err(&part_path(&opts.dir, date, &self.name), e))?;
        }
        Ok(())
    }
}

/// What a landed file holds, for the plan: its rows, the models and batches they name.
pub(crate) struct LandedContents {
    pub rows: u64,
    pub identity_bytes: u64,
    pub models: Vec<String>,
    /// (created, µs since the epoch; id) of each batch.
    pub batches: Vec<(i64, String)>,
}

pub(crate) fn landed_contents(path: &Path) -> Result<LandedContents, TransformError> {
    let builder = reader_builder(path)?;
    let footer = builder.metadata().clone();
    let mask = roots(
        builder.parquet_schema(),
        &["model", "batch_id", "batch_created"],
    );
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH)
        .build()
        .map_err(|e| parquet_err(path, e))?;
    let mut models: Vec<String> = Vec::new();
    let mut batches: Vec<(i64, String)> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| parquet_err(path, e))?;
        let column = |name: &str, ty: &DataType| named_column(path, &batch, name, ty);
        let model = column("model", &DataType::Utf8)?;
        let batch_id = column("batch_id", &DataType::Utf8)?;
        let created = column("batch_created", &DataType::Int64)?;
        let created = created.as_primitive::<Int64Type>();
        for (r, m) in model.as_string::<i32>().iter().enumerate() {
            let m = m.unwrap_or_default();
            if !models.iter().any(|x| x == m) {
                models.push(m.to_string());
            }
            let b = (created.value(r), batch_id.as_string::<i32>().value(r));
            if !batches.iter().any(|(c, id)| (*c, id.as_str()) == b) {
                batches.push((b.0, b.1.to_string()));
            }
        }
    }
    Ok(LandedContents {
        rows: footer.file_metadata().num_rows() as u64,
        identity_bytes: leaf_bytes(&footer, "identity"),
        models,
        batches,
    })
}

/// The uncompressed size of the leaves under a dotted path, from a file's footer.
pub(crate) fn leaf_bytes(footer: &ParquetMetaData, path: &str) -> u64 {
    let parts: Vec<&str> = path.split('.').collect();
    footer
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .filter(|c| {
            let leaf = c.column_path().parts();
            leaf.len() >= parts.len() && leaf.iter().zip(&parts).all(|(a, b)| a == b)
        })
        .map(|c| c.uncompressed_size().max(0) as u64)
        .sum()
}
