//! The `dataset-export` source: the folders a Flow Service dataflow writes (docs/exports.md), landed
//! through the same transform and sink as batches.
//!
//! A folder is landed only when complete: the flow's run for it succeeded and the files listed
//! match the run's file count and bytes, or (without platform access) nothing in it changed for
//! the settle time. A full export replaces the dataset's rows; an incremental one is merged
//! with the rows already landed, keeping the newest per (identity, model).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use scoreland_ingest::{
    AepClient, Compression, DEFAULT_FOLDER_TEMPLATE, Destination, DestinationAuth, DownloadOptions,
    ExportFlowSpec, ExportFolder, ExportMode, ExportTarget, FileType, Flow, FlowRun, FolderPattern,
    NotReadyRetry, PlatformSettings, Schedule, Secret, TimeUnit,
};
use scoreland_sink::SinkConfig;
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;

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
    pub settle: Option<String>,
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
        self.settle()?;
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
            p.build().map_err(crate::config::source_error)?;
        }
        if self.concurrency == Some(0) {
            return Err("source.concurrency = 0: must be at least 1".into());
        }
        Ok(())
    }

    pub fn settle(&self) -> Result<Duration, String> {
        match &self.settle {
            None => Ok(Duration::from_secs(600)),
            Some(s) => humantime::parse_duration(s.trim())
                .map_err(|e| format!("source.settle = {s:?} is not a duration like \"10m\": {e}")),
        }
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

/// A connected export source: where the folders are, and what knows about the flow.
pub(crate) struct ExportConn {
    pub store: Arc<dyn ObjectStore>,
    pub root: ObjectPath,
    pub url: String,
    pub dataset: String,
    pub client: Option<AepClient>,
    pub flow: Option<Flow>,
    pub mode: ExportMode,
    pub pattern: FolderPattern,
    /// The flow's runs, newest first, when the flow is known here.
    pub runs: Option<Vec<FlowRun>>,
    options: BTreeMap<String, String>,
    _sim: Option<scoreland_platform_sim::SimHandle>,
}

/// 401/403 from a store (object_store's Azure client reports them as generic errors).
fn refused(e: &scoreland_ingest::IngestError) -> bool {
    match e {
        scoreland_ingest::IngestError::Store { source, .. } => {
            matches!(
                source,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ) || {
                let text = crate::run::error_chain(source);
                text.contains("403 Forbidden") || text.contains("401 Unauthorized")
            }
        }
        _ => false,
    }
}

impl ExportConn {
    /// A refused Data Landing Zone SAS (expired, revoked) is replaced by a new one, once per
    /// call; any other store keeps its error.
    async fn renew_if_refused(
        &mut self,
        e: &scoreland_ingest::IngestError,
    ) -> Result<bool, PipelineError> {
        if !self.url.starts_with("dlz:") || !refused(e) {
            return Ok(false);
        }
        tracing::info!("the Data Landing Zone refused its credentials; asking for new ones");
        self.store = open_store(&self.url, &self.options, self.client.as_ref(), true)
            .await?
            .0;
        Ok(true)
    }

    /// The export folders there are, oldest first.
    pub async fn folders(&mut self) -> Result<Vec<ExportFolder>, PipelineError> {
        let listed =
            scoreland_ingest::list_export_folders(&self.store, &self.root, &self.pattern).await;
        match listed {
            Err(e) if self.renew_if_refused(&e).await? => {
                scoreland_ingest::list_export_folders(&self.store, &self.root, &self.pattern).await
            }
            other => other,
        }
        .map_err(PipelineError::Ingest)
    }

    /// Stages `folder` under `dir`, then checks its rows against the run that wrote it.
    pub async fn stage(
        &mut self,
        folder: &ExportFolder,
        dir: &Path,
        concurrency: usize,
    ) -> Result<scoreland_ingest::StagedExport, PipelineError> {
        let staged =
            scoreland_ingest::stage_export_folder(&self.store, folder, dir, concurrency).await;
        let staged = match staged {
            Err(e) if self.renew_if_refused(&e).await? => {
                scoreland_ingest::stage_export_folder(&self.store, folder, dir, concurrency).await
            }
            other => other,
        }
        .map_err(PipelineError::Ingest)?;
        // With AEP's manifest, the run's counts (which can include other exports') only warn:
        // see `manifest_verdict`.
        if let Some(expected) = self
            .runs
            .as_deref()
            .and_then(|rs| run_of(folder, rs))
            .and_then(|r| r.output_records)
            && expected != staged.rows
            && folder.manifest.is_none()
        {
            return Err(PipelineError::Ingest(
                scoreland_ingest::IngestError::BadExportFolder {
                    folder: folder.rel.clone(),
                    why: format!(
                        "its files hold {} rows but the flow's run exported {expected}",
                        staged.rows
                    ),
                },
            ));
        }
        Ok(staged)
    }
}

fn invalid(message: String) -> PipelineError {
    PipelineError::Invalid {
        path: PathBuf::from("[source]"),
        message,
    }
}

/// Connects: the platform (or the simulator, which is then made to export once), the flow,
/// and the store holding the folders.
pub(crate) async fn connect(
    src: &ExportSource,
    staging: &Path,
    warnings: &mut Vec<String>,
) -> Result<ExportConn, PipelineError> {
    let mut sim = None;
    let mut dataset = src.dataset.clone();
    let client = match (&src.platform, &src.simulator) {
        (Some(p), _) => Some(
            AepClient::new(
                p.build()
                    .map_err(|e| invalid(crate::config::source_error(e)))?,
                DownloadOptions::default(),
            )
            .map_err(PipelineError::Ingest)?,
        ),
        (None, Some(s)) => {
            let exports = s
                .exports
                .clone()
                .unwrap_or_else(|| staging.join("sim-exports"));
            let handle = scoreland_platform_sim::serve_dir(
                &s.data,
                scoreland_platform_sim::SimConfig {
                    export_root: absolute(&exports),
                    ..Default::default()
                },
                ([127, 0, 0, 1], 0).into(),
            )
            .await
            .map_err(PipelineError::Simulator)?;
            if dataset.is_none() {
                dataset = handle
                    .platform()
                    .sandboxes
                    .values()
                    .next()
                    .and_then(|sb| sb.datasets.keys().next().cloned());
            }
            let client = crate::run::simulator_client(&handle).map_err(invalid)?;
            sim = Some(handle);
            Some(client)
        }
        (None, None) => None,
    };
    let dataset =
        dataset.ok_or_else(|| invalid("source.dataset: the exported dataset's id".into()))?;
    let mut flow = None;
    if let (Some(client), Some(section)) = (&client, &src.flow) {
        if sim.is_some() {
            let spec = section
                .spec(&dataset, &|v| std::env::var(v).ok(), true)
                .map_err(invalid)?;
            let (f, _) = client
                .create_export_flow(&spec)
                .await
                .map_err(PipelineError::Ingest)?;
            export_once(client, &f, &dataset).await?;
        }
        let f = client
            .export_flow(&section.name)
            .await
            .map_err(PipelineError::Ingest)?;
        if let Some(days) = f.days_left(Utc::now().timestamp())
            && days < 14.0
        {
            let w = format!(
                "flow {} ends in {:.1} days: AEP stops exporting then; extend its end time (scoreland export create with a later flow.end, or the UI)",
                f.name,
                days.max(0.0)
            );
            tracing::warn!("{w}");
            warnings.push(w);
        }
        flow = Some(f);
    }
    let mode = flow
        .as_ref()
        .and_then(|f| f.schedule.as_ref().map(|s| s.export_mode))
        .or(src.export_mode)
        .unwrap_or(ExportMode::DailyFullExport);
    let template = flow
        .as_ref()
        .and_then(|f| f.schedule.as_ref()?.foldername_template.clone())
        .or_else(|| src.flow.as_ref()?.foldername_template.clone())
        .unwrap_or_else(|| DEFAULT_FOLDER_TEMPLATE.into());
    let pattern = FolderPattern::new(&template, &dataset).map_err(invalid)?;
    let url = match (&src.url, &src.simulator, &src.flow) {
        (Some(u), _, _) => u.clone(),
        (None, Some(s), Some(f)) => {
            let target = f.target().map_err(invalid)?;
            let exports = s
                .exports
                .clone()
                .unwrap_or_else(|| staging.join("sim-exports"));
            if target.destination == Destination::Dlz {
                format!("dlz:{}", target.path)
            } else {
                let mut dir = absolute(&exports).join(target.destination.key());
                if let Some(b) = &target.bucket {
                    dir.push(b);
                }
                dir.push(target.path.trim_start_matches('/'));
                dir.display().to_string()
            }
        }
        _ => return Err(invalid("source.url is required".into())),
    };
    let (store, root) = open_store(&url, &src.options, client.as_ref(), false).await?;
    let runs = match (&client, &flow) {
        (Some(c), Some(f)) => Some(c.flow_runs(&f.id).await.map_err(PipelineError::Ingest)?),
        _ => None,
    };
    Ok(ExportConn {
        store,
        root,
        url,
        dataset,
        client,
        flow,
        mode,
        pattern,
        runs,
        options: src.options.clone(),
        _sim: sim,
    })
}

pub(crate) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The store and root of a folder URL. `dlz:` asks the platform for the Data Landing Zone's
/// SAS (a new one with `refresh`).
pub(crate) async fn open_store(
    url: &str,
    options: &BTreeMap<String, String>,
    client: Option<&AepClient>,
    refresh: bool,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), PipelineError> {
    if let Some(path) = url.strip_prefix("dlz:") {
        let client = client.ok_or_else(|| {
            invalid(format!(
                "source.url = {url:?}: the Data Landing Zone is reached through the platform; add [source.platform]"
            ))
        })?;
        let creds = client
            .dlz_credentials(refresh)
            .await
            .map_err(PipelineError::Ingest)?;
        let sas = url::Url::parse(creds.sas_uri.expose()).map_err(|e| {
            invalid(format!(
                "the Data Landing Zone's SAS URI does not parse: {e}"
            ))
        })?;
        let root = ObjectPath::from(path.trim_matches('/'));
        if sas.scheme() == "file" {
            // The simulator's landing zone: a directory.
            let dir = sas
                .to_file_path()
                .map_err(|_| invalid("the DLZ URI is not a path".into()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
            return Ok((Arc::new(fs), root));
        }
        let mut b = object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(creds.storage_account_name.clone())
            .with_container_name(creds.container_name.clone())
            .with_config(
                object_store::azure::AzureConfigKey::SasKey,
                creds.sas_token.expose(),
            );
        // Outside Azure's own hosts (an emulator, a private endpoint) the SAS URI says where
        // the account is: everything before the container.
        let host = sas.host_str().unwrap_or_default();
        if !host.ends_with(".blob.core.windows.net") {
            let mut endpoint = sas.clone();
            endpoint.set_query(None);
            let path = endpoint.path().trim_end_matches('/').to_string();
            let account_path = path
                .strip_suffix(&format!("/{}", creds.container_name))
                .unwrap_or(&path)
                .to_string();
            endpoint.set_path(&account_path);
            b = b
                .with_endpoint(endpoint.to_string().trim_end_matches('/').to_string())
                .with_allow_http(sas.scheme() == "http");
        }
        for (k, v) in options {
            b = b.with_config(
                k.parse()
                    .map_err(|e| invalid(format!("source.options.{k}: {e}")))?,
                v,
            );
        }
        let store = b
            .build()
            .map_err(|e| invalid(format!("the Data Landing Zone container: {e}")))?;
        return Ok((Arc::new(store), root));
    }
    if url.starts_with("sftp://") {
        let parsed =
            url::Url::parse(url).map_err(|e| invalid(format!("source.url = {url:?}: {e}")))?;
        let (opts, path) =
            scoreland_ingest::SftpOptions::from_url(&parsed, options, &|v| std::env::var(v).ok())
                .map_err(|e| invalid(format!("source.url = {url:?}: {e}")))?;
        let store = scoreland_ingest::SftpStore::connect(opts)
            .await
            .map_err(PipelineError::Ingest)?;
        return Ok((Arc::new(store), ObjectPath::from(path.trim_matches('/'))));
    }
    let config = SinkConfig {
        url: url.to_string(),
        options: options.clone(),
        single_writer: false,
    };
    let wh = config.open().map_err(PipelineError::Sink)?;
    Ok((wh.store(), wh.path("")))
}

/// Stages one complete export folder under `out/<dataset>/export-<time>/` without landing it:
/// the one named `folder` (its path under the flow's folder, e.g. `<dataset>/exportTime=…`), or
/// the newest complete one. Returns what was staged and why the folder counts as complete.
pub async fn download(
    src: &ExportSource,
    out: &Path,
    folder: Option<&str>,
) -> Result<(scoreland_ingest::StagedExport, String), PipelineError> {
    let mut warnings = Vec::new();
    let mut conn = connect(src, out, &mut warnings).await?;
    let settle = src.settle().map_err(invalid)?;
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
    let staged = conn.stage(&f, &dir, src.concurrency.unwrap_or(8)).await?;
    Ok((staged, why))
}

/// The simulator's schedule, accelerated: one ad-hoc export per pipeline run, waited for.
async fn export_once(client: &AepClient, flow: &Flow, dataset: &str) -> Result<(), PipelineError> {
    let run = client
        .run_export_now(flow, dataset, NotReadyRetry::default())
        .await
        .map_err(PipelineError::Ingest)?;
    let polled = scoreland_ingest::poll_job(
        Duration::from_secs(600),
        scoreland_ingest::PollEvery {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        || client.flow_run(&run),
        FlowRun::is_done,
        |_, _| {},
    )
    .await
    .map_err(PipelineError::Ingest)?;
    match polled {
        scoreland_ingest::Polled::Done(r) => {
            tracing::info!(run = %r.id, status = %r.status, files = ?r.output_files, "the simulator's export ran");
            Ok(())
        }
        scoreland_ingest::Polled::TimedOut(_) => Err(invalid(format!(
            "the simulator's export run {run} did not finish in 10 minutes"
        ))),
    }
}

/// An export folder as a run without platform access saw it: a digest of its content (names
/// and sizes, the unfinished ones included), and when a run first saw that content (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFolder {
    pub content: String,
    pub since_ms: i64,
}

/// Moves each folder's "last changed" time to the first sighting of its present content when
/// that is later: an object's time can be older than its arrival (S3 gives a multipart upload
/// the time it began; SFTP servers may give none), so a file that just appeared must not make
/// its folder look settled. Returns the sightings to keep: folders newer than `last` (the
/// newest landed, epoch ms).
pub(crate) fn observe(
    folders: &mut [ExportFolder],
    seen: &std::collections::BTreeMap<String, SeenFolder>,
    last: Option<i64>,
    now: DateTime<Utc>,
) -> std::collections::BTreeMap<String, SeenFolder> {
    use sha2::Digest;
    let mut kept = std::collections::BTreeMap::new();
    for f in folders.iter_mut() {
        if last.is_some_and(|l| f.export_time.timestamp_millis() <= l) {
            continue;
        }
        let mut digest = sha2::Sha256::new();
        for file in &f.files {
            digest.update(format!("{}\0{}\n", file.name, file.size));
        }
        for name in f.unfinished.iter().chain(&f.unknown) {
            digest.update(format!("{name}\0?\n"));
        }
        let content = format!("{:x}", digest.finalize());
        let since_ms = match seen.get(&f.rel) {
            Some(s) if s.content == content => s.since_ms,
            _ => now.timestamp_millis(),
        };
        if let Some(since) = DateTime::from_timestamp_millis(since_ms) {
            f.last_modified = f.last_modified.max(since);
        }
        kept.insert(f.rel.clone(), SeenFolder { content, since_ms });
    }
    kept
}

/// Whether a folder may be landed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Complete(String),
    /// Not yet: maybe later.
    Pending(String),
    /// Never: its run failed.
    Failed(String),
}

/// The run that wrote `folder`: by the path it reports, else by its start minute.
fn run_of<'a>(folder: &ExportFolder, runs: &'a [FlowRun]) -> Option<&'a FlowRun> {
    runs.iter()
        .find(|r| {
            r.path_prefix
                .as_deref()
                .is_some_and(|p| p.trim_end_matches('/').ends_with(&folder.rel))
        })
        .or_else(|| {
            runs.iter().find(|r| {
                r.path_prefix.is_none()
                    && r.started_at
                        .is_some_and(|t| t / 60_000 == folder.export_time.timestamp() / 60)
            })
        })
}

