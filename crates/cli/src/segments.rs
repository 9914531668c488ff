//! `scoreland segment-job …`, `scoreland export-job …` and `scoreland schedule …`: audience
//! evaluation, profile exports and their schedules (docs/profile-exports.md), on the
//! platform from flags or the environment.

use std::time::Duration;

use clap::{Args, Subcommand};
use scoreland_ingest::{
    AepClient, DownloadOptions, ExportJob, ExportJobRequest, PollEvery, Polled, ScheduleType,
    SegmentFilter, SegmentJob, SegmentSchedule, poll_job,
};

use crate::platform::{PlatformArgs, ingest_failure};
use crate::progress::StatusLine;
use crate::{Failure, usage};

#[derive(Debug, Args)]
pub struct SegmentJobArgs {
    #[command(subcommand)]
    command: SegmentJobCommand,
}

#[derive(Debug, Subcommand)]
enum SegmentJobCommand {
    /// Evaluate segments now and wait for the job to end.
    Run(RunArgs),
    /// One or more jobs: status and profiles per segment, status and namespace.
    Status(StatusArgs),
    /// Recent jobs, newest first.
    List(ListArgs),
    /// Ask AEP to cancel a job.
    Cancel(IdArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// Segment ids; `*` evaluates every segment.
    #[arg(required = true)]
    segments: Vec<String>,
    /// Return the job id at once instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait, e.g. "2h".
    #[arg(long, default_value = "2h", value_parser = crate::args::parse_duration)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    #[arg(required = true)]
    ids: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// Only jobs of this status (NEW, PROCESSING, SUCCEEDED, FAILED, CANCELLED…).
    #[arg(long)]
    status: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct IdArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    id: String,
}

async fn client(p: &PlatformArgs) -> Result<AepClient, Failure> {
    p.client(DownloadOptions::default()).await
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_jobs(jobs: &[SegmentJob]) {
    println!(
        "{:<40} {:<11} {:<20} {:>10}  SEGMENTS",
        "JOB", "STATUS", "CREATED", "PROFILES"
    );
    for j in jobs {
        println!(
            "{:<40} {:<11} {:<20} {:>10}  {}",
            j.id,
            j.status,
            crate::export::time(j.created / 1000),
            j.profiles
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            j.segments.join(",")
        );
        for (segment, n) in &j.by_segment {
            let statuses = j
                .by_status
                .get(segment)
                .map(|m| {
                    m.iter()
                        .map(|(s, n)| format!("{s} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            println!("    {segment}: {n} profiles ({statuses})");
        }
        for e in &j.errors {
            println!("    error {}: {}", e.code, e.msg);
        }
    }
}

pub async fn segment_job(args: SegmentJobArgs, quiet: bool) -> Result<u8, Failure> {
    match args.command {
        SegmentJobCommand::Run(a) => {
            let c = client(&a.platform).await?;
            let timeout = a.timeout;
            let job = c
                .create_segment_job(&a.segments)
                .await
                .map_err(ingest_failure)?;
            if a.no_wait {
                println!("{}", job.id);
                return Ok(0);
            }
            let job = wait(&c, &job.id, timeout, quiet).await?;
            if a.json {
                print_json(&job)?;
            } else {
                print_jobs(std::slice::from_ref(&job));
            }
            match job.failure() {
                None => Ok(0),
                Some(f) => Err(anyhow::anyhow!(f).into()),
            }
        }
        SegmentJobCommand::Status(a) => {
            let c = client(&a.platform).await?;
            let jobs = c.segment_jobs_by_id(&a.ids).await.map_err(ingest_failure)?;
            if jobs.len() < a.ids.len() {
                let missing: Vec<&String> = a
                    .ids
                    .iter()
                    .filter(|i| !jobs.iter().any(|j| &j.id == *i))
                    .collect();
                return Err(usage(anyhow::anyhow!(
                    "no segment job {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if a.json {
                print_json(&jobs)?;
            } else {
                print_jobs(&jobs);
            }
            Ok(0)
        }
        SegmentJobCommand::List(a) => {
            let c = client(&a.platform).await?;
            let jobs = c
                .segment_jobs(a.status.as_deref(), a.limit)
                .await
                .map_err(ingest_failure)?;
            if a.json {
                print_json(&jobs)?;
            } else {
                print_jobs(&jobs);
            }
            Ok(0)
        }
        SegmentJobCommand::Cancel(a) => {
            let c = client(&a.platform).await?;
            c.cancel_segment_job(&a.id).await.map_err(ingest_failure)?;
            println!("segment job {} is being cancelled", a.id);
            Ok(0)
        }
    }
}

/// Polls with backoff until the job ends, with its status, time and profiles on a terminal.
async fn wait(
    c: &AepClient,
    id: &str,
    timeout: Duration,
    quiet: bool,
) -> Result<SegmentJob, Failure> {
    let line = StatusLine::new(quiet);
    let polled = poll_job(
        timeout,
        PollEvery::jobs(Duration::from_secs(10)),
        || c.segment_job(id),
        SegmentJob::is_done,
        |job, waited| {
            line.show(&format!(
                "segment job {id}: {} for {}s, {} profiles so far",
                job.status,
                waited.as_secs(),
                job.profiles.unwrap_or(0)
            ))
        },
    )
    .await
    .map_err(ingest_failure)?;
    line.end();
    match polled {
        Polled::Done(job) => Ok(job),
        Polled::TimedOut(job) => Err(anyhow::anyhow!(
            "segment job {id} is still {} after {}; `scoreland segment-job status {id}` shows it later",
            job.status,
            humantime::format_duration(Duration::from_secs(timeout.as_secs()))
        )
        .into()),
    }
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// The org's segmentation and export schedules.
    List(ScheduleListArgs),
    /// Make a schedule (inactive unless --active).
    Create(CreateArgs),
    /// Let a schedule run.
    Enable(IdArgs),
    /// Stop a schedule.
    Disable(IdArgs),
    /// Change when a schedule runs (Quartz cron, at most once a day).
    SetCron(SetCronArgs),
    Delete(IdArgs),
}

#[derive(Debug, Args)]
struct ScheduleListArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CreateArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    #[arg(long)]
    name: String,
    /// `batch_segmentation` or `export`.
    #[arg(long, default_value = "batch_segmentation")]
    kind: String,
    /// Quartz cron, e.g. "0 0 2 * * ?" (02:00 UTC daily).
    #[arg(long)]
    cron: String,
    /// Segment ids (default: every segment).
    #[arg(long, default_values_t = ["*".to_string()])]
    segments: Vec<String>,
    #[arg(long)]
    active: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SetCronArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    id: String,
    cron: String,
}

fn print_schedules(list: &[SegmentSchedule]) {
    println!(
        "{:<40} {:<24} {:<9} {:<19} {:<16}  SEGMENTS",
        "SCHEDULE", "NAME", "STATE", "TYPE", "CRON"
    );
    for s in list {
        println!(
            "{:<40} {:<24} {:<9} {:<19} {:<16}  {}",
            s.id,
            s.name,
            s.state,
            s.kind,
            s.schedule.as_deref().unwrap_or("-"),
            s.segments.join(",")
        );
    }
}

pub async fn schedule(args: ScheduleArgs) -> Result<u8, Failure> {
    match args.command {
        ScheduleCommand::List(a) => {
            let list = client(&a.platform)
                .await?
                .segment_schedules()
                .await
                .map_err(ingest_failure)?;
            if a.json {
                print_json(&list)?;
            } else {
                print_schedules(&list);
            }
        }
        ScheduleCommand::Create(a) => {
            let kind = match a.kind.as_str() {
                "batch_segmentation" => ScheduleType::BatchSegmentation,
                "export" => ScheduleType::Export,
                other => {
                    return Err(usage(anyhow::anyhow!(
                        "--kind {other:?}: batch_segmentation or export"
                    )));
                }
            };
            let s = client(&a.platform)
                .await?
                .create_segment_schedule(&a.name, kind, &a.segments, &a.cron, a.active)
                .await
                .map_err(ingest_failure)?;
            if a.json {
                print_json(&s)?;
            } else {
                print_schedules(std::slice::from_ref(&s));
            }
        }
        ScheduleCommand::Enable(a) => {
            client(&a.platform)
                .await?
                .set_schedule_active(&a.id, true)
                .await
                .map_err(ingest_failure)?;
            println!("schedule {} is active", a.id);
        }
        ScheduleCommand::Disable(a) => {
            client(&a.platform)
                .await?
                .set_schedule_active(&a.id, false)
                .await
                .map_err(ingest_failure)?;
            println!("schedule {} is inactive", a.id);
        }
        ScheduleCommand::SetCron(a) => {
            client(&a.platform)
                .await?
                .set_schedule_cron(&a.id, &a.cron)
                .await
                .map_err(ingest_failure)?;
            println!("schedule {} runs at {:?}", a.id, a.cron);
        }
        ScheduleCommand::Delete(a) => {
            client(&a.platform)
                .await?
                .delete_segment_schedule(&a.id)
                .await
                .map_err(ingest_failure)?;
            println!("schedule {} deleted", a.id);
        }
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct ExportJobArgs {
    #[command(subcommand)]
    command: ExportJobCommand,
}

#[derive(Debug, Subcommand)]
enum ExportJobCommand {
    /// Export profiles into a dataset, and wait for the job to end.
    Create(ExportCreateArgs),
    /// One job: status, batches written, profiles by namespace, errors.
    Status(ExportIdArgs),
    /// Recent jobs, newest first.
    List(ListArgs),
    /// Ask AEP to cancel a job.
    Cancel(ExportIdArgs),
}

#[derive(Debug, Args)]
struct ExportCreateArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// The target dataset's id (see --dataset-name).
    #[arg(
        long,
        conflicts_with = "dataset_name",
        required_unless_present = "dataset_name"
    )]
    dataset_id: Option<String>,
    /// Find the target dataset by name, or make it on the Profile union schema.
    #[arg(long)]
    dataset_name: Option<String>,
    /// Only profiles in these segments (repeat the flag); all profiles when absent.
    #[arg(long = "segment")]
    segments: Vec<String>,
    /// Statuses that qualify, comma-separated (AEP's default: realized,existing).
    #[arg(long, value_delimiter = ',')]
    status: Vec<String>,
    /// Comma-separated XDM fields to export (all when absent).
    #[arg(long)]
    fields: Option<String>,
    /// One batch per segment.
    #[arg(long)]
    segment_per_batch: bool,
    /// Include profiles that have events only.
    #[arg(long)]
    empty_profiles: bool,
    /// Only profiles ingested since this RFC 3339 time.
    #[arg(long)]
    from_ingest: Option<String>,
    /// Only memberships qualified in this RFC 3339 window: START,END.
    #[arg(long, value_delimiter = ',', num_args = 2)]
    qualified_between: Vec<String>,
    /// Evaluate the segments before exporting.
    #[arg(long)]
    evaluate: bool,
    /// Return the job id at once instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait, e.g. "2h".
    #[arg(long, default_value = "2h", value_parser = crate::args::parse_duration)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExportIdArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    id: i64,
    #[arg(long)]
    json: bool,
}

fn print_export_jobs(jobs: &[ExportJob]) {
    println!(
        "{:<12} {:<11} {:<20} {:>10}  DATASET / BATCHES",
        "JOB", "STATUS", "CREATED", "PROFILES"
    );
    for j in jobs {
        println!(
            "{:<12} {:<11} {:<20} {:>10}  {}",
            j.id,
            j.status,
            crate::export::time(j.created / 1000),
            j.profiles
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            j.dataset_id.as_deref().unwrap_or("-")
        );
        for b in &j.batches {
            match &b.segment_id {
                Some(s) => println!("    batch {} (segment {s})", b.batch_id),
                None => println!("    batch {}", b.batch_id),
            }
        }
        for (ns, n) in &j.by_namespace {
            println!("    {ns}: {n} profiles");
        }
        for e in &j.errors {
            println!("    error {}: {}", e.code, e.msg);
        }
    }
}

pub async fn export_job(args: ExportJobArgs, quiet: bool) -> Result<u8, Failure> {
    match args.command {
        ExportJobCommand::Create(a) => {
            let c = client(&a.platform).await?;
            let timeout = a.timeout;
            let dataset_id = match (&a.dataset_id, &a.dataset_name) {
                (Some(id), _) => id.clone(),
                (None, Some(name)) => {
                    c.ensure_dataset(name, scoreland_ingest::PROFILE_UNION_SCHEMA)
                        .await
                        .map_err(ingest_failure)?
                        .0
                }
                (None, None) => unreachable!("clap requires one"),
            };
            let req = ExportJobRequest {
                fields: a.fields.clone(),
                segments: a
                    .segments
                    .iter()
                    .map(|s| SegmentFilter {
                        segment_id: s.clone(),
                        namespace: None,
                        statuses: a.status.clone(),
                    })
                    .collect(),
                qualified_between: match &a.qualified_between[..] {
                    [s, e] => Some((s.clone(), e.clone())),
                    _ => None,
                },
                from_ingest: a.from_ingest.clone(),
                empty_profiles: a.empty_profiles.then_some(true),
                dataset_id,
                segment_per_batch: a.segment_per_batch,
                evaluate: a.evaluate,
                ..Default::default()
            };
            let job = c.create_export_job(&req).await.map_err(ingest_failure)?;
            if a.no_wait {
                println!("{}", job.id);
                return Ok(0);
            }
            let line = StatusLine::new(quiet);
            let polled = poll_job(
                timeout,
                PollEvery::jobs(Duration::from_secs(10)),
                || c.export_job(job.id),
                ExportJob::is_done,
                |j, waited| {
                    line.show(&format!(
                        "export job {}: {} for {}s",
                        j.id,
                        j.status,
                        waited.as_secs()
                    ))
                },
            )
            .await
            .map_err(ingest_failure)?;
            line.end();
            let job = match polled {
                Polled::Done(j) => j,
                Polled::TimedOut(j) => {
                    return Err(anyhow::anyhow!(
                        "export job {} is still {} after {}; `scoreland export-job status {}` shows it later, `scoreland export-job cancel {}` stops it",
                        j.id,
                        j.status,
                        humantime::format_duration(a.timeout),
                        j.id,
                        j.id
                    )
                    .into());
                }
            };
            if a.json {
                print_json(&job)?;
            } else {
                print_export_jobs(std::slice::from_ref(&job));
            }
            match job.failure() {
                None => Ok(0),
                Some(f) => Err(anyhow::anyhow!(f).into()),
            }
        }
        ExportJobCommand::Status(a) => {
            let job = client(&a.platform)
                .await?
                .export_job(a.id)
                .await
                .map_err(ingest_failure)?;
            if a.json {
                print_json(&job)?;
            } else {
                print_export_jobs(std::slice::from_ref(&job));
            }
            Ok(0)
        }
        ExportJobCommand::List(a) => {
            let jobs = client(&a.platform)
                .await?
                .export_jobs(a.status.as_deref(), a.limit)
                .await
                .map_err(ingest_failure)?;
            if a.json {
                print_json(&jobs)?;
            } else {
                print_export_jobs(&jobs);
            }
            Ok(0)
        }
        ExportJobCommand::Cancel(a) => {
            client(&a.platform)
                .await?
                .cancel_export_job(a.id)
                .await
                .map_err(ingest_failure)?;
            println!("export job {} is being cancelled", a.id);
            Ok(0)
        }
    }
}
