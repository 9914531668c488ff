//! The `dataset-export` source: the folders a Flow Service dataflow writes (docs/exports.md),
//! landed through the same transform and sink as batches.
//!
//! A folder is landed only when complete: the flow's run for it succeeded and the files listed
//! match the run's file count and bytes (or AEP's manifest in the folder lists them), or
//! (without platform access) nothing in it changed for the settle time. A full export replaces
//! the dataset's rows; an incremental one is merged with the rows already landed, keeping the
//! newest per (identity, model).
//!
//! - this file: `[source]` and `[source.flow]`, and the run ▸ select ▸ stage steps;
//! - [`conn`]: reaching the folders (the platform or simulator, the flow, the store);
//! - [`select`]: which folders are complete and which of them a run lands;
//! - [`plan`]: `scoreland export plan`, the export checked before the first night.

mod conn;
mod plan;
mod select;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use scoreland_ingest::{
    Compression, Destination, DestinationAuth, ExportFlowSpec, ExportMode, ExportTarget, FileType,
    FolderPattern, HumanDuration, PlatformSettings, Schedule, Secret, TimeUnit,
};
use scoreland_transform::StagedBatch;
use serde::{Deserialize, Serialize};

use super::platform::{Platform, concurrency, source_error};
use super::{Ingested, Input};
use crate::context::RunContext;
use crate::error::PipelineError;
use crate::record::{PipelineState, RunRecord, RunStatus, ms};
use conn::connect;
pub use plan::{ExportPlan, PlanCheck, PlanVerdict, plan as export_plan};
pub use select::SeenFolder;
pub(crate) use select::observe;
use select::{Chosen, Verdict, select, verdict};

/// `[source]` of `type = "dataset-export"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSource {
    /// The flow's folder as this machine reads it: a path, `file://`, `s3://bucket/path`,
    /// `az://container/path`, `abfss://…`, `gs://bucket/path`, or `dlz:path` (the Data
    /// Landing Zone, through the platform's credentials). Defaults, on the simulator, to where
    /// it writes the flow's target.
    #[serde(default)]
    pub url: Option<String>,
    /// object_store options for `url`, as for the sink.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The exported dataset's id (the first folder level). Defaults on the simulator to its
    /// first dataset.
    #[serde(default)]
    pub dataset: Option<String>,
    /// `"newest"` (default): the newest complete folder; `"catch_up"`: every complete folder
    /// after the last one landed, in order. Incremental flows always catch up.
    #[serde(default)]
    pub folders: FolderSelection,
    /// Without platform access, a folder is complete once unchanged this long (default "10m").
    #[serde(default)]
    pub settle: Option<HumanDuration>,
    /// The flow's mode when the flow is not known here (default `DAILY_FULL_EXPORT`).
    #[serde(default)]
    pub export_mode: Option<ExportMode>,
    /// Files fetched at once (default 8).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// The dataflow: what `scoreland export create` sets up, and whose runs say which folders
    /// are complete.
    #[serde(default)]
    pub flow: Option<FlowSection>,
    /// AEP, for the flow's runs and the Data Landing Zone's credentials.
    #[serde(default)]
    pub platform: Option<PlatformSettings>,
    /// Run against the bundled simulator instead: it is started in process, the flow is
    /// created there and exported once, then landed.
    #[serde(default)]
    pub simulator: Option<SimulatorSection>,
    /// OpenPGP-encrypted export files (`.gpg`): the private key to decrypt them with.
    #[serde(default)]
    pub pgp: Option<PgpSection>,
}

/// `[source.pgp]`: where the private key and its passphrase are, never in the file itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgpSection {
    /// The environment variable holding the ASCII-armored private key.
    #[serde(default = "default_pgp_key_env")]
    pub private_key_env: String,
    /// The environment variable holding its passphrase.
    #[serde(default = "default_pgp_passphrase_env")]
    pub passphrase_env: String,
}

fn default_pgp_key_env() -> String {
    "SCORELAND_PGP_PRIVATE_KEY".into()
}

fn default_pgp_passphrase_env() -> String {
    "SCORELAND_PGP_PASSPHRASE".into()
}

