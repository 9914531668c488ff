//! The summary table: per (model, score_date), counts, nulls, moments, exact deciles, a score
//! histogram, propensity tiers and the most frequent influential factors, over the written
//! scores.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Float64Type, Int64Type, Schema};
use datafusion::common::ScalarValue;
use datafusion::prelude::{col, lit};
use futures::StreamExt;

use crate::error::{Context, TransformError};
use crate::run::{Transformer, utf8};

/// A summary group: model and score date (days since the epoch).
type Group = (String, Option<i32>);

/// The decile columns, in order, inserted after `probability_stddev`.
const DECILES: [&str; 9] = [
    "score_p10",
    "score_p20",
    "score_p30",
    "score_p40",
    "score_median",
    "score_p60",
    "score_p70",
    "score_p80",
    "score_p90",
];

impl Transformer {
    /// Per (model, score_date): counts, nulls, moments, exact deciles, histogram, tiers, and
    /// the most frequent influential factors.
    pub(crate) async fn summaries(&self) -> Result<Vec<RecordBatch>, TransformError> {
        let mut select = vec![
            "model".to_string(),
            "score_date".into(),
            "count(*) AS rows".into(),
            // The scores hold one row per (identity, model), so within a (model, score_date)
            // every identity is distinct: no need for a hash set of 30 M strings.
            "count(identity) AS distinct_identities".into(),
            "count(*) - count(identity) AS identity_nulls".into(),
            "count(*) - count(score) AS score_nulls".into(),
            "count(*) - count(probability) AS probability_nulls".into(),
        ];
        for c in ["score", "probability"] {
            select.push(format!("min({c}) AS {c}_min"));
            select.push(format!("max({c}) AS {c}_max"));
            select.push(format!("avg({c}) AS {c}_mean"));
            select.push(format!("stddev_pop({c}) AS {c}_stddev"));
        }
        for b in 0..10 {
            let (lo, hi) = (b * 10, b * 10 + 10);
            let cond = if b == 9 {
                format!("score >= {lo} AND score <= {hi}")
            } else {
                format!("score >= {lo} AND score < {hi}")
            };
            select.push(format!(
                "CAST(sum(CASE WHEN {cond} THEN 1 ELSE 0 END) AS BIGINT) AS hist_{lo:02}_{hi:02}",
                hi = hi.min(100)
            ));
        }
        select
            .push("CAST(sum(CASE WHEN score < 25 THEN 1 ELSE 0 END) AS BIGINT) AS tier_low".into());
        select.push(
            "CAST(sum(CASE WHEN score >= 25 AND score < 75 THEN 1 ELSE 0 END) AS BIGINT) AS tier_medium"
                .into(),
        );
        select.push(
            "CAST(sum(CASE WHEN score >= 75 THEN 1 ELSE 0 END) AS BIGINT) AS tier_high".into(),
        );
        let sql = format!(
            "SELECT {} FROM scores GROUP BY model, score_date ORDER BY model, score_date",
            select.join(", ")
        );
        let batches = self
            .ctx
            .sql(&sql)
            .await
            .context("planning the summaries")?
            .collect()
            .await
            .context("computing the summaries")?;
        let stage = Instant::now();
        let deciles = self.deciles(&batches).await?;
        tracing::info!(
            seconds = stage.elapsed().as_secs_f64(),
            "score deciles computed"
        );
        let stage = Instant::now();
        let top = self.top_factors().await?;
        tracing::info!(
            seconds = stage.elapsed().as_secs_f64(),
            "influential factors counted"
        );
        batches
            .into_iter()
            .map(|b| add_columns(b, &deciles, &top))
            .collect()
    }

    /// Exact p10 … p90 of the score per (model, score_date), with linear interpolation (as
    /// `percentile_cont`): per group, one sort of its scores alone (a plain float sort, which
    /// spills like any other), read once while counting positions. `percentile_cont` would
    /// instead hold every score of a group in memory once per decile, nine times the scores,
    /// which no limit can bound.
    async fn deciles(
        &self,
        summary: &[RecordBatch],
    ) -> Result<HashMap<Group, [f64; 9]>, TransformError> {
        let mut out = HashMap::new();
        for b in summary {
            let rows = int_column(b, "rows")?;
            let nulls = int_column(b, "score_nulls")?;
            for (i, (model, date)) in groups(b)?.into_iter().enumerate() {
                let n = (rows.value(i) - nulls.value(i)).max(0) as u64;
                if n == 0 {
                    continue;
                }
                let on_date = match date {
                    Some(d) => col("score_date").eq(lit(ScalarValue::Date32(Some(d)))),
                    None => col("score_date").is_null(),
                };
                let what = format!("sorting the scores of {model}");
                let mut stream = self
                    .ctx
                    .table("scores")
                    .await
                    .context(what.clone())?
                    .filter(
                        col("model")
                            .eq(lit(model.clone()))
                            .and(on_date)
                            .and(col("score").is_not_null()),
                    )
                    .and_then(|df| df.select_columns(&["score"]))
                    .and_then(|df| df.sort(vec![col("score").sort(true, false)]))
                    .context(what.clone())?
                    .execute_stream()
                    .await
                    .context(what.clone())?;
                let mut picker = DecilePicker::new(n);
                while let Some(batch) = stream.next().await {
                    let batch = batch.context(what.clone())?;
                    let scores = batch.column(0).as_primitive::<Float64Type>();
                    for v in scores.values().iter() {
                        picker.push(*v);
                    }
                }
                out.insert((model, date), picker.finish());
            }
        }
        Ok(out)
    }

