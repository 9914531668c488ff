//! `scoreland run`: ingest ▸ transform ▸ sink under one run id, with state and run records.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoreland_ingest::{
    AepClient, BatchSelection, CatalogBatch, Credentials, DownloadObserver, PlatformConfig,
    SCORING_CLIENT, Secret,
};
use scoreland_platform_sim::{SimConfig, SimHandle};
use scoreland_sink::Warehouse;
use scoreland_transform::{ModelHistogram, StagedBatch};
use serde::{Deserialize, Serialize};

use crate::config::{PipelineFile, SourceConfig, source_error};
use crate::error::PipelineError;
use crate::exports::{self, ExportRecord, ExportSource};

/// The tables a scores run lands.
pub const TABLES: [&str; 3] = ["scores", "summary", "drift"];

/// Every table a warehouse can hold: the scores tables, and those of profile exports.
pub const ALL_TABLES: [&str; 6] = [
    "scores",
    "summary",
    "drift",
    "profiles",
    "audiences",
    "audience_summary",
];

/// Whether a table's nights are date partitions (`score_date`, or `night` for the profile
/// tables), each replaced whole by the run that lands it; `drift` instead gains rows (one per
/// model and run).
pub fn by_score_date(table: &str) -> bool {
    table != "drift"
}

/// A table's date partition column.
pub fn date_column(table: &str) -> &'static str {
    if crate::profiles::AUDIENCE_TABLES.contains(&table) {
        "night"
    } else {
        "score_date"
    }
}

/// The transform's output directory of each table, in [`TABLES`] order.
fn output_dirs(output: &scoreland_transform::TransformOutput) -> [(&'static str, &Path); 3] {
    [
        ("scores", &output.scores_dir),
        ("summary", &output.summary_dir),
        ("drift", &output.drift_dir),
    ]
}

/// Where a pipeline's state is kept in the warehouse.
pub(crate) fn state_rel(pipeline: &str) -> String {
    format!("_state/{pipeline}.json")
}

#[derive(Clone)]
pub struct RunOptions {
    pub force: bool,
    pub dry_run: bool,
    pub observer: Arc<dyn DownloadObserver>,
    /// A lock older than this is taken over.
    pub stale_lock_after: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            force: false,
            dry_run: false,
            observer: Arc::new(scoreland_ingest::NoProgress),
            stale_lock_after: Duration::from_secs(6 * 3600),
        }
    }
}

/// Kept in the warehouse at `_state/<pipeline>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelineState {
    pub last_run_id: Option<String>,
    /// The batches the last landing run landed (the newest last).
    pub landed_batches: Vec<String>,
    /// When the newest landed batch was created (epoch ms): catch-up continues from here even
    /// after Catalog stops returning that batch.
    #[serde(default)]
    pub last_batch_created: Option<i64>,
    /// Runs of this pipeline that landed: the next run's sequence number, which is its Delta
    /// transaction version (a rerun after a crash has the same one, so nothing is committed
    /// twice).
    #[serde(default)]
    pub runs_landed: i64,
    pub histograms: Vec<ModelHistogram>,
    /// A profile export job made by a run that has not landed it yet: the next run waits for
    /// it (or lands it) rather than exporting again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_export_job: Option<i64>,
    /// Export folders newer than the last landed, as runs without platform access saw them:
    /// the settle time counts from the first run that saw a folder's present content.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub seen_folders: std::collections::BTreeMap<String, exports::SeenFolder>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Landed,
    NothingNew,
    DryRun,
    Failed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageTimings {
    pub discover_ms: u64,
    pub ingest_ms: u64,
    pub transform_ms: u64,
    pub sink_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRecord {
    pub table: String,
    /// The Delta version that holds this run's rows.
    pub version: u64,
    /// False when the table already held this run's commit (a rerun after a crash).
    pub committed: bool,
    /// The score dates whose partitions this run replaced (none for `drift`, which appends).
    pub replaced_dates: Vec<String>,
}

/// The JSON run record, stored at `_runs/<pipeline>/<run_id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    pub status: RunStatus,
    pub started_at: String,
    pub finished_at: String,
    pub dataset: String,
    pub batches: Vec<String>,
    pub parts: usize,
    pub parts_skipped: usize,
    pub bytes: u64,
    pub bytes_downloaded: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    pub duplicates_dropped: u64,
    pub null_identity_dropped: u64,
    pub retries: u64,
    pub timings: StageTimings,
    /// Staged megabytes per second of ingest.
    pub ingest_mb_per_s: f64,
    pub tables: Vec<TableRecord>,
    /// Extracts published, relative to the warehouse.
    #[serde(default)]
    pub extracts: Vec<String>,
    pub drift: Vec<DriftRecord>,
    pub error: Option<String>,
    pub warehouse: String,
    /// What an operator should know although the run did not fail (a flow ending soon, an
    /// export folder gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For a `dataset-export` source: which folders, why each was complete, gaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::exports::ExportRecord>,
    /// For a `profile-export` source: the jobs, the night and the counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_export: Option<crate::profiles::ProfileExportRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftRecord {
    pub model: String,
    pub psi: Option<f64>,
}

