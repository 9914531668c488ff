use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read pipeline file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid pipeline file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot start the simulator for the pipeline")]
    Simulator(#[source] scoreland_platform_sim::SimError),
    #[error("ingest failed")]
    Ingest(#[source] scoreland_ingest::IngestError),
    #[error("transform failed")]
    Transform(#[source] scoreland_transform::TransformError),
    #[error("landing failed")]
    Sink(#[source] scoreland_sink::SinkError),
    #[error(
        "the warehouse {url} is in scoreland's old layout (_commits/, _latest.json); turn its tables into Delta tables with `scoreland convert --warehouse {url}`, then run again"
    )]
    LegacyWarehouse { url: String },
    #[error(
        "publishing table {table} failed; {}; the next run completes the rest",
        if published.is_empty() { "no table of this run was published".to_string() } else { format!("already published: {}", published.join(", ")) }
    )]
    Publish {
        table: String,
        published: Vec<String>,
        #[source]
        source: Box<scoreland_sink::SinkError>,
    },
    /// Another pipeline's interrupted publish that this machine cannot finish.
    #[error(
        "pipeline {pipeline}'s publish of run {run_id} was interrupted after committing to the warehouse, and the files it prepared are not on this machine; publishing now would show readers half of that run: rerun pipeline {pipeline} first (it settles its publish), then this one"
    )]
    OtherPublishInterrupted { pipeline: String, run_id: String },
    #[error(
        "waited {waited} for another publish on this warehouse to end ({holder}); rerun later, or remove {path} if no run of scoreland is publishing"
    )]
    PublishBusy {
        waited: String,
        holder: String,
        path: String,
    },
    /// A segment or export job that failed, was cancelled or gave nothing to land.
    #[error("{message}")]
    Job { message: String },
    /// A check at level `error` failed: nothing of the night was published.
    #[error(
        "checks failed: {}; nothing of this night was published (every check's result is in the run record; `scoreland run --skip-checks NAME` lands it anyway)",
        failed.join("; ")
    )]
    ChecksFailed { failed: Vec<String> },
    #[error(
        "interrupted by {signal} before publishing; nothing of this run was published (parts already staged are kept for the next run)"
    )]
    Interrupted { signal: &'static str },
}

impl PipelineError {
    /// Another run holds the pipeline's lock (exit code 4).
    /// The process's exit code for this error: 5 checks failed, 4 another run holds the lock,
    /// 2 bad configuration or usage, 1 a failed run.
    pub fn exit_code(&self) -> u8 {
        if matches!(self, PipelineError::ChecksFailed { .. }) {
            5
        } else if self.is_locked() {
            4
        } else if self.is_config() {
            2
        } else {
            1
        }
    }

    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            PipelineError::Sink(scoreland_sink::SinkError::Locked { .. })
        )
    }

    /// Bad configuration or usage (exit code 2) rather than a failed run (exit code 1).
    pub fn is_config(&self) -> bool {
        match self {
            PipelineError::Read { .. }
            | PipelineError::Invalid { .. }
            | PipelineError::LegacyWarehouse { .. } => true,
            PipelineError::Ingest(e) => e.is_user_error(),
            PipelineError::Transform(scoreland_transform::TransformError::Config(_)) => true,
            PipelineError::Sink(
                scoreland_sink::SinkError::Url { .. }
                | scoreland_sink::SinkError::NotWritable { .. },
            ) => true,
            _ => false,
        }
    }
}
