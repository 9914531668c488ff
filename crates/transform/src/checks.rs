//! The quality gate: `[checks]` of a pipeline file, evaluated over a night's tables before they
//! are published ([`Transformer::evaluate_checks`]), and the `checks` table of their results
//! ([`Transformer::write_checks`]). Each check yields one or more results (one per model or
//! column where it is per model or column), each a value against a bound.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int64Type, Schema, SchemaRef,
};
use datafusion::datasource::MemTable;
use datafusion::prelude::ParquetReadOptions;
use serde::{Deserialize, Serialize};

use crate::config::OutputFormat;
use crate::error::{Context, TransformError};
use crate::run::{TransformOutput, Transformer, cast_to, dir_url};

/// What a failed check does: `error` stops the publish, `warn` lands and says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Error,
    Warn,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
        }
    }
}

/// `[checks]`: every check is optional; each has a `level` (default `error`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    /// The newest score date is at most `max_age_days` before the run's day (UTC).
    #[serde(default)]
    pub freshness: Option<Freshness>,
    /// The night's rows: within `max_change_pct` of the previous landed night's, and at least
    /// `min_rows`.
    #[serde(default)]
    pub volume: Option<Volume>,
    /// Per column of `scores`: at most this percentage of nulls.
    #[serde(default)]
    pub null_rate: Option<NullRate>,
    /// Every model has at least `min` rows.
    #[serde(default)]
    pub model_rows: Option<ModelRows>,
    /// Every model's scores lie within `[min, max]`.
    #[serde(default)]
    pub score_range: Option<ScoreRange>,
    /// Every model's population stability index against the previous night is at most
    /// `max_psi`.
    #[serde(default)]
    pub drift: Option<Drift>,
    /// (model, identity), the key the transform dedupes on, is unique in the night's scores.
    #[serde(default)]
    pub unique_key: Option<UniqueKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    pub max_age_days: u32,
    #[serde(default)]
    pub level: Level,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    #[serde(default)]
    pub max_change_pct: Option<f64>,
    #[serde(default)]
    pub min_rows: Option<u64>,
    #[serde(default)]
    pub level: Level,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullRate {
    /// Column name → the largest share of nulls allowed, in percent.
    pub max_pct: BTreeMap<String, f64>,
    #[serde(default)]
    pub level: Level,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRows {
    pub min: u64,
    #[serde(default)]
    pub level: Level,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRange {
    pub min: f64,
    pub max: f64,
    #[serde(default)]
    pub level: Level,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    pub max_psi: f64,
    #[serde(default)]
    pub level: Level,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniqueKey {
    #[serde(default)]
    pub level: Level,
}

/// The checks' names, as `--skip-checks` and the `checks` table name them (a result of a
/// per-model or per-column check is `name.model` or `name.column`).
pub const CHECK_NAMES: [&str; 7] = [
    "freshness",
    "volume",
    "null_rate",
    "model_rows",
    "score_range",
    "drift",
    "unique_key",
];

impl ChecksConfig {
    /// The bounds make sense; `Err` says which does not and why.
    pub fn validate(&self) -> Result<(), String> {
        let pct = |what: &str, v: f64| {
            if (0.0..=100.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("checks.{what} = {v}: a percentage from 0 to 100"))
            }
        };
        if let Some(v) = &self.volume {
            if v.max_change_pct.is_none() && v.min_rows.is_none() {
                return Err("checks.volume: give max_change_pct, min_rows or both".into());
            }
            if let Some(p) = v.max_change_pct
                && !(p >= 0.0 && p.is_finite())
            {
                return Err(format!(
                    "checks.volume.max_change_pct = {p}: a percentage of at least 0"
                ));
            }
        }
        if let Some(n) = &self.null_rate {
            if n.max_pct.is_empty() {
                return Err(
                    "checks.null_rate.max_pct: name at least one column, e.g. { score = 1 }".into(),
                );
            }
            for (column, p) in &n.max_pct {
                if column.is_empty()
                    || !column
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!(
                        "checks.null_rate.max_pct: {column:?} is not a column name (letters, digits and '_')"
                    ));
                }
                pct(&format!("null_rate.max_pct.{column}"), *p)?;
            }
        }
        if let Some(r) = &self.score_range
            && !(r.min.is_finite() && r.max.is_finite() && r.min <= r.max)
        {
            return Err(format!(
                "checks.score_range: min = {} and max = {} must be numbers with min <= max",
                r.min, r.max
            ));
        }
        if let Some(d) = &self.drift
            && !(d.max_psi > 0.0 && d.max_psi.is_finite())
        {
            return Err(format!(
                "checks.drift.max_psi = {}: a number above 0 (0.1 is a moderate shift, 0.25 a large one)",
                d.max_psi
            ));
        }
        Ok(())
    }

    /// The checks a dataset's night can have: not those of scores (model_rows, score_range,
    /// drift), and freshness only with a date (events).
    pub fn validate_for_dataset(&self, dated: bool) -> Result<(), TransformError> {
        let scores_only: Vec<&str> = [
            ("model_rows", self.model_rows.is_some()),
            ("score_range", self.score_range.is_some()),
            ("drift", self.drift.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect();
        if !scores_only.is_empty() {
            return Err(TransformError::Config(format!(
                "[checks]: {} are checks of Customer AI scores; a dataset's night has \
                 freshness (events), volume, null_rate and unique_key",
                scores_only.join(", ")
            )));
        }
        if self.freshness.is_some() && !dated {
            return Err(TransformError::Config(
                "[checks]: freshness counts from the newest event date; a record dataset has \
                 none (use volume)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The names of the checks configured, in [`CHECK_NAMES`]' order.
    pub fn names(&self) -> Vec<&'static str> {
        let set = [
            self.freshness.is_some(),
            self.volume.is_some(),
            self.null_rate.is_some(),
            self.model_rows.is_some(),
            self.score_range.is_some(),
            self.drift.is_some(),
            self.unique_key.is_some(),
        ];
        CHECK_NAMES
            .iter()
            .zip(set)
            .filter_map(|(n, s)| s.then_some(*n))
            .collect()
    }
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// Failed, at level `warn`: the night lands.
    Warn,
    /// Failed, at level `error`: the night does not land.
    Fail,
    /// Failed at level `error`, and landed because the operator said so (`--skip-checks`).
    Overridden,
    /// Nothing to compare with (no previous night, no drift baseline).
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Overridden => "overridden",
            Status::Skipped => "skipped",
        }
    }
}

/// One result: `check` (`null_rate.score`, `model_rows.churn_risk`), its value, the bound it
/// was held to (`<= 1`), the level and the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: String,
    pub level: Level,
    pub value: Option<f64>,
    pub bound: String,
    pub status: Status,
}

impl CheckResult {
    fn new(check: String, level: Level, value: Option<f64>, bound: String, ok: bool) -> Self {
        let status = match (ok, level) {
            (true, _) => Status::Pass,
            (false, Level::Warn) => Status::Warn,
            (false, Level::Error) => Status::Fail,
        };
        CheckResult {
            check,
            level,
            value,
            bound,
            status,
        }
    }

    fn skipped(check: String, level: Level, bound: String) -> Self {
        CheckResult {
            check,
            level,
            value: None,
            bound,
            status: Status::Skipped,
        }
    }

    /// "null_rate.score = 3.2 (bound <= 1)", for messages.
    pub fn describe(&self) -> String {
        let value = self
            .value
            .map_or_else(|| "none".to_string(), |v| format!("{}", round(v)));
        format!("{} = {value} (bound {})", self.check, self.bound)
    }
}

/// Column `i` of `b` as `to`.
fn column(b: &RecordBatch, i: usize, to: &DataType) -> Result<ArrayRef, TransformError> {
    cast_to(b.column(i), to)
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// What the checks know of the night besides its tables.
#[derive(Debug, Clone)]
pub struct Night {
    /// The run's day (UTC), which freshness counts from.
    pub day: NaiveDate,
    /// Rows of the night's scores.
    pub rows: u64,
    /// Rows of the previous landed night, if any.
    pub previous_rows: Option<u64>,
}

/// The table the checks read: the night's scores, or a dataset's night of rows.
const CHECKED: &str = "checked_rows";

/// What the row checks know of the table they read.
struct Checked<'a> {
    /// "scores" or "rows", for messages.
    what: &'a str,
    columns: Vec<String>,
    /// The query of the newest date, for freshness (none: the table has no date).
    newest: Option<&'a str>,
    /// The columns unique_key holds unique.
    key: &'a [&'a str],
}

impl Checked<'_> {
    fn need(&self, column: &str, check: &str) -> Result<(), TransformError> {
        if self.columns.iter().any(|c| c == column) {
            Ok(())
        } else {
            Err(TransformError::Config(format!(
                "checks.{check}: the {} have no column {column}; they have {}",
                self.what,
                self.columns.join(", ")
            )))
        }
    }
}

