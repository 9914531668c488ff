//! The scores job on a distributed engine (`[transform] engine = { cluster = "…" }`).
//!
//! The flat union of the staged parts (and of the landed scores, when merging) is deduplicated
//! by a DataFusion plan that the engine runs on its executors: the rows are shuffled by
//! (identity, model) and sorted oldest first within each, and the last row of each (identity,
//! model), the one the single-machine dedupe keeps, is kept with the count of the rows it stood
//! for (`row_number`, and `lead` marking the last row; one sort serves both). On top of it, the
//! executors write the kept rows and summarise them (`writer.rs`): into the scores directory
//! itself when every executor shares this machine's directories, or under the staging bucket,
//! from where the files the job lists are fetched. Only each task's report and the scores
//! (8 bytes a row, for the exact deciles) come back here; the publish stays the driver's.
//!
//! A job that loses an executor is run again from the start (the files written so far are
//! removed first); any other failure stops the transform with nothing published. Files a job
//! does not list (a task that failed and ran again) are removed.

mod writer;

use std::path::{Component, Path};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Date32Type, Float64Type};
use datafusion::dataframe::DataFrame;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;

use scoreland_runtime::engine::{ClusterEngine, ClusterFailure, retry_lost_executor};

use crate::config::OutputFormat;
use crate::error::{Context, TransformError};
use crate::scores::{Plan, WriteOptions, Written};
use crate::shared::SharedParts;
pub use writer::KeptWriterCodec;
use writer::{Report, Spec, WriteKeptExec};

/// The column of each kept row that counts the flat rows it stood for.
pub(crate) const ROWS: &str = "__rows";

/// Where the executors write the kept rows, and how they get here.
#[derive(Clone, Copy)]
pub(crate) enum Output<'a> {
    /// Into a directory of the attempt's beside the scores directory, which every executor
    /// reaches by the same path; moved from there.
    Shared,
    /// Under the staging bucket, fetched from there.
    Staging(&'a SharedParts),
}

/// Deduplicates `plan`'s flat rows on `engine`, whose executors write them (in `format`) and
/// summarise them; the files end up under `opts.dir`. `runtime` is the one the union was
/// planned in (its stores).
pub(crate) async fn write(
    engine: &dyn ClusterEngine,
    base: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    plan: Plan,
    opts: WriteOptions,
    format: &OutputFormat,
    output: Output<'_>,
) -> Result<Written, TransformError> {
    let config = engine.session_config(base);
    let dedupe = dedupe_plan(&config, runtime, plan.union.clone()).await?;
    let job = Job {
        engine,
        config: &config,
        dedupe,
        plan: &plan,
        opts: &opts,
        format,
        output,
    };
    retry_lost_executor(&engine.name(), "the scores job", || job.attempt())
        .await
        .map_err(|message| TransformError::Cluster {
            engine: engine.name(),
            message: with_store_hint(message),
        })?
}

/// A failure of the executors' object store, with where their credentials come from.
fn with_store_hint(message: String) -> String {
    if message.contains("Object Store error") {
        format!(
            "{message} (the executors open the staged parts' and the kept rows' store with the \
             credentials of their own environment: AWS_*, GOOGLE_*, AZURE_*)"
        )
    } else {
        message
    }
}

/// What each attempt of the job runs.
struct Job<'a> {
    engine: &'a dyn ClusterEngine,
    config: &'a SessionConfig,
    dedupe: Arc<dyn ExecutionPlan>,
    plan: &'a Plan,
    opts: &'a WriteOptions,
    format: &'a OutputFormat,
    output: Output<'a>,
}