    async fn top_factors(&self) -> Result<HashMap<Group, String>, TransformError> {
        let schema = self
            .ctx
            .table("scores")
            .await
            .context("reading the scores")?
            .schema()
            .clone();
        let is_list = schema
            .field_with_unqualified_name("influential_factors")
            .map(|f| matches!(f.data_type(), DataType::List(_) | DataType::LargeList(_)))
            .unwrap_or(false);
        if !is_list {
            return Ok(HashMap::new());
        }
        let sql = "SELECT model, score_date, get_field(f, 'code') AS code, count(*) AS n \
                   FROM (SELECT model, score_date, unnest(influential_factors) AS f FROM scores) \
                   GROUP BY 1, 2, 3 ORDER BY 1, 2, n DESC, code";
        let rows = self
            .ctx
            .sql(sql)
            .await
            .context("planning the factor counts")?
            .collect()
            .await
            .context("counting influential factors")?;
        let keep = self.config.top_factors.unwrap_or(3);
        let mut out: HashMap<Group, Vec<String>> = HashMap::new();
        for b in &rows {
            let code = utf8(b.column(2))?;
            let code = code.as_string::<i32>();
            let n = b.column(3).as_primitive::<Int64Type>();
            for (i, key) in groups(b)?.into_iter().enumerate() {
                if code.is_null(i) {
                    continue;
                }
                let list = out.entry(key).or_default();
                if list.len() < keep {
                    list.push(format!("{}:{}", code.value(i), n.value(i)));
                }
            }
        }
        Ok(out.into_iter().map(|(k, v)| (k, v.join(","))).collect())
    }
}

/// Picks p10 … p90 out of one group's scores as they arrive in order.
struct DecilePicker {
    /// For each decile: the two positions it interpolates between, and the weight of the upper.
    at: [(u64, u64, f64); 9],
    low: [f64; 9],
    high: [f64; 9],
    seen: u64,
}

impl DecilePicker {
    fn new(n: u64) -> Self {
        let at = std::array::from_fn(|k| {
            let pos = (k + 1) as f64 / 10.0 * n.saturating_sub(1) as f64;
            (pos.floor() as u64, pos.ceil() as u64, pos - pos.floor())
        });
        DecilePicker {
            at,
            low: [f64::NAN; 9],
            high: [f64::NAN; 9],
            seen: 0,
        }
    }

    fn push(&mut self, score: f64) {
        for (k, (lo, hi, _)) in self.at.iter().enumerate() {
            if *lo == self.seen {
                self.low[k] = score;
            }
            if *hi == self.seen {
                self.high[k] = score;
            }
        }
        self.seen += 1;
    }

    fn finish(self) -> [f64; 9] {
        std::array::from_fn(|k| self.low[k] + (self.high[k] - self.low[k]) * self.at[k].2)
    }
}

fn groups(batch: &RecordBatch) -> Result<Vec<Group>, TransformError> {
    let model = utf8(batch.column(0))?;
    let model = model.as_string::<i32>();
    let date = batch.column(1).as_primitive::<Date32Type>();
    Ok((0..batch.num_rows())
        .map(|i| {
            (
                model.value(i).to_string(),
                (!date.is_null(i)).then(|| date.value(i)),
            )
        })
        .collect())
}

fn int_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Int64Array, TransformError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| TransformError::DataFusion {
            context: format!("reading the summary column {name}"),
            source: datafusion::error::DataFusionError::Internal(format!("no Int64 column {name}")),
        })
}

/// The summary batch with the deciles after `probability_stddev` and `top_factors` last.
fn add_columns(
    batch: RecordBatch,
    deciles: &HashMap<Group, [f64; 9]>,
    top: &HashMap<Group, String>,
) -> Result<RecordBatch, TransformError> {
    let keys = groups(&batch)?;
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        fields.push(field.as_ref().clone());
        columns.push(column.clone());
        if field.name() == "probability_stddev" {
            for (k, name) in DECILES.iter().enumerate() {
                fields.push(Field::new(*name, DataType::Float64, true));
                let values: Float64Array =
                    keys.iter().map(|g| deciles.get(g).map(|d| d[k])).collect();
                columns.push(Arc::new(values));
            }
        }
    }
    fields.push(Field::new("top_factors", DataType::Utf8, true));
    let values: StringArray = keys.iter().map(|g| top.get(g).cloned()).collect();
    columns.push(Arc::new(values));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
        TransformError::DataFusion {
            context: "adding deciles and top factors".into(),
            source: e.into(),
        }
    })
}
