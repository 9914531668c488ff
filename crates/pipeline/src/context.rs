//! What a run hands its source: the run's options, the warehouse, the directories it works in,
//! the pipeline's state, and where a source registers the platform job it waits for.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scoreland_ingest::{AepClient, DownloadObserver};
use scoreland_sink::Warehouse;

use crate::error::PipelineError;
use crate::record::PipelineState;

#[derive(Clone)]
pub struct RunOptions {
    pub force: bool,
    pub dry_run: bool,
    pub observer: Arc<dyn DownloadObserver>,
    /// A lock older than this is taken over.
    pub stale_lock_after: Duration,
    /// Checks (`drift`, or one result such as `drift.churn_risk`) whose failure does not stop
    /// the publish this time: the operator decided to land anyway (kept in the run record).
    pub skip_checks: Vec<String>,
    /// The distributed engine the scores job runs on (`run --cluster`, or `[transform]
    /// engine`); the transform runs here without one.
    pub cluster: Option<Arc<dyn scoreland_runtime::engine::ClusterEngine>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            force: false,
            dry_run: false,
            observer: Arc::new(scoreland_ingest::NoProgress),
            stale_lock_after: Duration::from_secs(6 * 3600),
            skip_checks: Vec::new(),
            cluster: None,
        }
    }
}

/// One run, as its source sees it.
pub(crate) struct RunContext<'a> {
    /// The pipeline file, for errors that name it.
    pub file: &'a Path,
    pub pipeline: &'a str,
    pub options: &'a RunOptions,
    pub warehouse: &'a Warehouse,
    /// Staged batches and folders, kept between runs.
    pub staging: &'a Path,
    /// This run's own directory (`<staging>/.work/<run id>`), removed after it.
    pub work: &'a Path,
    /// The pipeline's state as the last landing run left it.
    pub state: &'a PipelineState,
    pub in_flight: &'a InFlight,
    /// `[transform.dataset]`: the run lands the dataset from its XDM schema, which the source
    /// reads from the Schema Registry (and checks) before the rows.
    pub dataset: Option<&'a scoreland_transform::DatasetLanding>,
}

impl RunContext<'_> {
    /// A setting of the pipeline file that does not hold (`message` names its key).
    pub fn invalid(&self, message: String) -> PipelineError {
        PipelineError::Invalid {
            path: self.file.to_path_buf(),
            message,
        }
    }

    /// Keeps `state` as the pipeline's state before the run publishes (what it must not
    /// forget if it stops here).
    pub async fn keep_state(&self, state: &PipelineState) -> Result<(), PipelineError> {
        self.warehouse
            .put_json(&crate::record::state_rel(self.pipeline), state)
            .await
            .map_err(PipelineError::Sink)
    }
}

/// The platform job a run is waiting for, so that a stopped run can cancel it.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<Option<(AepClient, Job)>>);

#[derive(Clone)]
pub(crate) enum Job {
    Segment(String),
    Export(i64),
}

impl InFlight {
    pub fn set(&self, v: Option<(AepClient, Job)>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// Cancels the job being waited for, if any; says what it did.
    pub async fn cancel(&self, why: &str) -> Option<String> {
        let (client, job) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let (what, done) = match &job {
            Job::Segment(id) => (
                format!("segment job {id}"),
                client.cancel_segment_job(id).await,
            ),
            Job::Export(id) => (
                format!("export job {id}"),
                client.cancel_export_job(*id).await,
            ),
        };
        let msg = match done {
            Ok(()) => format!("{what} cancelled ({why})"),
            Err(e) => format!("{what} could not be cancelled ({why}): {e}"),
        };
        tracing::warn!("{msg}");
        Some(msg)
    }
}

/// `p` made absolute against the current directory (a later run may start elsewhere).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
