//! A record dataset (profile attributes and other non-event classes), landed from its schema:
//! one row per primary identity, the newest. The identity is the path the schema's primary
//! identity descriptor names; it must land as a column (not inside an object kept as a struct).
//!
//! A night merges with what is landed: a keys pass reads the identity of every landed row and
//! every staged row (landed first, then the batches oldest first, each in row order) and keeps
//! the last row of each identity; the write pass then writes those rows, landed or new, on
//! every core. The table is written whole for the dataset each night (the publish replaces
//! the dataset's files in one commit), so it always holds one row per identity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, new_null_array,
};
use datafusion::arrow::compute::{cast, concat, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde::Serialize;
use serde_json::Value;

use crate::dataset::{
    Child, DatasetLanding, children, column_fields, conform, explode, flat_columns, missing,
    parquet, read,
};
use crate::error::TransformError;
use crate::flatten::path_array;
use crate::run::StagedBatch;
use crate::workers::on_workers;
use crate::xdm::{XdmColumn, columns};

/// What landing a night of records did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecordStats {
    /// Rows staged this night.
    pub rows_in: u64,
    /// Rows in the table after it: one per identity.
    pub rows_out: u64,
    /// Identities new this night.
    pub added: u64,
    /// Landed rows a newer row of their identity replaced.
    pub replaced: u64,
    /// Staged rows an even newer row of their identity (later in the night) replaced.
    pub superseded: u64,
    /// Staged rows without an identity: not landed.
    pub without_identity: u64,
}

/// A record dataset's columns, from its schema and its primary identity.
#[derive(Debug, Clone)]
pub struct RecordDataset {
    columns: Vec<XdmColumn>,
    schema: SchemaRef,
    /// The identity's dotted path in the rows, and its column.
    identity: String,
    key: String,
    /// Exploded list columns: each item of each row, keyed by the row's identity.
    children: Vec<Child>,
}

/// One input of a night, in the order rows are newer.
struct Input<'a> {
    file: &'a Path,
    /// `None` for a file of the table (flat), else the staged batch's id.
    batch: Option<&'a str>,
}

impl RecordDataset {
    /// `schema` (the Schema Registry's `xed-full` form) of a dataset that is not an
    /// ExperienceEvent's, keyed by `identity` (the primary identity descriptor's path, dotted).
    pub fn new(
        schema: &Value,
        landing: &DatasetLanding,
        identity: &str,
    ) -> Result<RecordDataset, TransformError> {
        let columns = columns(schema, landing.depth)?;
        if landing.summary.is_some() {
            return Err(TransformError::Config(
                "dataset.summary is for ExperienceEvent datasets (Attribution AI's scores)".into(),
            ));
        }
        if crate::dataset::is_event_schema(schema) {
            return Err(TransformError::Config(
                "an ExperienceEvent dataset lands as events, not records".into(),
            ));
        }
        let key = columns
            .iter()
            .find(|c| c.path == identity)
            .ok_or_else(|| {
                TransformError::Config(format!(
                    "the primary identity {identity} is not a column at depth {} (it is inside an \
                     object kept as a struct, or not in the schema); land with a greater depth",
                    landing.depth
                ))
            })?
            .name
            .clone();
        if let Some(c) = columns
            .iter()
            .find(|c| ["batch_id", "run_id", "dataset_id"].contains(&c.name.as_str()))
        {
            return Err(TransformError::Config(format!(
                "the schema's field {} flattens to column {}, which scoreland adds itself; land \
                 with another depth",
                c.path, c.name
            )));
        }
        let mut fields = column_fields(&columns);
        fields.push(Field::new("batch_id", DataType::Utf8, true));
        fields.push(Field::new("run_id", DataType::Utf8, true));
        let children = children(&columns, landing, &[Field::new(&key, DataType::Utf8, true)])?;
        Ok(RecordDataset {
            columns,
            schema: Arc::new(Schema::new(fields)),
            identity: identity.to_string(),
            key,
            children,
        })
    }

    /// The dataset's field labels as its columns' metadata (and its child tables').
    pub fn with_labels(mut self, labels: &crate::dataset::FieldLabels) -> Self {
        self.schema = crate::dataset::label_tables(&self.schema, &mut self.children, labels);
        self
    }

    /// The columns the table lands as.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The table's column that holds the identity.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The child tables of exploded list columns, each written beside the table's directory
    /// (`land`'s `out`) and replaced whole with it.
    pub fn child_tables(&self) -> Vec<&str> {
        self.children.iter().map(|c| c.table.as_str()).collect()
    }