pub(crate) fn verdict(
    folder: &ExportFolder,
    runs: Option<&[FlowRun]>,
    settle: Duration,
    now: DateTime<Utc>,
    warnings: &mut Vec<String>,
) -> Result<Verdict, PipelineError> {
    if let Some(manifest) = &folder.manifest {
        return manifest_verdict(folder, manifest, runs, warnings);
    }
    let Some(runs) = runs else {
        if let Some(f) = folder.unfinished.first() {
            return Ok(Verdict::Pending(format!("{f} is still being written")));
        }
        let age = (now - folder.last_modified).to_std().unwrap_or_default();
        return Ok(if age >= settle {
            Verdict::Complete(format!(
                "unchanged for {} (settle {})",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(settle)
            ))
        } else {
            Verdict::Pending(format!(
                "changed {} ago, under the settle time of {}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(settle)
            ))
        });
    };
    let Some(run) = run_of(folder, runs) else {
        return Ok(Verdict::Pending(
            "no run of the flow reports it (yet)".into(),
        ));
    };
    if run.failed() {
        return Ok(Verdict::Failed(format!(
            "run {} failed: {}",
            run.id,
            run.errors.join("; ")
        )));
    }
    if !run.succeeded() {
        return Ok(Verdict::Pending(format!(
            "run {} is {}",
            run.id, run.status
        )));
    }
    let files = folder.files.len() as u64;
    let bytes = folder.bytes();
    if run.output_files.is_some_and(|n| n != files) || run.output_bytes.is_some_and(|b| b != bytes)
    {
        if !folder.unfinished.is_empty() {
            return Ok(Verdict::Pending(format!(
                "run {} succeeded but files are still arriving",
                run.id
            )));
        }
        return Err(PipelineError::Ingest(
            scoreland_ingest::IngestError::BadExportFolder {
                folder: folder.rel.clone(),
                why: format!(
                    "it holds {files} files ({bytes} bytes) but run {} wrote {} files ({} bytes); a file is missing or foreign, so nothing of it is landed: restore the folder, or remove it and export again (`scoreland export run`)",
                    run.id,
                    run.output_files.map_or("?".into(), |n| n.to_string()),
                    run.output_bytes.map_or("?".into(), |n| n.to_string()),
                ),
            },
        ));
    }
    Ok(Verdict::Complete(format!(
        "run {} succeeded with {files} files, {bytes} bytes",
        run.id
    )))
}

