//! Any XDM ExperienceEvent dataset, landed from its Schema Registry schema with no mapping:
//! each row flattened to the schema's columns (`xdm.rs`), partitioned by event date, and each
//! event (`_id`) landed once, whatever the night that brings it again.
//!
//! Two passes over the staged parts: [`EventDataset::scan`] reads only `_id` and `timestamp`
//! (the dates a night touches, so the caller can fetch the `_id`s already landed on them);
//! [`EventDataset::write`] then decides which rows are new (the first of each `_id`, oldest
//! batch first, and none already landed) and writes them on every core, one file per part and
//! event date, under `event_date=YYYY-MM-DD/`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListArray, RecordBatch, StringArray, StructArray,
    new_null_array,
};
use datafusion::arrow::compute::{cast, concat, filter_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Fields, Schema, SchemaRef, TimeUnit,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use scoreland_runtime::labels::{COLUMN_LABELS, join_labels};

use crate::attribution::AttributionSummary;
use crate::error::TransformError;
use crate::flatten::{field_of, leaves, path_array};
use crate::run::StagedBatch;
use crate::workers::on_workers;
use crate::xdm::{XdmColumn, columns};

/// The date partition column of an events table.
pub const EVENT_DATE: &str = "event_date";
/// XDM's ExperienceEvent class.
pub const EVENT_CLASS: &str = "https://ns.adobe.com/xdm/context/experienceevent";
/// Whether `schema` is an ExperienceEvent's: the class the Schema Registry names
/// (`meta:class`, or one it extends); a schema that names none is taken for one (its fields
/// are checked when it lands).
pub fn is_event_schema(schema: &Value) -> bool {
    let class = schema.get("meta:class").and_then(Value::as_str);
    let extends = schema
        .get("meta:extends")
        .and_then(Value::as_array)
        .is_some_and(|e| e.iter().any(|c| c.as_str() == Some(EVENT_CLASS)));
    class.is_none_or(|c| c == EVENT_CLASS) || extends
}

/// `[transform.dataset]`: land the source's dataset as it is, from its XDM schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetLanding {
    /// The table it lands as: lower-case letters, digits and `_`.
    pub table: String,
    /// Levels of nested objects that become `a_b_c` columns; deeper ones stay structs.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// List columns (events only) also landed as a child table each: one row per item, with
    /// its event's `_id`, `event_date` and `position`, an item's objects flattened like the
    /// event's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explode: Vec<Explode>,
    /// A summary table of the events, `<table>_summary` (events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<DatasetSummary>,
}

/// A list column to explode: its name (the child table is `<table>_<column>` in lower case),
/// or `{ column = "…", table = "…" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Explode {
    Column(String),
    Named(NamedExplode),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedExplode {
    pub column: String,
    pub table: String,
}

impl Explode {
    pub fn column(&self) -> &str {
        match self {
            Explode::Column(c) => c,
            Explode::Named(n) => &n.column,
        }
    }
}

/// The summaries a dataset can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetSummary {
    /// Attribution AI's scores: per event date, conversion and touchpoint, the conversions and
    /// revenue each attribution model credits to the touchpoint.
    Attribution,
}

fn default_depth() -> usize {
    3
}

impl DatasetLanding {
    /// The child table an exploded list column lands as.
    pub fn child_table(&self, explode: &Explode) -> String {
        match explode {
            Explode::Column(c) => format!("{}_{}", self.table, c.to_lowercase()),
            Explode::Named(n) => n.table.clone(),
        }
    }

    /// The summary table, if the dataset has one.
    pub fn summary_table(&self) -> Option<String> {
        self.summary.map(|_| format!("{}_summary", self.table))
    }

    /// Every table a night of the dataset lands: its own, its child tables, its summary.
    pub fn tables(&self) -> Vec<String> {
        std::iter::once(self.table.clone())
            .chain(self.explode.iter().map(|e| self.child_table(e)))
            .chain(self.summary_table())
            .collect()
    }

    pub fn validate(&self) -> Result<(), TransformError> {
        let plain = |t: &str| {
            !t.is_empty()
                && t.len() <= 63
                && t.starts_with(|c: char| c.is_ascii_lowercase())
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let t = &self.table;
        if !plain(t) {
            return Err(TransformError::Config(format!(
                "dataset.table {t:?}: use lower-case letters, digits and '_', starting with a letter (at most 63)"
            )));
        }
        for explode in &self.explode {
            let child = self.child_table(explode);
            if !plain(&child) {
                return Err(TransformError::Config(format!(
                    "dataset.explode {:?}: its table {child:?} is not a plain table name \
                     (lower-case letters, digits and '_', at most 63; name it with \
                     {{ column = \"…\", table = \"…\" }})",
                    explode.column()
                )));
            }
        }
        if let Some(summary) = self.summary_table()
            && !plain(&summary)
        {
            return Err(TransformError::Config(format!(
                "dataset.summary: its table {summary:?} is longer than 63 characters"
            )));
        }
        let tables = self.tables();
        let distinct: BTreeSet<&String> = tables.iter().collect();
        if distinct.len() < tables.len() {
            return Err(TransformError::Config(format!(
                "[transform.dataset] lands two tables of one name among {}",
                tables.join(", ")
            )));
        }
        if self.depth > 16 {
            return Err(TransformError::Config(format!(
                "dataset.depth = {}: at most 16",
                self.depth
            )));
        }
        Ok(())
    }
}

/// What landing a night of events did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventStats {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Rows whose `_id` an older row of this night, or a landed night, already holds.
    pub duplicates_dropped: u64,
    /// Rows without a `timestamp` (XDM requires one): not landed.
    pub without_timestamp: u64,
    /// Event dates the night's new rows fall on.
    pub dates: Vec<String>,
    pub columns: usize,
    /// Rows of the summary table (its dates' rows, recomputed).
    pub summary_rows: u64,
}

