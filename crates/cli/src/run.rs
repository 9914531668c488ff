//! `scoreland run` and `scoreland validate`.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use scoreland_pipeline::{PipelineFile, RunOptions, RunRecord, RunStatus};

use crate::{Failure, progress, usage};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Land again even when the selected batches were already landed.
    #[arg(long)]
    pub force: bool,
    /// Say what would be downloaded and written, without doing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the run record on stdout as one line of JSON (JSON Lines).
    #[arg(long)]
    pub json: bool,
    /// Land even though this check fails (a check of `[checks]`, e.g. `drift`, a part of one,
    /// e.g. `score_range.churn_risk`, or one result, e.g. `drift.churn_risk`); repeat or
    /// separate with commas. Kept in the run record.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub skip_checks: Vec<String>,
    /// Write the run's metrics in Prometheus' text format to this file (for node_exporter's
    /// textfile collector): status, duration, rows, bytes, retries, checks, last success.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Run the scores transform on this cluster (`df://HOST:PORT`, its scheduler; see
    /// `scoreland cluster`) rather than here or where `[transform] engine` says. The staging
    /// directory must be reachable by every executor at the same path.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Pipeline files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub async fn run(args: RunArgs, quiet: bool) -> Result<u8, Failure> {
    let file = PipelineFile::load(&args.pipeline).map_err(usage)?;
    // Huge pages mostly cost memory under a pool (see `without_huge_pages`); an unlimited
    // transform keeps them.
    if !file.transform.memory_limit.is_unlimited() {
        crate::without_huge_pages();
    }
    let options = RunOptions {
        force: args.force,
        dry_run: args.dry_run,
        observer: progress::observer(quiet),
        skip_checks: args.skip_checks,
        cluster: cluster_engine(args.cluster.as_deref(), &file.transform).await?,
        ..RunOptions::default()
    };
    let outcome = scoreland_pipeline::run(&file, &options).await;
    if let Some(path) = &args.metrics_file {
        let record = match &outcome {
            Ok(r) => Some(r),
            Err((_, r)) => r.as_deref(),
        };
        if let Err(e) = crate::metrics::write(path, file.name(), record) {
            tracing::error!(file = %path.display(), error = format!("{e:#}"), "cannot write the metrics file");
        }
    }
    match outcome {
        Ok(record) => {
            report(&record, &file.tables().join(", "), args.json, quiet);
            if let (Some(out), RunStatus::Landed) = (&file.report, &record.status) {
                write_report(&file, out).await;
            }
            Ok(match record.status {
                RunStatus::NothingNew => 3,
                _ => 0,
            })
        }
        Err((error, record)) => {
            if let Some(r) = &record {
                report(r, &file.tables().join(", "), args.json, true);
            }
            Err(Failure::pipeline(error))
        }
    }
}

/// The cluster the scores transform runs on: `--cluster`, else `[transform] engine`, else none.
pub async fn cluster_engine(
    flag: Option<&str>,
    transform: &scoreland_transform::TransformConfig,
) -> Result<Option<std::sync::Arc<dyn scoreland_runtime::engine::ClusterEngine>>, Failure> {
    let configured = transform.engine.as_ref();
    let Some(url) = flag.or(configured.map(|e| e.cluster.as_str())) else {
        return Ok(None);
    };
    let partitions = configured.and_then(|e| e.partitions);
    crate::cluster::engine(url, partitions).await.map(Some)
}

/// The pipeline's `report`, after a landed night. A report that cannot be written is said
/// loudly but does not fail the run: the night is landed.
async fn write_report(file: &PipelineFile, out: &std::path::Path) {
    let written = match file.sink.sink_config().open() {
        Ok(warehouse) => crate::report::write(&warehouse, out, 30).await,
        Err(e) => Err(anyhow::Error::new(e)),
    };
    match written {
        Ok(()) => tracing::info!(report = %out.display(), "report written"),
        Err(e) => {
            tracing::error!(report = %out.display(), error = format!("{e:#}"), "the night is landed, but the report could not be written")
        }
    }
}

