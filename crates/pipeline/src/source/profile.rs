//! The `profile-export` source (docs/profile-exports.md): audiences evaluated and their profiles exported
//! into a dataset on the Profile union schema, then downloaded as batches and landed as the
//! `profiles`, `audiences` and `audience_summary` tables.
//!
//! One run: the target dataset (found or made by name) ▸ a segment job, if asked, waited for ▸
//! an export job, waited for with a deadline (cancelled on the deadline, or on SIGTERM by the
//! run) ▸ its batches through the verified download ▸ the three tables for the night.
//!
//! The export job's id is kept in the pipeline's state as soon as it is made: a run that was
//! stopped after that picks the same job up again instead of exporting twice.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use scoreland_ingest::{
    DownloadOptions, ExportJob, ExportJobRequest, HumanDuration, PROFILE_UNION_SCHEMA,
    PlatformSettings, PollEvery, Polled, SegmentFilter, SegmentJob, poll_job,
};
use scoreland_transform::{ProfileStats, ProfileTables};
use serde::{Deserialize, Serialize};

use super::platform::{Connected, Platform, concurrency, source_error};
use super::{Ingested, Input};
use crate::context::{InFlight, Job, RunContext};
use crate::error::PipelineError;
use crate::record::{PipelineState, RunRecord, RunStatus, ms};