/// An ExperienceEvent dataset's columns, from its schema.
#[derive(Debug, Clone)]
pub struct EventDataset {
    columns: Vec<XdmColumn>,
    schema: SchemaRef,
    /// Exploded list columns.
    children: Vec<Child>,
    /// `<table>_summary` and how it is computed.
    summary: Option<(String, AttributionSummary)>,
}

/// An exploded list column and the child table its items land as.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    column: String,
    pub(crate) table: String,
    pub(crate) schema: SchemaRef,
    /// Levels of an item's objects flattened to `a_b` columns.
    depth: usize,
    /// The columns of its row each item carries (`_id` and `event_date`; a record's identity).
    parents: Vec<String>,
}

/// The child tables of `landing.explode` over a table of `columns`, each item carrying the
/// `parents` columns of its row, then its `position`, its fields, `batch_id` and `run_id`.
pub(crate) fn children(
    columns: &[XdmColumn],
    landing: &DatasetLanding,
    parents: &[Field],
) -> Result<Vec<Child>, TransformError> {
    landing
        .explode
        .iter()
        .map(|explode| {
            let column = explode.column();
            let item = match columns
                .iter()
                .find(|c| c.name == column)
                .map(|c| &c.data_type)
            {
                Some(DataType::List(item)) => item.data_type().clone(),
                _ => {
                    return Err(TransformError::Config(format!(
                        "dataset.explode {column:?} is not a list column of the schema at \
                         depth {} (`scoreland schema` lists them)",
                        landing.depth
                    )));
                }
            };
            let mut fields = parents.to_vec();
            fields.push(Field::new("position", DataType::Int32, true));
            match &item {
                DataType::Struct(items) => flat_item_fields(items, "", landing.depth, &mut fields),
                other => fields.push(Field::new("value", other.clone(), true)),
            }
            fields.push(Field::new("batch_id", DataType::Utf8, true));
            fields.push(Field::new("run_id", DataType::Utf8, true));
            let names: BTreeSet<&str> = fields.iter().map(|f| f.name().as_str()).collect();
            if names.len() < fields.len() {
                let added: Vec<&str> = parents.iter().map(|f| f.name().as_str()).collect();
                return Err(TransformError::Config(format!(
                    "dataset.explode {column:?}: its items have a field named like one \
                     scoreland adds ({}, position, batch_id, run_id)",
                    added.join(", ")
                )));
            }
            Ok(Child {
                column: column.to_string(),
                table: landing.child_table(explode),
                schema: Arc::new(Schema::new(fields)),
                depth: landing.depth,
                parents: parents.iter().map(|f| f.name().clone()).collect(),
            })
        })
        .collect()
}

/// The keys of one staged part, in the order parts are landed.
#[derive(Debug)]
struct PartKeys {
    file: PathBuf,
    batch_id: String,
    ids: StringArray,
    days: Vec<Option<i32>>,
}

/// The first pass over a night: every part's keys, and the event dates they fall on.
#[derive(Debug)]
pub struct EventScan {
    parts: Vec<PartKeys>,
    /// `YYYY-MM-DD`, sorted.
    pub dates: Vec<String>,
}

impl EventDataset {
    /// The columns of `schema` (the Schema Registry's `xed-full` form), which must be an
    /// ExperienceEvent's: `_id` (string) and `timestamp` (date-time) at the top.
    pub fn new(schema: &Value, landing: &DatasetLanding) -> Result<EventDataset, TransformError> {
        let columns = columns(schema, landing.depth)?;
        let has = |name: &str, ty: &str| columns.iter().any(|c| c.path == name && c.xdm_type == ty);
        let class = schema.get("meta:class").and_then(Value::as_str);
        if !is_event_schema(schema) || !has("_id", "string") || !has("timestamp", "date-time") {
            return Err(TransformError::Config(format!(
                "the dataset's schema ({}, class {}) is not an ExperienceEvent's (class \
                 {EVENT_CLASS} with `_id` and `timestamp`)",
                schema["title"].as_str().unwrap_or("untitled"),
                class.unwrap_or("not given")
            )));
        }
        if let Some(c) = columns
            .iter()
            .find(|c| [EVENT_DATE, "batch_id", "run_id", "dataset_id"].contains(&c.name.as_str()))
        {
            return Err(TransformError::Config(format!(
                "the schema's field {} flattens to column {}, which scoreland adds itself; land \
                 with another depth",
                c.path, c.name
            )));
        }
        let mut fields = column_fields(&columns);
        fields.push(Field::new(EVENT_DATE, DataType::Date32, true));
        fields.push(Field::new("batch_id", DataType::Utf8, true));
        fields.push(Field::new("run_id", DataType::Utf8, true));
        let parents = [
            Field::new("_id", DataType::Utf8, true),
            Field::new(EVENT_DATE, DataType::Date32, true),
        ];
        let children = children(&columns, landing, &parents)?;
        let summary = match (landing.summary, landing.summary_table()) {
            (Some(DatasetSummary::Attribution), Some(table)) => {
                Some((table, AttributionSummary::new(schema, &columns)?))
            }
            _ => None,
        };
        Ok(EventDataset {
            columns,
            schema: Arc::new(Schema::new(fields)),
            children,
            summary,
        })
    }

