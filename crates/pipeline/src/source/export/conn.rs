//! Reaching an export source: the platform (or the simulator, made to export once), the
//! flow and its runs, and the store that holds the folders (a URL, SFTP, or the Data Landing
//! Zone through the platform's credentials, renewed when refused).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use scoreland_ingest::{
    AepClient, DEFAULT_FOLDER_TEMPLATE, Destination, DownloadOptions, ExportFolder, ExportMode,
    Flow, FlowRun, FolderPattern, IngestError, NotReadyRetry,
};
use scoreland_sink::SinkConfig;

use super::ExportSource;
use super::select::run_of;
use crate::context::absolute;
use crate::error::PipelineError;
use crate::source::platform::{Connected, Platform, source_error};

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
    /// The key encrypted files are decrypted with (`[source.pgp]`).
    pgp: Option<Arc<scoreland_ingest::PgpKey>>,
    /// The pipeline file, for errors that name it.
    pipeline: PathBuf,
    _sim: Option<scoreland_platform_sim::SimHandle>,
}

/// Whether a Data Landing Zone store's error may be its credentials: refused (401, 403), or
/// an error object_store's Azure client does not classify (it reports refusals as generic
/// errors, without a status to match).
fn maybe_refused(e: &IngestError) -> bool {
    matches!(
        e,
        IngestError::Store {
            source: object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
                | object_store::Error::Generic { .. },
            ..
        }
    )
}

