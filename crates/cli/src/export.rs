//! `scoreland export …`: the Flow Service dataflow that exports a pipeline's dataset
//! (docs/exports.md).
//! The platform, the dataset and the flow's settings come from the pipeline file's `[source]`
//! (type `dataset-export`); destination secrets come from the environment.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use scoreland_ingest::{
    AepClient, DownloadOptions, Flow, FlowRun, NotReadyRetry, PollEvery, Polled, poll_job,
};
use scoreland_pipeline::{ExportSource, PipelineFile, Platform, SourceConfig};

use crate::{Failure, usage};

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(subcommand)]
    command: ExportCommand,
}

#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// Check the export before the first night: the dataset is exportable, its size and class,
    /// the schedule and when the flow ends, the flow's other datasets, the folder template.
    Plan(Target),
    /// Set up the pipeline's export dataflow ([source.flow]); one of that name is reused. The
    /// plan's checks run first: a failed one creates nothing.
    Create(Target),
    /// The export dataflows of the platform.
    List(Target),
    /// One dataflow: destination, format, schedule, state.
    Show(Target),
    /// Let the dataflow export on its schedule again.
    Enable(Target),
    /// Stop the dataflow's scheduled exports.
    Disable(Target),
    /// Export now (an ad-hoc run) and wait for it to finish.
    Run(RunArgs),
    /// The dataflow's runs, newest first: status, files, bytes, records.
    Runs(Target),
    /// Delete the dataflow and the connections it was made of.
    Delete(Target),
    /// Stage one complete export folder (the newest, or --folder) without landing it.
    Download(DownloadArgs),
}

#[derive(Debug, Args)]
struct DownloadArgs {
    /// A pipeline file whose [source] is `type = "dataset-export"`.
    pipeline: PathBuf,
    /// Staging directory: the folder lands in OUT/<dataset>/export-<time>/.
    #[arg(long)]
    out: PathBuf,
    /// The folder's path under the flow's folder, e.g. `<dataset>/exportTime=202612010200`.
    #[arg(long)]
    folder: Option<String>,
}

#[derive(Debug, Args)]
struct Target {
    /// A pipeline file whose [source] is `type = "dataset-export"` with [source.platform].
    pipeline: PathBuf,
    /// The dataflow's id or name (default: the pipeline's flow.name).
    #[arg(long)]
    flow: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Start the run and return its id without waiting.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the run, e.g. "2h".
    #[arg(long, default_value = "2h", value_parser = crate::args::parse_duration)]
    timeout: Duration,
}

struct Context {
    client: AepClient,
    source: ExportSource,
    flow_ref: Option<String>,
}

async fn context(target: &Target) -> Result<Context, Failure> {
    let file = PipelineFile::load(&target.pipeline).map_err(usage)?;
    let SourceConfig::DatasetExport(source) = file.source else {
        return Err(usage(anyhow::anyhow!(
            "{}: [source] is not type = \"dataset-export\"",
            target.pipeline.display()
        )));
    };
    let Some(platform) = &source.platform else {
        return Err(usage(anyhow::anyhow!(
            "{}: [source.platform] is needed to manage the dataflow{}",
            target.pipeline.display(),
            if source.simulator.is_some() {
                " (this pipeline starts its own simulator; `scoreland sim` serves one that keeps its flows, for [source.platform] to point at)"
            } else {
                ""
            }
        )));
    };
    let client = Platform::aep(platform)
        .map_err(|e| usage(anyhow::anyhow!("[source.platform]: {e}")))?
        .connect(DownloadOptions::default())
        .await
        .map_err(Failure::pipeline)?
        .client;
    let flow_ref = target
        .flow
        .clone()
        .or_else(|| source.flow.as_ref().map(|f| f.name.clone()));
    Ok(Context {
        client,
        source: *source,
        flow_ref,
    })
}

use crate::platform::ingest_failure as ingest;

impl Context {
    async fn flow(&self) -> Result<Flow, Failure> {
        let r = self.flow_ref.as_deref().ok_or_else(|| {
            usage(anyhow::anyhow!(
                "which dataflow? give --flow, or [source.flow] name in the pipeline"
            ))
        })?;
        self.client.export_flow(r).await.map_err(ingest)
    }

    fn dataset(&self) -> Result<String, Failure> {
        self.source
            .dataset
            .clone()
            .ok_or_else(|| usage(anyhow::anyhow!("[source] dataset is needed")))
    }
}

impl Context {
    /// The pipeline's flow, or `None` when there is none of its name yet.
    async fn existing_flow(&self) -> Result<Option<Flow>, Failure> {
        let Some(r) = self.flow_ref.as_deref() else {
            return Ok(None);
        };
        match self.client.export_flow(r).await {
            Ok(f) => Ok(Some(f)),
            Err(scoreland_ingest::IngestError::NotFound { .. }) => Ok(None),
            Err(e) => Err(ingest(e)),
        }
    }