/// A connected source: the client, the dataset and client id to select batches with, and the
/// simulator when the source runs one (kept alive for the run).
struct Source {
    client: AepClient,
    dataset: String,
    created_client: String,
    selection: Option<BatchSelection>,
    _sim: Option<SimHandle>,
}

async fn connect(file: &PipelineFile) -> Result<Source, PipelineError> {
    let invalid = |message: String| PipelineError::Invalid {
        path: PathBuf::from(file.name()),
        message,
    };
    let (config, dataset, common, sim) = match &file.source {
        SourceConfig::Aep {
            platform,
            dataset,
            common,
        } => {
            let config = platform.build().map_err(|e| invalid(source_error(e)))?;
            (config, dataset.clone(), common, None)
        }
        SourceConfig::Simulator {
            data,
            dataset,
            common,
        } => {
            let sim = scoreland_platform_sim::serve_dir(
                data,
                SimConfig::default(),
                ([127, 0, 0, 1], 0).into(),
            )
            .await
            .map_err(PipelineError::Simulator)?;
            let first_dataset = sim
                .platform()
                .sandboxes
                .values()
                .next()
                .and_then(|sb| sb.datasets.keys().next().cloned());
            let dataset = dataset.clone().or(first_dataset).ok_or_else(|| {
                invalid(format!("the platform in {} has no dataset", data.display()))
            })?;
            let config = simulator_config(&sim).map_err(invalid)?;
            (config, dataset, common, Some(sim))
        }
        SourceConfig::DatasetExport(_) | SourceConfig::ProfileExport(_) => {
            return Err(invalid(
                "an export source has no batches to select by Catalog".into(),
            ));
        }
    };
    let options = common.download_options().map_err(invalid)?;
    Ok(Source {
        client: AepClient::new(config, options).map_err(PipelineError::Ingest)?,
        dataset,
        created_client: common
            .created_client
            .clone()
            .unwrap_or_else(|| SCORING_CLIENT.into()),
        selection: common.batches.clone(),
        _sim: sim,
    })
}

/// How to reach a simulator started in process: its URLs, org, first sandbox and credentials.
pub(crate) fn simulator_config(sim: &SimHandle) -> Result<PlatformConfig, String> {
    let info = sim.platform().info.clone();
    let sandbox = sim
        .platform()
        .sandboxes
        .keys()
        .next()
        .cloned()
        .unwrap_or_default();
    Ok(PlatformConfig {
        platform_url: sim.base_url().parse().map_err(|e| format!("{e}"))?,
        ims_url: sim.ims_url().parse().map_err(|e| format!("{e}"))?,
        org_id: info.org_id,
        sandbox,
        credentials: Credentials::OAuth {
            client_id: info.client_id,
            client_secret: Secret::new(info.client_secret),
            scopes: PlatformConfig::DEFAULT_SCOPES.into(),
        },
    })
}

/// A client of a simulator started in process.
pub(crate) fn simulator_client(sim: &SimHandle) -> Result<AepClient, String> {
    AepClient::new(
        simulator_config(sim)?,
        scoreland_ingest::DownloadOptions::default(),
    )
    .map_err(|e| e.to_string())
}

