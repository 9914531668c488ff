//! `scoreland cluster`: the processes of an Apache DataFusion Ballista cluster, which
//! `scoreland sql --cluster` runs queries on (docs/cluster.md). Built with the `cluster`
//! feature; without it these commands say how to get it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::Failure;
use crate::args::parse_duration;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// A scheduler and N executor processes on this machine (to try it, and for tests);
    /// prints the cluster's URL, then runs until stopped.
    Local {
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// The scheduler's port on 127.0.0.1 (0: any free one).
        #[arg(long, default_value_t = 50050)]
        port: u16,
        /// Tasks each executor runs at once (default: this machine's cores / executors).
        #[arg(long)]
        vcores: Option<usize>,
        /// Shuffle files and the executors' logs (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// The scheduler: one per cluster. It has no authentication: keep its port on a private
    /// network.
    Scheduler {
        #[arg(long, default_value = "127.0.0.1:50050")]
        listen: SocketAddr,
        /// The host name executors and clients reach it by (default: the listen address).
        #[arg(long)]
        external_host: Option<String>,
        /// An executor silent this long is dead; its tasks run again on the others.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        executor_timeout: Duration,
    },
    /// An executor: joins the scheduler and runs tasks until stopped.
    Executor {
        /// The scheduler, df://HOST:PORT.
        #[arg(long, env = "SCORELAND_CLUSTER")]
        scheduler: String,
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The host name the scheduler, the other executors and clients reach it by.
        #[arg(long)]
        external_host: Option<String>,
        /// Arrow Flight port (shuffle output and results).
        #[arg(long, default_value_t = 50051)]
        port: u16,
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Shuffle files (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Tasks at once (default: this machine's cores).
        #[arg(long)]
        vcores: Option<usize>,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        heartbeat: Duration,
    },
}

/// scoreland's own plan nodes, which the client, the scheduler and every executor carry.
#[cfg(feature = "cluster")]
fn nodes() -> Vec<std::sync::Arc<dyn scoreland_runtime::engine::NodeCodec>> {
    vec![scoreland_transform::cluster_writer()]
}

#[cfg(feature = "cluster")]
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(feature = "cluster")]
pub async fn cluster(args: ClusterArgs) -> Result<u8, Failure> {
    use scoreland_cluster::{ExecutorOptions, LocalCluster, SchedulerOptions};
    match args.command {
        ClusterCommand::Local {
            executors,
            port,
            vcores,
            work_dir,
        } => {
            if executors == 0 {
                return Err(crate::usage(anyhow::anyhow!(
                    "--executors must be at least 1"
                )));
            }
            let vcores = vcores.unwrap_or_else(|| (cores() / executors).max(1));
            let temp;
            let dir = match work_dir {
                Some(d) => d,
                None => {
                    temp = tempfile::tempdir()?;
                    temp.path().to_path_buf()
                }
            };
            let bin = std::env::current_exe()?;
            let cluster = LocalCluster::start(&bin, executors, vcores, port, &dir, nodes()).await?;
            // The first line is for scripts and tests: the URL, then the executors' pids.
            println!("{}", cluster.url());
            let pids: Vec<String> = cluster.executor_pids().iter().map(u32::to_string).collect();
            println!("executors {}", pids.join(" "));
            tracing::info!(
                "{executors} executors of {vcores} task slots each; work directory {}; stop with Ctrl-C",
                dir.display()
            );
            cluster.serve_until_stopped().await?;
            Ok(0)
        }
        ClusterCommand::Scheduler {
            listen,
            external_host,
            executor_timeout,
        } => {
            scoreland_cluster::run_scheduler(SchedulerOptions {
                bind: listen,
                external_host: external_host.unwrap_or_else(|| listen.ip().to_string()),
                executor_timeout,
                nodes: nodes(),
            })
            .await?;
            Ok(0)
        }
        ClusterCommand::Executor {
            scheduler,
            bind_host,
            external_host,
            port,
            grpc_port,
            work_dir,
            vcores,
            heartbeat,
        } => {
            let scheduler = scheduler.parse().map_err(crate::usage)?;
            scoreland_cluster::run_executor(ExecutorOptions {
                scheduler,
                bind_host,
                external_host,
                port,
                grpc_port,
                work_dir,
                vcores: vcores.unwrap_or_else(cores),
                heartbeat,
                nodes: nodes(),
            })
            .await?;
            Ok(0)
        }
    }
}

/// What a command that needs the cluster engine says in a build without it.
#[cfg(not(feature = "cluster"))]
pub fn not_built() -> Failure {
    crate::usage(anyhow::anyhow!(
        "this scoreland was built without the cluster engine; build it with \
         `cargo build --release --features cluster`"
    ))
}

#[cfg(not(feature = "cluster"))]
pub async fn cluster(_: ClusterArgs) -> Result<u8, Failure> {
    Err(not_built())
}

/// The engine a scores job runs on (`run --cluster`, `transform --cluster`, `[transform]
/// engine`): the cluster at `url`, reached before anything runs.
#[cfg(feature = "cluster")]
pub async fn engine(
    url: &str,
    partitions: Option<usize>,
) -> Result<std::sync::Arc<dyn scoreland_runtime::engine::ClusterEngine>, Failure> {
    let url = url.parse().map_err(crate::usage)?;
    let mut cluster = scoreland_cluster::Cluster::connect(url)
        .await?
        .with_nodes(nodes());
    if let Some(n) = partitions {
        cluster = cluster.with_partitions(n);
    }
    Ok(std::sync::Arc::new(cluster))
}

#[cfg(not(feature = "cluster"))]
pub async fn engine(
    _url: &str,
    _partitions: Option<usize>,
) -> Result<std::sync::Arc<dyn scoreland_runtime::engine::ClusterEngine>, Failure> {
    Err(not_built())
}