/// What a run did, for people (or its record as JSON); `tables`: those the pipeline lands.
fn report(r: &RunRecord, tables: &str, json: bool, quiet: bool) {
    if json {
        // One object per line (JSON Lines), so a nightly job can append to a .jsonl file.
        match serde_json::to_string(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot print the run record: {e}"),
        }
    }
    if quiet {
        return;
    }
    let mb = |b: u64| b as f64 / 1e6;
    let what = if r.export.is_some() {
        "export folder"
    } else {
        "batch"
    };
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    match r.status {
        RunStatus::NothingNew if r.export.is_some() => eprintln!(
            "nothing new: no complete export folder after the last one landed in {}{}",
            r.warehouse,
            r.export
                .as_ref()
                .map(|e| format!(" (complete means: {})", e.completeness))
                .unwrap_or_default()
        ),
        RunStatus::NothingNew if r.batches.is_empty() => eprintln!(
            "nothing new: dataset {} has no successful batch after the last one landed in {}",
            r.dataset, r.warehouse
        ),
        RunStatus::NothingNew => eprintln!(
            "nothing new: batch {} is already landed in {} (use --force to land it again)",
            r.batches.join(", "),
            r.warehouse
        ),
        RunStatus::DryRun => eprintln!(
            "dry run: would download {what} {} of dataset {} ({} parts, {:.1} MB, {} records) and land {tables} in {}",
            r.batches.join(", "),
            r.dataset,
            r.parts,
            mb(r.bytes),
            r.rows_in,
            r.warehouse
        ),
        RunStatus::Landed => {
            eprintln!(
                "landed {what} {} of dataset {} into {} (run {})",
                r.batches.join(", "),
                r.dataset,
                r.warehouse,
                r.run_id
            );
            eprintln!(
                "  ingest    {} parts ({} already staged), {:.1} MB downloaded, {} retries, {:.1} s",
                r.parts,
                r.parts_skipped,
                mb(r.bytes_downloaded),
                r.retries,
                r.timings.ingest_ms as f64 / 1e3
            );
            eprintln!(
                "  transform {} rows in, {} rows out, {} duplicates and {} rows without identity dropped, {:.1} s",
                r.rows_in,
                r.rows_out,
                r.duplicates_dropped,
                r.null_identity_dropped,
                r.timings.transform_ms as f64 / 1e3
            );
            for t in &r.tables {
                let what = match (t.committed, t.replaced_dates.as_slice()) {
                    (false, _) => "already held this run's commit".to_string(),
                    (true, []) => "rows appended".to_string(),
                    (true, dates) => format!("replaced {}", dates.join(", ")),
                };
                eprintln!("  {:<9} Delta version {}, {what}", t.table, t.version);
            }
            for d in &r.drift {
                match d.psi {
                    Some(p) => eprintln!("  drift     {}: PSI {p:.4}", d.model),
                    None => eprintln!("  drift     {}: no baseline yet", d.model),
                }
            }
            if !r.checks.is_empty() {
                let count = |s: &str| r.checks.iter().filter(|c| c.status.as_str() == s).count();
                eprintln!(
                    "  checks    {} passed, {} warned, {} overridden, {} skipped",
                    count("pass"),
                    count("warn"),
                    count("overridden"),
                    count("skipped")
                );
            }
        }
        RunStatus::Failed => {}
    }
}

pub fn validate(args: ValidateArgs) -> Result<u8, Failure> {
    let mut bad = 0;
    for f in &args.files {
        match PipelineFile::check_file(f) {
            Ok((p, unset)) if unset.is_empty() => {
                println!("ok: {} (pipeline {})", f.display(), p.name())
            }
            Ok((p, unset)) => println!(
                "ok: {} (pipeline {}); set at run time: {}",
                f.display(),
                p.name(),
                unset.join(", ")
            ),
            Err(e) => {
                bad += 1;
                eprintln!("invalid: {e}");
            }
        }
    }
    if bad > 0 {
        return Err(usage(anyhow!(
            "{bad} of {} pipeline files are invalid",
            args.files.len()
        )));
    }
    Ok(0)
}
