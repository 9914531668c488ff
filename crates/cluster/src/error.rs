//! What can go wrong on a cluster, each naming the thing and the fix.

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster URL {url:?}: {message} (give df://HOST:PORT, the scheduler's address)")]
    Url { url: String, message: String },
    #[error(
        "the cluster's scheduler at {url} cannot be reached: {message}; start one \
         (`scoreland cluster local` or `scoreland cluster scheduler`) or fix --cluster"
    )]
    Unreachable { url: String, message: String },
    #[error("{what}: {message}")]
    Process { what: String, message: String },
}