    /// The export plan, printed (text or JSON); `Err` (exit 2) when a check failed.
    async fn plan(&self, json: bool, to_stderr: bool) -> Result<(), Failure> {
        let flow = self.existing_flow().await?;
        let plan = scoreland_pipeline::export_plan(
            &self.client,
            &self.source,
            &self.dataset()?,
            flow.as_ref(),
            chrono::Utc::now(),
        )
        .await
        .map_err(ingest)?;
        let text = if json {
            serde_json::to_string_pretty(&plan)?
        } else {
            plan_text(&plan)
        };
        if to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
        let failed = plan.failed();
        if failed.is_empty() {
            return Ok(());
        }
        Err(Failure {
            code: 2,
            error: anyhow::anyhow!(
                "the export plan has {} failed check{}: {}",
                failed.len(),
                if failed.len() == 1 { "" } else { "s" },
                failed
                    .iter()
                    .map(|c| c.check)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

fn plan_text(plan: &scoreland_pipeline::ExportPlan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "export plan for dataset {}{}, dataflow {}",
        plan.dataset,
        plan.dataset_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        plan.flow.as_deref().unwrap_or("not created yet")
    );
    for c in &plan.checks {
        let verdict = match c.verdict {
            scoreland_pipeline::PlanVerdict::Ok => "ok",
            scoreland_pipeline::PlanVerdict::Warn => "warn",
            scoreland_pipeline::PlanVerdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "  {verdict:<4}  {:<9} {}", c.check, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "        {:<9} fix: {fix}", "");
        }
    }
    if !plan.first_exports.is_empty() {
        let runs: Vec<String> = plan
            .first_exports
            .iter()
            .map(|(t, what)| format!("{t} ({what})"))
            .collect();
        let _ = write!(out, "first exports: {}", runs.join(", "));
    }
    out.trim_end().to_string()
}

pub async fn export(args: ExportArgs, quiet: bool) -> Result<u8, Failure> {
    match args.command {
        ExportCommand::Plan(t) => {
            let cx = context(&t).await?;
            cx.plan(t.json, false).await?;
            Ok(0)
        }
        ExportCommand::Create(t) => {
            let cx = context(&t).await?;
            let section = cx.source.flow.as_ref().ok_or_else(|| {
                usage(anyhow::anyhow!(
                    "{}: [source.flow] says what to create",
                    t.pipeline.display()
                ))
            })?;
            let spec = section
                .spec(&cx.dataset()?, &|v| std::env::var(v).ok(), false)
                .map_err(|e| usage(anyhow::anyhow!("{e}")))?;
            // The plan first, on stderr: nothing is created when a check fails.
            cx.plan(false, true).await?;
            let (flow, created) = cx.client.create_export_flow(&spec).await.map_err(ingest)?;
            if t.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"created": created, "flow": flow})
                    )?
                );
            } else {
                println!(
                    "{} dataflow {} ({}) exporting dataset {} to {}",
                    if created { "created" } else { "found existing" },
                    flow.name,
                    flow.id,
                    spec.dataset_id,
                    spec.target.destination.key()
                );
            }
            warn_ending(&flow);
            Ok(0)
        }
        ExportCommand::List(t) => {
            let cx = context(&t).await?;
            let flows = cx.client.export_flows(None).await.map_err(ingest)?;
            if t.json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
                return Ok(0);
            }
            println!(
                "{:<28} {:<38} {:<11} {:<9} {:<28} {:>10}",
                "NAME", "ID", "DESTINATION", "STATE", "MODE", "DAYS LEFT"
            );
            let now = chrono::Utc::now().timestamp();
            for f in &flows {
                println!(
                    "{:<28} {:<38} {:<11} {:<9} {:<28} {:>10}",
                    f.name,
                    f.id,
                    f.destination.map(|d| d.key()).unwrap_or("?"),
                    f.state,
                    f.schedule
                        .as_ref()
                        .map(|s| format!("{:?}", s.export_mode))
                        .unwrap_or_default(),
                    f.days_left(now)
                        .map(|d| format!("{d:.1}"))
                        .unwrap_or_default()
                );
            }
            for f in &flows {
                warn_ending(f);
            }
            Ok(0)
        }
        ExportCommand::Show(t) => {
            let cx = context(&t).await?;
            let flow = cx.flow().await?;
            let target = cx.client.export_target(&flow).await.map_err(ingest)?;
            let datasets = cx.client.export_datasets(&flow).await.map_err(ingest)?;
            if t.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"flow": flow, "target": target, "datasets": datasets})
                    )?
                );
            } else {
                println!("dataflow     {} ({})", flow.name, flow.id);
                println!("state        {}", flow.state);
                println!("datasets     {}", datasets.join(", "));
                println!(
                    "destination  {} {}{}",
                    target.destination.key(),
                    target
                        .bucket
                        .as_deref()
                        .map(|b| format!("{b}/"))
                        .unwrap_or_default(),
                    target.path
                );
                println!(
                    "format       {:?}, compression {:?}",
                    target.file_type, target.compression
                );
                if let Some(s) = &flow.schedule {
                    println!(
                        "schedule     {:?}, every {} {:?}, from {} to {}",
                        s.export_mode,
                        s.interval,
                        s.time_unit,
                        time(s.start_time),
                        time(s.ends_at())
                    );
                }
            }
            warn_ending(&flow);
            Ok(0)
        }
        ExportCommand::Enable(t) => set_enabled(&t, true).await,
        ExportCommand::Disable(t) => set_enabled(&t, false).await,
        ExportCommand::Run(a) => {
            let cx = context(&a.target).await?;
            let flow = cx.flow().await?;
            let timeout = a.timeout;
            let run = cx
                .client
                .run_export_now(&flow, &cx.dataset()?, NotReadyRetry::default())
                .await
                .map_err(ingest)?;
            if a.no_wait {
                println!("{run}");
                return Ok(0);
            }
            let r = wait(&cx.client, &run, timeout, quiet).await?;
            if a.target.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_runs(std::slice::from_ref(&r));
            }
            if r.failed() {
                return Err(
                    anyhow::anyhow!("export run {} failed: {}", r.id, r.errors.join("; ")).into(),
                );
            }
            Ok(0)
        }
        ExportCommand::Runs(t) => {
            let cx = context(&t).await?;
            let flow = cx.flow().await?;
            let runs = cx.client.flow_runs(&flow.id).await.map_err(ingest)?;
            if t.json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print_runs(&runs);
            }
            Ok(0)
        }
        ExportCommand::Download(a) => {
            let file = PipelineFile::load(&a.pipeline).map_err(usage)?;
            let SourceConfig::DatasetExport(source) = file.source else {
                return Err(usage(anyhow::anyhow!(
                    "{}: [source] is not type = \"dataset-export\"",
                    a.pipeline.display()
                )));
            };
            let started = Instant::now();
            let (staged, why) = scoreland_pipeline::download_export(
                &source,
                &a.pipeline,
                &a.out,
                a.folder.as_deref(),
            )
            .await
            .map_err(Failure::pipeline)?;
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            println!(
                "folder {}: {} files, {} rows, {:.1} MB ({:.1} MB fetched) in {:.1} s ({:.1} MB/s); complete: {why}",
                staged.folder,
                staged.files.len(),
                staged.rows,
                staged.bytes as f64 / 1e6,
                staged.bytes_downloaded as f64 / 1e6,
                secs,
                staged.bytes_downloaded as f64 / 1e6 / secs
            );
            Ok(0)
        }
        ExportCommand::Delete(t) => {
            let cx = context(&t).await?;
            let flow = cx.flow().await?;
            cx.client.delete_export_flow(&flow).await.map_err(ingest)?;
            println!("deleted dataflow {} ({})", flow.name, flow.id);
            Ok(0)
        }
    }
}