fn names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// Whether any parquet file is under `dir`.
fn walk_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            if p.is_dir() {
                walk_parquet(&p)
            } else {
                p.extension().is_some_and(|x| x == "parquet")
            }
        })
}

/// model_rows and score_range over one batch of the summary's rows per model (model, rows,
/// lowest score, highest score).
fn model_results(
    checks: &ChecksConfig,
    b: &RecordBatch,
) -> Result<Vec<CheckResult>, TransformError> {
    let mut results = Vec::new();
    let models = column(b, 0, &DataType::Utf8)?;
    let models = models.as_string::<i32>();
    let rows = column(b, 1, &DataType::Int64)?;
    let rows = rows.as_primitive::<Int64Type>();
    let (mins, maxs) = (
        column(b, 2, &DataType::Float64)?,
        column(b, 3, &DataType::Float64)?,
    );
    let (mins, maxs) = (
        mins.as_primitive::<Float64Type>(),
        maxs.as_primitive::<Float64Type>(),
    );
    for i in 0..b.num_rows() {
        let model = if models.is_null(i) {
            "null"
        } else {
            models.value(i)
        };
        if let Some(m) = &checks.model_rows {
            results.push(CheckResult::new(
                format!("model_rows.{model}"),
                m.level,
                Some(rows.value(i) as f64),
                format!(">= {}", m.min),
                rows.value(i) as u64 >= m.min,
            ));
        }
        if let Some(r) = &checks.score_range {
            for (name, value, bound, ok) in [
                ("score_min", mins, format!(">= {}", r.min), true),
                ("score_max", maxs, format!("<= {}", r.max), false),
            ] {
                let v = (!value.is_null(i)).then(|| value.value(i));
                let within = v.is_none_or(|v| if ok { v >= r.min } else { v <= r.max });
                results.push(CheckResult::new(
                    format!("score_range.{model}.{name}"),
                    r.level,
                    v,
                    bound,
                    within,
                ));
            }
        }
    }
    Ok(results)
}

