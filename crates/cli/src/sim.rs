//! `scoreland sim`: serve a platform directory, or generate one.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use scoreland_platform_sim::{GenerateOptions, SimConfig};

use crate::args::{parse_duration, parse_rate};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SimArgs {
    #[command(subcommand)]
    pub command: Option<SimCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Write a sample Customer AI platform into an empty directory.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The platform directory to serve (made by `scoreland sim generate`).
    #[arg(long, default_value = "sample-data/platform")]
    pub data: PathBuf,
    /// Address to listen on. Only loopback is sensible: the simulator has no TLS.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Added to every request, e.g. `50ms`, to simulate a WAN round trip.
    #[arg(long, value_parser = parse_duration)]
    pub latency: Option<Duration>,
    /// Body bytes per second per connection, e.g. `25MiB/s`.
    #[arg(long, value_parser = parse_rate)]
    pub bandwidth_per_connection: Option<u64>,
    /// Largest Data Access listing page (AEP's is 100), to force paging.
    #[arg(long)]
    pub page_size: Option<usize>,
    /// Lifetime of issued tokens, e.g. `24h` or `30s`.
    #[arg(long, value_parser = parse_duration, default_value = "86399s")]
    pub token_lifetime: Duration,
    /// Where dataset exports land: each destination is a directory under it
    /// (`s3/<bucket>/<path>`, `azure_blob/<container>/<path>`, `sftp/<remotePath>`, `dlz/<path>`).
    #[arg(long, default_value = "sim-exports")]
    pub exports: PathBuf,
    /// How long a new dataflow answers an ad-hoc run with "not ready" (AEP: minutes).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub export_ready_after: Duration,
    /// Write S3 destinations to this S3 endpoint (e.g. a local moto) instead of --exports.
    #[arg(long)]
    pub export_s3_endpoint: Option<String>,
    /// Write SFTP destinations under this directory (the one an sshd serves) instead of --exports.
    #[arg(long)]
    pub export_sftp_root: Option<PathBuf>,
    /// Run dataflows on their schedules, this many times faster than the wall clock (3600: an
    /// hour of schedule a second). Without it, exports run when asked (`scoreland export run`).
    #[arg(long)]
    pub export_clock_speed: Option<f64>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write the platform into (must not already hold one).
    #[arg(long)]
    pub out: PathBuf,
    /// Rows per scoring batch.
    #[arg(long, default_value_t = 2_000)]
    pub rows: u64,
    /// Parquet parts per scoring batch.
    #[arg(long, default_value_t = 4)]
    pub parts: u32,
    /// Weekly scoring batches (each replaces the one before).
    #[arg(long, default_value_t = 4)]
    pub batches: u32,
    /// Seed: the same seed gives the same platform, byte for byte.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also write a profile store of this many profiles (identities, segment memberships,
    /// Customer AI scores) for segment and export jobs.
    #[arg(long, default_value_t = 0)]
    pub profiles: u64,
    /// Segments the profiles can belong to.
    #[arg(long, default_value_t = 20)]
    pub segments: u32,
    /// Also write an ExperienceEvent dataset (web and commerce events) with this many rows per
    /// nightly batch; from the third night its rows carry a new field.
    #[arg(long, default_value_t = 0)]
    pub events: u64,
    /// Nightly batches of the events dataset.
    #[arg(long, default_value_t = 3)]
    pub event_nights: u32,
    /// Also write a record dataset of this many loyalty members (updated and added to every
    /// night, its primary identity in an identity descriptor).
    #[arg(long, default_value_t = 0)]
    pub records: u64,
    /// Nightly batches of the record dataset.
    #[arg(long, default_value_t = 3)]
    pub record_nights: u32,
    /// Also write an Attribution AI scores dataset with this many scored conversions (and
    /// their touchpoints' credit under every attribution model) per nightly batch.
    #[arg(long, default_value_t = 0)]
    pub attribution: u64,
    /// Nightly batches of the Attribution AI dataset.
    #[arg(long, default_value_t = 3)]
    pub attribution_nights: u32,
}

pub async fn run(args: SimArgs) -> Result<()> {
    match args.command {
        Some(SimCommand::Generate(g)) => {
            let opts = GenerateOptions {
                out: g.out.clone(),
                rows: g.rows,
                parts: g.parts,
                batches: g.batches,
                seed: g.seed,
                ..GenerateOptions::default()
            };
            let summary = scoreland_platform_sim::generate(&opts)?;
            let mut out = serde_json::to_value(&summary)?;
            if g.profiles > 0 {
                let store = scoreland_platform_sim::profiles::generate_profiles(
                    &scoreland_platform_sim::profiles::ProfileOptions {
                        platform: opts.out.clone(),
                        profiles: g.profiles,
                        segments: g.segments,
                        seed: g.seed,
                    },
                )?;
                out["profile_store"] = serde_json::to_value(&store)?;
            }
            if g.events > 0 {
                let nights = scoreland_platform_sim::events::add_event_nights(
                    &opts.out,
                    &opts.sandbox,
                    0,
                    g.event_nights,
                    g.events,
                    g.seed,
                )?;
                out["events"] = serde_json::json!({
                    "dataset_id": scoreland_platform_sim::events::EVENTS_DATASET,
                    "nights": nights,
                });
            }
            if g.records > 0 {
                let nights = scoreland_platform_sim::records::add_record_nights(
                    &opts.out,
                    &opts.sandbox,
                    0,
                    g.record_nights,
                    g.records,
                    g.seed,
                )?;
                out["records"] = serde_json::json!({
                    "dataset_id": scoreland_platform_sim::records::RECORDS_DATASET,
                    "nights": nights,
                });
            }
            if g.attribution > 0 {
                let nights = scoreland_platform_sim::attribution::add_attribution_nights(
                    &opts.out,
                    &opts.sandbox,
                    0,
                    g.attribution_nights,
                    g.attribution,
                    g.seed,
                )?;
                out["attribution"] = serde_json::json!({
                    "dataset_id": scoreland_platform_sim::attribution::ATTRIBUTION_DATASET,
                    "nights": nights,
                });
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        None => serve(args.serve).await,
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = SimConfig {
        token_lifetime: args.token_lifetime,
        latency: args.latency.unwrap_or_default(),
        bandwidth_per_connection: args.bandwidth_per_connection,
        page_size: args.page_size,
        export_root: std::path::absolute(&args.exports)
            .with_context(|| format!("--exports {}", args.exports.display()))?,
        export_ready_after: args.export_ready_after,
        export_s3_endpoint: args.export_s3_endpoint,
        export_sftp_root: args.export_sftp_root,
        export_clock_speed: args.export_clock_speed,
        // The Data Landing Zone is the --exports directory's `dlz` (a `file://` SAS); tests
        // put it on azurite through the library.
        export_dlz: None,
        ..SimConfig::default()
    };
    let handle = scoreland_platform_sim::serve_dir(
        &args.data,
        config,
        SocketAddr::new(args.host, args.port),
    )
    .await
    .with_context(|| format!("cannot serve the platform in {}", args.data.display()))?;
    println!("{}", handle.announcement());
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    handle.stop().await;
    Ok(())
}
