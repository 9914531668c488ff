//! Attribution AI's summaries (`[transform.dataset] summary = "attribution"`): over an events
//! table of scored conversions (Adobe's raw granular scores, each conversion with its
//! `touchpointsDetail[]` and every touchpoint's `scores` under each attribution model), one row
//! per event date, conversion name and touchpoint name: how many conversions the touchpoint
//! took part in, how many times it occurred, and under each model the conversions credited to
//! it (the sum of its scores) and the revenue credited to it (scores × `conversion.priceTotal`).
//!
//! A date's summary is computed from all of that date's landed conversions and the night's new
//! ones, so a late conversion updates its date's rows rather than adding a second set.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::dataset::{EVENT_DATE, day_string, missing, parquet, read};
use crate::error::TransformError;
use crate::flatten::path_array;
use crate::workers::on_workers;
use crate::xdm::XdmColumn;

/// The list of touchpoints of a conversion, as Attribution AI names it.
const TOUCHPOINTS: &str = "touchpointsDetail";

/// Where the summary's inputs are in the events table, and the models it sums.
#[derive(Debug, Clone)]
pub(crate) struct AttributionSummary {
    /// Paths in the landed rows (`column.field…`).
    conversion_name: Option<String>,
    price_total: Option<String>,
    touchpoints: String,
    /// The numeric fields of a touchpoint's `scores`: the attribution models.
    models: Vec<String>,
    schema: SchemaRef,
}

type Key = (i32, Option<String>, Option<String>);

#[derive(Debug, Clone)]
struct Credit {
    conversions: i64,
    touchpoints: i64,
    scores: Vec<f64>,
    revenue: Vec<f64>,
}

