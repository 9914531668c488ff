//! The scores job on a distributed engine (`[transform] engine = { cluster = "…" }`).
//!
//! The flat union of the staged parts (and of the landed scores, when merging) is deduplicated
//! by a DataFusion plan that the engine runs on its executors: the rows are shuffled by
//! (identity, model) and sorted oldest first within each, and the last row of each (identity,
//! model), the one the single-machine dedupe keeps, is kept with the count of the rows it stood
//! for (`row_number`, and `lead` marking the last row; one sort serves both). The kept rows
//! stream back here and are written as the single-machine transform writes them, a thread per
//! core, with the summaries accumulated on the way; the publish stays the driver's.
//!
//! A job that loses an executor is run again from the start (the rows written so far are
//! removed first); any other failure stops the transform with nothing published.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use scoreland_runtime::engine::{ClusterEngine, ClusterFailure, retry_lost_executor};

use crate::error::{Context, TransformError};
use crate::scores::{self, Plan, WriteOptions, Written};

/// The column of each kept row that counts the flat rows it stood for.
pub(crate) const ROWS: &str = "__rows";

/// Deduplicates `plan`'s flat rows on `engine` and writes them under `opts.dir`; `runtime` is
/// the one the union was planned in (its stores).
pub(crate) async fn write(
    engine: &dyn ClusterEngine,
    base: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    plan: Plan,
    opts: WriteOptions,
) -> Result<Written, TransformError> {
    let config = engine.session_config(base);
    let physical = dedupe_plan(&config, runtime, plan.union.clone()).await?;
    let (plan, opts) = (Arc::new(plan), Arc::new(opts));
    let config = &config;
    retry_lost_executor(&engine.name(), "the scores job", || {
        attempt(engine, physical.clone(), config, plan.clone(), opts.clone())
    })
    .await
    .map_err(|message| TransformError::Cluster {
        engine: engine.name(),
        message,
    })?
}

/// One run of the dedupe on `engine`, its rows written under `opts.dir` (emptied first): the
/// engine's failure, or what the writing gave.
async fn attempt(
    engine: &dyn ClusterEngine,
    physical: Arc<dyn ExecutionPlan>,
    config: &SessionConfig,
    plan: Arc<Plan>,
    opts: Arc<WriteOptions>,
) -> Result<Result<Written, TransformError>, ClusterFailure> {
    if opts.dir.exists()
        && let Err(source) = std::fs::remove_dir_all(&opts.dir)
    {
        return Ok(Err(TransformError::Io {
            path: opts.dir.clone(),
            source,
        }));
    }
    let mut rows = engine.execute(physical, config).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(opts.workers * 2);
    let writer = tokio::task::spawn_blocking({
        let (plan, opts) = (plan.clone(), opts.clone());
        move || scores::write_deduplicated(&plan, &opts, Mutex::new(rx))
    });
    let mut streamed = Ok(());
    while let Some(batch) = rows.next().await {
        match batch {
            Ok(b) => {
                // A closed channel: the writer stopped, its error is returned below.
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                streamed = Err(e);
                break;
            }
        }
    }
    drop(tx);
    let written = match writer.await {
        Ok(written) => written,
        Err(e) => {
            return Ok(Err(TransformError::Panicked {
                message: e.to_string(),
            }));
        }
    };
    streamed?;
    Ok(written)
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
