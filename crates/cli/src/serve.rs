//! `scoreland serve`: the warehouse over the Postgres wire protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use scoreland_pipeline::warehouse_tables;
use scoreland_serve::{Limits, ServeOptions, Server};

use crate::args::{parse_duration, parse_size};
use crate::{Failure, usage};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub warehouse: crate::args::WarehouseArg,
    /// Address to listen on. Without a password (SCORELAND_SERVE_PASSWORD) only a loopback
    /// address is accepted.
    #[arg(long, default_value = "127.0.0.1:5432")]
    pub listen: SocketAddr,
    /// The user name clients log in with (the password comes from SCORELAND_SERVE_PASSWORD,
    /// never from a flag or a file).
    #[arg(long, env = "SCORELAND_SERVE_USER", default_value = "scoreland")]
    pub user: String,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8); with --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Memory one query may use; sorts and aggregations spill beyond it, other queries fail
    /// alone.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub query_memory: u64,
    /// Time one query may take, to its last row.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// A connection that runs no statement for this long is closed.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Connections served at once; more are refused with Postgres' "too many clients". As many
    /// again may be logging in (each has 10 s to).
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// Where queries spill beyond --query-memory (the system's temporary directory without).
    #[arg(long)]
    pub spill_dir: Option<PathBuf>,
    /// Data usage labels (comma-separated, e.g. C2,I1) whose columns every table shows as
    /// NULL, besides those each table's pipeline denies ([serve] deny_labels).
    #[arg(long, env = "SCORELAND_SERVE_DENY_LABELS", default_value = "")]
    pub deny_labels: String,
    /// Run the queries that read the tables on a cluster (`df://HOST:PORT`, its scheduler; see
    /// `scoreland cluster`). The warehouse must be a directory every executor mounts at the
    /// same path.
    #[arg(long, env = "SCORELAND_CLUSTER")]
    pub cluster: Option<String>,
    /// With --cluster: how many tasks each table scan is split into (default: this machine's
    /// cores).
    #[arg(long, requires = "cluster")]
    pub partitions: Option<usize>,
    /// After SIGTERM, how long running queries get to finish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

pub async fn serve(args: ServeArgs) -> Result<u8, Failure> {
    let warehouse = args.warehouse.open()?;
    let cluster = match &args.cluster {
        Some(url) => Some(crate::cluster::engine(url, args.partitions).await?),
        None => None,
    };
    let password = std::env::var("SCORELAND_SERVE_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let options = ServeOptions {
        listen: args.listen,
        login: password.map(|password| scoreland_serve::Login {
            user: args.user.clone(),
            password,
        }),
        tls: args.tls_cert.zip(args.tls_key),
        limits: Limits {
            query_memory: usize::try_from(args.query_memory).unwrap_or(usize::MAX),
            query_timeout: args.query_timeout,
            idle_timeout: args.idle_timeout,
        },
        max_connections: args.max_connections,
        shutdown_grace: args.shutdown_grace,
        login_timeout: Duration::from_secs(10),
        spill_dir: args.spill_dir,
        tables: warehouse_tables(&warehouse).await?,
        deny_labels: scoreland_transform::labels::parse_labels(&args.deny_labels),
        cluster,
    };
    let no_password = options.login.is_none();
    let server = Server::bind(warehouse, options).await.map_err(usage)?;
    // One plain line, whatever the log level: scripts and tests read the address from it.
    eprintln!(
        "scoreland serve: listening on {} for {}{}{}",
        server.local_addr,
        args.warehouse.url,
        args.cluster
            .as_deref()
            .map(|c| format!(", queries on the cluster {c}"))
            .unwrap_or_default(),
        if no_password {
            " (no password: SCORELAND_SERVE_PASSWORD is not set, so loopback only)"
        } else {
            ""
        }
    );
    server.run(shutdown_signal()).await.map_err(Failure::from)?;
    Ok(0)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