/// AEP's manifest decides: every file it lists is in the folder with its size, and no other
/// data file is. The flow run's counts, which AEP mixes with other exports' (a known
/// limitation), only warn when they differ; a failed run still fails the folder.
fn manifest_verdict(
    folder: &ExportFolder,
    manifest: &scoreland_ingest::ExportManifest,
    runs: Option<&[FlowRun]>,
    warnings: &mut Vec<String>,
) -> Result<Verdict, PipelineError> {
    let run = runs.and_then(|rs| run_of(folder, rs));
    if let Some(run) = run
        && run.failed()
    {
        return Ok(Verdict::Failed(format!(
            "run {} failed: {}",
            run.id,
            run.errors.join("; ")
        )));
    }
    let listed: std::collections::BTreeMap<&str, u64> = folder
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.size))
        .collect();
    // Once the run has succeeded, a file the manifest lists and the folder lacks is lost, not
    // late.
    let done = run.filter(|r| r.succeeded());
    for (name, size) in &manifest.files {
        let short = match listed.get(name.as_str()) {
            None => format!("{name}, which the manifest lists, is not in the folder"),
            Some(have) if have != size => {
                format!("{name} is {have} bytes, the manifest says {size}")
            }
            Some(_) => continue,
        };
        return match done {
            None => Ok(Verdict::Pending(format!("{short} (yet)"))),
            Some(run) => Err(PipelineError::Ingest(
                scoreland_ingest::IngestError::BadExportFolder {
                    folder: folder.rel.clone(),
                    why: format!(
                        "{short}, and run {} has succeeded; nothing of it is landed: restore the file, or remove the folder and export again (`scoreland export run`)",
                        run.id
                    ),
                },
            )),
        };
    }
    if let Some(foreign) = listed
        .keys()
        .find(|name| !manifest.files.contains_key(**name))
    {
        return Err(PipelineError::Ingest(
            scoreland_ingest::IngestError::BadExportFolder {
                folder: folder.rel.clone(),
                why: format!(
                    "it holds {foreign}, which its manifest ({}) does not list; nothing of it is landed: remove the foreign file",
                    manifest.names.join(", ")
                ),
            },
        ));
    }
    let (files, bytes) = (folder.files.len() as u64, folder.bytes());
    if let Some(run) = run
        && (run.output_files.is_some_and(|n| n != files)
            || run.output_bytes.is_some_and(|b| b != bytes))
    {
        let w = format!(
            "folder {}: its manifest lists {files} files ({bytes} bytes), all present, but run {} reports {} files ({} bytes); AEP's run counts can include other exports', so the manifest is followed",
            folder.rel,
            run.id,
            run.output_files.map_or("?".into(), |n| n.to_string()),
            run.output_bytes.map_or("?".into(), |n| n.to_string()),
        );
        tracing::warn!("{w}");
        warnings.push(w);
    }
    Ok(Verdict::Complete(format!(
        "its manifest {} lists {files} files, {bytes} bytes, all present",
        manifest.names.join(", ")
    )))
}

