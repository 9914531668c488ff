//! What can go wrong on a cluster, each naming the thing and the fix.

use scoreland_sink::SinkError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster URL {url:?}: {message} (give df://HOST:PORT, the scheduler's address)")]
    Url { url: String, message: String },
    #[error(
        "the cluster's scheduler at {url} cannot be reached: {message}; start one \
         (`scoreland cluster local` or `scoreland cluster scheduler`) or fix --cluster"
    )]
    Unreachable { url: String, message: String },
    #[error(
        "the warehouse {url} is not a local directory: the cluster's executors read the \
         published files by path, so give a warehouse on a file system every executor mounts"
    )]
    NotShared { url: String },
    #[error("no table of the warehouse {url} has a published version yet")]
    NoTables { url: String },
    #[error(transparent)]
    Warehouse(#[from] SinkError),
    #[error("query failed on the cluster {url}: {message}")]
    Query { url: String, message: String },
    #[error("{what}: {message}")]
    Process { what: String, message: String },
}