/// `[source]` with `type = "profile-export"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileExportSource {
    /// The dataset the export writes into: found by this name, or made on the Profile union
    /// schema.
    pub dataset_name: String,
    /// Only profiles in these segments (their memberships of every segment are landed); every
    /// profile when empty.
    #[serde(default)]
    pub segments: Vec<String>,
    /// The statuses that qualify for `segments` (AEP's default: realized and existing).
    #[serde(default)]
    pub statuses: Vec<String>,
    /// One batch per segment (`destination.segmentPerBatch`).
    #[serde(default)]
    pub segment_per_batch: bool,
    /// Run a segment job for `segments` (every segment when empty) first, and wait for it.
    #[serde(default)]
    pub evaluate: bool,
    /// Also export profiles that have events only.
    #[serde(default)]
    pub empty_profiles: bool,
    /// Dotted XDM paths that become `profiles` columns (`person.name.firstName` →
    /// `person_name_firstName`).
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub merge_policy: Option<MergePolicy>,
    /// `full` (default): every night exports every profile the filter takes. `incremental`:
    /// only profiles ingested since the last export landed (`fromIngestTimestamp`), applied to
    /// the last night landed, so that each night is still whole.
    #[serde(default)]
    pub mode: ProfileExportMode,
    /// How long the jobs may take, e.g. "2h" (default): the job is cancelled after.
    #[serde(default)]
    pub deadline: Option<HumanDuration>,
    /// Batch parts downloaded at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// AEP: URLs, org, sandbox and credentials.
    #[serde(default)]
    pub platform: Option<PlatformSettings>,
    /// Run against the bundled simulator instead (its profile store must exist:
    /// `scoreland sim generate --profiles N`).
    #[serde(default)]
    pub simulator: Option<ProfileSimulator>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileExportMode {
    #[default]
    Full,
    Incremental,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergePolicy {
    pub id: String,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSimulator {
    /// The simulated platform's directory.
    pub data: PathBuf,
}

impl ProfileExportSource {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.dataset_name.trim().is_empty() {
            return Err("source.dataset_name: the export's target dataset, by name".into());
        }
        if let Some(bad) = self
            .statuses
            .iter()
            .find(|s| !scoreland_transform::AUDIENCE_STATUSES.contains(&s.as_str()))
        {
            return Err(format!(
                "source.statuses: {bad:?} is not realized, existing or exited"
            ));
        }
        if self.mode == ProfileExportMode::Incremental
            && !self.segments.is_empty()
            && !self.statuses.iter().any(|s| s == "exited")
        {
            return Err(
                "source.mode = \"incremental\" with segments needs \"exited\" in source.statuses: an increment holds only the profiles it takes, so one that leaves the segments must come as exited, or it stays in the night as it was"
                    .into(),
            );
        }
        if self.segment_per_batch && self.segments.is_empty() {
            return Err("source.segment_per_batch needs source.segments".into());
        }
        if let Some(f) = self
            .fields
            .iter()
            .find(|f| f.is_empty() || f.split('.').any(str::is_empty))
        {
            return Err(format!(
                "source.fields: {f:?} is not a dotted XDM path such as person.name.firstName"
            ));
        }
        self.download_options()?;
        match (&self.platform, &self.simulator) {
            (Some(p), None) => Platform::aep(p).map(drop).map_err(source_error),
            (None, Some(_)) => Ok(()),
            _ => Err("give one of [source.platform] and [source.simulator]".into()),
        }
    }

    /// How long the jobs may take (default 2 hours).
    fn deadline(&self) -> Duration {
        self.deadline.map_or(Duration::from_secs(2 * 3600), |d| d.0)
    }

    fn download_options(&self) -> Result<DownloadOptions, String> {
        let mut options = DownloadOptions::default();
        options.concurrency = concurrency(self.concurrency, options.concurrency)?;
        Ok(options)
    }

    /// The platform, or the simulator (whose profile store must exist) exporting under
    /// `staging`.
    fn platform(&self, staging: &std::path::Path) -> Result<Platform, String> {
        match (&self.platform, &self.simulator) {
            (Some(p), _) => Platform::aep(p).map_err(source_error),
            (None, Some(s)) => {
                if !s
                    .data
                    .join(scoreland_platform_sim::profiles::PROFILES_DIR)
                    .is_dir()
                {
                    return Err(format!(
                        "the simulated platform {} has no profile store; make one with `scoreland sim generate --out {} --profiles 10000`",
                        s.data.display(),
                        s.data.display()
                    ));
                }
                Ok(Platform::simulator(
                    &s.data,
                    scoreland_platform_sim::SimConfig {
                        export_root: super::sim_exports(staging),
                        job_duration: Duration::from_millis(500),
                        ..Default::default()
                    },
                ))
            }
            (None, None) => Err("give one of [source.platform] and [source.simulator]".into()),
        }
    }

    /// The export job's request; `since` (epoch ms) makes it incremental.
    fn request(&self, dataset_id: &str, since: Option<i64>) -> ExportJobRequest {
        ExportJobRequest {
            from_ingest: since
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            merge_policy: self
                .merge_policy
                .as_ref()
                .map(|m| (m.id.clone(), m.version)),
            segments: self
                .segments
                .iter()
                .map(|s| SegmentFilter {
                    segment_id: s.clone(),
                    namespace: None,
                    statuses: self.statuses.clone(),
                })
                .collect(),
            empty_profiles: self.empty_profiles.then_some(true),
            dataset_id: dataset_id.to_string(),
            segment_per_batch: self.segment_per_batch,
            ..Default::default()
        }
    }
}

/// What a run records of its profile export.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProfileExportRecord {
    pub export_job: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_job: Option<String>,
    /// Whether the export job was made by an earlier, interrupted run.
    #[serde(default)]
    pub resumed: bool,
    /// An incremental export: profiles ingested since then (RFC 3339), applied to this night.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increment_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_to_night: Option<String>,
    pub night: String,
    pub previous_night: Option<String>,
    pub stats: ProfileStats,
}

/// Waits for a job until `deadline`, cancelling it when the deadline passes.
async fn wait<T, Fut>(
    in_flight: &InFlight,
    deadline: Instant,
    fetch: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
    what: &str,
) -> Result<T, PipelineError>
where
    Fut: std::future::Future<Output = Result<T, scoreland_ingest::IngestError>>,
{
    let left = deadline.saturating_duration_since(Instant::now());
    let polled = poll_job(
        left,
        PollEvery::jobs(Duration::from_secs(30)),
        fetch,
        done,
        |_, waited| tracing::info!(waited_s = waited.as_secs(), "waiting for {what}"),
    )
    .await
    .map_err(PipelineError::Ingest)?;
    match polled {
        Polled::Done(job) => Ok(job),
        Polled::TimedOut(_) => {
            let cancelled = in_flight
                .cancel("the source's deadline passed")
                .await
                .unwrap_or_default();
            Err(PipelineError::Job {
                message: format!(
                    "{what} did not end before the deadline (source.deadline); {cancelled}; nothing was landed"
                ),
            })
        }
    }
}