    /// The dataset's field labels as its columns' metadata (and its child tables').
    pub fn with_labels(mut self, labels: &FieldLabels) -> Self {
        self.schema = label_tables(&self.schema, &mut self.children, labels);
        self
    }

    /// The columns a night lands as (scoreland's own last: `event_date`, `batch_id`, `run_id`).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The child tables of exploded list columns, each written beside the table's directory
    /// (`write`'s `out`), in a directory named after it.
    pub fn child_tables(&self) -> Vec<&str> {
        self.children.iter().map(|c| c.table.as_str()).collect()
    }

    /// The summary table, written beside the table's directory like the child tables.
    pub fn summary_table(&self) -> Option<&str> {
        self.summary.as_ref().map(|(t, _)| t.as_str())
    }

    /// Reads the keys (`_id`, `timestamp`) of every staged part, on `workers` threads.
    pub fn scan(
        &self,
        staged: &[StagedBatch],
        workers: usize,
    ) -> Result<EventScan, TransformError> {
        let mut batches: Vec<&StagedBatch> = staged.iter().collect();
        batches.sort_by_key(|b| b.created_ms);
        let files: Vec<(&Path, &str)> = batches
            .iter()
            .flat_map(|b| b.files.iter().map(|f| (f.as_path(), b.batch_id.as_str())))
            .collect();
        if files.is_empty() {
            return Err(TransformError::NoInput);
        }
        let states = on_workers(
            workers,
            files.len(),
            |_| Vec::new(),
            |out: &mut Vec<(usize, PartKeys)>, i| {
                let (file, batch_id) = files[i];
                let mut ids: Vec<ArrayRef> = Vec::new();
                let mut days = Vec::new();
                for batch in read(file, Some(&["_id", "timestamp"]))? {
                    let id = path_array(&batch, "_id").ok_or_else(|| missing(file, "_id"))?;
                    ids.push(cast(&id, &DataType::Utf8).map_err(|e| parquet(file, e))?);
                    days.extend(event_days(&batch, file)?);
                }
                // The part's ids in one array, as read (no string copied one by one).
                let ids: Vec<&dyn Array> = ids.iter().map(|a| a.as_ref()).collect();
                let ids = match ids.as_slice() {
                    [] => StringArray::from(Vec::<Option<&str>>::new()),
                    all => concat(all)
                        .map_err(|e| parquet(file, e))?
                        .as_string::<i32>()
                        .clone(),
                };
                out.push((
                    i,
                    PartKeys {
                        file: file.to_path_buf(),
                        batch_id: batch_id.to_string(),
                        ids,
                        days,
                    },
                ));
                Ok(())
            },
        )?;
        let mut parts: Vec<(usize, PartKeys)> = states.into_iter().flatten().collect();
        parts.sort_by_key(|(i, _)| *i);
        let days: BTreeSet<i32> = parts
            .iter()
            .flat_map(|(_, p)| p.days.iter().flatten().copied())
            .collect();
        Ok(EventScan {
            parts: parts.into_iter().map(|(_, p)| p).collect(),
            dates: days.into_iter().map(day_string).collect(),
        })
    }