/// A folder to land: whether it is a full export, and why it counts as complete.
pub(crate) struct Chosen {
    pub folder: ExportFolder,
    pub full: bool,
    pub complete: String,
}

/// The folders to land this run, oldest first, each with whether it is a full export; and
/// gaps (folders a run reported that are gone). `last` is the export time (ms) of the newest
/// folder already landed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn select(
    pattern: &FolderPattern,
    conn_mode: ExportMode,
    selection: FolderSelection,
    folders: Vec<ExportFolder>,
    runs: Option<&[FlowRun]>,
    settle: Duration,
    last: Option<i64>,
    now: DateTime<Utc>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Chosen>, Vec<String>), PipelineError> {
    let after = |f: &ExportFolder| last.is_none_or(|l| f.export_time.timestamp_millis() > l);
    // Gaps: successful runs newer than the last landing whose folder is not there.
    let mut gaps = Vec::new();
    if let Some(runs) = runs {
        for r in runs.iter().filter(|r| r.succeeded()) {
            let Some(prefix) = &r.path_prefix else {
                continue;
            };
            let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
            let rel = segments[segments.len().saturating_sub(pattern.depth())..].join("/");
            let Some(time) = pattern.export_time(&rel) else {
                continue;
            };
            let newer = last.is_none_or(|l| time.timestamp_millis() > l);
            let listed = folders
                .iter()
                .any(|f| prefix.trim_end_matches('/').ends_with(&f.rel));
            if newer && !listed && r.output_files.unwrap_or(0) > 0 {
                let w = format!(
                    "run {} exported {prefix}, which the store no longer has (the Data Landing Zone deletes files after 7 days); its rows are missing from this landing",
                    r.id
                );
                tracing::warn!("{w}");
                warnings.push(w.clone());
                gaps.push(prefix.clone());
            }
        }
    }
    let mut chosen = Vec::new();
    match conn_mode {
        ExportMode::DailyFullExport => {
            // Each folder holds the whole dataset: the newest complete one is all there is.
            for f in folders.into_iter().rev() {
                match verdict(&f, runs, settle, now, warnings)? {
                    Verdict::Complete(why) => {
                        if after(&f) {
                            chosen.push(Chosen {
                                folder: f,
                                full: true,
                                complete: why,
                            });
                        }
                        break;
                    }
                    Verdict::Pending(why) => {
                        tracing::info!(folder = %f.rel, "{why}; looking at older folders")
                    }
                    Verdict::Failed(why) => {
                        let w = format!("folder {} is not landed: {why}", f.rel);
                        tracing::warn!("{w}");
                        warnings.push(w);
                    }
                }
            }
            let _ = selection;
        }
        ExportMode::FirstFullThenIncremental => {
            // Every increment since the last landing, in order; the first export is the full one.
            let first_run_created = runs.and_then(|rs| {
                rs.iter()
                    .filter(|r| r.succeeded())
                    .map(|r| r.created_at)
                    .min()
            });
            // Whether a full export is landed, or lands before the folder at hand.
            let mut have_base = last.is_some();
            for (i, f) in folders.into_iter().enumerate() {
                if !after(&f) {
                    continue;
                }
                let full = match (runs, have_base) {
                    (_, true) => false,
                    (Some(rs), false) => {
                        let r = run_of(&f, rs);
                        match (r, first_run_created) {
                            (Some(r), Some(first)) if r.created_at == first => true,
                            _ => {
                                return Err(PipelineError::Ingest(
                                    scoreland_ingest::IngestError::BadExportFolder {
                                        folder: f.rel.clone(),
                                        why: "nothing was landed from this flow yet, and its first, full export is no longer in the store; make a new flow (a new first export is full) or land a full export first".into(),
                                    },
                                ));
                            }
                        }
                    }
                    (None, false) => {
                        if i == 0 {
                            let w = format!(
                                "taking {} as the flow's first, full export: without platform access this cannot be checked",
                                f.rel
                            );
                            warnings.push(w);
                        }
                        i == 0
                    }
                };
                match verdict(&f, runs, settle, now, warnings)? {
                    Verdict::Complete(why) => {
                        chosen.push(Chosen {
                            folder: f,
                            full,
                            complete: why,
                        });
                        have_base = true;
                    }
                    Verdict::Pending(why) => {
                        tracing::info!(folder = %f.rel, "{why}; it and later folders wait for the next run");
                        break;
                    }
                    Verdict::Failed(why) => {
                        let w = format!("folder {} is skipped: {why}", f.rel);
                        tracing::warn!("{w}");
                        warnings.push(w);
                    }
                }
            }
            if selection == FolderSelection::Newest && chosen.len() > 1 {
                tracing::info!(
                    folders = chosen.len(),
                    "an incremental flow lands every increment since the last landing, not only the newest"
                );
            }
        }
    }
    Ok((chosen, gaps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(rel: &str, minutes_ago: i64, files: &[(&str, u64)]) -> ExportFolder {
        let pattern = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds").unwrap();
        ExportFolder {
            rel: rel.into(),
            export_time: pattern.export_time(rel).unwrap(),
            files: files
                .iter()
                .map(|(n, s)| {
                    serde_json::from_value(
                        serde_json::json!({"name": n, "size": s, "format": "parquet"}),
                    )
                    .unwrap()
                })
                .collect(),
            unfinished: Vec::new(),
            unknown: Vec::new(),
            manifest: None,
            last_modified: Utc::now() - chrono::Duration::minutes(minutes_ago),
        }
    }

    #[test]
    fn a_folder_settles_from_the_first_sighting_of_its_content_not_from_old_object_times() {
        let settle = Duration::from_secs(600);
        let now = Utc::now();
        // Objects that look an hour old (a multipart upload's start time), seen for the first
        // time: not settled.
        let mut fs = vec![folder(
            "ds/exportTime=202612010200",
            60,
            &[("a.parquet", 10)],
        )];
        let seen = observe(&mut fs, &Default::default(), None, now);
        assert!(matches!(
            verdict(&fs[0], None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
        // Seen so 11 minutes ago: settled.
        let earlier: std::collections::BTreeMap<String, SeenFolder> = seen
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    SeenFolder {
                        since_ms: v.since_ms - 11 * 60_000,
                        ..v
                    },
                )
            })
            .collect();
        let mut fs = vec![folder(
            "ds/exportTime=202612010200",
            60,
            &[("a.parquet", 10)],
        )];
        let kept = observe(&mut fs, &earlier, None, now);
        assert_eq!(kept, earlier);
        assert!(matches!(
            verdict(&fs[0], None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Complete(_)
        ));
        // A file arrived since (with an old time): the settle time starts again.
        let mut fs = vec![folder(
            "ds/exportTime=202612010200",
            60,
            &[("a.parquet", 10), ("b.parquet", 20)],
        )];
        let kept = observe(&mut fs, &earlier, None, now);
        assert_ne!(kept, earlier);
        assert!(matches!(
            verdict(&fs[0], None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
        // Folders already landed are not kept.
        let landed = fs[0].export_time.timestamp_millis();
        assert!(observe(&mut fs, &earlier, Some(landed), now).is_empty());
    }

    #[test]
    fn without_runs_a_folder_must_settle() {
        let now = Utc::now();
        let f = folder("ds/exportTime=202612010200", 3, &[("a.parquet", 10)]);
        let settle = Duration::from_secs(600);
        assert!(matches!(
            verdict(&f, None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
        let f = folder("ds/exportTime=202612010200", 11, &[("a.parquet", 10)]);
        assert!(
            matches!(verdict(&f, None, settle, now, &mut Vec::new()).unwrap(), Verdict::Complete(w) if w.contains("settle 10m"))
        );
        let mut f = f;
        f.unfinished.push(".a.parquet.inprogress".into());
        assert!(matches!(
            verdict(&f, None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
    }

    fn run(id: &str, created: i64, status: &str, prefix: &str, files: u64, bytes: u64) -> FlowRun {
        FlowRun {
            id: id.into(),
            flow_id: "f".into(),
            created_at: created,
            status: status.into(),
            started_at: Some(created),
            completed_at: None,
            output_files: Some(files),
            output_bytes: Some(bytes),
            output_records: None,
            path_prefix: Some(prefix.into()),
            errors: vec!["boom".into()],
        }
    }

    #[test]
    fn with_runs_the_files_must_match_the_run() {
        let now = Utc::now();
        let f = folder(
            "ds/exportTime=202612010200",
            0,
            &[("a.parquet", 10), ("b.parquet", 5)],
        );
        let settle = Duration::from_secs(600);
        let ok = [run(
            "r1",
            1,
            "success",
            "s3/b/p/ds/exportTime=202612010200",
            2,
            15,
        )];
        assert!(matches!(
            verdict(&f, Some(&ok), settle, now, &mut Vec::new()).unwrap(),
            Verdict::Complete(_)
        ));
        let missing = [run(
            "r1",
            1,
            "success",
            "s3/b/p/ds/exportTime=202612010200",
            3,
            20,
        )];
        let err = verdict(&f, Some(&missing), settle, now, &mut Vec::new()).unwrap_err();
        assert!(
            crate::run::error_chain(&err)
                .contains("holds 2 files (15 bytes) but run r1 wrote 3 files")
        );
        let failed = [run(
            "r1",
            1,
            "failed",
            "s3/b/p/ds/exportTime=202612010200",
            0,
            0,
        )];
        assert!(
            matches!(verdict(&f, Some(&failed), settle, now, &mut Vec::new()).unwrap(), Verdict::Failed(w) if w.contains("boom"))
        );
        let other = [run(
            "r1",
            1,
            "success",
            "s3/b/p/ds/exportTime=202612010300",
            2,
            15,
        )];
        assert!(matches!(
            verdict(&f, Some(&other), settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
    }

    #[test]
    fn increments_after_the_last_landing_in_order_and_gaps_reported() {
        let now = Utc::now();
        let f1 = folder("ds/exportTime=202612010200", 60, &[("a.parquet", 1)]);
        let f3 = folder("ds/exportTime=202612010800", 60, &[("c.parquet", 3)]);
        let runs = [
            run(
                "r1",
                f1.export_time.timestamp_millis(),
                "success",
                "x/ds/exportTime=202612010200",
                1,
                1,
            ),
            run(
                "r2",
                f1.export_time.timestamp_millis() + 1,
                "success",
                "x/ds/exportTime=202612010500",
                1,
                2,
            ),
            run(
                "r3",
                f3.export_time.timestamp_millis(),
                "success",
                "x/ds/exportTime=202612010800",
                1,
                3,
            ),
        ];
        let mut w = Vec::new();
        let pattern = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds").unwrap();
        let (chosen, gaps) = select(
            &pattern,
            ExportMode::FirstFullThenIncremental,
            FolderSelection::CatchUp,
            vec![f1.clone(), f3.clone()],
            Some(&runs),
            Duration::from_secs(600),
            None,
            now,
            &mut w,
        )
        .unwrap();
        let picked: Vec<(&str, bool)> = chosen
            .iter()
            .map(|c| (c.folder.rel.as_str(), c.full))
            .collect();
        assert_eq!(
            picked,
            [
                ("ds/exportTime=202612010200", true),
                ("ds/exportTime=202612010800", false)
            ]
        );
        assert_eq!(gaps, ["x/ds/exportTime=202612010500"]);
        assert!(w[0].contains("no longer has"));
        // After landing the first: only what came later, as increments.
        let (chosen, _) = select(
            &pattern,
            ExportMode::FirstFullThenIncremental,
            FolderSelection::CatchUp,
            vec![f1.clone(), f3],
            Some(&runs),
            Duration::from_secs(600),
            Some(f1.export_time.timestamp_millis()),
            now,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(chosen.len(), 1);
        assert!(!chosen[0].full);
    }
}