async fn set_enabled(t: &Target, enabled: bool) -> Result<u8, Failure> {
    let cx = context(t).await?;
    let flow = cx.flow().await?;
    cx.client
        .set_flow_enabled(&flow, enabled)
        .await
        .map_err(ingest)?;
    println!(
        "dataflow {} ({}) {}",
        flow.name,
        flow.id,
        if enabled { "enabled" } else { "disabled" }
    );
    Ok(0)
}

/// Polls the run with backoff until it ends, showing its status on a terminal.
async fn wait(
    client: &AepClient,
    run: &str,
    timeout: Duration,
    quiet: bool,
) -> Result<FlowRun, Failure> {
    let line = crate::progress::StatusLine::new(quiet);
    let every = PollEvery {
        first: Duration::from_millis(200),
        max: Duration::from_secs(30),
    };
    let polled = poll_job(
        timeout,
        every,
        || client.flow_run(run),
        FlowRun::is_done,
        |r, waited| {
            line.show(&format!(
                "run {run}: {} for {}s",
                r.status,
                waited.as_secs()
            ))
        },
    )
    .await
    .map_err(ingest)?;
    line.end();
    match polled {
        Polled::Done(r) => Ok(r),
        Polled::TimedOut(r) => Err(anyhow::anyhow!(
            "export run {run} is still {} after {}; `scoreland export runs` shows it later",
            r.status,
            humantime::format_duration(Duration::from_secs(timeout.as_secs()))
        )
        .into()),
    }
}

pub(crate) fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn print_runs(runs: &[FlowRun]) {
    println!(
        "{:<40} {:<11} {:<20} {:>6} {:>14} {:>12}  ERRORS",
        "RUN", "STATUS", "CREATED", "FILES", "BYTES", "RECORDS"
    );
    let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    for r in runs {
        println!(
            "{:<40} {:<11} {:<20} {:>6} {:>14} {:>12}  {}",
            r.id,
            r.status,
            time(r.created_at / 1000),
            opt(r.output_files),
            opt(r.output_bytes),
            opt(r.output_records),
            r.errors.join("; ")
        );
    }
}

/// AEP stops a flow at its end time (six months after its start without one).
fn warn_ending(flow: &Flow) {
    if let Some(days) = flow.days_left(chrono::Utc::now().timestamp())
        && days < 14.0
    {
        tracing::warn!(
            flow = %flow.name,
            "the dataflow ends in {:.1} days: AEP stops exporting then; give it a later end time",
            days.max(0.0)
        );
    }
}
