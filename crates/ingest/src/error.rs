//! The one error type of the ingest crate.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to AEP or staging a batch.
///
/// [`IngestError::is_user_error`] separates the user's mistakes (bad configuration, unknown
/// dataset, wrong credentials) from remote faults, so a caller can say what to do.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid platform configuration: {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("refusing plain http to {url}: only loopback may be reached without TLS; use https://")]
    InsecureUrl { url: String },
    #[error(
        "refusing to follow {url}: it is not on the configured platform origin {expected}, and the token is only ever sent there"
    )]
    ForeignOrigin { url: String, expected: String },
    #[error(
        "IMS refused the credentials ({status}): {error}: {description}; {}",
        auth_hint(error)
    )]
    Auth {
        status: u16,
        error: String,
        description: String,
    },
    #[error("{method} {url} failed")]
    Http {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url} answered {status}{}: {message}", code.as_ref().map(|c| format!(" (error {c})")).unwrap_or_default())]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "{url} asked to be retried after {}, more than the {} left of the retry budget (max_retry_time); giving up now",
        humantime::format_duration(*asked),
        humantime::format_duration(Duration::from_secs(remaining.as_secs()))
    )]
    RetryAfterTooLong {
        url: String,
        asked: Duration,
        remaining: Duration,
        #[source]
        source: Box<IngestError>,
    },
    #[error(
        "the body of {url} arrived at {received} bytes in the last {}, below the minimum speed of {min_bytes_per_sec} bytes/s (min_speed)",
        humantime::format_duration(*window)
    )]
    TooSlow {
        url: String,
        received: u64,
        window: Duration,
        min_bytes_per_sec: u64,
    },
    #[error("the answer of {url} is {size} bytes, more than the {limit} bytes read into memory")]
    BodyTooLarge { url: String, size: u64, limit: u64 },
    #[error(
        "the listing at {url} went on for {pages} pages in a row without a new entry; the server is not advancing its cursor"
    )]
    ListingNotAdvancing { url: String, pages: u32 },
    #[error("gave up on {url} after {attempts} attempts in {elapsed:?}")]
    GaveUp {
        url: String,
        attempts: u32,
        elapsed: Duration,
        #[source]
        source: Box<IngestError>,
    },
    #[error("the body of {url} ended after {received} of {expected} bytes")]
    CutShort {
        url: String,
        expected: u64,
        received: u64,
    },
    #[error("{url} returned a body that is not the expected JSON")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "dataset {dataset} has no successful batch from client '{client}'; check the dataset id and the createdClient (`scoreland batches --dataset {dataset}` lists what is there)"
    )]
    NoSuccessfulBatch { dataset: String, client: String },
    #[error("{what}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("export folder {folder} cannot be landed: {why}")]
    BadExportFolder { folder: String, why: String },
    #[error("{what} was not found")]
    NotFound { what: String },
    #[error("{what}")]
    Ambiguous { what: String },
    #[error("{url} answered something unexpected: {what}")]
    Unexpected { url: String, what: String },
    #[error("batch {batch} is not in Catalog")]
    BatchNotFound { batch: String },
    #[error("batch {batch} has status '{status}'; only successful batches can be downloaded")]
    BatchNotUsable { batch: String, status: String },
    #[error("batch {batch} belongs to dataset {actual}, not {expected}")]
    BatchDatasetMismatch {
        batch: String,
        expected: String,
        actual: String,
    },
    #[error("the listing at {url} links to itself as its next page; refusing to loop")]
    RepeatedNextLink { url: String },
    #[error(
        "batch {batch} lists a file named {name:?}, which is not a safe file name; nothing was written for it"
    )]
    UnsafeName { batch: String, name: String },
    #[error("part {name} of batch {batch} failed verification: {reason}")]
    Verify {
        batch: String,
        name: String,
        reason: String,
    },
    #[error("part {path} is not a readable parquet file")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error(
        "batch {batch} has {actual} rows in its parts but Catalog says {expected} (metrics.outputRecordCount); set row_count_check = \"warn\" to land it anyway"
    )]
    RowCountMismatch {
        batch: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "staging {dir} has {} MB free, but the batch needs {} MB more{}; free some space (old batches in staging can go) or point staging at a larger disk",
        available / 1_000_000,
        needed.div_ceil(1_000_000),
        if *keep_free > 0 { format!(" and keep_free asks for {} MB to stay free", keep_free / 1_000_000) } else { String::new() }
    )]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
        keep_free: u64,
    },
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to check after IMS refused the credentials: scopes are their own mistake.
fn auth_hint(error: &str) -> &'static str {
    match error {
        "invalid_scope" => {
            "the scopes asked for are not granted to this client; add the APIs to the Developer Console project, or ask for fewer scopes"
        }
        "invalid_client" | "unauthorized_client" => "check the client id and client secret",
        _ => "check the client id, client secret and scopes",
    }
}

impl IngestError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IngestError::Io {
            path: path.into(),
            source,
        }
    }

    /// A mistake the user can fix in configuration or arguments (as opposed to a remote fault).
    pub fn is_user_error(&self) -> bool {
        match self {
            IngestError::Config { .. }
            | IngestError::InsecureUrl { .. }
            | IngestError::Auth { .. }
            | IngestError::NoSuccessfulBatch { .. }
            | IngestError::BatchNotFound { .. }
            | IngestError::NotFound { .. }
            | IngestError::Ambiguous { .. }
            | IngestError::BatchNotUsable { .. }
            | IngestError::BatchDatasetMismatch { .. } => true,
            IngestError::Status { status, .. } => matches!(status, 400 | 401 | 403 | 404),
            IngestError::GaveUp { source, .. } => source.is_user_error(),
            _ => false,
        }
    }

    /// Worth another attempt: 429, 5xx, connection faults and bodies cut short.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            IngestError::Status { status, .. } => *status == 429 || *status >= 500,
            IngestError::Http { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_body()
                    || source.is_decode()
                    || source.is_request()
            }
            IngestError::Verify { .. } => false,
            IngestError::Store { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            IngestError::Json { .. }
            | IngestError::CutShort { .. }
            | IngestError::TooSlow { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