impl Transformer {
    /// Evaluates `checks` over the tables `output` wrote.
    pub async fn evaluate_checks(
        &self,
        checks: &ChecksConfig,
        night: &Night,
        output: &TransformOutput,
    ) -> Result<Vec<CheckResult>, TransformError> {
        let scores = self
            .ctx
            .read_parquet(dir_url(&output.scores_dir), ParquetReadOptions::default())
            .await
            .context("reading the night's scores for the checks")?;
        let columns = names(scores.schema().as_arrow());
        self.ctx
            .register_table(CHECKED, scores.into_view())
            .context("registering the night's scores for the checks")?;
        // Rows, score bounds and dates per model are in the summary the transform already
        // computed (in memory): those checks read it rather than the scores again. The summary
        // of an empty night is empty, as its scores are.
        let summary_schema = output
            .summary
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| {
                Arc::new(Schema::new(vec![
                    Field::new("model", DataType::Utf8, true),
                    Field::new("score_date", DataType::Date32, true),
                    Field::new("rows", DataType::Int64, true),
                    Field::new("score_min", DataType::Float64, true),
                    Field::new("score_max", DataType::Float64, true),
                ]))
            });
        let summary = MemTable::try_new(summary_schema, vec![output.summary.clone()])
            .context("staging the night's summary for the checks")?;
        self.ctx
            .register_table("checked_summary", Arc::new(summary))
            .context("registering the night's summary for the checks")?;
        let rows = Checked {
            what: "scores",
            columns,
            newest: Some("SELECT CAST(max(score_date) AS DATE) AS d FROM checked_summary"),
            key: &["model", "identity"],
        };
        let result = async {
            let mut results = self.row_checks(checks, night, &rows).await?;
            if checks.model_rows.is_some() || checks.score_range.is_some() {
                rows.need("model", "model_rows")?;
                rows.need("score", "score_range")?;
                let batches = self
                    .query(
                        "SELECT CAST(model AS VARCHAR) AS m, CAST(sum(\"rows\") AS BIGINT) AS n, \
                         CAST(min(score_min) AS DOUBLE) AS lo, CAST(max(score_max) AS DOUBLE) AS hi \
                         FROM checked_summary GROUP BY model ORDER BY m",
                    )
                    .await?;
                for b in &batches {
                    results.extend(model_results(checks, b)?);
                }
            }
            if let Some(d) = &checks.drift {
                for b in &output.drift {
                    let (Some(m), Some(p)) = (b.column_by_name("model"), b.column_by_name("psi"))
                    else {
                        continue;
                    };
                    let (m, p) = (
                        cast_to(m, &DataType::Utf8)?,
                        cast_to(p, &DataType::Float64)?,
                    );
                    let (models, psi) = (m.as_string::<i32>(), p.as_primitive::<Float64Type>());
                    for i in 0..b.num_rows() {
                        let check = format!("drift.{}", models.value(i));
                        let bound = format!("<= {}", d.max_psi);
                        results.push(if psi.is_null(i) {
                            CheckResult::skipped(check, d.level, bound)
                        } else {
                            let v = psi.value(i);
                            CheckResult::new(check, d.level, Some(v), bound, v <= d.max_psi)
                        });
                    }
                }
            }
            Ok::<_, TransformError>(results)
        }
        .await;
        let _ = self.ctx.deregister_table(CHECKED);
        let _ = self.ctx.deregister_table("checked_summary");
        result.map(|mut results| {
            // In [`CHECK_NAMES`]' order, whatever order they were computed in.
            results.sort_by_key(|r| {
                let name = r.check.split('.').next().unwrap_or("");
                CHECK_NAMES.iter().position(|n| *n == name)
            });
            results
        })
    }

    /// Evaluates `checks` over a dataset's night: the rows written under `dir` (`schema`'s
    /// columns; none when every row of the night was landed already), the newest date of
    /// `date_column` for freshness, and `key` for unique_key. The checks of scores (model_rows,
    /// score_range, drift) are refused.
    pub async fn evaluate_dataset_checks(
        &self,
        checks: &ChecksConfig,
        night: &Night,
        dir: &Path,
        schema: SchemaRef,
        date_column: Option<&str>,
        key: &[&str],
    ) -> Result<Vec<CheckResult>, TransformError> {
        checks.validate_for_dataset(date_column.is_some())?;
        let has_files = walk_parquet(dir);
        let table: Arc<dyn datafusion::datasource::TableProvider> = if has_files {
            self.ctx
                .read_parquet(
                    dir_url(dir),
                    ParquetReadOptions::default().schema(schema.as_ref()),
                )
                .await
                .context("reading the night's rows for the checks")?
                .into_view()
        } else {
            Arc::new(
                MemTable::try_new(schema, vec![Vec::new()])
                    .context("staging the night's rows for the checks")?,
            )
        };
        let columns = names(&table.schema());
        self.ctx
            .register_table(CHECKED, table)
            .context("registering the night's rows for the checks")?;
        let newest =
            date_column.map(|c| format!("SELECT CAST(max(\"{c}\") AS DATE) AS d FROM {CHECKED}"));
        let rows = Checked {
            what: "rows",
            columns,
            newest: newest.as_deref(),
            key,
        };
        let result = self.row_checks(checks, night, &rows).await;
        let _ = self.ctx.deregister_table(CHECKED);
        result
    }

    /// The checks of any night's rows (registered as [`CHECKED`]): freshness, volume,
    /// null_rate and unique_key.
    async fn row_checks(
        &self,
        checks: &ChecksConfig,
        night: &Night,
        rows: &Checked<'_>,
    ) -> Result<Vec<CheckResult>, TransformError> {
        let mut results = Vec::new();
        if let (Some(f), Some(newest)) = (&checks.freshness, rows.newest) {
            let newest = match self.query(newest).await?.first() {
                Some(b) => {
                    let dates = column(b, 0, &DataType::Date32)?;
                    let dates = dates.as_primitive::<Date32Type>();
                    (!dates.is_null(0))
                        .then(|| dates.value_as_date(0))
                        .flatten()
                }
                None => None,
            };
            let age = newest.map(|d| (night.day - d).num_days() as f64);
            results.push(CheckResult::new(
                "freshness".into(),
                f.level,
                age,
                format!("<= {} days", f.max_age_days),
                age.is_some_and(|a| a <= f64::from(f.max_age_days)),
            ));
        }
        if let Some(v) = &checks.volume {
            if let Some(max) = v.max_change_pct {
                let bound = format!("<= {max} %");
                results.push(match night.previous_rows {
                    Some(prev) if prev > 0 => {
                        let change = (night.rows as f64 - prev as f64).abs() / prev as f64 * 100.0;
                        CheckResult::new(
                            "volume.change_pct".into(),
                            v.level,
                            Some(change),
                            bound,
                            change <= max,
                        )
                    }
                    _ => CheckResult::skipped("volume.change_pct".into(), v.level, bound),
                });
            }
            if let Some(min) = v.min_rows {
                results.push(CheckResult::new(
                    "volume.rows".into(),
                    v.level,
                    Some(night.rows as f64),
                    format!(">= {min}"),
                    night.rows >= min,
                ));
            }
        }
        if let Some(n) = &checks.null_rate {
            for column in n.max_pct.keys() {
                rows.need(column, "null_rate")?;
            }
            let list: Vec<String> = n
                .max_pct
                .keys()
                .map(|c| format!("CAST(count(\"{c}\") AS BIGINT)"))
                .collect();
            let batches = self
                .query(&format!(
                    "SELECT CAST(count(*) AS BIGINT), {} FROM {CHECKED}",
                    list.join(", ")
                ))
                .await?;
            let batch = batches.first();
            let count = |i: usize| -> Result<i64, TransformError> {
                Ok(match batch {
                    Some(b) => column(b, i, &DataType::Int64)?
                        .as_primitive::<Int64Type>()
                        .value(0),
                    None => 0,
                })
            };
            let total = count(0)?;
            for (i, (column, max)) in n.max_pct.iter().enumerate() {
                let nulls = total - count(i + 1)?;
                let pct = if total == 0 {
                    0.0
                } else {
                    nulls as f64 / total as f64 * 100.0
                };
                results.push(CheckResult::new(
                    format!("null_rate.{column}"),
                    n.level,
                    Some(pct),
                    format!("<= {max} %"),
                    pct <= *max,
                ));
            }
        }
        if let Some(u) = &checks.unique_key {
            for column in rows.key {
                rows.need(column, "unique_key")?;
            }
            let key = rows
                .key
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let batches = self
                .query(&format!(
                    "SELECT CAST(count(*) AS BIGINT) FROM (SELECT {key} \
                     FROM {CHECKED} GROUP BY {key} HAVING count(*) > 1)"
                ))
                .await?;
            let repeated = match batches.first() {
                Some(b) => column(b, 0, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .value(0),
                None => 0,
            };
            results.push(CheckResult::new(
                "unique_key".into(),
                u.level,
                Some(repeated as f64),
                format!("= 0 repeated ({})", rows.key.join(", ")),
                repeated == 0,
            ));
        }
        Ok(results)
    }

    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, TransformError> {
        self.ctx
            .sql(sql)
            .await
            .context("planning a check")?
            .collect()
            .await
            .context("running a check")
    }

    /// Writes the `checks` table of `results` (one row each, with the pipeline and the night)
    /// under `dir`, to be appended to the warehouse's `checks` table.
    pub async fn write_checks(
        &self,
        results: &[CheckResult],
        pipeline: &str,
        night: NaiveDate,
        dir: &Path,
        format: &OutputFormat,
    ) -> Result<(), TransformError> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("pipeline", DataType::Utf8, false),
            Field::new("night", DataType::Date32, false),
            Field::new("check", DataType::Utf8, false),
            Field::new("level", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
            Field::new("bound", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
        ]));
        let n = results.len();
        let days = night
            .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default())
            .num_days() as i32;
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![pipeline; n])),
                Arc::new(Date32Array::from(vec![days; n])),
                Arc::new(StringArray::from_iter_values(
                    results.iter().map(|r| r.check.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    results.iter().map(|r| r.level.as_str()),
                )),
                Arc::new(Float64Array::from_iter(results.iter().map(|r| r.value))),
                Arc::new(StringArray::from_iter_values(
                    results.iter().map(|r| r.bound.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    results.iter().map(|r| r.status.as_str()),
                )),
            ],
        )
        .map_err(|e| TransformError::Config(format!("building the checks table: {e}")))?;
        self.write_batches(vec![batch], dir, format, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ChecksConfig, String> {
        let c: ChecksConfig = toml::from_str(toml_text).map_err(|e| e.message().to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn bounds_that_make_no_sense_are_refused_with_their_key() {
        for (text, said) in [
            (
                "null_rate = { max_pct = { score = 101 } }",
                "checks.null_rate.max_pct.score = 101",
            ),
            ("null_rate = { max_pct = {} }", "name at least one column"),
            (
                "null_rate = { max_pct = { \"a;b\" = 1 } }",
                "is not a column name",
            ),
            ("volume = {}", "give max_change_pct, min_rows or both"),
            ("volume = { max_change_pct = -1 }", "max_change_pct = -1"),
            ("score_range = { min = 2, max = 1 }", "min <= max"),
            ("drift = { max_psi = 0 }", "checks.drift.max_psi = 0"),
            (
                "drift = { max_psi = 1, level = \"fatal\" }",
                "unknown variant",
            ),
            ("sanity = {}", "unknown field"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(said), "{text}: {e}");
        }
        let c = parse("unique_key = {}\ndrift = { max_psi = 0.25, level = \"warn\" }").unwrap();
        assert_eq!(c.names(), ["drift", "unique_key"]);
        assert_eq!(c.drift.unwrap().level, Level::Warn);
    }

    #[test]
    fn a_failure_is_fail_or_warn_by_level() {
        let r =
            |ok, level| CheckResult::new("c".into(), level, Some(1.0), "<= 0".into(), ok).status;
        assert_eq!(r(true, Level::Error), Status::Pass);
        assert_eq!(r(false, Level::Error), Status::Fail);
        assert_eq!(r(false, Level::Warn), Status::Warn);
        let d = CheckResult::new(
            "null_rate.score".into(),
            Level::Error,
            Some(3.21987),
            "<= 1 %".into(),
            false,
        );
        assert_eq!(d.describe(), "null_rate.score = 3.2199 (bound <= 1 %)");
    }
}
