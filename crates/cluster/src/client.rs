//! A client of a cluster: the scheduler's address ([`ClusterUrl`]), reaching it
//! ([`Cluster::connect`]), and which job failures mean an executor was lost.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use scoreland_runtime::engine::NodeCodec;

use crate::codec::Codec;
use crate::error::ClusterError;

/// A scheduler's address: `df://HOST:PORT` (also `HOST:PORT` or `http://HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    host: String,
    port: u16,
}

impl ClusterUrl {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The scheduler's gRPC endpoint.
    pub(crate) fn grpc(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

impl fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "df://{}:{}", self.host, self.port)
    }
}

impl FromStr for ClusterUrl {
    type Err = ClusterError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = |message: &str| ClusterError::Url {
            url: raw.to_string(),
            message: message.to_string(),
        };
        let s = raw.trim();
        let rest = ["df://", "http://"]
            .iter()
            .find_map(|p| s.strip_prefix(p))
            .unwrap_or(s);
        if rest.contains("://") {
            return Err(bad("the scheme is not df://"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("the port is missing"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(plain) {
            return Err(bad("the host is not a plain host name or IPv4 address"));
        }
        Ok(Self::new(host, port))
    }
}

/// A connection to a cluster's scheduler.
#[derive(Debug, Clone)]
pub struct Cluster {
    url: ClusterUrl,
    partitions: usize,
    /// How plans are encoded for it: Ballista's nodes and scoreland's.
    codec: Arc<Codec>,
}

/// How long reaching the scheduler may take before the cluster is called unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Reaches the scheduler at `url` (within 10 s), so a wrong address fails before any
    /// planning.
    pub async fn connect(url: ClusterUrl) -> Result<Self, ClusterError> {
        let unreachable = |message: String| ClusterError::Unreachable {
            url: url.to_string(),
            message,
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, SchedulerGrpcClient::connect(url.grpc())).await
        {
            Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(unreachable(error_chain(&e))),
            Ok(Ok(_)) => {}
        }
        Ok(Self {
            url,
            partitions: std::thread::available_parallelism().map_or(4, |n| n.get()),
            codec: Arc::default(),
        })
    }

    /// Carries scoreland's own plan nodes `nodes` (the cluster's processes must carry them too).
    pub fn with_nodes(mut self, nodes: Vec<Arc<dyn NodeCodec>>) -> Self {
        self.codec = Arc::new(Codec::new(nodes));
        self
    }

    /// How many tasks each scan is split into (default: this machine's cores). A cluster with
    /// more cores than the machine that plans wants more.
    pub fn with_partitions(mut self, partitions: usize) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    pub fn url(&self) -> &ClusterUrl {
        &self.url
    }

    pub(crate) fn partitions(&self) -> usize {
        self.partitions
    }

    pub(crate) fn codec(&self) -> Arc<Codec> {
        self.codec.clone()
    }
}

/// Whether a job failed because an executor went away (the tasks' output or the result
/// partitions it held are gone; the scheduler retries tasks within a job, not the rows an
/// executor held for this client), so the query (read-only) is run again. Errors of the query
/// itself are not retried.
pub(crate) fn lost_executor(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "transport error",
        "h2 protocol error",
        "broken pipe",
        "connection refused",
        "connection reset",
        "error trying to connect",
        "fetch failed",
        "executor lost",
        "cancelled",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// An error with its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !out.contains(&next) {
            out.push_str(": ");
            out.push_str(&next);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_a_scheduler_and_nothing_else() {
        for (raw, host, port) in [
            ("df://127.0.0.1:50050", "127.0.0.1", 50050),
            ("scheduler.internal:50050", "scheduler.internal", 50050),
            ("http://sched-1:7000/", "sched-1", 7000),
        ] {
            let u: ClusterUrl = raw.parse().unwrap();
            assert_eq!((u.host(), u.port()), (host, port), "{raw}");
        }
        for raw in [
            "",
            "df://",
            "df://host",
            "df://host:0",
            "df://host:99999",
            "s3://bucket:1",
            "df://user@host:1",
            "df://host/path:1",
            "df://[::1]:1",
            "df://host:1?x=1",
        ] {
            let e = raw.parse::<ClusterUrl>().unwrap_err().to_string();
            assert!(e.contains("df://HOST:PORT"), "{raw}: {e}");
        }
    }
}