impl Job<'_> {
    /// One run of the job, its files under `opts.dir` (emptied first): the engine's failure,
    /// or what was written.
    async fn attempt(&self) -> Result<Result<Written, TransformError>, ClusterFailure> {
        let dir = &self.opts.dir;
        let attempt = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        // The executors write into a directory of this attempt's, beside the scores (a task of
        // an attempt given up may still be writing: never where the publish reads).
        let beside = dir.with_file_name(format!(".kept-{attempt}"));
        let prepared = (|| {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
            match self.output {
                Output::Staging(shared) => Ok(shared.kept_url(&attempt)),
                Output::Shared => {
                    std::fs::create_dir_all(&beside)?;
                    let abs = std::fs::canonicalize(&beside)?;
                    url::Url::from_directory_path(&abs)
                        .map(String::from)
                        .map_err(|()| std::io::Error::other("not an absolute path"))
                }
            }
        })();
        let out = match prepared {
            Ok(out) => out,
            Err(source) => {
                return Ok(Err(TransformError::Io {
                    path: dir.clone(),
                    source,
                }));
            }
        };
        let spec = Spec {
            out,
            attempt: attempt.clone(),
            models: self.plan.models.clone(),
            keep_null_identities: self.plan.keep_null_identities,
            run_id: self.opts.run_id.clone(),
            format: self.format.clone(),
        };
        let node: Arc<dyn ExecutionPlan> = Arc::new(WriteKeptExec::new(spec, self.dedupe.clone()));
        let tasks = node.output_partitioning().partition_count();
        let answer = async {
            self.engine
                .execute(node, self.config)
                .await?
                .try_collect::<Vec<RecordBatch>>()
                .await
        }
        .await;
        let gathered = match answer {
            Ok(answer) => Ok(self.gather(&answer, tasks, &attempt, &beside).await),
            Err(failure) => Err(failure),
        };
        if beside.exists()
            && let Err(e) = std::fs::remove_dir_all(&beside)
        {
            tracing::warn!("cannot remove {}: {e}", beside.display());
        }
        gathered
    }

    /// Adds up the answers of the job's `tasks` and brings the files they list under
    /// `opts.dir`.
    async fn gather(
        &self,
        answer: &[RecordBatch],
        tasks: usize,
        attempt: &str,
        beside: &Path,
    ) -> Result<Written, TransformError> {
        let (mut written, files) = read_answer(answer, tasks)?;
        written.dedupe_passes = 1;
        let started = std::time::Instant::now();
        let bytes = match self.output {
            Output::Staging(shared) => shared.fetch_kept(attempt, &files, &self.opts.dir).await?,
            Output::Shared => move_listed(beside, &files, &self.opts.dir)?,
        };
        tracing::info!(
            files = files.len(),
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "the executors wrote and summarised the kept rows ({})",
            match self.output {
                Output::Staging(shared) => format!("fetched from {}", shared.kept_url(attempt)),
                Output::Shared => format!("moved from {}", beside.display()),
            }
        );
        Ok(written)
    }
}

/// What the writer's `tasks` reported (one report each, or the job's answer is refused: a
/// missing one would be rows missing), and their files (each checked to be a kept rows' file
/// in a score date's directory: a path from an executor never leaves the scores directory).
fn read_answer(
    answer: &[RecordBatch],
    tasks: usize,
) -> Result<(Written, Vec<String>), TransformError> {
    let bad = |why: String| TransformError::Cluster {
        engine: "the writer of kept rows".into(),
        message: why,
    };
    let mut written = Written::default();
    let mut files = Vec::new();
    let mut reports = 0;
    for batch in answer {
        let columns = (
            batch
                .column_by_name("model")
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name("score_date")
                .and_then(|c| c.as_primitive_opt::<Date32Type>()),
            batch
                .column_by_name("scores")
                .and_then(|c| c.as_list_opt::<i32>()),
            batch
                .column_by_name("report")
                .and_then(|c| c.as_string_opt::<i32>()),
        );
        let (Some(model), Some(date), Some(scores), Some(report)) = columns else {
            return Err(bad(format!(
                "an answer of another shape: {}",
                batch.schema()
            )));
        };
        for r in 0..batch.num_rows() {
            if report.is_valid(r) {
                let report: Report = serde_json::from_str(report.value(r))
                    .map_err(|e| bad(format!("an unreadable report: {e}")))?;
                reports += 1;
                written.rows_in += report.rows_in;
                written.null_identities += report.null_identities;
                written.rows_out += report.rows_out;
                for g in report.groups {
                    written.groups.add_figures(g);
                }
                for f in report.files {
                    if !is_kept_file(&f) {
                        return Err(bad(format!("a file outside the scores directory: {f:?}")));
                    }
                    files.push(f);
                }
            } else if model.is_valid(r) && scores.is_valid(r) {
                let values = scores.value(r);
                let values = values
                    .as_primitive_opt::<Float64Type>()
                    .ok_or_else(|| bad("scores that are not 64-bit floats".into()))?;
                let day = date.is_valid(r).then(|| date.value(r));
                written
                    .groups
                    .add_scores(model.value(r), day, values.values());
            } else {
                return Err(bad("a row with neither scores nor a report".into()));
            }
        }
    }
    if reports != tasks {
        return Err(bad(format!(
            "the job answered with {reports} reports for its {tasks} tasks"
        )));
    }
    Ok((written, files))
}

/// Whether `f` names a kept rows' file: `score_date=…/part-….parquet`, nothing else.
fn is_kept_file(f: &str) -> bool {
    let path = Path::new(f);
    let parts: Vec<Component> = path.components().collect();
    let named = |c: &Component, prefix: &str, suffix: &str| {
        matches!(c, Component::Normal(n) if n.to_str().is_some_and(|n| {
            n.starts_with(prefix) && n.ends_with(suffix) && n.len() > prefix.len() + suffix.len()
        }))
    };
    parts.len() == 2
        && !f.contains('\\')
        && named(&parts[0], "score_date=", "")
        && named(&parts[1], "part-", ".parquet")
}

/// Moves the files `listed` (relative paths) from `from` to the same paths under `to`; their
/// size. What a task of the job did not list stays behind and is removed with `from`.
fn move_listed(from: &Path, listed: &[String], to: &Path) -> Result<u64, TransformError> {
    let mut bytes = 0;
    for f in listed {
        let (src, dst) = (from.join(f), to.join(f));
        let io = |source| TransformError::Io {
            path: src.clone(),
            source,
        };
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        bytes += std::fs::metadata(&src).map_err(io)?.len();
        std::fs::rename(&src, &dst).map_err(io)?;
    }
    Ok(bytes)
}