    /// Writes the night's new events under `out` (`event_date=…/part-….parquet`): the first
    /// row of each `_id`, oldest batch first, unless a file of `landed` (the table's files of
    /// the night's dates) holds it already.
    pub fn write(
        &self,
        scan: EventScan,
        landed: &[PathBuf],
        run_id: &str,
        out: &Path,
        workers: usize,
    ) -> Result<EventStats, TransformError> {
        // The ids already landed on the night's dates, then the night's own: borrowed from
        // the arrays that hold them.
        let mut landed_ids: Vec<ArrayRef> = Vec::new();
        for file in landed {
            for batch in read(file, Some(&["_id"]))? {
                let ids = path_array(&batch, "_id").ok_or_else(|| missing(file, "_id"))?;
                landed_ids.push(cast(&ids, &DataType::Utf8).map_err(|e| parquet(file, e))?);
            }
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for ids in &landed_ids {
            seen.extend(ids.as_string::<i32>().iter().flatten());
        }
        // The tables' directories even when no row is new: the night lands as empty commits.
        for dir in std::iter::once(out.to_path_buf())
            .chain(self.children.iter().map(|c| out.with_file_name(&c.table)))
        {
            std::fs::create_dir_all(&dir).map_err(|source| TransformError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let mut stats = EventStats {
            columns: self.columns.len(),
            ..Default::default()
        };
        let mut keep: Vec<BooleanArray> = Vec::with_capacity(scan.parts.len());
        let mut dates = BTreeSet::new();
        for part in &scan.parts {
            stats.rows_in += part.ids.len() as u64;
            let mask: BooleanArray = part
                .ids
                .iter()
                .zip(&part.days)
                .map(|(id, day)| {
                    let Some(day) = day else {
                        stats.without_timestamp += 1;
                        return Some(false);
                    };
                    // XDM requires `_id`; a row without one has nothing to be a duplicate of.
                    let new = id.is_none_or(|id| seen.insert(id));
                    if new {
                        dates.insert(*day);
                    } else {
                        stats.duplicates_dropped += 1;
                    }
                    Some(new)
                })
                .collect();
            stats.rows_out += mask.true_count() as u64;
            keep.push(mask);
        }
        drop(seen);
        stats.dates = dates.iter().copied().map(day_string).collect();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .build();
        on_workers(
            workers,
            scan.parts.len(),
            |_| (),
            |_, i| self.write_part(&scan.parts[i], &keep[i], i, run_id, out, &props),
        )?;
        if let Some((table, summary)) = &self.summary {
            // The dates with new events, over all their events: those landed and the new.
            let mut files = landed.to_vec();
            for day in &dates {
                let dir = out.join(format!("{EVENT_DATE}={}", day_string(*day)));
                let listed = std::fs::read_dir(&dir).map_err(|source| TransformError::Io {
                    path: dir.clone(),
                    source,
                })?;
                for entry in listed {
                    let entry = entry.map_err(|source| TransformError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                    files.push(entry.path());
                }
            }
            stats.summary_rows =
                summary.write(&files, &dates, run_id, &out.with_file_name(table), workers)?;
        }
        Ok(stats)
    }

    /// One part's new rows, flattened, one file per event date.
    fn write_part(
        &self,
        part: &PartKeys,
        keep: &BooleanArray,
        index: usize,
        run_id: &str,
        out: &Path,
        props: &WriterProperties,
    ) -> Result<(), TransformError> {
        if keep.true_count() == 0 {
            return Ok(());
        }
        let file = part.file.as_path();
        let paths: Vec<&str> = self.columns.iter().map(|c| c.path.as_str()).collect();
        let mut writers = DayWriters::new(out, self.schema.clone(), index, props);
        let mut child_writers: Vec<DayWriters> = self
            .children
            .iter()
            .map(|c| {
                DayWriters::new(
                    &out.with_file_name(&c.table),
                    c.schema.clone(),
                    index,
                    props,
                )
            })
            .collect();
        let mut offset = 0usize;
        for batch in read(file, Some(&paths))? {
            let n = batch.num_rows();
            let mask = keep.slice(offset, n);
            offset += n;
            if mask.true_count() == 0 {
                continue;
            }
            let mut flat = self.flatten(&batch, file, &part.batch_id, run_id)?;
            if mask.true_count() < n {
                flat = filter_record_batch(&flat, &mask).map_err(|e| parquet(file, e))?;
            }
            let days = flat
                .column_by_name(EVENT_DATE)
                .map(|d| d.as_primitive::<Date32Type>().clone())
                .ok_or_else(|| missing(file, EVENT_DATE))?;
            let distinct: BTreeSet<i32> = days.iter().flatten().collect();
            let one_day = distinct.len() == 1;
            for day in distinct {
                let rows = if one_day {
                    flat.clone()
                } else {
                    let on_day: BooleanArray = days.iter().map(|d| Some(d == Some(day))).collect();
                    filter_record_batch(&flat, &on_day).map_err(|e| parquet(file, e))?
                };
                for (child, w) in self.children.iter().zip(&mut child_writers) {
                    let items = explode(&rows, child).map_err(|e| parquet(file, e))?;
                    if items.num_rows() > 0 {
                        w.write(day, &items)?;
                    }
                }
                writers.write(day, &rows)?;
            }
        }
        writers.close()?;
        for w in child_writers {
            w.close()?;
        }
        Ok(())
    }

    /// One record batch of a part as the table's columns.
    fn flatten(
        &self,
        batch: &RecordBatch,
        file: &Path,
        batch_id: &str,
        run_id: &str,
    ) -> Result<RecordBatch, TransformError> {
        let n = batch.num_rows();
        let mut arrays = flat_columns(&self.columns, batch, file)?;
        arrays.push(Arc::new(
            event_days(batch, file)?
                .into_iter()
                .collect::<datafusion::arrow::array::Date32Array>(),
        ));
        arrays.push(Arc::new(StringArray::from(vec![batch_id; n])));
        arrays.push(Arc::new(StringArray::from(vec![run_id; n])));
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| parquet(file, e))
    }
}

/// One part's files of one table, one per event date, opened as rows for a date come.
struct DayWriters {
    dir: PathBuf,
    schema: SchemaRef,
    index: usize,
    props: WriterProperties,
    open: BTreeMap<i32, (PathBuf, ArrowWriter<File>)>,
}

impl DayWriters {
    fn new(dir: &Path, schema: SchemaRef, index: usize, props: &WriterProperties) -> DayWriters {
        DayWriters {
            dir: dir.to_path_buf(),
            schema,
            index,
            props: props.clone(),
            open: BTreeMap::new(),
        }
    }

    fn write(&mut self, day: i32, rows: &RecordBatch) -> Result<(), TransformError> {
        let (path, writer) = match self.open.entry(day) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let dir = self.dir.join(format!("{EVENT_DATE}={}", day_string(day)));
                std::fs::create_dir_all(&dir).map_err(|source| TransformError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let path = dir.join(format!("part-{:05}.parquet", self.index));
                let f = File::create(&path).map_err(|source| TransformError::Io {
                    path: path.clone(),
                    source,
                })?;
                let w = ArrowWriter::try_new(f, self.schema.clone(), Some(self.props.clone()))
                    .map_err(|e| parquet(&path, e))?;
                e.insert((path, w))
            }
        };
        writer.write(rows).map_err(|e| parquet(path, e))
    }

    fn close(self) -> Result<(), TransformError> {
        for (_, (path, writer)) in self.open {
            writer.close().map_err(|e| parquet(&path, e))?;
        }
        Ok(())
    }
}

/// The items of the child's list column of `rows` as its table's rows: each with its row's
/// parent columns, `batch_id` and `run_id`, and its position in the list (from 0).
pub(crate) fn explode(
    rows: &RecordBatch,
    child: &Child,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let column = child.column.as_str();
    use datafusion::arrow::array::{Int32Array, UInt32Array};
    use datafusion::arrow::compute::take;
    let list = rows
        .column_by_name(column)
        .map(|c| c.as_list::<i32>().clone())
        .ok_or_else(|| {
            datafusion::arrow::error::ArrowError::SchemaError(format!("no column {column}"))
        })?;
    let offsets = list.offsets();
    let (mut parents, mut items, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    for row in 0..list.len() {
        if list.is_null(row) {
            continue;
        }
        let (start, end) = (offsets[row], offsets[row + 1]);
        for k in start..end {
            parents.push(row as u32);
            items.push(k as u32);
            positions.push(k - start);
        }
    }
    let parents = UInt32Array::from(parents);
    let values = take(list.values().as_ref(), &UInt32Array::from(items), None)?;
    let parent = |name: &str| -> Result<ArrayRef, datafusion::arrow::error::ArrowError> {
        let c = rows.column_by_name(name).ok_or_else(|| {
            datafusion::arrow::error::ArrowError::SchemaError(format!("no column {name}"))
        })?;
        take(c.as_ref(), &parents, None)
    };
    let mut arrays = child
        .parents
        .iter()
        .map(|p| parent(p))
        .collect::<Result<Vec<_>, _>>()?;
    arrays.push(Arc::new(Int32Array::from(positions)));
    match values.as_struct_opt() {
        Some(s) => flat_item_arrays(s, child.depth, &mut arrays),
        None => arrays.push(values),
    }
    arrays.push(parent("batch_id")?);
    arrays.push(parent("run_id")?);
    RecordBatch::try_new(child.schema.clone(), arrays)
}

/// A list item's fields as columns: objects flattened to `a_b` columns `depth` levels deep.
fn flat_item_fields(fields: &Fields, prefix: &str, depth: usize, out: &mut Vec<Field>) {
    for f in fields {
        let name = format!("{prefix}{}", f.name());
        match f.data_type() {
            DataType::Struct(inner) if depth > 0 => {
                flat_item_fields(inner, &format!("{name}_"), depth - 1, out)
            }
            ty => out.push(Field::new(name, ty.clone(), true)),
        }
    }
}

/// The arrays of [`flat_item_fields`]' columns: a field of a null object is null.
fn flat_item_arrays(items: &StructArray, depth: usize, out: &mut Vec<ArrayRef>) {
    for (f, column) in items.fields().iter().zip(items.columns()) {
        let column = field_of(items, column);
        match f.data_type() {
            DataType::Struct(_) if depth > 0 => {
                flat_item_arrays(column.as_struct(), depth - 1, out)
            }
            _ => out.push(column),
        }
    }
}

/// Data usage labels of single fields (AEP's `optionalLabels`), by dotted XDM path.
pub type FieldLabels = BTreeMap<String, BTreeSet<String>>;

/// The labels a column at XDM path `path` carries: those of its field, of the objects it is in,
/// and of the fields inside it (a column kept as a struct holds them).
pub fn column_labels(path: &str, labels: &FieldLabels) -> BTreeSet<String> {
    let within = |outer: &str, inner: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner[outer.len()..].starts_with('.')
    };
    labels
        .iter()
        .filter(|(p, _)| *p == path || within(p, path) || within(path, p))
        .flat_map(|(_, l)| l.iter().cloned())
        .collect()
}

/// `schema` with each column's labels in its metadata ([`COLUMN_LABELS`]): `of(field)` gives the
/// XDM path whose labels a column carries (none: scoreland's own columns).
fn with_labels(
    schema: &SchemaRef,
    labels: &FieldLabels,
    of: impl Fn(&Field) -> Option<String>,
) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut meta = f.metadata().clone();
            meta.remove(COLUMN_LABELS);
            if let Some(path) = of(f) {
                meta.entry("xdm_path".to_string())
                    .or_insert_with(|| path.clone());
                let l = column_labels(&path, labels);
                if !l.is_empty() {
                    meta.insert(COLUMN_LABELS.to_string(), join_labels(&l));
                }
            }
            f.as_ref().clone().with_metadata(meta)
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A table's and its child tables' schemas with the labels of their columns (and the XDM path
/// each holds): a child's item columns carry the labels of the list column they come from, the
/// columns it copies from its row (`_id`, a record's identity) those of the row's column.
pub(crate) fn label_tables(
    schema: &SchemaRef,
    children: &mut [Child],
    labels: &FieldLabels,
) -> SchemaRef {
    let xdm_path = |name: &str| {
        schema
            .field_with_name(name)
            .ok()
            .and_then(|f| f.metadata().get("xdm_path").cloned())
    };
    for child in children.iter_mut() {
        let list = xdm_path(&child.column);
        let parents = child.parents.clone();
        child.schema = with_labels(&child.schema, labels, |f| {
            let name = f.name().as_str();
            if parents.iter().any(|p| p == name) {
                xdm_path(name)
            } else if ["position", "batch_id", "run_id"].contains(&name) {
                None
            } else {
                list.clone()
            }
        });
    }
    with_labels(schema, labels, |f| f.metadata().get("xdm_path").cloned())
}

/// The table columns of `columns`, nullable, each with its XDM path and its title and
/// description as its `comment`.
pub(crate) fn column_fields(columns: &[XdmColumn]) -> Vec<Field> {
    columns
        .iter()
        .map(|c| {
            let comment = match (&c.title, &c.description) {
                (Some(t), Some(d)) => Some(format!("{t}: {d}")),
                (Some(t), None) => Some(t.clone()),
                (None, d) => d.clone(),
            };
            let mut meta = HashMap::from([("xdm_path".to_string(), c.path.clone())]);
            if let Some(comment) = comment {
                meta.insert("comment".to_string(), comment);
            }
            Field::new(&c.name, c.data_type.clone(), true).with_metadata(meta)
        })
        .collect()
}

/// `columns` read out of one record batch of XDM rows: each at its path, conformed to its type
/// (a field the rows lack is null); a type the schema does not allow is refused.
pub(crate) fn flat_columns(
    columns: &[XdmColumn],
    batch: &RecordBatch,
    file: &Path,
) -> Result<Vec<ArrayRef>, TransformError> {
    let n = batch.num_rows();
    columns
        .iter()
        .map(|c| match path_array(batch, &c.path) {
            Some(a) => conform(&a, &c.data_type).map_err(|found| {
                TransformError::Config(format!(
                    "field {} is {found} in {}, but the dataset's schema says {} ({}); the \
                     schema and the files disagree, so nothing was landed",
                    c.path,
                    file.display(),
                    c.data_type,
                    c.xdm_type
                ))
            }),
            // A field this part's rows do not have (older rows, an optional field).
            None => Ok(new_null_array(&c.data_type, n)),
        })
        .collect()
}

/// `array` as `ty`: structs matched field by field by name (a field the array lacks is null,
/// one the type lacks is left out), lists item by item, anything else cast as DataFusion's
/// `CAST` does. `Err` names the array's type when it cannot be.
pub(crate) fn conform(array: &ArrayRef, ty: &DataType) -> Result<ArrayRef, String> {
    if array.data_type() == ty {
        return Ok(array.clone());
    }
    let refuse = || array.data_type().to_string();
    match (array.data_type(), ty) {
        (DataType::Struct(_), DataType::Struct(to)) => {
            let s = array.as_struct();
            let children = to
                .iter()
                .map(|f| match s.column_by_name(f.name()) {
                    Some(c) => conform(c, f.data_type()),
                    None => Ok(new_null_array(f.data_type(), s.len())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let fields: Fields = to
                .iter()
                .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
                .collect();
            StructArray::try_new(fields, children, s.nulls().cloned())
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(|_| refuse())
        }
        (DataType::List(_), DataType::List(item)) => {
            let l = array.as_list::<i32>();
            let values = conform(l.values(), item.data_type())?;
            ListArray::try_new(
                item.clone(),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )
            .map(|a| Arc::new(a) as ArrayRef)
            .map_err(|_| refuse())
        }
        (DataType::Struct(_) | DataType::List(_), _)
        | (_, DataType::Struct(_) | DataType::List(_)) => Err(refuse()),
        _ => crate::flatten::cast_to(array, ty).map_err(|_| refuse()),
    }
}

/// Each row's event date (UTC) from its `timestamp`.
fn event_days(batch: &RecordBatch, file: &Path) -> Result<Vec<Option<i32>>, TransformError> {
    let ts = path_array(batch, "timestamp").ok_or_else(|| missing(file, "timestamp"))?;
    let us = cast(&ts, &DataType::Timestamp(TimeUnit::Microsecond, None)).map_err(|e| {
        TransformError::Config(format!(
            "the timestamp column of {} is {}, not a date-time: {e}",
            file.display(),
            ts.data_type()
        ))
    })?;
    let us = us.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
    Ok(us
        .iter()
        .map(|t| t.map(|t| t.div_euclid(86_400_000_000) as i32))
        .collect())
}

/// The record batches of `file`, only the columns under `paths` when given.
pub(crate) fn read(
    file: &Path,
    paths: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, TransformError> {
    let f = File::open(file).map_err(|source| TransformError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(f).map_err(|source| TransformError::Footer {
            file: file.to_path_buf(),
            source,
        })?;
    let builder = match paths {
        Some(paths) => {
            let mask = leaves(builder.parquet_schema(), paths.iter().map(|p| (*p, false)));
            builder.with_projection(mask)
        }
        None => builder,
    };
    builder
        .build()
        .map_err(|e| parquet(file, e))?
        .map(|b| b.map_err(|e| parquet(file, e)))
        .collect()
}

pub(crate) fn day_string(day: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

pub(crate) fn missing(file: &Path, column: &str) -> TransformError {
    TransformError::MissingColumn {
        file: file.to_path_buf(),
        column: column.to_string(),
    }
}

pub(crate) fn parquet(file: &Path, e: impl std::fmt::Display) -> TransformError {
    TransformError::Parquet {
        file: file.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::Date32Type;
    use scoreland_platform_sim::events::{EVENTS_DATASET, add_event_nights, events_schema};
    use serde_json::json;

    use super::*;

    fn landing() -> DatasetLanding {
        DatasetLanding {
            table: "web_events".into(),
            depth: 3,
            explode: Vec::new(),
            summary: None,
        }
    }

    fn schema(new_field: bool) -> Value {
        json!({
            "title": "Web Events schema",
            "properties": scoreland_platform_sim::xdm_properties(events_schema(new_field).fields()),
        })
    }

    /// Nights `from..to` of the sample events, as staged batches.
    fn nights(dir: &Path, from: u32, to: u32) -> Vec<StagedBatch> {
        let made = add_event_nights(dir, "prod", from, to, 200, 7).unwrap();
        made.iter()
            .enumerate()
            .map(|(i, n)| {
                let parts = dir
                    .join("prod")
                    .join(EVENTS_DATASET)
                    .join(&n.batch_id)
                    .join(format!("{}-1", n.batch_id));
                let mut files: Vec<PathBuf> = std::fs::read_dir(parts)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                files.sort();
                StagedBatch {
                    batch_id: n.batch_id.clone(),
                    created_ms: i64::from(from) + i as i64,
                    files,
                }
            })
            .collect()
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(dir).unwrap() {
            let p = d.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_night_lands_flat_by_event_date_and_each_event_once() {
        let tmp = tempfile::tempdir().unwrap();
        let staged = nights(&tmp.path().join("platform"), 0, 3);
        let ds = EventDataset::new(&schema(true), &landing()).unwrap();
        let out = tmp.path().join("out");
        let scan = ds.scan(&staged, 2).unwrap();
        let stats = ds.write(scan, &[], "run-1", &out, 2).unwrap();
        // Nights 1 and 2 each re-send 6 events of the night before.
        assert_eq!(
            (stats.rows_in, stats.rows_out, stats.duplicates_dropped),
            (600, 588, 12)
        );
        assert_eq!(
            stats.dates,
            ["2026-11-15", "2026-11-16", "2026-11-17", "2026-11-18"]
        );
        let files = files_under(&out);
        let mut rows = 0;
        let mut home = (0, 0);
        for f in &files {
            let date = f
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            for b in read(f, None).unwrap() {
                rows += b.num_rows();
                let schema = b.schema();
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                assert!(
                    names.contains(&"web_webPageDetails_name")
                        && names.contains(&"productListItems"),
                    "{names:?}"
                );
                let day = b
                    .column_by_name(EVENT_DATE)
                    .unwrap()
                    .as_primitive::<Date32Type>()
                    .value(0);
                assert_eq!(format!("{EVENT_DATE}={}", day_string(day)), date);
                let is_home = b.column_by_name("web_webPageDetails_isHomePage").unwrap();
                home.0 += is_home.null_count();
                home.1 += is_home.len() - is_home.null_count();
                let field = b
                    .schema()
                    .field_with_name("web_webPageDetails_URL")
                    .unwrap()
                    .clone();
                assert_eq!(field.metadata()["comment"], "URL");
                assert_eq!(field.metadata()["xdm_path"], "web.webPageDetails.URL");
            }
        }
        assert_eq!(rows, 588);
        // Only the third night's rows have the new field: the older ones have it null.
        assert_eq!(home, (394, 194));

        // The same night again, its dates' landed files given: nothing is new.
        let again = tmp.path().join("again");
        let scan = ds.scan(&staged[2..], 2).unwrap();
        let stats = ds.write(scan, &files, "run-2", &again, 2).unwrap();
        assert_eq!((stats.rows_out, stats.duplicates_dropped), (0, 200));
        assert!(again.is_dir() && files_under(&again).is_empty());
    }

    /// `explode`: a list column's items as a child table beside the events, one row per item
    /// of each new event, with its `_id`, date and position.
    #[test]
    fn exploded_lists_land_one_row_per_item_of_each_new_event() {
        use datafusion::arrow::datatypes::Int32Type;
        let tmp = tempfile::tempdir().unwrap();
        let staged = nights(&tmp.path().join("platform"), 0, 2);
        let mut l = landing();
        l.explode = vec![Explode::Column("productListItems".into())];
        let ds = EventDataset::new(&schema(false), &l).unwrap();
        assert_eq!(ds.child_tables(), ["web_events_productlistitems"]);
        let out = tmp.path().join("work").join("web_events");
        let scan = ds.scan(&staged, 2).unwrap();
        let stats = ds.write(scan, &[], "r", &out, 2).unwrap();
        // The items the events table's lists hold, against the child table's rows.
        let mut items = 0usize;
        for f in files_under(&out) {
            for b in read(&f, None).unwrap() {
                let lists = b
                    .column_by_name("productListItems")
                    .unwrap()
                    .as_list::<i32>()
                    .clone();
                items += (0..lists.len())
                    .filter(|i| !lists.is_null(*i))
                    .map(|i| lists.value_length(i) as usize)
                    .sum::<usize>();
            }
        }
        let child = tmp.path().join("work").join("web_events_productlistitems");
        let mut rows = 0usize;
        let mut ids = BTreeSet::new();
        for f in files_under(&child) {
            let date = f
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            assert!(date.starts_with("event_date="), "{date}");
            for b in read(&f, None).unwrap() {
                rows += b.num_rows();
                let names: Vec<String> = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                assert_eq!(
                    names,
                    [
                        "_id",
                        "event_date",
                        "position",
                        "SKU",
                        "priceTotal",
                        "quantity",
                        "batch_id",
                        "run_id"
                    ]
                );
                let pos = b
                    .column_by_name("position")
                    .unwrap()
                    .as_primitive::<Int32Type>();
                assert!(pos.iter().all(|p| p.is_some_and(|p| (0..3).contains(&p))));
                ids.extend(
                    b.column_by_name("_id")
                        .unwrap()
                        .as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(str::to_string),
                );
            }
        }
        assert!(items > 0);
        assert_eq!(rows, items);
        assert!(ids.len() as u64 <= stats.rows_out);
        let mut bad = landing();
        bad.explode = vec![Explode::Column("eventType".into())];
        let e = EventDataset::new(&schema(false), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a list column"), "{e}");
    }

    #[test]
    fn a_schema_and_files_that_disagree_are_refused_naming_both_types() {
        let tmp = tempfile::tempdir().unwrap();
        let staged = nights(&tmp.path().join("platform"), 0, 1);
        let mut s = schema(false);
        s["properties"]["eventType"] = json!({"type": "integer", "meta:xdmType": "long"});
        let ds = EventDataset::new(&s, &landing()).unwrap();
        let scan = ds.scan(&staged, 1).unwrap();
        let e = ds
            .write(scan, &[], "r", &tmp.path().join("out"), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field eventType is Utf8") && e.contains("schema says Int64"),
            "{e}"
        );
    }

    #[test]
    fn only_experience_events_and_plain_table_names_are_landed() {
        let record = json!({"title": "Profile", "properties": {"person": {"type": "string"}}});
        let e = EventDataset::new(&record, &landing())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not an ExperienceEvent's") && e.contains("Profile"),
            "{e}"
        );
        // `_id` and `timestamp` are not enough when the registry names another class.
        let mut profile = schema(false);
        profile["meta:class"] = json!("https://ns.adobe.com/xdm/context/profile");
        let e = EventDataset::new(&profile, &landing())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("class https://ns.adobe.com/xdm/context/profile"),
            "{e}"
        );
        profile["meta:extends"] = json!([EVENT_CLASS]);
        assert!(EventDataset::new(&profile, &landing()).is_ok());
        for bad in ["Scores", "", "1x", "a-b", "_state"] {
            let l = DatasetLanding {
                table: bad.into(),
                depth: 3,
                explode: Vec::new(),
                summary: None,
            };
            assert!(l.validate().is_err(), "{bad}");
        }
        let mut clash = schema(false);
        clash["properties"]["event_date"] = json!({"type": "string"});
        let e = EventDataset::new(&clash, &landing())
            .unwrap_err()
            .to_string();
        assert!(e.contains("scoreland adds itself"), "{e}");
    }
}
