//! `scoreland run`: one night of a pipeline, under its lock and one run id:
//! prepare (the source selects and stages what is new) ▸ transform ▸ publish, then the run
//! record.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::PipelineFile;
use crate::context::{InFlight, RunContext, RunOptions};
use crate::error::PipelineError;
use crate::lineage::{Lineage, OutputTable};
use crate::publish::{Prepared, publish};
use crate::record::{PipelineState, RunRecord, RunStatus, TABLES, error_chain, state_rel};

/// Runs the pipeline once. The run record is returned (and stored in the warehouse) for
/// landed, nothing-new and failed runs alike; `Err` carries the record of a failed run.
pub async fn run(
    file: &PipelineFile,
    options: &RunOptions,
) -> Result<RunRecord, (PipelineError, Option<Box<RunRecord>>)> {
    let started = chrono::Utc::now();
    let run_id = format!(
        "{}-{}",
        started.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let name = file.name().to_string();
    // What the operator asks to land anyway must be checks this pipeline has (before anything
    // is downloaded).
    if let Err(message) = skippable(file, &options.skip_checks) {
        return Err((
            PipelineError::Invalid {
                path: file.path.clone(),
                message,
            },
            None,
        ));
    }
    // Only the scores transform runs on a cluster: refused before anything is downloaded.
    if let (Some(cluster), false) = (&options.cluster, file.lands_scores()) {
        return Err((
            PipelineError::Invalid {
                path: file.path.clone(),
                message: format!(
                    "the cluster {} runs the transform of Customer AI scores; this pipeline \
                     lands a profile export or a dataset, which runs here only (run it without \
                     --cluster)",
                    cluster.name()
                ),
            },
            None,
        ));
    }
    let sink = file.sink.sink_config();
    let warehouse = match if options.dry_run {
        sink.open()
    } else {
        sink.build().await
    } {
        Ok(w) => w,
        Err(e) => return Err((PipelineError::Sink(e), None)),
    };
    let mut record = RunRecord::start(&run_id, &name, started, warehouse.url().as_ref());
    for table in TABLES {
        match warehouse.is_legacy(table).await {
            Ok(false) => {}
            Ok(true) => {
                return Err((
                    PipelineError::LegacyWarehouse {
                        url: warehouse.url().to_string(),
                    },
                    None,
                ));
            }
            Err(e) => return Err((PipelineError::Sink(e), None)),
        }
    }
    let lock = if options.dry_run {
        None
    } else {
        match warehouse
            .lock(&name, &run_id, options.stale_lock_after, &|| {
                scoreland_sink::pause_point("lock_takeover")
            })
            .await
        {
            Ok(l) => Some(l),
            Err(e) => return Err((PipelineError::Sink(e), None)),
        }
    };
    // Lineage events for real runs: START now, COMPLETE or FAIL before the run record.
    let lineage = file
        .lineage
        .as_ref()
        .filter(|_| !options.dry_run)
        .map(|config| Lineage::new(config, &name));
    if let Some(l) = &lineage {
        l.start(&mut record).await;
    }
    let mut outputs = Vec::new();
    let staging = file
        .staging
        .clone()
        .unwrap_or_else(|| PathBuf::from("staging"));
    let work = staging.join(".work").join(&run_id);
    // Until the publish starts, SIGINT or SIGTERM (what systemd sends) stops the run: nothing
    // is published, and the partial work goes. Once it starts, the publish is finished.
    let mut signal = std::pin::pin!(shutdown_signal());
    let in_flight = InFlight::default();
    let prepared = tokio::select! {
        r = async {
            let state: PipelineState = warehouse
                .get_json(&state_rel(&name))
                .await
                .map_err(PipelineError::Sink)?
                .unwrap_or_default();
            let cx = RunContext {
                file: &file.path,
                pipeline: &name,
                options,
                warehouse: &warehouse,
                staging: &staging,
                work: &work,
                state: &state,
                in_flight: &in_flight,
                dataset: file.transform.dataset.as_ref(),
            };
            prepare(file, &cx, &mut record).await
        } => r,
        name = &mut signal => Err(PipelineError::Interrupted { signal: name }),
    };
    if let Err(PipelineError::Interrupted { signal }) = &prepared
        && let Some(said) = in_flight
            .cancel(&format!("the run was stopped by {signal}"))
            .await
    {
        record.warnings.push(said);
    }
    let outcome = match prepared {
        Ok(Some(prepared)) => {
            if lineage.is_some() {
                outputs = output_tables(&prepared, &mut record);
            }
            // A run whose lock another run took over (it was thought dead) publishes nothing.
            let held = match &lock {
                Some(l) => l.check_held().map_err(PipelineError::Sink),
                None => Ok(()),
            };
            let published = match held {
                Ok(()) => publish(&name, &warehouse, &mut record, prepared).await,
                Err(e) => Err(e),
            };
            if published.is_ok() {
                prune_staging(file, &staging, &record);
            }
            if let Some(name) = futures::FutureExt::now_or_never(&mut signal) {
                tracing::warn!(
                    signal = name,
                    "{name} arrived while publishing; the publish was finished first"
                );
            }
            published
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if work.exists()
        && let Err(e) = std::fs::remove_dir_all(&work)
    {
        tracing::warn!(dir = %work.display(), error = %e, "cannot remove the work directory");
    }
    record.finished_at = chrono::Utc::now().to_rfc3339();
    if let Err(e) = &outcome {
        record.status = RunStatus::Failed;
        record.error = Some(error_chain(e));
    }
    if let Some(l) = &lineage {
        let input = staged_facts(&staging, &record);
        l.end(
            &mut record,
            &file.source.lineage_namespace(),
            input.as_ref(),
            &outputs,
            warehouse.url().as_ref(),
        )
        .await;
    }
    if !options.dry_run {
        let rel = format!("_runs/{name}/{run_id}.json");
        if let Err(e) = warehouse.put_json(&rel, &record).await {
            tracing::error!(error = %e, "cannot store the run record");
        }
    }
    if let Some(lock) = lock
        && let Err(e) = lock.release().await
    {
        tracing::error!(error = %e, "cannot release the pipeline lock");
    }
    match outcome {
        Ok(()) => Ok(record),
        Err(e) => Err((e, Some(Box::new(record)))),
    }
}

/// Everything before the publish: select ▸ stage ▸ transform. `None` when there is nothing
/// to publish (nothing new, or a dry run).
async fn prepare(
    file: &PipelineFile,
    cx: &RunContext<'_>,
    record: &mut RunRecord,
) -> Result<Option<Prepared>, PipelineError> {
    let Some(ingested) = file.source.prepare(cx, record).await? else {
        return Ok(None);
    };
    let prepared = crate::transform::transform(file, cx, record, ingested).await?;
    crate::forget::keep_out(cx.warehouse, &prepared, record).await?;
    Ok(Some(prepared))
}

/// `Err` names a `--skip-checks` name that is not a check of `file` (a check, or one result
/// of it such as `drift.churn_risk`).
fn skippable(file: &PipelineFile, skips: &[String]) -> Result<(), String> {
    let configured = file.checks.as_ref().map(|c| c.names()).unwrap_or_default();
    for skip in skips {
        let kind = skip.split('.').next().unwrap_or(skip);
        if !configured.contains(&kind) {
            return Err(if configured.is_empty() {
                format!("--skip-checks {skip}: the pipeline has no [checks]")
            } else {
                format!(
                    "--skip-checks {skip}: the pipeline has no such check; its checks are: {}",
                    configured.join(", ")
                )
            });
        }
    }
    Ok(())
}

/// What the run read, as lineage describes its input: the columns, rows and bytes of the
/// batches (or folders) it staged, from their parquet footers; `None` when none is staged.
fn staged_facts(staging: &Path, record: &RunRecord) -> Option<scoreland_transform::TableFacts> {
    let mut total: Option<scoreland_transform::TableFacts> = None;
    for batch in &record.batches {
        let dir = scoreland_ingest::Manifest::batch_dir(staging, &record.dataset, batch);
        let Ok(facts) = scoreland_transform::table_facts(&dir) else {
            continue;
        };
        match &mut total {
            Some(t) => {
                t.rows += facts.rows;
                t.bytes += facts.bytes;
            }
            None => total = Some(facts),
        }
    }
    total.filter(|t| !t.fields.is_empty())
}

/// The tables of `prepared` as lineage describes them (a table whose files cannot be read is
/// left out, with a warning).
fn output_tables(prepared: &Prepared, record: &mut RunRecord) -> Vec<OutputTable> {
    let mut out = Vec::new();
    for t in &prepared.tables {
        match scoreland_transform::table_facts(&t.dir) {
            Ok(f) => out.push(OutputTable {
                name: t.name.clone(),
                rows: f.rows,
                bytes: f.bytes,
                fields: f.fields,
            }),
            Err(e) => record.warn(format!(
                "lineage: cannot describe table {}: {}",
                t.name,
                error_chain(&e)
            )),
        }
    }
    out
}

/// Resolves on SIGINT or SIGTERM with the signal's name. If the handlers cannot be installed,
/// it never resolves (and the signals keep their default effect).
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Staging retention, after a landing: staged batches older than `staging_retention` go (the
/// ones just landed stay), and work directories that dead runs left behind for a day.
fn prune_staging(file: &PipelineFile, staging: &Path, record: &RunRecord) {
    let retention = file.staging_retention();
    match scoreland_ingest::Manifest::prune(staging, &record.dataset, &record.batches, retention) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(batches = ?removed, "removed staged batches older than staging_retention")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot prune staging"),
    }
    let work = staging.join(".work");
    let Ok(entries) = std::fs::read_dir(&work) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(86_400));
        if old && entry.file_name() != record.run_id.as_str() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