impl PgpSection {
    /// The key, from the environment; the error names the variable, never its value.
    pub(crate) fn key(&self) -> Result<scoreland_ingest::PgpKey, String> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("source.pgp: the environment variable {name} is not set"))
        };
        let armored = var(&self.private_key_env)?;
        let passphrase = var(&self.passphrase_env)?;
        scoreland_ingest::PgpKey::from_armored(&armored, scoreland_ingest::Secret::new(passphrase))
            .map_err(|e| {
                format!(
                    "source.pgp: {} holds no usable key: {e}",
                    self.private_key_env
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSection {
    /// The simulated platform's data directory.
    pub data: PathBuf,
    /// Where its destinations are (default `<staging>/sim-exports`).
    #[serde(default)]
    pub exports: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderSelection {
    #[default]
    Newest,
    CatchUp,
}

/// `[source.flow]`: the export dataflow. Credentials' secrets come from the environment only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSection {
    /// The flow's name: `create` finds it by this name before making one.
    pub name: String,
    /// `s3`, `azure_blob`, `adls_gen2`, `dlz`, `gcs` or `sftp`.
    pub destination: String,
    /// `PARQUET` (default) or `JSON`.
    #[serde(default)]
    pub file_type: Option<FileType>,
    /// `GZIP` (default) or `NONE` (parquet only).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// S3 and GCS bucket, or Azure Blob container.
    #[serde(default)]
    pub bucket: Option<String>,
    /// The folder in the destination.
    pub path: String,
    /// Default `FIRST_FULL_THEN_INCREMENTAL`.
    #[serde(default)]
    pub export_mode: Option<ExportMode>,
    /// `day` (default) or `hour`.
    #[serde(default)]
    pub time_unit: Option<TimeUnit>,
    /// 1 a day (default), or every 3, 6, 9 or 12 hours; 0 for a one-time full export.
    #[serde(default)]
    pub interval: Option<u32>,
    /// RFC 3339; default: now.
    #[serde(default)]
    pub start: Option<String>,
    /// RFC 3339; AEP ends flows without one after six months.
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub foldername_template: Option<String>,
    /// The non-secret parts of the destination's credentials: `access_key` (S3, GCS);
    /// `url`, `service_principal_id`, `tenant` (ADLS Gen2); `host`, `port`, `username` (SFTP).
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
}

/// Environment variables holding destination secrets.
pub const SECRET_VARS: [(&str, &str); 5] = [
    (
        "SCORELAND_EXPORT_SECRET_KEY",
        "S3 secret key or GCS HMAC secret",
    ),
    (
        "SCORELAND_EXPORT_CONNECTION_STRING",
        "Azure Blob connection string",
    ),
    (
        "SCORELAND_EXPORT_SERVICE_PRINCIPAL_KEY",
        "ADLS Gen2 service principal key",
    ),
    ("SCORELAND_EXPORT_SFTP_PASSWORD", "SFTP password"),
    (
        "SCORELAND_EXPORT_SFTP_KEY",
        "SFTP private key (base64, as AEP takes it)",
    ),
];

impl FlowSection {
    pub fn destination(&self) -> Result<Destination, String> {
        Destination::from_key(&self.destination).ok_or_else(|| {
            format!(
                "flow.destination = {:?} is not one of s3, azure_blob, adls_gen2, dlz, gcs, sftp",
                self.destination
            )
        })
    }

    pub fn target(&self) -> Result<ExportTarget, String> {
        let target = ExportTarget {
            destination: self.destination()?,
            file_type: self.file_type.unwrap_or(FileType::Parquet),
            compression: self.compression.unwrap_or(Compression::Gzip),
            bucket: self.bucket.clone(),
            path: self.path.clone(),
        };
        target.check().map_err(|e| format!("flow: {e}"))?;
        Ok(target)
    }

    pub fn schedule(&self, now: DateTime<Utc>) -> Result<Schedule, String> {
        let time = |field: &str, v: &str| {
            DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.timestamp())
                .map_err(|e| format!("flow.{field} = {v:?} is not an RFC 3339 time: {e}"))
        };
        let export_mode = self
            .export_mode
            .unwrap_or(ExportMode::FirstFullThenIncremental);
        let (unit, interval) = match export_mode {
            ExportMode::DailyFullExport => (TimeUnit::Day, 0),
            ExportMode::FirstFullThenIncremental => (TimeUnit::Day, 1),
        };
        let schedule = Schedule {
            export_mode,
            time_unit: self.time_unit.unwrap_or(unit),
            interval: self.interval.unwrap_or(interval),
            start_time: match &self.start {
                Some(s) => time("start", s)?,
                None => now.timestamp(),
            },
            end_time: self.end.as_deref().map(|e| time("end", e)).transpose()?,
            foldername_template: self.foldername_template.clone(),
        };
        schedule.check().map_err(|e| format!("flow: {e}"))?;
        Ok(schedule)
    }

    /// The destination's credentials: the file's non-secret parts and the environment's
    /// secrets. On the simulator, which checks only that they are there, missing secrets are
    /// stand-ins.
    pub fn auth(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        simulator: bool,
    ) -> Result<DestinationAuth, String> {
        for key in self.credentials.keys() {
            if [
                "secret_key",
                "secret",
                "password",
                "connection_string",
                "ssh_key",
                "service_principal_key",
                "key",
            ]
            .contains(&key.as_str())
            {
                return Err(format!(
                    "flow.credentials.{key}: secrets are never read from the pipeline file; set it in the environment ({})",
                    SECRET_VARS
                        .iter()
                        .map(|(v, what)| format!("{v}: {what}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        let plain = |k: &str| -> Result<String, String> {
            match self.credentials.get(k) {
                Some(v) if !v.trim().is_empty() => Ok(v.clone()),
                _ if simulator => Ok(format!("simulator-{k}")),
                _ => Err(format!(
                    "flow.credentials.{k} is required for a {} destination",
                    self.destination
                )),
            }
        };
        let secret = |var: &str| -> Result<Secret, String> {
            match env(var) {
                Some(v) if !v.is_empty() => Ok(Secret::new(v)),
                _ if simulator => Ok(Secret::new("simulator-secret")),
                _ => Err(format!(
                    "set {var} in the environment: the {} destination's secret",
                    self.destination
                )),
            }
        };
        Ok(match self.destination()? {
            Destination::S3 => DestinationAuth::S3 {
                access_key: plain("access_key")?,
                secret_key: secret("SCORELAND_EXPORT_SECRET_KEY")?,
            },
            Destination::Gcs => DestinationAuth::Gcs {
                access_key_id: plain("access_key")?,
                secret_access_key: secret("SCORELAND_EXPORT_SECRET_KEY")?,
            },
            Destination::AzureBlob => DestinationAuth::AzureBlob {
                connection_string: secret("SCORELAND_EXPORT_CONNECTION_STRING")?,
            },
            Destination::AdlsGen2 => DestinationAuth::AdlsGen2 {
                url: plain("url")?,
                service_principal_id: plain("service_principal_id")?,
                service_principal_key: secret("SCORELAND_EXPORT_SERVICE_PRINCIPAL_KEY")?,
                tenant: plain("tenant")?,
            },
            Destination::Sftp => {
                let port = match self.credentials.get("port") {
                    None => 22,
                    Some(p) => p
                        .parse()
                        .map_err(|_| format!("flow.credentials.port = {p:?} is not a port"))?,
                };
                let domain = plain("host")?;
                let username = plain("username")?;
                match (
                    env("SCORELAND_EXPORT_SFTP_KEY"),
                    env("SCORELAND_EXPORT_SFTP_PASSWORD"),
                ) {
                    (Some(key), _) if !key.is_empty() => DestinationAuth::SftpKey {
                        domain,
                        port,
                        username,
                        ssh_key: Secret::new(key),
                    },
                    _ => DestinationAuth::SftpPassword {
                        domain,
                        port,
                        username,
                        password: secret("SCORELAND_EXPORT_SFTP_PASSWORD")?,
                    },
                }
            }
            Destination::Dlz => DestinationAuth::Dlz,
        })
    }

    /// Everything `scoreland export create` sends.
    pub fn spec(
        &self,
        dataset: &str,
        env: &dyn Fn(&str) -> Option<String>,
        simulator: bool,
    ) -> Result<ExportFlowSpec, String> {
        Ok(ExportFlowSpec {
            name: self.name.clone(),
            dataset_id: dataset.to_string(),
            auth: self.auth(env, simulator)?,
            target: self.target()?,
            schedule: self.schedule(Utc::now())?,
        })
    }
}

impl ExportSource {
    /// What can be checked without running.
    pub fn check(&self) -> Result<(), String> {
        if let Some(flow) = &self.flow {
            flow.target()?;
            flow.schedule(Utc::now())?;
            flow.auth(&|_| Some("checked-at-run-time".into()), true)?;
            if let Some(t) = &flow.foldername_template {
                FolderPattern::new(t, "dataset")
                    .map_err(|e| format!("flow.foldername_template: {e}"))?;
            }
        }
        if self.url.is_none() && self.simulator.is_none() {
            return Err(
                "source.url: where the flow's folder is (s3://bucket/path, a path, dlz:path …)"
                    .into(),
            );
        }
        if self.simulator.is_some() && self.platform.is_some() {
            return Err("source: give either platform or simulator, not both".into());
        }
        if self.simulator.is_some() && self.flow.is_none() {
            return Err("source.flow: the simulator needs the flow to export".into());
        }
        if self.dataset.is_none() && self.simulator.is_none() {
            return Err("source.dataset: the exported dataset's id".into());
        }
        if let Some(p) = &self.platform {
            Platform::aep(p).map_err(source_error)?;
        }
        self.concurrency()?;
        Ok(())
    }

    /// Without platform access, how long a folder must stay unchanged (default 10 minutes).
    pub fn settle(&self) -> Duration {
        self.settle.map_or(Duration::from_secs(600), |s| s.0)
    }

    /// Files fetched at once (default 8).
    fn concurrency(&self) -> Result<usize, String> {
        concurrency(self.concurrency, 8)
    }
}

/// The export part of a run record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportRecord {
    pub url: String,
    pub flow: Option<String>,
    pub mode: Option<ExportMode>,
    /// How completeness was decided: "flow runs", or "settle 10m".
    pub completeness: String,
    pub folders: Vec<FolderRecord>,
    /// Folders a successful run reported that the store no longer has.
    pub gaps: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderRecord {
    pub folder: String,
    pub export_time: String,
    pub full: bool,
    pub files: usize,
    pub bytes: u64,
    pub rows: u64,
    /// Why it counts as complete.
    pub complete: String,
}

impl ExportSource {
    /// Selects the complete export folders to land, and stages them. `None`: nothing to land.
    pub(crate) async fn prepare(
        &self,
        cx: &RunContext<'_>,
        record: &mut RunRecord,
    ) -> Result<Option<Ingested>, PipelineError> {
        let src = self;
        let (options, state) = (cx.options, cx.state);
        let t = Instant::now();
        let settle = src.settle();
        let concurrency = src.concurrency().map_err(|m| cx.invalid(m))?;
        let mut conn = connect(src, cx.file, cx.staging, &mut record.warnings).await?;
        record.dataset = conn.dataset.clone();
        // `[transform.dataset]`: the schema, read and checked before any file is fetched.
        let schema = match (cx.dataset, &conn.client) {
            (None, _) => None,
            (Some(landing), Some(client)) => {
                let schema =
                    super::catalog::checked_schema(client, &conn.dataset, landing, cx).await?;
                if schema.identity.is_some() {
                    // An export folder holds every batch's rows in no particular order: which of
                    // an identity's rows is the newest is not known from it.
                    return Err(cx.invalid(format!(
                        "[transform.dataset]: dataset {} is a record dataset, which keeps the \
                         newest row per identity; an export folder does not say which row is \
                         the newest, so land it through Catalog (source type \"aep\")",
                        conn.dataset
                    )));
                }
                Some(schema)
            }
            (Some(_), None) => {
                return Err(cx.invalid(
                    "[transform.dataset] reads the dataset's schema from the Schema Registry: \
                     give [source.platform] (or [source.simulator])"
                        .into(),
                ));
            }
        };
        let mut export = ExportRecord {
            url: conn.url.clone(),
            flow: conn.flow.as_ref().map(|f| format!("{} ({})", f.name, f.id)),
            mode: Some(conn.mode),
            completeness: match &conn.runs {
                Some(_) => {
                    "the flow's runs: succeeded, with the files and bytes they report".into()
                }
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
            observe(
                &mut folders,
                &state.seen_folders,
                state.last_batch_created,
                now,
            )
        } else {
            Default::default()
        };
        let (chosen, gaps) = select(
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
                cx.keep_state(&seen).await?;
            }
            record.status = RunStatus::NothingNew;
            tracing::info!(url = %conn.url, "no complete export folder newer than the last landed");
            record.export = Some(export);
            return Ok(None);
        }
        if options.dry_run {
            for Chosen {
                folder: f,
                full,
                complete: why,
            } in &chosen
            {
                record.parts += f.files.len();
                record.bytes += f.bytes();
                export.folders.push(FolderRecord {
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
        let mut staged = Vec::new();
        for Chosen {
            folder: f,
            full,
            complete: why,
        } in &chosen
        {
            let dir = cx.staging.join(&conn.dataset).join(f.staging_name());
            let done = conn.stage(f, &dir, concurrency).await?;
            record.parts += done.files.len();
            record.bytes += done.bytes;
            record.bytes_downloaded += done.bytes_downloaded;
            export.folders.push(FolderRecord {
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
        record.ingest_mb_per_s =
            record.bytes_downloaded as f64 / 1e6 / ingest.as_secs_f64().max(1e-3);
        if let Some(c) = &conn.client {
            record.retries = c.retries();
        }
        record.export = Some(export);
        let last_created = chosen
            .iter()
            .map(|c| c.folder.export_time.timestamp_millis())
            .max();
        let landed = record.batches.clone();
        // An increment without its full export in this run merges with what is landed (scores;
        // events are each landed once whatever the export that brings them).
        let merge_with = if chosen[0].full || schema.is_some() {
            Vec::new()
        } else {
            cx.warehouse
                .fetch_dataset_files("scores", &conn.dataset, None, &cx.work.join("landed"))
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
            cx.keep_state(&new_state).await?;
            record.status = RunStatus::NothingNew;
            return Ok(None);
        }
        Ok(Some(Ingested {
            input: match schema {
                Some(schema) => Input::Dataset { staged, schema },
                None => Input::Scores {
                    staged,
                    merge_with,
                    replace_dataset: true,
                },
            },
            landed,
            last_created,
            seen_folders,
        }))
    }
}

/// Stages one complete export folder under `out/<dataset>/export-<time>/` without landing it:
/// the one named `folder` (its path under the flow's folder, e.g. `<dataset>/exportTime=…`), or
/// the newest complete one. Returns what was staged and why the folder counts as complete.
pub async fn download(
    src: &ExportSource,
    pipeline: &Path,
    out: &Path,
    folder: Option<&str>,
) -> Result<(scoreland_ingest::StagedExport, String), PipelineError> {
    let invalid = |message: String| PipelineError::Invalid {
        path: pipeline.to_path_buf(),
        message,
    };
    let mut warnings = Vec::new();
    let mut conn = connect(src, pipeline, out, &mut warnings).await?;
    let settle = src.settle();
    let folders = conn.folders().await?;
    let now = Utc::now();
    let mut chosen = None;
    for f in folders.into_iter().rev() {
        if folder.is_some_and(|want| want.trim_matches('/') != f.rel) {
            continue;
        }
        match verdict(&f, conn.runs.as_deref(), settle, now, &mut warnings)? {
            Verdict::Complete(why) => {
                chosen = Some((f, why));
                break;
            }
            Verdict::Pending(why) | Verdict::Failed(why) => {
                if folder.is_some() {
                    return Err(invalid(format!("folder {} is not complete: {why}", f.rel)));
                }
                tracing::info!(folder = %f.rel, "{why}; looking at older folders");
            }
        }
    }
    let (f, why) = chosen.ok_or_else(|| {
        invalid(match folder {
            Some(want) => format!("no export folder {want} under {}", conn.url),
            None => format!("no complete export folder under {}", conn.url),
        })
    })?;
    let dir = out.join(&conn.dataset).join(f.staging_name());
    let staged = conn
        .stage(&f, &dir, src.concurrency().map_err(invalid)?)
        .await?;
    Ok((staged, why))
}