impl AttributionSummary {
    /// Finds the scores in `schema` (the Schema Registry's form): the object that holds a
    /// `touchpointsDetail` array of items with `touchpointName` and numeric `scores`.
    pub(crate) fn new(schema: &Value, columns: &[XdmColumn]) -> Result<Self, TransformError> {
        let refuse = |what: &str| {
            TransformError::Config(format!(
                "summary = \"attribution\": {what}; it is for Attribution AI's scores dataset \
                 (`_<tenant>.<object>.touchpointsDetail[]` with `touchpointName` and `scores`)"
            ))
        };
        let object = find_object_with(schema, TOUCHPOINTS, "")
            .ok_or_else(|| refuse("the schema has no touchpointsDetail array"))?;
        let at = |field: &str| {
            let xdm = if object.is_empty() {
                field.to_string()
            } else {
                format!("{object}.{field}")
            };
            located(columns, &xdm)
        };
        let (touchpoints, list_type) =
            at(TOUCHPOINTS).ok_or_else(|| refuse("touchpointsDetail is not a column"))?;
        let DataType::List(item) = list_type else {
            return Err(refuse("touchpointsDetail is not a list"));
        };
        let DataType::Struct(item) = item.data_type() else {
            return Err(refuse("touchpointsDetail's items are not objects"));
        };
        if item
            .find("touchpointName")
            .is_none_or(|(_, f)| f.data_type() != &DataType::Utf8)
        {
            return Err(refuse(
                "touchpointsDetail's items have no touchpointName string",
            ));
        }
        let models: Vec<String> = match item.find("scores").map(|(_, f)| f.data_type()) {
            Some(DataType::Struct(scores)) => scores
                .iter()
                .filter(|f| f.data_type().is_numeric())
                .map(|f| f.name().clone())
                .collect(),
            _ => Vec::new(),
        };
        if models.is_empty() {
            return Err(refuse("touchpointsDetail's items have no numeric scores"));
        }
        let conversion_name = at("conversionName").map(|(p, _)| p);
        let price_total = at("conversion.priceTotal").map(|(p, _)| p);
        let mut fields = vec![
            Field::new(EVENT_DATE, DataType::Date32, true),
            Field::new("conversion_name", DataType::Utf8, true),
            Field::new("touchpoint_name", DataType::Utf8, true),
            Field::new("conversions", DataType::Int64, true),
            Field::new("touchpoints", DataType::Int64, true),
        ];
        for m in &models {
            fields.push(Field::new(snake(m), DataType::Float64, true));
        }
        if price_total.is_some() {
            for m in &models {
                fields.push(Field::new(
                    format!("{}_revenue", snake(m)),
                    DataType::Float64,
                    true,
                ));
            }
        }
        fields.push(Field::new("run_id", DataType::Utf8, true));
        Ok(AttributionSummary {
            conversion_name,
            price_total,
            touchpoints,
            models,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The summary of `dates` (days since the epoch) over the events in `files` (the table's
    /// landed files of those dates and the night's new ones), written under `out` one file per
    /// date (`event_date=…/part-00000.parquet`); returns the rows written.
    pub(crate) fn write(
        &self,
        files: &[PathBuf],
        dates: &BTreeSet<i32>,
        run_id: &str,
        out: &Path,
        workers: usize,
    ) -> Result<u64, TransformError> {
        std::fs::create_dir_all(out).map_err(|source| TransformError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        let parts = on_workers(
            workers,
            files.len(),
            |_| BTreeMap::new(),
            |acc, i| self.add(&files[i], dates, acc),
        )?;
        let mut all: BTreeMap<Key, Credit> = BTreeMap::new();
        for part in parts {
            for (key, c) in part {
                match all.get_mut(&key) {
                    Some(a) => a.merge(&c),
                    None => {
                        all.insert(key, c);
                    }
                }
            }
        }
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .build();
        let mut rows = 0u64;
        for day in dates {
            let on_day: Vec<(&Key, &Credit)> = all
                .range((*day, None, None)..(*day + 1, None, None))
                .collect();
            if on_day.is_empty() {
                continue;
            }
            rows += on_day.len() as u64;
            let dir = out.join(format!("{EVENT_DATE}={}", day_string(*day)));
            std::fs::create_dir_all(&dir).map_err(|source| TransformError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = dir.join("part-00000.parquet");
            let batch = self.batch(&on_day, run_id).map_err(|e| parquet(&path, e))?;
            let file = File::create(&path).map_err(|source| TransformError::Io {
                path: path.clone(),
                source,
            })?;
            let mut w = ArrowWriter::try_new(file, self.schema.clone(), Some(props.clone()))
                .map_err(|e| parquet(&path, e))?;
            w.write(&batch).map_err(|e| parquet(&path, e))?;
            w.close().map_err(|e| parquet(&path, e))?;
        }
        Ok(rows)
    }

    /// Adds the conversions of `file` on `dates` to `acc`.
    fn add(
        &self,
        file: &Path,
        dates: &BTreeSet<i32>,
        acc: &mut BTreeMap<Key, Credit>,
    ) -> Result<(), TransformError> {
        fn top(p: &str) -> &str {
            p.split('.').next().unwrap_or(p)
        }
        let mut columns: Vec<&str> = vec![EVENT_DATE, top(&self.touchpoints)];
        columns.extend(self.conversion_name.as_deref().map(top));
        columns.extend(self.price_total.as_deref().map(top));
        for batch in read(file, Some(&columns))? {
            let days = batch
                .column_by_name(EVENT_DATE)
                .ok_or_else(|| missing(file, EVENT_DATE))?
                .as_primitive_opt::<Date32Type>()
                .ok_or_else(|| parquet(file, "event_date is not a date"))?
                .clone();
            let names = self
                .conversion_name
                .as_deref()
                .and_then(|p| path_array(&batch, p))
                .map(|a| cast(&a, &DataType::Utf8))
                .transpose()
                .map_err(|e| parquet(file, e))?;
            let names = names.as_ref().map(|a| a.as_string::<i32>());
            let prices = self
                .price_total
                .as_deref()
                .and_then(|p| path_array(&batch, p))
                .map(|a| cast(&a, &DataType::Float64))
                .transpose()
                .map_err(|e| parquet(file, e))?;
            let prices = prices
                .as_ref()
                .map(|a| a.as_primitive::<datafusion::arrow::datatypes::Float64Type>());
            let list = path_array(&batch, &self.touchpoints)
                .ok_or_else(|| missing(file, &self.touchpoints))?;
            let list = list
                .as_list_opt::<i32>()
                .ok_or_else(|| parquet(file, "touchpointsDetail is not a list"))?;
            let items = list.values().as_struct();
            let tp_names = items
                .column_by_name("touchpointName")
                .ok_or_else(|| missing(file, "touchpointsDetail.touchpointName"))?
                .as_string::<i32>();
            let scores = items
                .column_by_name("scores")
                .and_then(|s| s.as_struct_opt().cloned())
                .ok_or_else(|| missing(file, "touchpointsDetail.scores"))?;
            let models: Vec<Float64Array> = self
                .models
                .iter()
                .map(|m| match scores.column_by_name(m) {
                    Some(c) => cast(c, &DataType::Float64)
                        .map(|a| a.as_primitive().clone())
                        .map_err(|e| parquet(file, e)),
                    None => Ok(Float64Array::new_null(scores.len())),
                })
                .collect::<Result<_, _>>()?;
            let offsets = list.offsets();
            for row in 0..batch.num_rows() {
                let Some(day) = days.is_valid(row).then(|| days.value(row)) else {
                    continue;
                };
                if !dates.contains(&day) || list.is_null(row) {
                    continue;
                }
                let name = names
                    .filter(|n| n.is_valid(row))
                    .map(|n| n.value(row).to_string());
                let price = prices.filter(|p| p.is_valid(row)).map(|p| p.value(row));
                let mut counted: HashSet<Option<&str>> = HashSet::new();
                for k in offsets[row] as usize..offsets[row + 1] as usize {
                    let tp = tp_names.is_valid(k).then(|| tp_names.value(k));
                    let key = (day, name.clone(), tp.map(str::to_string));
                    let c = acc.entry(key).or_insert_with(|| Credit {
                        conversions: 0,
                        touchpoints: 0,
                        scores: vec![0.0; self.models.len()],
                        revenue: vec![0.0; self.models.len()],
                    });
                    c.touchpoints += 1;
                    if counted.insert(tp) {
                        c.conversions += 1;
                    }
                    for (m, s) in models.iter().enumerate() {
                        if s.is_valid(k) {
                            c.scores[m] += s.value(k);
                            c.revenue[m] += s.value(k) * price.unwrap_or(0.0);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn batch(
        &self,
        rows: &[(&Key, &Credit)],
        run_id: &str,
    ) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|(k, _)| Some(k.0)).collect::<Date32Array>()),
            Arc::new(
                rows.iter()
                    .map(|(k, _)| k.1.as_deref())
                    .collect::<StringArray>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|(k, _)| k.2.as_deref())
                    .collect::<StringArray>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|(_, c)| Some(c.conversions))
                    .collect::<Int64Array>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|(_, c)| Some(c.touchpoints))
                    .collect::<Int64Array>(),
            ),
        ];
        for m in 0..self.models.len() {
            columns.push(Arc::new(
                rows.iter()
                    .map(|(_, c)| Some(c.scores[m]))
                    .collect::<Float64Array>(),
            ));
        }
        if self.price_total.is_some() {
            for m in 0..self.models.len() {
                columns.push(Arc::new(
                    rows.iter()
                        .map(|(_, c)| Some(c.revenue[m]))
                        .collect::<Float64Array>(),
                ));
            }
        }
        columns.push(Arc::new(StringArray::from(vec![run_id; rows.len()])));
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

impl Credit {
    fn merge(&mut self, o: &Credit) {
        self.conversions += o.conversions;
        self.touchpoints += o.touchpoints;
        for (a, b) in self.scores.iter_mut().zip(&o.scores) {
            *a += b;
        }
        for (a, b) in self.revenue.iter_mut().zip(&o.revenue) {
            *a += b;
        }
    }
}

/// The dotted path of the first object (depth first) of `schema` whose properties include an
/// array named `name` (`""`: the top level).
fn find_object_with(schema: &Value, name: &str, path: &str) -> Option<String> {
    let properties = schema.get("properties")?.as_object()?;
    if properties
        .get(name)
        .is_some_and(|f| f.get("type").and_then(Value::as_str) == Some("array"))
    {
        return Some(path.to_string());
    }
    properties.iter().find_map(|(k, f)| {
        let child = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        find_object_with(f, name, &child)
    })
}

/// Where the XDM field at `xdm` is in the landed rows (`column` or `column.field…`), and its type.
fn located(columns: &[XdmColumn], xdm: &str) -> Option<(String, DataType)> {
    columns.iter().find_map(|c| {
        let rest = if c.path == xdm {
            ""
        } else {
            xdm.strip_prefix(&c.path)?.strip_prefix('.')?
        };
        let mut ty = c.data_type.clone();
        for part in rest.split('.').filter(|p| !p.is_empty()) {
            let DataType::Struct(fields) = ty else {
                return None;
            };
            ty = fields.find(part)?.1.data_type().clone();
        }
        let path = if rest.is_empty() {
            c.name.clone()
        } else {
            format!("{}.{rest}", c.name)
        };
        Some((path, ty))
    })
}

/// `algorithmicInfluenced` as `algorithmic_influenced`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_become_snake_case_columns() {
        assert_eq!(snake("algorithmicInfluenced"), "algorithmic_influenced");
        assert_eq!(snake("uShape"), "u_shape");
        assert_eq!(snake("linear"), "linear");
    }

    #[test]
    fn a_schema_without_touchpoints_is_refused_with_what_it_lacks() {
        let schema = serde_json::json!({"properties": {"_id": {"type": "string"}}});
        let e = AttributionSummary::new(&schema, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no touchpointsDetail array"), "{e}");
        // An array that is not of touchpoints.
        let schema = serde_json::json!({"properties": {
            "_t": {"type": "object", "properties": {
                "touchpointsDetail": {"type": "array", "items": {"type": "string"}}}}}});
        let columns = crate::xdm::columns(&schema, 3).unwrap();
        let e = AttributionSummary::new(&schema, &columns)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not objects"), "{e}");
    }

    /// Two nights of the simulator's Attribution AI scores: the touchpoints as a child table
    /// with their objects flattened, and a summary that, after each night, is the truth of
    /// every date: a late conversion updates its date's rows.
    #[test]
    fn summaries_credit_each_touchpoint_and_follow_late_conversions() {
        use crate::dataset::{DatasetLanding, DatasetSummary, EventDataset, Explode, NamedExplode};
        use crate::run::StagedBatch;
        use scoreland_platform_sim::attribution::{
            ATTRIBUTION_DATASET, MODELS, add_attribution_nights, attribution_schema, conversion,
            night_conversions,
        };
        let tmp = tempfile::tempdir().unwrap();
        let platform = tmp.path().join("platform");
        let schema = serde_json::json!({
            "meta:class": crate::dataset::EVENT_CLASS,
            "title": "Attribution AI Scores schema",
            "properties": scoreland_platform_sim::xdm_properties(attribution_schema().fields()),
        });
        let landing = DatasetLanding {
            table: "attribution".into(),
            depth: 3,
            explode: vec![Explode::Named(NamedExplode {
                column: "_acmeretail_attributionAI_touchpointsDetail".into(),
                table: "attribution_touchpoints".into(),
            })],
            summary: Some(DatasetSummary::Attribution),
        };
        let ds = EventDataset::new(&schema, &landing).unwrap();
        assert_eq!(ds.child_tables(), ["attribution_touchpoints"]);
        assert_eq!(ds.summary_table(), Some("attribution_summary"));
        let files = |dir: &Path| -> Vec<PathBuf> {
            let mut out = Vec::new();
            for d in std::fs::read_dir(dir).into_iter().flatten() {
                let d = d.unwrap().path();
                for f in std::fs::read_dir(&d).unwrap() {
                    out.push(f.unwrap().path());
                }
            }
            out.sort();
            out
        };
        // The summary as it stands after each night: a date's rows replaced by the newest.
        let mut summary: BTreeMap<(i32, String, String), Vec<f64>> = BTreeMap::new();
        let mut landed: Vec<PathBuf> = Vec::new();
        for night in 0..2u32 {
            let made = add_attribution_nights(&platform, "prod", night, night + 1, 100, 5).unwrap();
            let parts = platform
                .join("prod")
                .join(ATTRIBUTION_DATASET)
                .join(&made[0].batch_id)
                .join(format!("{}-1", made[0].batch_id));
            let staged = vec![StagedBatch {
                batch_id: made[0].batch_id.clone(),
                created_ms: i64::from(night),
                files: std::fs::read_dir(parts)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect(),
            }];
            let work = tmp.path().join(format!("work{night}"));
            let scan = ds.scan(&staged, 2).unwrap();
            let stats = ds
                .write(scan, &landed, "r", &work.join("attribution"), 2)
                .unwrap();
            assert_eq!(stats.duplicates_dropped, [0, 5][night as usize]);
            let touchpoints: usize = files(&work.join("attribution_touchpoints"))
                .iter()
                .flat_map(|f| read(f, None).unwrap())
                .map(|b| {
                    let names: Vec<String> = b
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    for c in [
                        "touchpointName",
                        "scores_firstTouch",
                        "touchPoint_mediaChannel",
                    ] {
                        assert!(names.iter().any(|n| n == c), "{c} in {names:?}");
                    }
                    b.num_rows()
                })
                .sum();
            let new: Vec<_> = night_conversions(night, 100)
                .into_iter()
                .filter(|(n, _)| *n == night)
                .map(|(n, i)| conversion(n, i, 5))
                .collect();
            assert_eq!(
                touchpoints,
                new.iter().map(|c| c.touchpoints.len()).sum::<usize>()
            );
            let written = files(&work.join("attribution_summary"));
            let mut rows = 0;
            for f in &written {
                for b in read(f, None).unwrap() {
                    let day = b.column(0).as_primitive::<Date32Type>().value(0);
                    summary.retain(|k, _| k.0 != day);
                    rows += b.num_rows();
                    for r in 0..b.num_rows() {
                        let text = |c: usize| b.column(c).as_string::<i32>().value(r).to_string();
                        let int = |c: usize| {
                            b.column(c)
                                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                                .value(r) as f64
                        };
                        let float = |name: String| {
                            b.column_by_name(&name)
                                .unwrap()
                                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                                .value(r)
                        };
                        let mut v = vec![int(3), int(4)];
                        v.extend(MODELS.iter().map(|m| float(snake(m))));
                        v.extend(
                            MODELS
                                .iter()
                                .map(|m| float(format!("{}_revenue", snake(m)))),
                        );
                        summary.insert((day, text(1), text(2)), v);
                    }
                }
            }
            assert_eq!(rows as u64, stats.summary_rows);
            landed.extend(files(&work.join("attribution")));
        }
        // The truth, from every conversion landed: counts, then six models' credit, then
        // their revenue.
        let mut truth: BTreeMap<(i32, String, String), Vec<f64>> = BTreeMap::new();
        let all: Vec<_> = (0..2u32)
            .flat_map(|n| {
                night_conversions(n, 100)
                    .into_iter()
                    .filter(move |(m, _)| *m == n)
            })
            .map(|(n, i)| conversion(n, i, 5))
            .collect();
        for c in &all {
            let day = c.timestamp_us.div_euclid(86_400_000_000) as i32;
            let mut seen = HashSet::new();
            for t in &c.touchpoints {
                let v = truth
                    .entry((day, c.name.to_string(), t.name.to_string()))
                    .or_insert_with(|| vec![0.0; 14]);
                v[0] += f64::from(u8::from(seen.insert(t.name)));
                v[1] += 1.0;
                for m in 0..6 {
                    v[2 + m] += t.scores[m];
                    v[8 + m] += t.scores[m] * c.price_total;
                }
            }
        }
        assert_eq!(
            summary.keys().collect::<Vec<_>>(),
            truth.keys().collect::<Vec<_>>()
        );
        for (k, want) in &truth {
            for (got, want) in summary[k].iter().zip(want) {
                assert!((got - want).abs() < 1e-6, "{k:?}: {got} != {want}");
            }
        }
        // Each conversion's credit is one under every model.
        let credited: f64 = summary.values().map(|v| v[3]).sum();
        assert!((credited - all.len() as f64).abs() < 1e-6);
    }
}