/// Fault injection for crash tests: `SCORELAND_CRASH_AT=<point>` aborts the process there, as
/// a power cut or `kill -9` would. Points, checked by the end-to-end tests: `before_commit`
/// (the transform is done, no table committed yet), `between_tables` (the first table,
/// `scores` or `profiles`, committed, the others not), `before_published` (every table committed, `_published` not
/// written) and `before_state` (published, the pipeline's state not written).
fn crash_point(point: &str) {
    if std::env::var("SCORELAND_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("SCORELAND_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs the pipeline once. The run record is returned (and stored in the warehouse) for
/// landed, nothing-new and failed runs alike; `Err` carries the record of a failed run.
pub async fn run(
    file: &PipelineFile,
    options: &RunOptions,
) -> Result<RunRecord, (PipelineError, Option<Box<RunRecord>>)> {
    let started = chrono::Utc::now();
    let run_id = format!(
        "{}-{}",
        started.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let name = file.name().to_string();
    let sink = file.sink.sink_config();
    let warehouse = match if options.dry_run {
        sink.open()
    } else {
        sink.build().await
    } {
        Ok(w) => w,
        Err(e) => return Err((PipelineError::Sink(e), None)),
    };
    let mut record = RunRecord {
        run_id: run_id.clone(),
        pipeline: name.clone(),
        status: RunStatus::Failed,
        started_at: started.to_rfc3339(),
        finished_at: String::new(),
        dataset: String::new(),
        batches: Vec::new(),
        parts: 0,
        parts_skipped: 0,
        bytes: 0,
        bytes_downloaded: 0,
        rows_in: 0,
        rows_out: 0,
        duplicates_dropped: 0,
        null_identity_dropped: 0,
        retries: 0,
        timings: StageTimings::default(),
        ingest_mb_per_s: 0.0,
        tables: Vec::new(),
        extracts: Vec::new(),
        drift: Vec::new(),
        error: None,
        warehouse: warehouse.url().to_string(),
        warnings: Vec::new(),
        export: None,
        profile_export: None,
    };
    for table in TABLES {
        match warehouse.is_legacy(table).await {
            Ok(false) => {}
            Ok(true) => {
                return Err((
                    PipelineError::LegacyWarehouse {
                        url: warehouse.url().to_string(),
                    },
                    None,
                ));
            }
            Err(e) => return Err((PipelineError::Sink(e), None)),
        }
    }
    let lock = if options.dry_run {
        None
    } else {
        match warehouse
            .lock(&name, &run_id, options.stale_lock_after, &|| {
                scoreland_sink::pause_point("lock_takeover")
            })
            .await
        {
            Ok(l) => Some(l),
            Err(e) => return Err((PipelineError::Sink(e), None)),
        }
    };
    let staging = file
        .staging
        .clone()
        .unwrap_or_else(|| PathBuf::from("staging"));
    let work = staging.join(".work").join(&run_id);
    // Until the publish starts, SIGINT or SIGTERM (what systemd sends) stops the run: nothing
    // is published, and the partial work goes. Once it starts, the publish is finished.
    let mut signal = std::pin::pin!(shutdown_signal());
    let in_flight = crate::profiles::InFlight::default();
    let prepared = tokio::select! {
        r = prepare(file, options, &warehouse, &mut record, &staging, &work, &in_flight) => r,
        name = &mut signal => Err(PipelineError::Interrupted { signal: name }),
    };
    if let Err(PipelineError::Interrupted { signal }) = &prepared
        && let Some(said) = in_flight
            .cancel(&format!("the run was stopped by {signal}"))
            .await
    {
        record.warnings.push(said);
    }
    let outcome = match prepared {
        Ok(Some(prepared)) => {
            // A run whose lock another run took over (it was thought dead) publishes nothing.
            let held = match &lock {
                Some(l) => l.check_held().map_err(PipelineError::Sink),
                None => Ok(()),
            };
            let published = match held {
                Ok(()) => publish(file, &warehouse, &mut record, prepared).await,
                Err(e) => Err(e),
            };
            if published.is_ok() {
                prune_staging(file, &staging, &record);
            }
            if let Some(name) = futures::FutureExt::now_or_never(&mut signal) {
                tracing::warn!(
                    signal = name,
                    "{name} arrived while publishing; the publish was finished first"
                );
            }
            published
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if work.exists()
        && let Err(e) = std::fs::remove_dir_all(&work)
    {
        tracing::warn!(dir = %work.display(), error = %e, "cannot remove the work directory");
    }
    record.finished_at = chrono::Utc::now().to_rfc3339();
    if let Err(e) = &outcome {
        record.status = RunStatus::Failed;
        record.error = Some(error_chain(e));
    }
    if !options.dry_run {
        let rel = format!("_runs/{name}/{run_id}.json");
        if let Err(e) = warehouse.put_json(&rel, &record).await {
            tracing::error!(error = %e, "cannot store the run record");
        }
    }
    if let Some(lock) = lock
        && let Err(e) = lock.release().await
    {
        tracing::error!(error = %e, "cannot release the pipeline lock");
    }
    match outcome {
        Ok(()) => Ok(record),
        Err(e) => Err((e, Some(Box::new(record)))),
    }
}

/// The error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Resolves on SIGINT or SIGTERM with the signal's name. If the handlers cannot be installed,
/// it never resolves (and the signals keep their default effect).
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// What a run has ready to publish: the tables written, the extracts (local file and where it
/// goes in the warehouse), and the state to keep after (its `runs_landed` is the Delta
/// transaction version of every commit of the publish).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Prepared {
    pub tables: Vec<PreparedTable>,
    pub extracts: Vec<(PathBuf, String)>,
    pub state: PipelineState,
    pub replace_dataset: bool,
}

/// One table's files, as the transform wrote them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreparedTable {
    pub name: String,
    pub dir: PathBuf,
    /// The date partition column, whose dates in the files are replaced; `None`: appended.
    pub date_column: Option<String>,
}

/// Everything before the publish: select ▸ download ▸ transform. `None` when there is nothing
/// to publish (nothing new, or a dry run).
async fn prepare(
    file: &PipelineFile,
    options: &RunOptions,
    warehouse: &Warehouse,
    record: &mut RunRecord,
    staging: &Path,
    work: &Path,
    in_flight: &crate::profiles::InFlight,
) -> Result<Option<Prepared>, PipelineError> {
    let name = file.name();
    let state: PipelineState = warehouse
        .get_json(&state_rel(name))
        .await
        .map_err(PipelineError::Sink)?
        .unwrap_or_default();
    let ingested = match &file.source {
        SourceConfig::ProfileExport(src) => {
            return crate::profiles::prepare(
                src, options, warehouse, record, staging, work, &state, in_flight,
            )
            .await;
        }
        SourceConfig::DatasetExport(src) => {
            ingest_exports(src, options, warehouse, record, staging, work, &state).await?
        }
        _ => ingest_batches(file, options, record, staging, &state).await?,
    };
    let Some(ingested) = ingested else {
        return Ok(None);
    };
    let t = Instant::now();
    let invalid = |message: String| PipelineError::Invalid {
        path: PathBuf::from(name),
        message,
    };
    let format = file.sink.output_format().map_err(invalid)?;
    let transformer = file
        .transform
        .build(&work.join("spill"))
        .map_err(PipelineError::Transform)?
        .with_run_id(&record.run_id)
        .with_landed(ingested.merge_with.clone());
    let output = transformer
        .run(&ingested.staged, &format, &state.histograms, work)
        .await
        .map_err(PipelineError::Transform)?;
    record.rows_in = output.stats.rows_in;
    record.rows_out = output.stats.rows_out;
    record.duplicates_dropped = output.stats.duplicates_dropped;
    record.null_identity_dropped = output.stats.null_identity_dropped;
    record.drift = output
        .histograms
        .iter()
        .map(|h| DriftRecord {
            model: h.model.clone(),
            psi: state
                .histograms
                .iter()
                .find(|p| p.model == h.model)
                .and_then(|p| scoreland_transform::psi(&h.buckets, &p.buckets)),
        })
        .collect();
    let mut extracts = Vec::new();
    let formats = file.sink.extract_formats().map_err(invalid)?;
    for format in &formats {
        for (table, dir) in output_dirs(&output) {
            if !dir.exists() {
                continue;
            }
            let ext = format.extension();
            let local = work.join("extracts").join(format!("{table}.{ext}"));
            transformer
                .write_extract(dir, format, &local)
                .await
                .map_err(PipelineError::Transform)?;
            extracts.push((local, format!("_extracts/{table}/{}.{ext}", record.dataset)));
        }
    }
    record.timings.transform_ms = ms(t.elapsed());

    let state = PipelineState {
        last_run_id: Some(record.run_id.clone()),
        landed_batches: ingested.landed.clone(),
        last_batch_created: ingested.last_created,
        runs_landed: state.runs_landed + 1,
        histograms: output.histograms.clone(),
        pending_export_job: None,
        seen_folders: ingested.seen_folders.clone(),
    };
    Ok(Some(Prepared {
        tables: output_dirs(&output)
            .into_iter()
            .map(|(name, dir)| PreparedTable {
                name: name.to_string(),
                dir: dir.to_path_buf(),
                date_column: by_score_date(name).then(|| "score_date".to_string()),
            })
            .collect(),
        extracts,
        state,
        replace_dataset: ingested.replace_dataset,
    }))
}

/// What the source staged for the transform, and what the state keeps of it.
struct Ingested {
    /// What the state keeps of export folders not landed yet (see [`exports::observe`]).
    seen_folders: std::collections::BTreeMap<String, exports::SeenFolder>,
    staged: Vec<StagedBatch>,
    /// Batch ids, or export folders, landed by this run.
    landed: Vec<String>,
    /// Creation (batches) or export time (folders) of the newest, epoch ms.
    last_created: Option<i64>,
    /// Files of the scores already landed, to merge with (an incremental export).
    merge_with: Vec<PathBuf>,
    /// The run holds the dataset's whole content: every score date of it is replaced.
    replace_dataset: bool,
}

/// Selects, and stages, the batches of a Catalog source. `None`: nothing to land.
async fn ingest_batches(
    file: &PipelineFile,
    options: &RunOptions,
    record: &mut RunRecord,
    staging: &Path,
    state: &PipelineState,
) -> Result<Option<Ingested>, PipelineError> {
    let t = Instant::now();
    let source = connect(file).await?;
    record.dataset = source.dataset.clone();
    let selection = match source.selection.clone().unwrap_or(BatchSelection::Newest) {
        BatchSelection::CatchUp { after: None } => BatchSelection::CatchUp {
            after: state.landed_batches.last().cloned(),
        },
        s => s,
    };
    let batches: Vec<CatalogBatch> = match (&selection, state.last_batch_created) {
        (BatchSelection::CatchUp { after: Some(after) }, Some(created)) => {
            source
                .client
                .batches_after(&source.dataset, &source.created_client, after, created)
                .await
        }
        _ => {
            source
                .client
                .select_batches(&source.dataset, &source.created_client, &selection)
                .await
        }
    }
    .map_err(PipelineError::Ingest)?;
    record.batches = batches.iter().map(|b| b.id.clone()).collect();
    record.timings.discover_ms = ms(t.elapsed());
    let already =
        !batches.is_empty() && batches.iter().all(|b| state.landed_batches.contains(&b.id));
    if batches.is_empty() || (already && !options.force) {
        record.status = RunStatus::NothingNew;
        tracing::info!(batches = ?record.batches, "nothing new to land");
        return Ok(None);
    }
    if options.dry_run {
        for b in &batches {
            let parts = source
                .client
                .list_parts(&b.id)
                .await
                .map_err(PipelineError::Ingest)?;
            record.parts += parts.len();
            record.bytes += parts.iter().map(|p| p.length).sum::<u64>();
            record.rows_in += b.records.unwrap_or(0);
        }
        record.status = RunStatus::DryRun;
        return Ok(None);
    }

    let t = Instant::now();
    let staged = stage_batches(
        &source.client,
        &source.dataset,
        &batches,
        staging,
        options,
        record,
    )
    .await?;
    record.timings.ingest_ms = ms(t.elapsed());
    Ok(Some(Ingested {
        seen_folders: Default::default(),
        last_created: batches.iter().map(|b| b.created).max(),
        landed: record.batches.clone(),
        staged,
        merge_with: Vec::new(),
        replace_dataset: false,
    }))
}

/// Downloads `batches` of `dataset` into staging (verified, resumable), counting into the
/// record.
pub(crate) async fn stage_batches(
    client: &AepClient,
    dataset: &str,
    batches: &[CatalogBatch],
    staging: &Path,
    options: &RunOptions,
    record: &mut RunRecord,
) -> Result<Vec<StagedBatch>, PipelineError> {
    let t = Instant::now();
    let mut staged = Vec::new();
    for b in batches {
        let report = client
            .download_batch(dataset, b, staging, options.observer.as_ref())
            .await
            .map_err(PipelineError::Ingest)?;
        record.parts += report.manifest.parts.len();
        record.parts_skipped += report.skipped_parts;
        record.bytes += report.manifest.bytes;
        record.bytes_downloaded += report.bytes_downloaded;
        staged.push(StagedBatch {
            batch_id: b.id.clone(),
            created_ms: b.created,
            files: report.manifest.part_paths(&report.batch_dir),
        });
    }
    record.retries = client.retries();
    record.ingest_mb_per_s =
        record.bytes_downloaded as f64 / 1e6 / t.elapsed().as_secs_f64().max(1e-3);
    Ok(staged)
}

/// Selects the complete export folders to land, and stages them. `None`: nothing to land.
async fn ingest_exports(
    src: &ExportSource,
    options: &RunOptions,
    warehouse: &Warehouse,
    record: &mut RunRecord,
    staging: &Path,
    work: &Path,
    state: &PipelineState,
) -> Result<Option<Ingested>, PipelineError> {
    let t = Instant::now();
    let mut conn = exports::connect(src, staging, &mut record.warnings).await?;
    record.dataset = conn.dataset.clone();
    let settle = src.settle().map_err(|m| PipelineError::Invalid {
        path: PathBuf::from("[source]"),
        message: m,
    })?;
    let mut export = ExportRecord {
        url: conn.url.clone(),
        flow: conn.flow.as_ref().map(|f| format!("{} ({})", f.name, f.id)),
        mode: Some(conn.mode),
        completeness: match &conn.runs {
            Some(_) => "the flow's runs: succeeded, with the files and bytes they report".into(),
            None => format!(
                "unchanged for the settle time of {}",
                humantime::format_duration(settle)
            ),
        },
        ..Default::default()
    };
    let mut folders = conn.folders().await?;
    let now = chrono::Utc::now();
    // Without the flow's runs, a folder's settle time counts from when a run first saw it as
    // it is (kept in the state), not only from its objects' times.
    let seen_folders = if conn.runs.is_none() {
        exports::observe(
            &mut folders,
            &state.seen_folders,
            state.last_batch_created,
            now,
        )
    } else {
        Default::default()
    };
    let (chosen, gaps) = exports::select(
        &conn.pattern,
        conn.mode,
        src.folders,
        folders,
        conn.runs.as_deref(),
        settle,
        state.last_batch_created,
        now,
        &mut record.warnings,
    )?;
    export.gaps = gaps;
    record.batches = chosen.iter().map(|c| c.folder.rel.clone()).collect();
    record.timings.discover_ms = ms(t.elapsed());
    if chosen.is_empty() {
        if !options.dry_run && seen_folders != state.seen_folders {
            let seen = PipelineState {
                seen_folders,
                ..state.clone()
            };
            warehouse
                .put_json(&state_rel(&record.pipeline), &seen)
                .await
                .map_err(PipelineError::Sink)?;
        }
        record.status = RunStatus::NothingNew;
        tracing::info!(url = %conn.url, "no complete export folder newer than the last landed");
        record.export = Some(export);
        return Ok(None);
    }
    if options.dry_run {
        for exports::Chosen {
            folder: f,
            full,
            complete: why,
        } in &chosen
        {
            record.parts += f.files.len();
            record.bytes += f.bytes();
            export.folders.push(exports::FolderRecord {
                folder: f.rel.clone(),
                export_time: f.export_time.to_rfc3339(),
                full: *full,
                files: f.files.len(),
                bytes: f.bytes(),
                rows: 0,
                complete: why.clone(),
            });
        }
        record.export = Some(export);
        record.status = RunStatus::DryRun;
        return Ok(None);
    }
    let t = Instant::now();
    let concurrency = src.concurrency.unwrap_or(8);
    let mut staged = Vec::new();
    for exports::Chosen {
        folder: f,
        full,
        complete: why,
    } in &chosen
    {
        let dir = staging.join(&conn.dataset).join(f.staging_name());
        let done = conn.stage(f, &dir, concurrency).await?;
        record.parts += done.files.len();
        record.bytes += done.bytes;
        record.bytes_downloaded += done.bytes_downloaded;
        export.folders.push(exports::FolderRecord {
            folder: f.rel.clone(),
            export_time: f.export_time.to_rfc3339(),
            full: *full,
            files: done.files.len(),
            bytes: done.bytes,
            rows: done.rows,
            complete: why.clone(),
        });
        tracing::info!(folder = %f.rel, full, files = done.files.len(), rows = done.rows, "export folder staged ({why})");
        staged.push(StagedBatch {
            batch_id: f.staging_name(),
            created_ms: f.export_time.timestamp_millis(),
            files: done.files,
        });
    }
    let ingest = t.elapsed();
    record.timings.ingest_ms = ms(ingest);
    record.ingest_mb_per_s = record.bytes_downloaded as f64 / 1e6 / ingest.as_secs_f64().max(1e-3);
    if let Some(c) = &conn.client {
        record.retries = c.retries();
    }
    record.export = Some(export);
    let last_created = chosen
        .iter()
        .map(|c| c.folder.export_time.timestamp_millis())
        .max();
    let landed = record.batches.clone();
    // An increment without its full export in this run merges with what is landed.
    let merge_with = if chosen[0].full {
        Vec::new()
    } else {
        warehouse
            .fetch_dataset_files("scores", &conn.dataset, None, &work.join("landed"))
            .await
            .map_err(PipelineError::Sink)?
    };
    if staged.iter().all(|b| b.files.is_empty()) {
        // Empty increments: nothing changed, but they are landed (the state moves on).
        tracing::info!(folders = ?landed, "the increments hold no rows; nothing changed");
        let new_state = PipelineState {
            last_run_id: state.last_run_id.clone(),
            landed_batches: landed,
            last_batch_created: last_created,
            ..state.clone()
        };
        warehouse
            .put_json(&format!("_state/{}.json", record.pipeline), &new_state)
            .await
            .map_err(PipelineError::Sink)?;
        record.status = RunStatus::NothingNew;
        return Ok(None);
    }
    Ok(Some(Ingested {
        seen_folders,
        staged,
        landed,
        last_created,
        merge_with,
        replace_dataset: true,
    }))
}

/// A publish under way, kept at `_state/<pipeline>.publishing.json` from just before the first
/// commit until the state is written: which run commits what ([`Prepared`]). A run that finds
/// one another run left behind knows what a crash half-published.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Publishing {
    run_id: String,
    dataset: String,
    batches: Vec<String>,
    rows: u64,
    #[serde(flatten)]
    prepared: Prepared,
}

fn publishing_rel(pipeline: &str) -> String {
    format!("_state/{pipeline}.publishing.json")
}

impl Publishing {
    /// The journal of `record`'s publish, its local paths made absolute (a later run may start
    /// in another directory).
    fn new(record: &RunRecord, mut prepared: Prepared) -> Publishing {
        for t in &mut prepared.tables {
            t.dir = exports::absolute(&t.dir);
        }
        for (local, _) in &mut prepared.extracts {
            *local = exports::absolute(local);
        }
        Publishing {
            run_id: record.run_id.clone(),
            dataset: record.dataset.clone(),
            batches: record.batches.clone(),
            rows: record.rows_out,
            prepared,
        }
    }

    /// Delta's transaction version of every commit of this publish.
    fn version(&self) -> i64 {
        self.prepared.state.runs_landed
    }

    /// Whether every file this publish would land is still on this machine, in the run's own
    /// work directory (`…/.work/<run id>/`), and every extract goes under `_extracts/`. A
    /// journal comes from the warehouse: one that names other local paths (corrupt, or
    /// written by someone else) is never followed.
    fn files_usable(&self) -> bool {
        use std::path::Component;
        let run = std::ffi::OsStr::new(&self.run_id);
        let in_work = |p: &Path| {
            p.is_absolute()
                && !p.components().any(|c| matches!(c, Component::ParentDir))
                && p.ancestors().any(|a| {
                    a.file_name() == Some(run)
                        && a.parent().and_then(Path::file_name)
                            == Some(std::ffi::OsStr::new(".work"))
                })
        };
        let p = &self.prepared;
        p.tables.iter().all(|t| in_work(&t.dir) && t.dir.is_dir())
            && p.extracts.iter().all(|(local, rel)| {
                in_work(local)
                    && local.is_file()
                    && rel.starts_with("_extracts/")
                    && !rel.contains("..")
            })
    }
}

/// What one publish landed.
struct Landed {
    tables: Vec<TableRecord>,
    extracts: Vec<String>,
}

/// Publishes the run: first what an interrupted run of the pipeline left half-published
/// ([`recover`]), then every table of this one, one commit each, then `_published` (what
/// readers follow), the extracts and the state. Not interrupted by signals: a publish is
/// finished once started.
async fn publish(
    file: &PipelineFile,
    warehouse: &Warehouse,
    record: &mut RunRecord,
    prepared: Prepared,
) -> Result<(), PipelineError> {
    let name = file.name();
    let t = Instant::now();
    crash_point("before_commit");
    scoreland_sink::pause_point("before_commit");
    // One publish at a time on a warehouse: readers see, per table, the newest version any
    // pipeline published, so another pipeline's commit in between would show half its run.
    let lock = publish_lock(warehouse, &record.run_id).await?;
    let published = async {
        settle_other_pipelines(name, warehouse, record).await?;
        let mut this = Publishing::new(record, prepared);
        let left: Option<Publishing> = warehouse
            .get_json(&publishing_rel(name))
            .await
            .map_err(PipelineError::Sink)?;
        if let Some(left) = left
            && left.run_id != this.run_id
        {
            recover(name, warehouse, record, &mut this, left).await?;
        }
        warehouse
            .put_json(&publishing_rel(name), &this)
            .await
            .map_err(PipelineError::Sink)?;
        land(name, warehouse, &this).await
    }
    .await;
    if let Err(e) = lock.release().await {
        tracing::error!(error = %e, "cannot release the warehouse's publish lock");
    }
    let landed = published?;
    record.tables = landed.tables;
    record.extracts = landed.extracts;
    record.timings.sink_ms = ms(t.elapsed());
    record.status = RunStatus::Landed;
    Ok(())
}

/// A dead publisher's lock is taken over after this (a live one renews it four times as often).
const PUBLISH_LOCK_STALE: Duration = Duration::from_secs(600);
/// How long a run waits for another pipeline's publish.
const PUBLISH_WAIT: Duration = Duration::from_secs(1800);

async fn publish_lock(
    warehouse: &Warehouse,
    run_id: &str,
) -> Result<scoreland_sink::Lock, PipelineError> {
    let waiting = Instant::now();
    let mut said = false;
    loop {
        match warehouse
            .lock(
                scoreland_sink::PUBLISH_LOCK,
                run_id,
                PUBLISH_LOCK_STALE,
                &|| {},
            )
            .await
        {
            Ok(lock) => return Ok(lock),
            Err(scoreland_sink::SinkError::Locked {
                run_id: holder,
                path,
                ..
            }) => {
                if waiting.elapsed() >= PUBLISH_WAIT {
                    return Err(PipelineError::PublishBusy {
                        waited: humantime::format_duration(PUBLISH_WAIT).to_string(),
                        holder,
                        path,
                    });
                }
                if !said {
                    tracing::info!(run = %holder, "waiting for another run's publish on this warehouse");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(PipelineError::Sink(e)),
        }
    }
}

/// Other pipelines' publishes that crashed half-way: finished here from their files (so that
/// this run's commits do not show half of them), or, without their files, this run stops.
async fn settle_other_pipelines(
    name: &str,
    warehouse: &Warehouse,
    record: &mut RunRecord,
) -> Result<(), PipelineError> {
    let names = warehouse
        .file_names("_state")
        .await
        .map_err(PipelineError::Sink)?;
    for other in names
        .iter()
        .filter_map(|n| n.strip_suffix(".publishing.json"))
        .filter(|other| *other != name)
    {
        let Some(left) = warehouse
            .get_json::<Publishing>(&publishing_rel(other))
            .await
            .map_err(PipelineError::Sink)?
        else {
            continue;
        };
        if !left.files_usable() {
            return Err(PipelineError::OtherPublishInterrupted {
                pipeline: other.to_string(),
                run_id: left.run_id,
            });
        }
        tracing::warn!(pipeline = other, run = %left.run_id, "finishing another pipeline's interrupted publish first");
        land(other, warehouse, &left).await?;
        record.warnings.push(format!(
            "pipeline {other}'s publish of run {} was interrupted; it was finished before this \
             run's",
            left.run_id
        ));
    }
    Ok(())
}

/// Settles the publish an interrupted run left behind, before this run commits anything.
/// - The same night (dataset and batches): this run commits under that run's transaction
///   version, so a table that holds it already (its commit holds these very batches) is not
///   committed twice.
/// - Another night: its publish is finished first, from the files it prepared, so that
///   readers see it whole; if those are gone, the tables it committed keep its rows and the
///   record says so. Either way this run commits under a transaction version of its own:
///   no table is skipped because it holds another night's commit.
async fn recover(
    name: &str,
    warehouse: &Warehouse,
    record: &mut RunRecord,
    this: &mut Publishing,
    left: Publishing,
) -> Result<(), PipelineError> {
    let version = left.version();
    if left.dataset == this.dataset && left.batches == this.batches {
        tracing::info!(
            interrupted = %left.run_id,
            batches = ?left.batches,
            "the publish of these batches was interrupted; tables that hold its commit are not committed twice"
        );
        this.prepared.state.runs_landed = version;
        return Ok(());
    }
    if left.files_usable() {
        tracing::warn!(
            interrupted = %left.run_id,
            batches = ?left.batches,
            "finishing the publish an interrupted run left half done, before this run's"
        );
        let done = land(name, warehouse, &left).await?;
        let committed: Vec<&str> = done
            .tables
            .iter()
            .filter(|t| t.committed)
            .map(|t| t.table.as_str())
            .collect();
        record.warnings.push(format!(
            "run {} was interrupted while publishing batches {}; its publish was finished \
             first (committed now: {})",
            left.run_id,
            left.batches.join(", "),
            if committed.is_empty() {
                "none".to_string()
            } else {
                committed.join(", ")
            }
        ));
    } else {
        let said = format!(
            "run {} was interrupted while publishing batches {} and the files it prepared are \
             gone; the tables it committed keep its rows (see `scoreland history`), and this \
             run lands under a transaction of its own",
            left.run_id,
            left.batches.join(", ")
        );
        tracing::warn!("{said}");
        record.warnings.push(said);
    }
    this.prepared.state.runs_landed = this.prepared.state.runs_landed.max(version + 1);
    Ok(())
}

/// Commits `p`'s tables (those that hold its transaction already are not committed twice),
/// then writes `_published`, the extracts and the state, and ends the publish.
async fn land(name: &str, warehouse: &Warehouse, p: &Publishing) -> Result<Landed, PipelineError> {
    // One Delta commit per table, each replacing exactly the run's (dataset, score date)
    // partitions (drift appends its rows), and carrying the run's transaction identifier.
    // Readers follow `_published/`, written once all are committed: a crash in between is
    // invisible to them.
    let metadata: serde_json::Map<String, serde_json::Value> = serde_json::Map::from_iter([
        ("pipeline".to_string(), serde_json::json!(name)),
        ("run_id".to_string(), serde_json::json!(p.run_id)),
        ("batches".to_string(), serde_json::json!(p.batches)),
        ("rows".to_string(), serde_json::json!(p.rows)),
    ]);
    let mut published = scoreland_sink::Published {
        run_id: p.run_id.clone(),
        versions: Default::default(),
    };
    let mut tables: Vec<TableRecord> = Vec::new();
    for (i, t) in p.prepared.tables.iter().enumerate() {
        let commit = warehouse
            .write_table(&scoreland_sink::TableWrite {
                table: &t.name,
                local_dir: &t.dir,
                dataset_id: &p.dataset,
                run_id: &p.run_id,
                by_score_date: t.date_column.is_some(),
                date_column: t.date_column.as_deref().unwrap_or("score_date"),
                replace_dataset: p.prepared.replace_dataset,
                app_id: name,
                app_version: p.version(),
                metadata: metadata.clone(),
            })
            .await
            .map_err(|source| PipelineError::Publish {
                table: t.name.clone(),
                published: tables.iter().map(|t| t.table.clone()).collect(),
                source: Box::new(source),
            })?;
        published.versions.insert(t.name.clone(), commit.version);
        tables.push(TableRecord {
            table: t.name.clone(),
            version: commit.version,
            committed: commit.committed,
            replaced_dates: commit.replaced_dates,
        });
        if i == 0 {
            crash_point("between_tables");
        }
    }
    crash_point("before_published");
    warehouse
        .put_json(&format!("_published/{name}.json"), &published)
        .await
        .map_err(PipelineError::Sink)?;
    // Extracts last: each is one object, replaced whole, after the night it copies is committed.
    let mut extracts = Vec::new();
    for (local, rel) in &p.prepared.extracts {
        warehouse
            .upload_file(local, rel)
            .await
            .map_err(PipelineError::Sink)?;
        extracts.push(rel.clone());
    }
    crash_point("before_state");
    warehouse
        .put_json(&state_rel(name), &p.prepared.state)
        .await
        .map_err(PipelineError::Sink)?;
    warehouse
        .delete(&publishing_rel(name))
        .await
        .map_err(PipelineError::Sink)?;
    Ok(Landed { tables, extracts })
}

/// Staging retention, after a landing: staged batches older than `staging_retention` go (the
/// ones just landed stay), and work directories that dead runs left behind for a day.
fn prune_staging(file: &PipelineFile, staging: &Path, record: &RunRecord) {
    let Ok(retention) = file.staging_retention() else {
        return; // `validate` refused it already
    };
    match scoreland_ingest::Manifest::prune(staging, &record.dataset, &record.batches, retention) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(batches = ?removed, "removed staged batches older than staging_retention")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot prune staging"),
    }
    let work = staging.join(".work");
    let Ok(entries) = std::fs::read_dir(&work) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(86_400));
        if old && entry.file_name() != record.run_id.as_str() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal as the warehouse holds it: of run `run`, its table in `dir`, an extract.
    fn journal(run: &str, dir: &Path, extract: (&Path, &str)) -> Publishing {
        serde_json::from_value(serde_json::json!({
            "run_id": run, "dataset": "ds", "batches": ["b1"], "rows": 1,
            "tables": [{"name": "scores", "dir": dir, "date_column": "score_date"}],
            "extracts": [[extract.0, extract.1]],
            "state": {"last_run_id": null, "landed_batches": [], "histograms": []},
            "replace_dataset": false
        }))
        .unwrap()
    }

    #[test]
    fn a_journal_is_followed_only_into_its_runs_work_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("staging/.work/run-1");
        let scores = work.join("out/scores");
        let extract = work.join("extracts/scores.csv");
        std::fs::create_dir_all(&scores).unwrap();
        std::fs::create_dir_all(extract.parent().unwrap()).unwrap();
        std::fs::write(&extract, "x").unwrap();
        assert!(journal("run-1", &scores, (&extract, "_extracts/scores/ds.csv")).files_usable());
        // Elsewhere on this machine, another run's work, a way out with `..`, a relative
        // path, an extract landing outside `_extracts/`: not followed.
        let elsewhere = tmp.path().join("home/.ssh");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let escape = work.join("../../../home/.ssh");
        for (run, dir, rel) in [
            ("run-1", elsewhere.as_path(), "_extracts/scores/ds.csv"),
            ("run-2", scores.as_path(), "_extracts/scores/ds.csv"),
            ("run-1", escape.as_path(), "_extracts/scores/ds.csv"),
            (
                "run-1",
                Path::new("staging/.work/run-1/out/scores"),
                "_extracts/scores/ds.csv",
            ),
            ("run-1", scores.as_path(), "_published/demo.json"),
            (
                "run-1",
                scores.as_path(),
                "_extracts/../_published/demo.json",
            ),
        ] {
            assert!(
                !journal(run, dir, (&extract, rel)).files_usable(),
                "{run} {} {rel}",
                dir.display()
            );
        }
        // Gone: not usable either.
        std::fs::remove_dir_all(&scores).unwrap();
        assert!(!journal("run-1", &scores, (&extract, "_extracts/scores/ds.csv")).files_usable());
    }
}