    /// Writes the table's new content for the dataset under `out`: the newest row of each
    /// identity among `landed` (the table's files of the dataset) and `staged`.
    pub fn land(
        &self,
        staged: &[StagedBatch],
        landed: &[PathBuf],
        run_id: &str,
        out: &Path,
        workers: usize,
    ) -> Result<RecordStats, TransformError> {
        let mut batches: Vec<&StagedBatch> = staged.iter().collect();
        batches.sort_by_key(|b| b.created_ms);
        let inputs: Vec<Input> = landed
            .iter()
            .map(|f| Input {
                file: f,
                batch: None,
            })
            .chain(batches.iter().flat_map(|b| {
                b.files.iter().map(|f| Input {
                    file: f,
                    batch: Some(b.batch_id.as_str()),
                })
            }))
            .collect();
        for dir in std::iter::once(out.to_path_buf())
            .chain(self.children.iter().map(|c| out.with_file_name(&c.table)))
        {
            std::fs::create_dir_all(&dir).map_err(|source| TransformError::Io {
                path: dir.clone(),
                source,
            })?;
        }

        // The keys, input by input, as read.
        let keys = on_workers(
            workers,
            inputs.len(),
            |_| Vec::new(),
            |got: &mut Vec<(usize, StringArray)>, i| {
                got.push((i, self.keys(&inputs[i])?));
                Ok(())
            },
        )?;
        let mut keys: Vec<(usize, StringArray)> = keys.into_iter().flatten().collect();
        keys.sort_by_key(|(i, _)| *i);

        // The newest row of each identity: the last one, inputs in order.
        let mut stats = RecordStats::default();
        let mut newest: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, ids) in &keys {
            let staged_input = inputs[*i].batch.is_some();
            for (row, id) in ids.iter().enumerate() {
                if staged_input {
                    stats.rows_in += 1;
                }
                let Some(id) = id else {
                    if staged_input {
                        stats.without_identity += 1;
                    }
                    continue;
                };
                match newest.insert(id, (*i, row)) {
                    None if staged_input => stats.added += 1,
                    None => {}
                    Some((before, _)) if inputs[before].batch.is_none() => stats.replaced += 1,
                    Some(_) => stats.superseded += 1,
                }
            }
        }
        stats.rows_out = newest.len() as u64;
        let mut keep: Vec<Vec<bool>> = keys.iter().map(|(_, k)| vec![false; k.len()]).collect();
        for (i, row) in newest.values() {
            keep[*i][*row] = true;
        }
        drop(newest);
        let keep: Vec<BooleanArray> = keep.into_iter().map(BooleanArray::from).collect();

        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .build();
        on_workers(
            workers,
            inputs.len(),
            |_| (),
            |_, i| self.write_input(&inputs[i], &keep[i], i, run_id, out, &props),
        )?;
        Ok(stats)
    }

    /// The identities of one input's rows, in order.
    fn keys(&self, input: &Input) -> Result<StringArray, TransformError> {
        let file = input.file;
        let (column, path) = match input.batch {
            None => (self.key.as_str(), self.key.as_str()),
            Some(_) => (self.identity.as_str(), self.identity.as_str()),
        };
        let mut parts: Vec<ArrayRef> = Vec::new();
        for batch in read(file, Some(&[path]))? {
            let ids = path_array(&batch, column).ok_or_else(|| missing(file, column))?;
            parts.push(cast(&ids, &DataType::Utf8).map_err(|e| parquet(file, e))?);
        }
        let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        Ok(match parts.as_slice() {
            [] => StringArray::from(Vec::<Option<&str>>::new()),
            all => concat(all)
                .map_err(|e| parquet(file, e))?
                .as_string::<i32>()
                .clone(),
        })
    }

    /// One input's kept rows, as the table's columns, into `out/part-{index}.parquet`.
    fn write_input(
        &self,
        input: &Input,
        keep: &BooleanArray,
        index: usize,
        run_id: &str,
        out: &Path,
        props: &WriterProperties,
    ) -> Result<(), TransformError> {
        if keep.true_count() == 0 {
            return Ok(());
        }
        let file = input.file;
        let path = out.join(format!("part-{index:05}.parquet"));
        let f = std::fs::File::create(&path).map_err(|source| TransformError::Io {
            path: path.clone(),
            source,
        })?;
        let mut writer = ArrowWriter::try_new(f, self.schema.clone(), Some(props.clone()))
            .map_err(|e| parquet(&path, e))?;
        let mut child_writers = self
            .children
            .iter()
            .map(|c| {
                let path = out
                    .with_file_name(&c.table)
                    .join(format!("part-{index:05}.parquet"));
                let f = std::fs::File::create(&path).map_err(|source| TransformError::Io {
                    path: path.clone(),
                    source,
                })?;
                let w = ArrowWriter::try_new(f, c.schema.clone(), Some(props.clone()))
                    .map_err(|e| parquet(&path, e))?;
                Ok((path, w))
            })
            .collect::<Result<Vec<_>, TransformError>>()?;
        let mut offset = 0;
        for batch in read(file, None)? {
            let n = batch.num_rows();
            let mask = keep.slice(offset, n);
            offset += n;
            if mask.true_count() == 0 {
                continue;
            }
            let mut arrays = match input.batch {
                Some(_) => flat_columns(&self.columns, &batch, file)?,
                None => self.landed_columns(&batch, file)?,
            };
            let batch_id = match input.batch {
                Some(id) => Arc::new(StringArray::from(vec![id; n])) as ArrayRef,
                None => batch
                    .column_by_name("batch_id")
                    .cloned()
                    .unwrap_or_else(|| new_null_array(&DataType::Utf8, n)),
            };
            arrays.push(batch_id);
            // Every row of the night's table is written by this run.
            arrays.push(Arc::new(StringArray::from(vec![run_id; n])));
            let flat =
                RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| parquet(file, e))?;
            let rows = if mask.true_count() < n {
                filter_record_batch(&flat, &mask).map_err(|e| parquet(file, e))?
            } else {
                flat
            };
            for (child, (child_path, w)) in self.children.iter().zip(&mut child_writers) {
                let items = explode(&rows, child).map_err(|e| parquet(file, e))?;
                w.write(&items).map_err(|e| parquet(child_path, e))?;
            }
            writer.write(&rows).map_err(|e| parquet(&path, e))?;
        }
        writer.close().map_err(|e| parquet(&path, e))?;
        for (child_path, w) in child_writers {
            w.close().map_err(|e| parquet(&child_path, e))?;
        }
        Ok(())
    }

    /// A landed (flat) batch as today's columns: by name, a column the schema gained is null.
    fn landed_columns(
        &self,
        batch: &RecordBatch,
        file: &Path,
    ) -> Result<Vec<ArrayRef>, TransformError> {
        let n = batch.num_rows();
        self.columns
            .iter()
            .map(|c| match batch.column_by_name(&c.name) {
                Some(a) => conform(a, &c.data_type).map_err(|found| {
                    TransformError::Config(format!(
                        "column {} is {found} in the landed file {}, but the dataset's schema \
                         now says {}; a type change is refused",
                        c.name,
                        file.display(),
                        c.data_type
                    ))
                }),
                None => Ok(new_null_array(&c.data_type, n)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use scoreland_platform_sim::records::{
        IDENTITY_PROPERTY, RECORDS_DATASET, add_record_nights, member_at, member_id, records_schema,
    };
    use serde_json::json;

    use super::*;

    fn landing() -> DatasetLanding {
        DatasetLanding {
            table: "loyalty_members".into(),
            depth: 3,
            explode: Vec::new(),
            summary: None,
        }
    }

    fn schema() -> Value {
        json!({
            "title": "Loyalty Members schema",
            "meta:class": "https://ns.adobe.com/xdm/data/record",
            "properties": scoreland_platform_sim::xdm_properties(records_schema().fields()),
        })
    }

    fn identity() -> String {
        IDENTITY_PROPERTY.trim_start_matches('/').replace('/', ".")
    }

    fn night(dir: &Path, n: u32) -> StagedBatch {
        let made = add_record_nights(dir, "prod", n, n + 1, 200, 7).unwrap();
        let id = &made[0].batch_id;
        let parts = dir
            .join("prod")
            .join(RECORDS_DATASET)
            .join(id)
            .join(format!("{id}-1"));
        StagedBatch {
            batch_id: id.clone(),
            created_ms: i64::from(n),
            files: std::fs::read_dir(parts)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect(),
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    }

    /// (member id → points) of a landed table.
    fn points(dir: &Path) -> HashMap<String, i64> {
        let mut out = HashMap::new();
        for f in files(dir) {
            for b in read(&f, None).unwrap() {
                let ids = b.column_by_name("_acmeretail_loyalty_memberId").unwrap();
                let pts = b.column_by_name("_acmeretail_loyalty_points").unwrap();
                let pts = pts
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .clone();
                for (i, id) in ids.as_string::<i32>().iter().enumerate() {
                    assert!(
                        out.insert(id.unwrap().to_string(), pts.value(i)).is_none(),
                        "one row per identity"
                    );
                }
            }
        }
        out
    }

    #[test]
    fn the_newest_row_of_each_identity_is_kept_across_nights() {
        let tmp = tempfile::tempdir().unwrap();
        let platform = tmp.path().join("platform");
        let ds = RecordDataset::new(&schema(), &landing(), &identity()).unwrap();
        assert_eq!(ds.key(), "_acmeretail_loyalty_memberId");

        let one = tmp.path().join("one");
        let s = ds.land(&[night(&platform, 0)], &[], "r1", &one, 2).unwrap();
        assert_eq!(
            (s.rows_in, s.rows_out, s.added, s.replaced),
            (200, 200, 200, 0)
        );

        // Night 1: 20 members updated (2 of them sent twice, stale first) and 10 new.
        let two = tmp.path().join("two");
        let s = ds
            .land(&[night(&platform, 1)], &files(&one), "r2", &two, 2)
            .unwrap();
        assert_eq!(
            (s.rows_in, s.rows_out, s.added, s.replaced, s.superseded),
            (32, 210, 10, 20, 2)
        );
        let got = points(&two);
        assert_eq!(got.len(), 210);
        assert_eq!(
            got[&member_id(1)],
            member_at(1, 1).1,
            "the later row of the two"
        );
        assert_eq!(
            got[&member_id(2)],
            member_at(2, 0).1,
            "not updated: night 0's"
        );
        assert_eq!(got[&member_id(205)], member_at(205, 1).1);
    }

    /// `explode` on records: the items of each landed row, keyed by its identity, written whole
    /// with the table every night (an item of a replaced row goes with it).
    #[test]
    fn exploded_lists_of_records_follow_their_rows() {
        use scoreland_platform_sim::records::rewards_at;
        let tmp = tempfile::tempdir().unwrap();
        let platform = tmp.path().join("platform");
        let mut l = landing();
        l.explode = vec![crate::dataset::Explode::Named(
            crate::dataset::NamedExplode {
                column: "_acmeretail_loyalty_rewards".into(),
                table: "loyalty_rewards".into(),
            },
        )];
        let ds = RecordDataset::new(&schema(), &l, &identity()).unwrap();
        assert_eq!(ds.child_tables(), ["loyalty_rewards"]);
        let one = tmp.path().join("one").join("loyalty_members");
        ds.land(&[night(&platform, 0)], &[], "r1", &one, 2).unwrap();
        let two = tmp.path().join("two").join("loyalty_members");
        ds.land(&[night(&platform, 1)], &files(&one), "r2", &two, 2)
            .unwrap();
        // (member → its rewards' codes, by position) in the child table.
        let mut items: HashMap<String, Vec<(i32, String)>> = HashMap::new();
        for f in files(&tmp.path().join("two").join("loyalty_rewards")) {
            for b in read(&f, None).unwrap() {
                let names: Vec<&str> = b
                    .schema_ref()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                assert_eq!(
                    names,
                    [
                        "_acmeretail_loyalty_memberId",
                        "position",
                        "code",
                        "points",
                        "batch_id",
                        "run_id"
                    ]
                );
                let ids = b.column(0).as_string::<i32>();
                let pos = b
                    .column(1)
                    .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
                let codes = b.column(2).as_string::<i32>();
                for i in 0..b.num_rows() {
                    items
                        .entry(ids.value(i).to_string())
                        .or_default()
                        .push((pos.value(i), codes.value(i).to_string()));
                }
            }
        }
        let codes = |m: u64, n: u32| -> Vec<(i32, String)> {
            rewards_at(m, n)
                .into_iter()
                .enumerate()
                .map(|(k, (c, _))| (k as i32, c))
                .collect()
        };
        let table = points(&two);
        let items_of = |m: u64| items.get(&member_id(m)).cloned().unwrap_or_default();
        // Member 1 was updated on night 1 (its rewards with it); member 2 was not.
        assert_eq!(items_of(1), codes(1, 1));
        assert_eq!(items_of(2), codes(2, 0));
        assert_eq!(items_of(205), codes(205, 1));
        let total: usize = items.values().map(Vec::len).sum();
        let expected: usize = table
            .keys()
            .map(|id| {
                let m: u64 = id.trim_start_matches("LM").parse().unwrap();
                let updated = scoreland_platform_sim::records::night_members(200, 1)
                    .iter()
                    .any(|(u, _)| *u == m);
                rewards_at(m, u32::from(updated)).len()
            })
            .sum();
        assert_eq!(total, expected);
    }

    #[test]
    fn an_identity_inside_a_struct_or_an_event_schema_is_refused() {
        let shallow = DatasetLanding {
            table: "t".into(),
            depth: 1,
            explode: Vec::new(),
            summary: None,
        };
        let e = RecordDataset::new(&schema(), &shallow, &identity())
            .unwrap_err()
            .to_string();
        assert!(e.contains("greater depth"), "{e}");
        let mut events = schema();
        events["meta:class"] = json!(crate::dataset::EVENT_CLASS);
        assert!(RecordDataset::new(&events, &landing(), &identity()).is_err());
    }
}
