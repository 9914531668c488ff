//! Drift: population stability index (PSI) of each model's score histogram against the
//! previous landed run.
//!
//! PSI = Σ (p_i − q_i) · ln(p_i / q_i) over the ten buckets, p this run's share of rows per
//! bucket and q the baseline's, with an empty bucket's share raised to [`DRIFT_EPSILON`] so the
//! logarithm stays finite. Usual reading: < 0.1 stable, 0.1–0.25 moderate, > 0.25 significant.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use serde::{Deserialize, Serialize};

pub const DRIFT_EPSILON: f64 = 1e-4;

/// A model's score histogram over [0,10) … [90,100].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelHistogram {
    pub model: String,
    pub buckets: [u64; 10],
}

impl ModelHistogram {
    pub fn rows(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// PSI of `current` against `baseline`; `None` when either has no rows.
pub fn psi(current: &[u64; 10], baseline: &[u64; 10]) -> Option<f64> {
    let (nc, nb) = (
        current.iter().sum::<u64>() as f64,
        baseline.iter().sum::<u64>() as f64,
    );
    if nc == 0.0 || nb == 0.0 {
        return None;
    }
    Some(
        current
            .iter()
            .zip(baseline)
            .map(|(&c, &b)| {
                let p = (c as f64 / nc).max(DRIFT_EPSILON);
                let q = (b as f64 / nb).max(DRIFT_EPSILON);
                (p - q) * (p / q).ln()
            })
            .sum(),
    )
}

/// Sums the `hist_*` columns of the summary per model.
pub(crate) fn histograms(summary: &[RecordBatch]) -> Vec<ModelHistogram> {
    let mut by_model: BTreeMap<String, [u64; 10]> = BTreeMap::new();
    for batch in summary {
        let schema = batch.schema();
        let Ok(model_idx) = schema.index_of("model") else {
            continue;
        };
        let Ok(models) = crate::run::utf8(batch.column(model_idx)) else {
            continue;
        };
        let models = models.as_string::<i32>();
        let cols: Vec<_> = (0..10)
            .filter_map(|b| {
                let name = format!("hist_{:02}_{:02}", b * 10, (b * 10 + 10).min(100));
                schema
                    .index_of(&name)
                    .ok()
                    .map(|i| batch.column(i).as_primitive::<Int64Type>().clone())
            })
            .collect();
        if cols.len() != 10 {
            continue;
        }
        for row in 0..batch.num_rows() {
            let entry = by_model.entry(models.value(row).to_string()).or_default();
            for (b, col) in cols.iter().enumerate() {
                if !col.is_null(row) {
                    entry[b] += col.value(row).max(0) as u64;
                }
            }
        }
    }
    by_model
        .into_iter()
        .map(|(model, buckets)| ModelHistogram { model, buckets })
        .collect()
}

fn status(psi: Option<f64>) -> &'static str {
    match psi {
        None => "no_baseline",
        Some(v) if v < 0.1 => "stable",
        Some(v) if v <= 0.25 => "moderate",
        Some(_) => "significant",
    }
}

/// The drift table: one row per model of this run.
pub(crate) fn drift_table(
    current: &[ModelHistogram],
    previous: &[ModelHistogram],
    batches: &str,
) -> RecordBatch {
    let values: Vec<(String, u64, Option<u64>, Option<f64>)> = current
        .iter()
        .map(|c| {
            let base = previous.iter().find(|p| p.model == c.model);
            let value = base.and_then(|b| psi(&c.buckets, &b.buckets));
            (
                c.model.clone(),
                c.rows(),
                base.map(ModelHistogram::rows),
                value,
            )
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("baseline_rows", DataType::UInt64, true),
        Field::new("psi", DataType::Float64, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("batches", DataType::Utf8, false),
        Field::new(
            "computed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let n = values.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            values.iter().map(|v| v.0.clone()),
        )),
        Arc::new(UInt64Array::from_iter_values(values.iter().map(|v| v.1))),
        Arc::new(UInt64Array::from_iter(values.iter().map(|v| v.2))),
        Arc::new(Float64Array::from_iter(values.iter().map(|v| v.3))),
        Arc::new(StringArray::from_iter_values(
            values.iter().map(|v| status(v.3)),
        )),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            batches, n,
        ))),
        Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
    ];
    RecordBatch::try_new(schema, columns).expect("columns are built to the schema above")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_of_identical_is_zero_and_grows_with_shift() {
        let a = [10, 20, 30, 40, 50, 50, 40, 30, 20, 10];
        assert!(psi(&a, &a).unwrap().abs() < 1e-12);
        let b = [50, 40, 30, 20, 10, 10, 20, 30, 40, 50];
        let v = psi(&b, &a).unwrap();
        // Worked independently in Python (no epsilon needed: no empty bucket):
        //   p = b / 300, q = a / 300; sum((p - q) * log(p / q)) = 1.043206134780839
        assert!((v - 1.043206134780839).abs() < 1e-12, "{v}");
        // With empty buckets on both sides (each counted as 0.0001), also from Python:
        let c = [0, 0, 5, 10, 20, 30, 20, 10, 5, 0];
        let d = [1, 2, 3, 10, 20, 30, 20, 10, 3, 1];
        let w = psi(&c, &d).unwrap();
        assert!((w - 0.2170519102275098).abs() < 1e-12, "{w}");
        assert!(v > 0.25);
        assert_eq!(psi(&[0; 10], &a), None);
    }

    #[test]
    fn empty_buckets_use_epsilon() {
        let a = [10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [5, 5, 0, 0, 0, 0, 0, 0, 0, 0];
        let v = psi(&b, &a).unwrap();
        // By hand: (0.5 - 1) ln(0.5) + (0.5 - 0.0001) ln(0.5 / 0.0001) = 4.60431846666895
        assert!((v - 4.60431846666895).abs() < 1e-9, "{v}");
    }
}
