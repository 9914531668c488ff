//! The transform's parquet files as Delta data files: each file's partition, row count and
//! column statistics, read from its footer. A run commits the files it wrote as Delta `add`
//! actions, so nothing is decoded and encoded a second time on the way into a table.

use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use deltalake::datafusion::scalar::ScalarValue;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::file::metadata::ParquetMetaData;
use serde_json::{Map, Value, json};

use crate::error::SinkError;

/// One parquet file the transform wrote.
#[derive(Debug)]
pub(crate) struct DataFile {
    pub local: PathBuf,
    /// The file's date partition directory (`score_date=…`, `night=…`), if it is in one.
    pub date: Option<String>,
    pub schema: SchemaRef,
    /// Delta's per-file statistics: `numRecords`, and `minValues`, `maxValues` and
    /// `nullCount` of the top-level columns whose footer statistics are exact.
    pub stats: Value,
}

impl DataFile {
    /// The single value of column `name` in this file, if its statistics show one.
    pub fn only_value(&self, name: &str) -> Option<&Value> {
        let min = self.stats["minValues"].get(name)?;
        (self.stats["maxValues"].get(name) == Some(min)).then_some(min)
    }

    pub fn rows(&self) -> i64 {
        self.stats["numRecords"].as_i64().unwrap_or(0)
    }
}

/// Every parquet file under `dir` (directly, or in `<date_column>=` directories), in path
/// order; statistics skip the columns in `skip` (partition columns, whose value is the
/// directory's).
pub(crate) fn data_files(
    dir: &Path,
    skip: &[&str],
    date_column: &str,
) -> Result<Vec<DataFile>, SinkError> {
    let mut found = Vec::new();
    collect(dir, date_column, None, &mut found)?;
    found.sort();
    found
        .into_iter()
        .map(|(local, score_date)| read(local, score_date, skip))
        .collect()
}

