//! `scoreland`: lands machine-learning scores from Adobe Experience Platform into analytics
//! storage. This crate is argument handling and output only; the work lives in the library
//! crates.
//!
//! Exit codes: 0 success, 1 the run failed, 2 bad configuration or usage, 3 nothing new to
//! land (`run`), 4 another run holds the pipeline's lock (`run`), 5 checks failed and nothing
//! was landed (`run`).

mod args;
mod cluster;
mod export;
mod forget;
mod metrics;
mod platform;
mod progress;
mod report;
mod run;
mod schema;
mod segments;
mod serve;
mod sim;
mod sql;
mod transform;

use std::process::ExitCode;

/// DataFusion allocates and frees large buffers at a high rate. With glibc's allocator many are
/// fresh mappings the kernel must zero, and its bookkeeping took a fifth of the transform's time;
/// mimalloc reuses freed memory (see [`tune_allocator`]).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the same value in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc hands freed memory back to the OS after 10 ms; a sort or a writer then
/// asks for it again and the kernel zeroes it once more: measured, a quarter of the transform's
/// CPU. One second keeps it for the next batch.
fn tune_allocator() {
    // SAFETY: sets one integer option, which mimalloc reads on each later purge decision.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) }
}

/// Turns transparent huge pages off for this process, for the commands that only move bytes and
/// for a transform under a memory limit. mimalloc asks for huge pages on its arena, so each of a
/// download's few dozen threads, holding a little memory each, takes 2 MiB at a time:
/// `scoreland download` peaked at 150 MB with them and 65 MB without. An unlimited transform
/// keeps them: on 20 M rows it ran 129 s with huge pages and 154 s without (the kernel faulting
/// 16 GB in 4 KiB pages); under `--memory-limit 1GiB` they mostly cost memory (105–112 s and
/// peak RSS 2.0–3.2 GB with them, 112–113 s and 1.8–2.0 GB without).
pub(crate) fn without_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and changes this process's future faults.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "scoreland", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log format on stderr: text for people, json for schedulers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: ingest ▸ transform ▸ land.
    Run(run::RunArgs),
    /// Check pipeline files without running them.
    Validate(run::ValidateArgs),
    /// List the batches of a dataset.
    Batches(platform::BatchesArgs),
    /// The XDM schema of a pipeline's dataset (Schema Registry), as the columns it lands as.
    Schema(schema::SchemaArgs),
    /// Set up, run and watch the Flow Service dataflow that exports a pipeline's dataset.
    Export(export::ExportArgs),
    /// Evaluate audiences now (segment jobs), and follow them.
    SegmentJob(segments::SegmentJobArgs),
    /// Export profiles and their audience memberships into a dataset (export jobs).
    ExportJob(segments::ExportJobArgs),
    /// Segmentation and export schedules.
    Schedule(segments::ScheduleArgs),
    /// Download one batch (the newest successful one by default) into a directory.
    Download(platform::DownloadArgs),
    /// Transform batches already staged by `download` into local tables.
    Transform(transform::TransformArgs),
    /// Query landed tables with SQL.
    Sql(sql::SqlArgs),
    /// Delete files that no table version within the retention needs.
    Vacuum(sql::VacuumArgs),
    /// Delete identities from every table (privacy requests), recorded with who and why;
    /// later runs keep them out.
    Forget(forget::ForgetArgs),
    /// Compact the tables' files; order `scores` by identity within each partition.
    Optimize(sql::OptimizeArgs),
    /// A table's versions: when, which run, which batches, how many rows.
    History(sql::HistoryArgs),
    /// Turn a warehouse of scoreland's old layout into Delta tables.
    Convert(sql::ConvertArgs),
    /// Write an HTML report of the newest nights: histograms, deciles, tiers, factors, drift.
    Report(report::ReportArgs),
    /// Serve the warehouse's tables to BI tools over the Postgres wire protocol.
    Serve(serve::ServeArgs),
    /// Serve a simulated AEP platform, or generate one (`sim generate`).
    Sim(sim::SimArgs),
    /// A distributed engine (Apache DataFusion Ballista) for `sql --cluster`: a scheduler and
    /// executors, or both on this machine (`cluster local`).
    Cluster(cluster::ClusterArgs),
}

/// An error with the exit code it deserves.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

impl Failure {
    /// A pipeline's error, with its exit code (the one mapping: see
    /// [`scoreland_pipeline::PipelineError::exit_code`]).
    pub fn pipeline(error: scoreland_pipeline::PipelineError) -> Failure {
        Failure {
            code: error.exit_code(),
            error: anyhow::Error::new(error),
        }
    }
}

pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => {
            "warn,scoreland=info,scoreland_ingest=info,scoreland_pipeline=info,scoreland_sink=info,scoreland_transform=info,scoreland_serve=info"
        }
        (false, 1) => {
            "info,scoreland=debug,scoreland_ingest=debug,scoreland_pipeline=debug,scoreland_sink=debug,scoreland_transform=debug,scoreland_serve=debug"
        }
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCORELAND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only for a person at a terminal, and never with NO_COLOR (no-color.org): log
    // files and pipes get plain text.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // `scoreland run` decides once it has read its pipeline's memory limit (run.rs).
    let moves_bytes = matches!(
        cli.command,
        Command::Download(_) | Command::Batches(_) | Command::Export(_) | Command::Sim(_)
    );
    let pooled_transform = matches!(&cli.command, Command::Transform(a) if !a.memory_limit.is_some_and(scoreland_transform::MemoryLimit::is_unlimited));
    if moves_bytes || pooled_transform {
        without_huge_pages();
    }
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let quiet = cli.quiet;
    let result: Result<u8, Failure> = runtime.block_on(async move {
        match cli.command {
            Command::Run(a) => run::run(a, quiet).await,
            Command::Validate(a) => run::validate(a),
            Command::Batches(a) => platform::batches(a).await,
            Command::Schema(a) => schema::schema(a).await,
            Command::Export(a) => export::export(a, quiet).await,
            Command::SegmentJob(a) => segments::segment_job(a, quiet).await,
            Command::ExportJob(a) => segments::export_job(a, quiet).await,
            Command::Schedule(a) => segments::schedule(a).await,
            Command::Download(a) => platform::download(a, quiet).await,
            Command::Transform(a) => transform::transform(a).await,
            Command::Sql(a) => sql::sql(a).await,
            Command::Vacuum(a) => sql::vacuum(a).await,
            Command::Forget(a) => forget::forget(a).await,
            Command::History(a) => sql::history(a).await,
            Command::Optimize(a) => sql::optimize(a).await,
            Command::Convert(a) => sql::convert(a).await,
            Command::Report(a) => report::report(a).await,
            Command::Serve(a) => serve::serve(a).await,
            Command::Sim(a) => sim::run(a).await.map(|()| 0).map_err(Failure::from),
            Command::Cluster(a) => cluster::cluster(a).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