impl ProfileExportSource {
    /// Everything before the transform for a profile export: the jobs, the batches staged,
    /// and the landed nights tonight's builds on. `None` on a dry run (which only connects).
    pub(crate) async fn prepare(
        &self,
        cx: &RunContext<'_>,
        record: &mut RunRecord,
    ) -> Result<Option<Ingested>, PipelineError> {
        let src = self;
        let (state, in_flight) = (cx.state, cx.in_flight);
        let t = Instant::now();
        let deadline = Instant::now() + src.deadline();
        let platform = src.platform(cx.staging).map_err(|m| cx.invalid(m))?;
        let download = src.download_options().map_err(|m| cx.invalid(m))?;
        let Connected { client, sim: _sim } = platform.connect(download).await?;
        if cx.options.dry_run {
            // Nothing is made on a dry run, not even the dataset: the connection was the check.
            record.dataset = src.dataset_name.clone();
            record.status = RunStatus::DryRun;
            return Ok(None);
        }
        let (dataset, made) = client
            .ensure_dataset(&src.dataset_name, PROFILE_UNION_SCHEMA)
            .await
            .map_err(PipelineError::Ingest)?;
        if made {
            tracing::info!(dataset = %dataset, name = %src.dataset_name, "made the export's target dataset");
        }
        record.dataset = dataset.clone();
        let mut out = ProfileExportRecord::default();

        // An export job an interrupted run made is picked up again, unless it failed.
        let mut job: Option<ExportJob> = None;
        if let Some(id) = state.pending_export_job {
            match client.export_job(id).await {
                Ok(j) if !j.is_done() || j.failure().is_none() => {
                    tracing::info!(job = id, status = %j.status, "resuming the export job an interrupted run made");
                    out.resumed = true;
                    job = Some(j);
                }
                Ok(j) => tracing::warn!(
                    job = id,
                    "the export job an earlier run made gave nothing to land ({}); making a new one",
                    j.failure().unwrap_or_default()
                ),
                Err(e) => {
                    tracing::warn!(job = id, error = %e, "the export job an interrupted run made is gone; making a new one")
                }
            }
        }
        let job = match job {
            Some(j) => j,
            None => {
                if src.evaluate {
                    let segments = if src.segments.is_empty() {
                        vec!["*".to_string()]
                    } else {
                        src.segments.clone()
                    };
                    let sj = client
                        .create_segment_job(&segments)
                        .await
                        .map_err(PipelineError::Ingest)?;
                    // Known to the run before anything else: a signal from here on cancels it.
                    in_flight.set(Some((client.clone(), Job::Segment(sj.id.clone()))));
                    tracing::info!(job = %sj.id, "segment job started");
                    out.segment_job = Some(sj.id.clone());
                    let sj = wait(
                        in_flight,
                        deadline,
                        || client.segment_job(&sj.id),
                        SegmentJob::is_done,
                        &format!("segment job {}", sj.id),
                    )
                    .await?;
                    in_flight.set(None);
                    if let Some(why) = sj.failure() {
                        return Err(PipelineError::Job {
                            message: format!("{why}; nothing was exported or landed"),
                        });
                    }
                }
                let since = match src.mode {
                    ProfileExportMode::Incremental => state.last_batch_created,
                    ProfileExportMode::Full => None,
                };
                let req = src.request(&dataset, since);
                out.increment_since = req.from_ingest.clone();
                let j = client
                    .create_export_job(&req)
                    .await
                    .map_err(PipelineError::Ingest)?;
                // Known to the run at once (a signal from here on cancels it), and kept in the
                // state before it is announced (a run killed from here on resumes it).
                in_flight.set(Some((client.clone(), Job::Export(j.id))));
                cx.keep_state(&PipelineState {
                    pending_export_job: Some(j.id),
                    ..state.clone()
                })
                .await?;
                tracing::info!(job = j.id, dataset = %dataset, "export job started");
                j
            }
        };
        out.export_job = job.id;
        in_flight.set(Some((client.clone(), Job::Export(job.id))));
        let job = wait(
            in_flight,
            deadline,
            || client.export_job(job.id),
            ExportJob::is_done,
            &format!("export job {}", job.id),
        )
        .await?;
        in_flight.set(None);
        if let Some(why) = job.failure() {
            return Err(PipelineError::Job {
                message: format!("{why}; nothing was landed"),
            });
        }
        record.batches = job.batches.iter().map(|b| b.batch_id.clone()).collect();
        record.timings.discover_ms = ms(t.elapsed());

        // The batches, through the verified download.
        let t = Instant::now();
        let mut batches = Vec::new();
        for b in &job.batches {
            batches.push(
                client
                    .batch(&b.batch_id)
                    .await
                    .map_err(PipelineError::Ingest)?,
            );
        }
        let staged = super::catalog::stage_batches(
            &client, &dataset, &batches, cx.staging, cx.options, record,
        )
        .await?;

        // The landed nights tonight's builds on.
        let night = chrono::DateTime::from_timestamp_millis(job.created)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        let warehouse = cx.warehouse;
        let previous_night = warehouse
            .previous_date("audiences", &dataset, "night", &night)
            .await
            .map_err(PipelineError::Sink)?;
        let previous = match &previous_night {
            Some(p) => warehouse
                .fetch_dataset_files(
                    "audiences",
                    &dataset,
                    Some(("night", &[p.as_str()])),
                    &cx.work.join("previous"),
                )
                .await
                .map_err(PipelineError::Sink)?,
            None => Vec::new(),
        };
        // An increment applies to the last night landed (tonight's own, on a rerun).
        let carry = match (src.mode, state.last_batch_created) {
            (ProfileExportMode::Incremental, Some(_)) => {
                let tomorrow = (chrono::NaiveDate::parse_from_str(&night, "%Y-%m-%d")
                    .unwrap_or_default()
                    + chrono::Days::new(1))
                .format("%Y-%m-%d")
                .to_string();
                match warehouse
                    .previous_date("profiles", &dataset, "night", &tomorrow)
                    .await
                    .map_err(PipelineError::Sink)?
                {
                    Some(base) => {
                        let mut files = Vec::new();
                        for table in ["profiles", "audiences"] {
                            files.push(
                                warehouse
                                    .fetch_dataset_files(
                                        table,
                                        &dataset,
                                        Some(("night", &[base.as_str()])),
                                        &cx.work.join("carry").join(table),
                                    )
                                    .await
                                    .map_err(PipelineError::Sink)?,
                            );
                        }
                        out.applied_to_night = Some(base);
                        let audiences = files.pop().unwrap_or_default();
                        let profiles = files.pop().unwrap_or_default();
                        Some(scoreland_transform::Carry {
                            profiles,
                            audiences,
                        })
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let input = ProfileTables {
            carry,
            files: staged.iter().flat_map(|s| s.files.clone()).collect(),
            dedupe: job.batches.len() > 1,
            fields: src.fields.clone(),
            night: night.clone(),
            export_job_id: job.id,
            run_id: record.run_id.clone(),
            previous,
            previous_night: previous_night.clone(),
            out: cx.work.join("tables"),
        };
        record.timings.ingest_ms = ms(t.elapsed());
        out.night = night;
        out.previous_night = previous_night;
        record.profile_export = Some(out);
        Ok(Some(Ingested {
            input: Input::Profiles(Box::new(input)),
            landed: record.batches.clone(),
            last_created: Some(job.created),
            seen_folders: Default::default(),
        }))
    }
}
