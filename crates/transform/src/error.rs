use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("invalid transform configuration: {0}")]
    Config(String),
    #[error("no staged parts to transform")]
    NoInput,
    /// A bug, not the input's fault: the run fails (exit 1) with the panic's message.
    #[error(
        "internal error: a transform worker panicked: {message}; this is a bug in scoreland \
         (please report it with the run record); nothing of this run was published"
    )]
    Panicked { message: String },
    #[error(
        "cannot find Customer AI scores in {file}: no `_<tenant>.CustomerAI.<instance>` struct; give an explicit [transform.mapping]"
    )]
    NoScores { file: PathBuf },
    #[error("column {column} is missing from {file}, which the mapping needs")]
    MissingColumn { file: PathBuf, column: String },
    #[error(
        "column {column} is {found} in {file} but {expected} in {other}; an incompatible type change between parts"
    )]
    IncompatibleColumn {
        column: String,
        file: PathBuf,
        found: String,
        other: PathBuf,
        expected: String,
    },
    #[error("cannot read the profile export in {file}: {message}")]
    Profiles { file: PathBuf, message: String },
    #[error("cannot read or write the parquet file {file}: {message}")]
    Parquet { file: PathBuf, message: String },
    #[error("cannot read the parquet footer of {file}")]
    Footer {
        file: PathBuf,
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The distributed engine failed the scores job (nothing of this run was published).
    #[error("the scores job failed on the cluster {engine}: {message}")]
    Cluster { engine: String, message: String },
    #[error("query failed while {context}")]
    DataFusion {
        context: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
}

pub(crate) trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, TransformError>;
}

impl<T> Context<T> for Result<T, datafusion::error::DataFusionError> {
    fn context(self, what: impl Into<String>) -> Result<T, TransformError> {
        self.map_err(|source| TransformError::DataFusion {
            context: what.into(),
            source,
        })
    }
}