fn collect(
    dir: &Path,
    date_column: &str,
    score_date: Option<&str>,
    found: &mut Vec<(PathBuf, Option<String>)>,
) -> Result<(), SinkError> {
    let local_err = |source| SinkError::Local {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(local_err)? {
        let entry = entry.map_err(local_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(['.', '_']) {
            continue;
        }
        if path.is_dir() {
            if let Some(d) = name
                .strip_prefix(date_column)
                .and_then(|n| n.strip_prefix('='))
                && score_date.is_none()
                // Only dates: the value goes into a predicate.
                && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()
            {
                collect(&path, date_column, Some(d), found)?;
            }
        } else if name.ends_with(".parquet") {
            found.push((path, score_date.map(str::to_string)));
        }
    }
    Ok(())
}

fn read(local: PathBuf, score_date: Option<String>, skip: &[&str]) -> Result<DataFile, SinkError> {
    let parquet_err = |source| SinkError::Parquet {
        path: local.clone(),
        source,
    };
    let file = std::fs::File::open(&local).map_err(|source| SinkError::Local {
        path: local.clone(),
        source,
    })?;
    let meta = ArrowReaderMetadata::load(&file, Default::default()).map_err(parquet_err)?;
    let schema = meta.schema().clone();
    let stats = stats(meta.metadata(), &schema, skip);
    Ok(DataFile {
        local,
        date: score_date,
        schema,
        stats,
    })
}

/// Delta statistics of one file from its row groups' footer statistics. A column whose
/// statistics are missing or inexact (truncated strings) in any row group with values gets no
/// bounds: readers then read the file rather than skip it wrongly.
fn stats(meta: &ParquetMetaData, schema: &Schema, skip: &[&str]) -> Value {
    let row_groups = meta.row_groups();
    let (mut mins, mut maxes, mut nulls) = (Map::new(), Map::new(), Map::new());
    for field in schema.fields() {
        let name = field.name();
        if skip.contains(&name.as_str()) || field.data_type().is_nested() {
            continue;
        }
        let Ok(conv) =
            StatisticsConverter::try_new(name, schema, meta.file_metadata().schema_descr())
        else {
            continue;
        };
        let Ok(counts) = conv.row_group_null_counts(row_groups) else {
            continue;
        };
        if counts.null_count() > 0 {
            continue; // a row group without a null count: nothing is known
        }
        nulls.insert(name.clone(), json!(counts.values().iter().sum::<u64>()));
        if !has_bounds(field.data_type()) {
            continue;
        }
        let (Ok(lo), Ok(hi), Ok(lo_exact), Ok(hi_exact)) = (
            conv.row_group_mins(row_groups),
            conv.row_group_maxes(row_groups),
            conv.row_group_is_min_value_exact(row_groups),
            conv.row_group_is_max_value_exact(row_groups),
        ) else {
            continue;
        };
        let mut bounds: Option<(ScalarValue, ScalarValue)> = None;
        let mut known = true;
        for (i, rg) in row_groups.iter().enumerate() {
            if counts.value(i) as i64 == rg.num_rows() {
                continue; // only nulls: no bounds to take
            }
            let exact = |a: &dyn Array, flags: &arrow::array::BooleanArray| {
                a.is_valid(i) && flags.is_valid(i) && flags.value(i)
            };
            if !exact(&lo, &lo_exact) || !exact(&hi, &hi_exact) {
                known = false;
                break;
            }
            let (Some(a), Some(b)) = (scalar(&lo, i), scalar(&hi, i)) else {
                known = false;
                break;
            };
            bounds = Some(match bounds {
                None => (a, b),
                Some((l, h)) => (if a < l { a } else { l }, if b > h { b } else { h }),
            });
        }
        if let (true, Some((l, h))) = (known, bounds)
            && let (Some(l), Some(h)) = (json_value(&l), json_value(&h))
        {
            mins.insert(name.clone(), l);
            maxes.insert(name.clone(), h);
        }
    }
    json!({
        "numRecords": meta.file_metadata().num_rows(),
        "minValues": mins,
        "maxValues": maxes,
        "nullCount": nulls,
    })
}

/// Types whose bounds Delta readers use to skip files.
fn has_bounds(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Date32
            | DataType::Timestamp(TimeUnit::Microsecond, _)
    )
}

fn scalar(a: &ArrayRef, i: usize) -> Option<ScalarValue> {
    ScalarValue::try_from_array(a, i).ok()
}

/// A bound as Delta's statistics JSON spells it.
fn json_value(v: &ScalarValue) -> Option<Value> {
    Some(match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => json!(s),
        ScalarValue::Int8(Some(n)) => json!(n),
        ScalarValue::Int16(Some(n)) => json!(n),
        ScalarValue::Int32(Some(n)) => json!(n),
        ScalarValue::Int64(Some(n)) => json!(n),
        ScalarValue::Float32(Some(x)) if x.is_finite() => json!(x),
        ScalarValue::Float64(Some(x)) if x.is_finite() => json!(x),
        ScalarValue::Date32(Some(d)) => {
            json!(
                chrono::DateTime::from_timestamp(i64::from(*d) * 86_400, 0)?
                    .format("%Y-%m-%d")
                    .to_string()
            )
        }
        ScalarValue::TimestampMicrosecond(Some(us), _) => {
            json!(
                chrono::DateTime::from_timestamp_micros(*us)?
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string()
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Float64Array, RecordBatch, StringArray};
    use arrow::datatypes::Field;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    #[test]
    fn statistics_span_row_groups_and_skip_nulls_and_inexact_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("score_date=2026-11-16");
        std::fs::create_dir_all(&part).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("identity", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
            Field::new("score_date", DataType::Date32, false),
            Field::new("note", DataType::Utf8, true),
        ]));
        let long = "x".repeat(100); // longer than the writer's statistics: truncated, inexact
        let batch = |ids: Vec<Option<&str>>, scores: Vec<Option<f64>>| {
            let n = ids.len();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(Float64Array::from(scores)),
                    Arc::new(Date32Array::from(vec![20_408; n])),
                    Arc::new(StringArray::from(vec![Some(long.as_str()); n])),
                ],
            )
            .unwrap()
        };
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(2))
            .build();
        let path = part.join("a.parquet");
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema.clone(),
            Some(props),
        )
        .unwrap();
        w.write(&batch(vec![Some("m"), Some("c")], vec![Some(0.5), None]))
            .unwrap();
        w.write(&batch(vec![None, None], vec![Some(0.25), Some(0.75)]))
            .unwrap();
        w.write(&batch(
            vec![Some("z"), Some("d")],
            vec![Some(0.1), Some(0.9)],
        ))
        .unwrap();
        w.close().unwrap();
        std::fs::write(dir.path().join("_SUCCESS"), "").unwrap();

        let files = data_files(dir.path(), &["score_date"], "score_date").unwrap();
        assert_eq!(files.len(), 1);
        let f = &files[0];
        assert_eq!(f.date.as_deref(), Some("2026-11-16"));
        assert_eq!(f.rows(), 6);
        assert_eq!(f.stats["minValues"]["identity"], json!("c"));
        assert_eq!(f.stats["maxValues"]["identity"], json!("z"));
        assert_eq!(f.stats["nullCount"]["identity"], json!(2));
        assert_eq!(f.stats["minValues"]["score"], json!(0.1));
        assert_eq!(f.stats["maxValues"]["score"], json!(0.9));
        assert_eq!(f.stats["nullCount"]["score"], json!(1));
        assert!(f.stats["minValues"].get("score_date").is_none());
        assert!(f.stats["maxValues"].get("note").is_none(), "{}", f.stats);
        assert_eq!(f.stats["nullCount"]["note"], json!(0));
        assert_eq!(f.only_value("identity"), None);
    }
}