/// The physical plan that keeps the newest flat row of each (identity, model) of `union`, with
/// the rows it stood for in [`ROWS`]; rows without identity pass through (the writer keeps or
/// drops them, as configured), each standing for itself. One scan, one shuffle, one sort.
async fn dedupe_plan(
    config: &SessionConfig,
    runtime: Arc<RuntimeEnv>,
    union: DataFrame,
) -> Result<Arc<dyn ExecutionPlan>, TransformError> {
    let columns = union
        .schema()
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name().replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let ctx = SessionContext::new_with_config_rt(config.clone(), runtime);
    ctx.register_table("flat", union.into_view())
        .context("planning the dedupe")?;
    // Oldest first: the single-machine dedupe keeps the newest score date (null is the
    // oldest), then the newest batch (creation time, then id), then the smallest record id
    // (null last); that row comes last here.
    let window = "PARTITION BY identity, model ORDER BY score_date ASC NULLS FIRST, \
                  batch_created ASC, batch_id ASC, record_id DESC NULLS FIRST";
    // Rows without identity share a window per model; each passes, standing for itself.
    let sql = format!(
        "SELECT {columns}, CASE WHEN identity IS NULL THEN CAST(1 AS BIGINT) ELSE {ROWS} END \
           AS {ROWS} \
         FROM (SELECT *, CAST(row_number() OVER ({window}) AS BIGINT) AS {ROWS}, \
                      lead(1) OVER ({window}) AS __next \
               FROM flat) \
         WHERE __next IS NULL OR identity IS NULL"
    );
    let plan = ctx
        .sql(&sql)
        .await
        .context("planning the dedupe")?
        .create_physical_plan()
        .await
        .context("planning the dedupe")?;
    tracing::debug!(
        "the dedupe's plan:\n{}",
        datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
    );
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use writer::{row, schema};

    #[test]
    fn a_path_from_an_executor_never_leaves_the_scores_directory() {
        assert!(is_kept_file(
            "score_date=2026-12-01/part-0a1b2c3d-001-4e5f6a7b.parquet"
        ));
        for hostile in [
            "../score_date=2026-12-01/part-a.parquet",
            "/etc/score_date=1/part-a.parquet",
            "score_date=2026-12-01/../../part-a.parquet",
            "score_date=2026-12-01/sub/part-a.parquet",
            "score_date=2026-12-01\\..\\..\\part-a.parquet",
            "score_date=/part-a.parquet",
            "score_date=1/part-.parquet",
            "score_date=1/part-a.txt",
            "part-a.parquet",
            "",
        ] {
            assert!(!is_kept_file(hostile), "{hostile:?}");
        }
    }

    fn report(files: &[&str], rows_in: u64) -> RecordBatch {
        let json = serde_json::json!({
            "files": files, "rows_in": rows_in, "null_identities": 1, "rows_out": 2, "groups": []
        })
        .to_string();
        row(None, None, None, Some(&json)).unwrap()
    }

    #[test]
    fn the_tasks_answers_are_added_up_and_a_hostile_one_refused() {
        let day = Some(20_000);
        let answer = vec![
            row(Some("churn"), day, Some(&[1.0, 2.0]), None).unwrap(),
            report(&["score_date=2024-10-04/part-a-000-b.parquet"], 5),
            row(Some("churn"), day, Some(&[3.0]), None).unwrap(),
            report(&["score_date=2024-10-04/part-a-001-c.parquet"], 7),
        ];
        let (written, files) = read_answer(&answer, 2).unwrap();
        let err = read_answer(&answer, 3).err().unwrap().to_string();
        assert!(err.contains("2 reports for its 3 tasks"), "{err}");
        assert_eq!(
            (written.rows_in, written.null_identities, written.rows_out),
            (12, 2, 4)
        );
        assert_eq!(files.len(), 2);
        let figures = written.groups.into_figures();
        assert_eq!(figures.len(), 1);
        assert_eq!(figures[0].1, vec![1.0, 2.0, 3.0]);

        let outside = report(&["score_date=2024-10-04/../../../etc/part-x.parquet"], 1);
        let err = read_answer(&[outside], 1).err().unwrap().to_string();
        assert!(err.contains("outside the scores directory"), "{err}");
        let garbled = row(None, None, None, Some("{not json")).unwrap();
        let err = read_answer(&[garbled], 1).err().unwrap().to_string();
        assert!(err.contains("unreadable report"), "{err}");
        let neither = row(None, None, None, None).unwrap();
        assert!(read_answer(&[neither], 0).is_err());
        let other = RecordBatch::try_new(
            Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
                datafusion::arrow::datatypes::Field::new(
                    "report",
                    datafusion::arrow::datatypes::DataType::Int64,
                    true,
                ),
            ])),
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                1,
            ]))],
        )
        .unwrap();
        let err = read_answer(&[other], 1).err().unwrap().to_string();
        assert!(err.contains("another shape"), "{err}");
        assert_eq!(schema().fields().len(), 4);
    }
}
