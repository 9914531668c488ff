use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid warehouse URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot open the warehouse at {url}")]
    Open {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "cannot write to the warehouse at {url}: check that the bucket or container exists and the credentials may write to it"
    )]
    NotWritable {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "the warehouse at {url} accepted a second create-if-absent put of the same object, so two runs could both commit the same Delta version; use a store that honours If-None-Match (AWS S3, Azure, GCS, MinIO), or set single_writer = true under [sink] if only one run ever writes here"
    )]
    NoConditionalPut { url: String },
    #[error("{op} {path} in the warehouse failed")]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "another run committed table {table} at the same time (commit {seq} exists); rerun to land on top of it"
    )]
    CommitConflict { table: String, seq: u64 },
    #[error(
        "pipeline {pipeline} is already running (run {run_id}, started {started_at}); if that run is dead, remove {path} or wait until it is stale"
    )]
    Locked {
        pipeline: String,
        run_id: String,
        started_at: String,
        path: String,
    },
    #[error(
        "the lock of pipeline {pipeline} ({path}) is no longer this run's ({run_id}): another run took it over, or it could not be renewed; this run stops before publishing"
    )]
    LockLost {
        pipeline: String,
        run_id: String,
        path: String,
    },
    #[error("Delta table {table}: {op} failed")]
    Delta {
        table: String,
        op: &'static str,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("Delta table {table}: {message}")]
    Schema { table: String, message: String },
    #[error("no landed tables in {url}; run a pipeline first (scoreland run pipelines/demo.toml)")]
    NoTables { url: String },
    #[error("the query failed: {message}")]
    Query { message: String },
    #[error(
        "`scoreland sql` only reads: {what} is refused (the tables are written by `scoreland run`)"
    )]
    ReadOnly { what: String },
    #[error("{path} in the warehouse is not valid JSON")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read {path}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable parquet file")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
}