impl ExportConn {
    /// A Data Landing Zone SAS that may have been refused (expired, revoked) is replaced by a
    /// new one, once per call; any other store keeps its error.
    async fn renew_if_refused(&mut self, e: &IngestError) -> Result<bool, PipelineError> {
        if !self.url.starts_with("dlz:") || !maybe_refused(e) {
            return Ok(false);
        }
        tracing::info!(error = %e, "the Data Landing Zone may have refused its credentials; asking for new ones and trying once more");
        self.store = open_store(
            &self.url,
            &self.options,
            self.client.as_ref(),
            true,
            &self.pipeline,
        )
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
        let key = self.pgp.clone();
        let staged = scoreland_ingest::stage_export_folder(
            &self.store,
            folder,
            dir,
            concurrency,
            key.as_ref(),
        )
        .await;
        let staged = match staged {
            Err(e) if self.renew_if_refused(&e).await? => {
                scoreland_ingest::stage_export_folder(
                    &self.store,
                    folder,
                    dir,
                    concurrency,
                    key.as_ref(),
                )
                .await
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

/// A setting of the pipeline file `pipeline` that does not hold.
fn invalid(pipeline: &Path, message: String) -> PipelineError {
    PipelineError::Invalid {
        path: pipeline.to_path_buf(),
        message,
    }
}

/// Connects: the platform (or the simulator, which is then made to export once), the flow,
/// and the store holding the folders.
pub(crate) async fn connect(
    src: &ExportSource,
    pipeline: &Path,
    staging: &Path,
    warnings: &mut Vec<String>,
) -> Result<ExportConn, PipelineError> {
    let invalid = |message: String| invalid(pipeline, message);
    let exports = src.simulator.as_ref().map(|s| {
        absolute(
            &s.exports
                .clone()
                .unwrap_or_else(|| super::super::sim_exports(staging)),
        )
    });
    let platform = match (&src.platform, &src.simulator, &exports) {
        (Some(p), _, _) => Some(Platform::aep(p).map_err(|e| invalid(source_error(e)))?),
        (None, Some(s), Some(exports)) => Some(Platform::simulator(
            &s.data,
            scoreland_platform_sim::SimConfig {
                export_root: exports.clone(),
                ..Default::default()
            },
        )),
        _ => None,
    };
    let connected = match platform {
        Some(p) => Some(p.connect(DownloadOptions::default()).await?),
        None => None,
    };
    let client = connected.as_ref().map(|c| c.client.clone());
    let on_simulator = connected.as_ref().is_some_and(|c| c.sim.is_some());
    let dataset = src
        .dataset
        .clone()
        .or_else(|| connected.as_ref().and_then(Connected::first_dataset));
    let dataset =
        dataset.ok_or_else(|| invalid("source.dataset: the exported dataset's id".into()))?;
    let mut flow = None;
    if let (Some(client), Some(section)) = (&client, &src.flow) {
        if on_simulator {
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
    let url = match (&src.url, &exports, &src.flow) {
        (Some(u), _, _) => u.clone(),
        (None, Some(exports), Some(f)) => {
            let target = f.target().map_err(invalid)?;
            if target.destination == Destination::Dlz {
                format!("dlz:{}", target.path)
            } else {
                let mut dir = exports.join(target.destination.key());
                if let Some(b) = &target.bucket {
                    dir.push(b);
                }
                dir.push(target.path.trim_start_matches('/'));
                dir.display().to_string()
            }
        }
        _ => return Err(invalid("source.url is required".into())),
    };
    let pgp = match &src.pgp {
        Some(p) => Some(Arc::new(p.key().map_err(invalid)?)),
        None => None,
    };
    let (store, root) = open_store(&url, &src.options, client.as_ref(), false, pipeline).await?;
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
        pgp,
        pipeline: pipeline.to_path_buf(),
        _sim: connected.and_then(|c| c.sim),
    })
}

/// A Data Landing Zone on AWS: its bucket through object_store's S3 client, with session
/// credentials that [`DlzSession`] renews from the platform before they expire; the folder
/// `path` under the landing zone's own (`dlzFolder`).
fn aws_landing_zone(
    client: &AepClient,
    creds: scoreland_ingest::AwsDlzCredentials,
    path: &str,
    options: &BTreeMap<String, String>,
    pipeline: &Path,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), PipelineError> {
    let invalid = |message: String| invalid(pipeline, message);
    let root: Vec<&str> = [creds.folder.as_str(), path.trim_matches('/')]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    let root = ObjectPath::from(root.join("/"));
    let mut b = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(creds.bucket.clone())
        .with_region("us-east-1");
    if let Some(endpoint) = &creds.endpoint {
        b = b
            .with_endpoint(endpoint.clone())
            .with_allow_http(endpoint.starts_with("http://"));
    }
    for (k, v) in options {
        b = b.with_config(
            k.parse()
                .map_err(|e| invalid(format!("source.options.{k}: {e}")))?,
            v,
        );
    }
    let store = b
        .with_credentials(Arc::new(DlzSession::new(client.clone(), creds)))
        .build()
        .map_err(|e| invalid(format!("the Data Landing Zone's bucket: {e}")))?;
    Ok((Arc::new(store), root))
}

/// The landing zone's AWS session credentials, renewed from the platform (`action=refresh`)
/// when less than [`DlzSession::MARGIN`] of their life is left, so a long listing or download
/// never signs with expired ones.
#[derive(Debug)]
struct DlzSession {
    client: AepClient,
    current: tokio::sync::Mutex<(
        Arc<object_store::aws::AwsCredential>,
        Option<chrono::DateTime<Utc>>,
    )>,
}

impl DlzSession {
    const MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

    fn new(client: AepClient, creds: scoreland_ingest::AwsDlzCredentials) -> Self {
        DlzSession {
            client,
            current: tokio::sync::Mutex::new(Self::credential(&creds)),
        }
    }

    fn credential(
        c: &scoreland_ingest::AwsDlzCredentials,
    ) -> (
        Arc<object_store::aws::AwsCredential>,
        Option<chrono::DateTime<Utc>>,
    ) {
        (
            Arc::new(object_store::aws::AwsCredential {
                key_id: c.access_key_id.clone(),
                secret_key: c.secret_access_key.expose().to_string(),
                token: Some(c.session_token.expose().to_string()),
            }),
            c.expiry,
        )
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for DlzSession {
    type Credential = object_store::aws::AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<Self::Credential>> {
        let mut current = self.current.lock().await;
        let expiring = current.1.is_some_and(|e| e - Utc::now() < Self::MARGIN);
        if expiring {
            tracing::info!("the Data Landing Zone's AWS credentials expire soon; renewing them");
            let renewed = self.client.dlz_credentials(true).await.map_err(|e| {
                object_store::Error::Generic {
                    store: "S3",
                    source: format!("renewing the Data Landing Zone's credentials: {e}").into(),
                }
            })?;
            match renewed {
                scoreland_ingest::Dlz::Aws(c) => *current = Self::credential(&c),
                scoreland_ingest::Dlz::Azure(_) => {
                    return Err(object_store::Error::Generic {
                        store: "S3",
                        source: "the Data Landing Zone moved from AWS to Azure while in use".into(),
                    });
                }
            }
        }
        Ok(current.0.clone())
    }
}

/// The store and root of a folder URL. `dlz:` asks the platform for the Data Landing Zone's
/// SAS (a new one with `refresh`).
pub(crate) async fn open_store(
    url: &str,
    options: &BTreeMap<String, String>,
    client: Option<&AepClient>,
    refresh: bool,
    pipeline: &Path,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), PipelineError> {
    let invalid = |message: String| invalid(pipeline, message);
    if let Some(path) = url.strip_prefix("dlz:") {
        let client = client.ok_or_else(|| {
            invalid(format!(
                "source.url = {url:?}: the Data Landing Zone is reached through the platform; add [source.platform]"
            ))
        })?;
        let creds = match client
            .dlz_credentials(refresh)
            .await
            .map_err(PipelineError::Ingest)?
        {
            scoreland_ingest::Dlz::Azure(creds) => creds,
            scoreland_ingest::Dlz::Aws(aws) => {
                return aws_landing_zone(client, aws, path, options, pipeline);
            }
        };
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
        scoreland_ingest::Polled::TimedOut(_) => Err(PipelineError::Job {
            message: format!("the simulator's export run {run} did not finish in 10 minutes"),
        }),
    }
}
