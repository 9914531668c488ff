//! Flow Service: dataset export dataflows (docs/exports.md). A dataflow ties a data-lake
//! source connection (the dataset) to a target connection (where and in which format) on a base
//! connection (the destination's credentials), with a schedule; each export is a flow run.

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use crate::auth::Secret;
use crate::client::AepClient;
use crate::error::IngestError;
use crate::paging::{self, item_key};

const FLOW_SERVICE: &str = "/data/foundation/flowservice";
const ADHOC_RUN: &str = "/data/core/activation/disflowprovider/adhocrun";
const ADHOC_ACCEPT: &str = "application/vnd.adobe.adhoc.dataset.activation+json; version=1";
/// The data-lake source: where every dataset export starts.
pub const DATA_LAKE_SPEC: &str = "23598e46-f560-407b-88d5-ea6207e49db0";

/// The cloud storage destinations a dataset can be exported to, with their spec ids (§6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    S3,
    AzureBlob,
    AdlsGen2,
    Dlz,
    Gcs,
    Sftp,
}

impl Destination {
    pub const ALL: [Destination; 6] = [
        Destination::S3,
        Destination::AzureBlob,
        Destination::AdlsGen2,
        Destination::Dlz,
        Destination::Gcs,
        Destination::Sftp,
    ];

    pub fn connection_spec(self) -> &'static str {
        match self {
            Destination::S3 => "4fce964d-3f37-408f-9778-e597338a21ee",
            Destination::AzureBlob => "6d6b59bf-fb58-4107-9064-4d246c0e5bb2",
            Destination::AdlsGen2 => "be2c3209-53bc-47e7-ab25-145db8b873e1",
            Destination::Dlz => "10440537-2a7b-4583-ac39-ed38d4b848e8",
            Destination::Gcs => "c5d93acb-ea8b-4b14-8f53-02138444ae99",
            Destination::Sftp => "36965a81-b1c6-401b-99f8-22508f1e6a26",
        }
    }

    pub fn flow_spec(self) -> &'static str {
        match self {
            Destination::S3 => "269ba276-16fc-47db-92b0-c1049a3c131f",
            Destination::AzureBlob => "95bd8965-fc8a-4119-b9c3-944c2c2df6d2",
            Destination::AdlsGen2 => "17be2013-2549-41ce-96e7-a70363bec293",
            Destination::Dlz => "cd2fc47e-e838-4f38-a581-8fff2f99b63a",
            Destination::Gcs => "585c15c4-6cbf-4126-8f87-e26bff78b657",
            Destination::Sftp => "354d6aad-4754-46e4-a576-1b384561c440",
        }
    }

    pub fn from_flow_spec(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.flow_spec() == id)
    }

    pub fn from_connection_spec(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.connection_spec() == id)
    }

    /// As the pipeline file and the CLI spell it.
    pub fn key(self) -> &'static str {
        match self {
            Destination::S3 => "s3",
            Destination::AzureBlob => "azure_blob",
            Destination::AdlsGen2 => "adls_gen2",
            Destination::Dlz => "dlz",
            Destination::Gcs => "gcs",
            Destination::Sftp => "sftp",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.key() == key)
    }

    /// The target connection parameter holding the folder.
    pub fn folder_param(self) -> &'static str {
        match self {
            Destination::Sftp => "remotePath",
            _ => "path",
        }
    }

    /// The target connection parameter naming the bucket or container, where there is one.
    pub fn bucket_param(self) -> Option<&'static str> {
        match self {
            Destination::S3 | Destination::Gcs => Some("bucketName"),
            Destination::AzureBlob => Some("container"),
            _ => None,
        }
    }
}

/// The credentials a base connection keeps for its destination (each destination's `authSpec`).
#[derive(Debug, Clone)]
pub enum DestinationAuth {
    S3 {
        access_key: String,
        secret_key: Secret,
    },
    AzureBlob {
        connection_string: Secret,
    },
    AdlsGen2 {
        url: String,
        service_principal_id: String,
        service_principal_key: Secret,
        tenant: String,
    },
    Gcs {
        access_key_id: String,
        secret_access_key: Secret,
    },
    SftpPassword {
        domain: String,
        port: u16,
        username: String,
        password: Secret,
    },
    SftpKey {
        domain: String,
        port: u16,
        username: String,
        ssh_key: Secret,
    },
    Dlz,
}

impl DestinationAuth {
    pub fn destination(&self) -> Destination {
        match self {
            DestinationAuth::S3 { .. } => Destination::S3,
            DestinationAuth::AzureBlob { .. } => Destination::AzureBlob,
            DestinationAuth::AdlsGen2 { .. } => Destination::AdlsGen2,
            DestinationAuth::Gcs { .. } => Destination::Gcs,
            DestinationAuth::SftpPassword { .. } | DestinationAuth::SftpKey { .. } => {
                Destination::Sftp
            }
            DestinationAuth::Dlz => Destination::Dlz,
        }
    }

    /// The `auth` object of `POST /connections` (`null` for the Data Landing Zone).
    fn to_json(&self) -> Value {
        let (spec, params) = match self {
            DestinationAuth::S3 {
                access_key,
                secret_key,
            } => (
                "Access Key",
                json!({"s3AccessKey": access_key, "s3SecretKey": secret_key.expose()}),
            ),
            DestinationAuth::AzureBlob { connection_string } => (
                "ConnectionString",
                json!({"connectionString": connection_string.expose()}),
            ),
            DestinationAuth::AdlsGen2 {
                url,
                service_principal_id,
                service_principal_key,
                tenant,
            } => (
                "Azure Service Principal Auth",
                json!({"url": url, "servicePrincipalId": service_principal_id,
                       "servicePrincipalKey": service_principal_key.expose(), "tenant": tenant}),
            ),
            DestinationAuth::Gcs {
                access_key_id,
                secret_access_key,
            } => (
                "Google Cloud Storage authentication credentials",
                json!({"accessKeyId": access_key_id, "secretAccessKey": secret_access_key.expose()}),
            ),
            DestinationAuth::SftpPassword {
                domain,
                port,
                username,
                password,
            } => (
                "SFTP with Password",
                json!({"domain": domain, "port": port, "username": username, "password": password.expose()}),
            ),
            DestinationAuth::SftpKey {
                domain,
                port,
                username,
                ssh_key,
            } => (
                "SFTP with SSH Key",
                json!({"domain": domain, "port": port, "username": username, "sshKey": ssh_key.expose()}),
            ),
            DestinationAuth::Dlz => return Value::Null,
        };
        json!({"specName": spec, "params": params})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FileType {
    Json,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compression {
    None,
    Gzip,
}

/// Where the export lands and in which format: a target connection's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportTarget {
    pub destination: Destination,
    pub file_type: FileType,
    pub compression: Compression,
    /// `bucketName` (S3, GCS) or `container` (Azure Blob).
    pub bucket: Option<String>,
    /// The folder: `path`, or `remotePath` for SFTP.
    pub path: String,
}

impl ExportTarget {
    /// What AEP itself would refuse, said before sending.
    pub fn check(&self) -> Result<(), String> {
        if self.file_type == FileType::Json && self.compression == Compression::None {
            return Err(
                "JSON exports are only made compressed: set compression = \"GZIP\" or file type PARQUET"
                    .into(),
            );
        }
        if let Some(param) = self.destination.bucket_param()
            && self.bucket.as_deref().is_none_or(|b| b.trim().is_empty())
        {
            return Err(format!(
                "a {} export needs its {param}",
                self.destination.key()
            ));
        }
        if self.path.trim().is_empty() {
            return Err(format!(
                "the export's {} is empty",
                self.destination.folder_param()
            ));
        }
        Ok(())
    }

    fn params(&self) -> Value {
        let mut p = json!({
            "mode": "Server-to-server",
            "datasetFileType": self.file_type,
            "compression": self.compression,
        });
        p[self.destination.folder_param()] = json!(self.path);
        if let (Some(param), Some(b)) = (self.destination.bucket_param(), &self.bucket) {
            p[param] = json!(b);
        }
        p
    }

    fn from_params(destination: Destination, p: &Value) -> Option<Self> {
        let s = |k: &str| p.get(k).and_then(Value::as_str);
        let upper = |k: &str| s(k).map(str::to_ascii_uppercase);
        Some(ExportTarget {
            destination,
            file_type: serde_json::from_value(json!(upper("datasetFileType")?)).ok()?,
            compression: serde_json::from_value(json!(upper("compression")?)).ok()?,
            bucket: destination.bucket_param().and_then(&s).map(str::to_string),
            path: s(destination.folder_param())?.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExportMode {
    /// One full export (`timeUnit = day`, `interval = 0`).
    DailyFullExport,
    /// A full export first, then what was added since the previous export.
    FirstFullThenIncremental,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Hour,
    Day,
}

/// A dataflow's `scheduleParams`. Times are epoch seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub export_mode: ExportMode,
    pub time_unit: TimeUnit,
    pub interval: u32,
    pub start_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foldername_template: Option<String>,
}

/// Flows made without an end date stop after six months.
pub const DEFAULT_FLOW_LIFETIME: Duration = Duration::from_secs(183 * 24 * 3600);

impl Schedule {
    /// The combinations AEP accepts: a one-time full export (day, interval 0), or first full
    /// then incremental daily or every 3, 6, 9 or 12 hours.
    pub fn check(&self) -> Result<(), String> {
        match (self.export_mode, self.time_unit, self.interval) {
            (ExportMode::DailyFullExport, TimeUnit::Day, 0) => {}
            (ExportMode::DailyFullExport, ..) => {
                return Err(
                    "DAILY_FULL_EXPORT is a one-time full export: time_unit \"day\" with interval 0"
                        .into(),
                );
            }
            (ExportMode::FirstFullThenIncremental, TimeUnit::Day, 1) => {}
            (ExportMode::FirstFullThenIncremental, TimeUnit::Hour, 3 | 6 | 9 | 12) => {}
            (ExportMode::FirstFullThenIncremental, unit, n) => {
                return Err(format!(
                    "interval {n} per {unit:?} is not a schedule AEP offers: daily (interval 1) or every 3, 6, 9 or 12 hours"
                ));
            }
        }
        if let Some(end) = self.end_time
            && end <= self.start_time
        {
            return Err("end_time must come after start_time".into());
        }
        Ok(())
    }

    /// When Adobe stops the flow: its end time, or six months after its start without one.
    pub fn ends_at(&self) -> i64 {
        self.end_time
            .unwrap_or(self.start_time + DEFAULT_FLOW_LIFETIME.as_secs() as i64)
    }
}

/// Everything `scoreland export create` sets up.
#[derive(Debug, Clone)]
pub struct ExportFlowSpec {
    pub name: String,
    pub dataset_id: String,
    pub auth: DestinationAuth,
    pub target: ExportTarget,
    pub schedule: Schedule,
}

/// A dataset export dataflow as Flow Service describes it.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub etag: String,
    /// `state`: `enabled` or `disabled`.
    pub state: String,
    pub destination: Option<Destination>,
    pub source_connection_ids: Vec<String>,
    pub target_connection_ids: Vec<String>,
    pub schedule: Option<Schedule>,
    pub created_at: Option<i64>,
}

impl Flow {
    fn from_json(v: &Value) -> Self {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let ids = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        Flow {
            id: s("id"),
            name: s("name"),
            etag: s("etag"),
            state: s("state"),
            destination: v
                .pointer("/flowSpec/id")
                .and_then(Value::as_str)
                .and_then(Destination::from_flow_spec),
            source_connection_ids: ids("sourceConnectionIds"),
            target_connection_ids: ids("targetConnectionIds"),
            schedule: v
                .get("scheduleParams")
                .and_then(|p| serde_json::from_value(p.clone()).ok()),
            created_at: v.get("createdAt").and_then(Value::as_i64),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.state.eq_ignore_ascii_case("enabled")
    }

    /// Days until Adobe stops the flow, when it has a schedule.
    pub fn days_left(&self, now_secs: i64) -> Option<f64> {
        self.schedule
            .as_ref()
            .map(|s| (s.ends_at() - now_secs) as f64 / 86_400.0)
    }
}

/// A dataset the data lake offers for export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportableDataset {
    pub id: String,
    pub name: String,
    pub state: Option<String>,
}

/// One export of a dataflow (`GET /runs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRun {
    pub id: String,
    pub flow_id: String,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// `metrics.statusSummary.status`, lower-cased: `success`, `failed`, `inprogress`, …
    pub status: String,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub output_files: Option<u64>,
    pub output_bytes: Option<u64>,
    pub output_records: Option<u64>,
    /// `metrics.fileSummary.extensions.manifest.pathPrefix`: the folder the run wrote.
    pub path_prefix: Option<String>,
    pub errors: Vec<String>,
}

impl FlowRun {
    /// Whether the run has ended (its status is known and not `inprogress`).
    pub fn is_done(&self) -> bool {
        !self.status.is_empty() && self.status != "inprogress"
    }

    fn from_json(v: &Value) -> Self {
        let m = |p: &str| v.pointer(&format!("/metrics{p}")).and_then(Value::as_u64);
        let status = v
            .pointer("/metrics/statusSummary/status")
            .or_else(|| v.get("state"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        let errors = v
            .pointer("/metrics/statusSummary/errors")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|e| match e.get("message").and_then(Value::as_str) {
                        Some(m) => m.to_string(),
                        None => e.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        FlowRun {
            id: v.get("id").and_then(Value::as_str).unwrap_or("").into(),
            flow_id: v.get("flowId").and_then(Value::as_str).unwrap_or("").into(),
            created_at: v.get("createdAt").and_then(Value::as_i64).unwrap_or(0),
            status,
            started_at: v
                .pointer("/metrics/durationSummary/startedAtUTC")
                .and_then(Value::as_i64),
            completed_at: v
                .pointer("/metrics/durationSummary/completedAtUTC")
                .and_then(Value::as_i64),
            output_files: m("/fileSummary/outputFileCount"),
            output_bytes: m("/sizeSummary/outputBytes"),
            output_records: m("/recordSummary/outputRecordCount"),
            path_prefix: v
                .pointer("/metrics/fileSummary/extensions/manifest/pathPrefix")
                .and_then(Value::as_str)
                .map(str::to_string),
            errors,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == "success"
    }

    pub fn failed(&self) -> bool {
        self.status == "failed"
    }
}

/// `GET …/landingzone/credentials?type=dlz_destination`: a SAS for the DLZ container.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DlzCredentials {
    pub container_name: String,
    #[serde(rename = "SASToken")]
    pub sas_token: Secret,
    pub storage_account_name: String,
    #[serde(rename = "SASUri")]
    pub sas_uri: Secret,
    #[serde(default)]
    pub expiry_date: Option<String>,
}

impl DlzCredentials {
    /// The SAS URI must be Azure's own (`https`): a `file://` URI (a local directory) or plain
    /// `http` is what the local simulator hands out, and is refused from a platform not on
    /// this machine. The URI itself (it holds the token) is never put in the message.
    pub(crate) fn check_scheme(&self, platform: &Url) -> Result<(), String> {
        let sas = Url::parse(self.sas_uri.expose())
            .map_err(|e| format!("its SAS URI does not parse ({e})"))?;
        match sas.scheme() {
            "https" => Ok(()),
            "file" | "http" if crate::client::is_loopback(platform) => Ok(()),
            scheme => Err(format!(
                "a Data Landing Zone SAS URI of scheme {scheme:?}; only https is accepted from \
                 a platform not on this machine (file:// and http:// are the local simulator's)"
            )),
        }
    }
}

impl std::fmt::Debug for DlzCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlzCredentials")
            .field("container_name", &self.container_name)
            .field("storage_account_name", &self.storage_account_name)
            .field("expiry_date", &self.expiry_date)
            .finish_non_exhaustive()
    }
}

/// The Data Landing Zone's credentials: a SAS for its Azure container, or (a landing zone on
/// AWS) temporary S3 credentials for its bucket and folder.
#[derive(Clone, Debug)]
pub enum Dlz {
    Azure(DlzCredentials),
    Aws(AwsDlzCredentials),
}

/// A landing zone on AWS: session credentials for `bucket`/`folder`, good until `expiry`.
#[derive(Clone)]
pub struct AwsDlzCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub bucket: String,
    pub folder: String,
    pub expiry: Option<chrono::DateTime<chrono::Utc>>,
    /// Where the bucket is served when it is not AWS's own S3: the local simulator's, and
    /// accepted only from a platform on this machine.
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for AwsDlzCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsDlzCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("bucket", &self.bucket)
            .field("folder", &self.folder)
            .field("expiry", &self.expiry)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The credentials answer: AWS-style when it names a `dlzPath` (`credentials{awsAccessKeyId,
/// awsSecretAccessKey, awsSessionToken}` or the same keys at the top, `dlzPath{bucketName,
/// dlzFolder}`, `expiryTime` in epoch seconds or RFC 3339), else Azure's SAS.
pub(crate) fn dlz_of(v: Value, platform: &Url) -> Result<Dlz, String> {
    let Some(path) = v.get("dlzPath") else {
        let azure: DlzCredentials = serde_json::from_value(v)
            .map_err(|e| format!("the Data Landing Zone's credentials do not read: {e}"))?;
        azure.check_scheme(platform)?;
        return Ok(Dlz::Azure(azure));
    };
    let keys = v.get("credentials").unwrap_or(&v);
    let text = |from: &Value, k: &str| -> Result<String, String> {
        from.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("the Data Landing Zone's AWS credentials have no {k}"))
    };
    let expiry = match v.get("expiryTime") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0)),
        Some(Value::String(t)) => chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        Some(_) => None,
    };
    if v.get("expiryTime").is_some_and(|e| !e.is_null()) && expiry.is_none() {
        return Err("the Data Landing Zone's expiryTime is not a time".into());
    }
    let endpoint = v
        .get("endpoint")
        .and_then(Value::as_str)
        .map(str::to_string);
    if endpoint.is_some() && !crate::client::is_loopback(platform) {
        return Err(
            "the Data Landing Zone's credentials name an endpoint of their own; only the local \
             simulator's are accepted"
                .into(),
        );
    }
    let bucket = text(path, "bucketName")?;
    let plain = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            && !s.split('/').any(|p| p == "..")
    };
    let folder = path
        .get("dlzFolder")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_matches('/')
        .to_string();
    if !plain(&bucket) || bucket.contains('/') || !plain(&folder) {
        return Err("the Data Landing Zone's dlzPath is not a plain bucket and folder".into());
    }
    Ok(Dlz::Aws(AwsDlzCredentials {
        access_key_id: text(keys, "awsAccessKeyId")?,
        secret_access_key: Secret::new(text(keys, "awsSecretAccessKey")?),
        session_token: Secret::new(text(keys, "awsSessionToken")?),
        bucket,
        folder,
        expiry,
        endpoint,
    }))
}

/// How long and how often an ad-hoc run waits for a new flow to become ready.
#[derive(Debug, Clone, Copy)]
pub struct NotReadyRetry {
    pub every: Duration,
    pub attempts: u32,
}

impl Default for NotReadyRetry {
    /// As aepp does: every minute, five times.
    fn default() -> Self {
        NotReadyRetry {
            every: Duration::from_secs(60),
            attempts: 5,
        }
    }
}

impl AepClient {
    fn flow_url(&self, path: &str) -> Result<Url, IngestError> {
        self.url(&format!("{FLOW_SERVICE}{path}"))
    }

    /// Every item of a Flow Service list, following `continuationToken` pages.
    async fn list_items(&self, path: &str, filters: &[String]) -> Result<Vec<Value>, IngestError> {
        paging::collect(
            paging::Cursors::Served,
            None,
            usize::MAX,
            item_key,
            |token: Option<String>| {
                let url = self.flow_url(path);
                async move {
                    let mut url = url?;
                    {
                        let mut q = url.query_pairs_mut();
                        for f in filters {
                            q.append_pair("property", f);
                        }
                        if let Some(t) = &token {
                            q.append_pair("continuationToken", t);
                        }
                    }
                    let page: Value = self.get_json(&url).await?;
                    let next = page
                        .pointer("/_links/next/href")
                        .and_then(Value::as_str)
                        .and_then(continuation_token)
                        .map(Some);
                    let items = match page.get("items") {
                        Some(Value::Array(items)) => items.clone(),
                        _ => Vec::new(),
                    };
                    Ok(paging::Page { url, items, next })
                }
            },
        )
        .await
    }

    /// One entity (`GET /flows/{id}` and the like answer `{"items": [entity]}`).
    async fn get_entity(&self, kind: &str, id: &str) -> Result<Value, IngestError> {
        let url = self.flow_url(&format!("/{kind}/{}", encode(id)))?;
        let v: Value = match self.get_json(&url).await {
            Err(IngestError::Status { status: 404, .. }) => {
                return Err(IngestError::NotFound {
                    what: format!("{kind}/{id}"),
                });
            }
            other => other?,
        };
        first_item(v).ok_or(IngestError::NotFound {
            what: format!("{kind}/{id}"),
        })
    }

    /// Finds the entity of `kind` named `name`, or creates it with `body`: each attempt looks
    /// first, so a create that failed in flight but did happen is not made twice.
    async fn ensure_entity(
        &self,
        kind: &str,
        name: &str,
        body: &Value,
    ) -> Result<(String, bool), IngestError> {
        let url = self.flow_url(&format!("/{kind}"))?;
        self.with_retry(url.as_str(), |_| async {
            let found = self
                .list_items(&format!("/{kind}"), &[format!("name=={name}")])
                .await?;
            if let Some(id) = found
                .iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|v| v.get("id"))
                .and_then(Value::as_str)
            {
                return Ok((id.to_string(), false));
            }
            let created: Value = self.call_json(Method::POST, &url, Some(body), &[]).await?;
            let id = created.get("id").and_then(Value::as_str).ok_or_else(|| {
                IngestError::Unexpected {
                    url: url.to_string(),
                    what: "no id in the answer to a create".into(),
                }
            })?;
            Ok((id.to_string(), true))
        })
        .await
    }

    /// The datasets the data lake offers for export (`GET /connectionSpecs/{data lake}/configs
    /// ?outputType=activationDatasets&outputField=datasets`), paged by `start` and `limit`
    /// (`pageInfo.hasNext`).
    pub async fn exportable_datasets(&self) -> Result<Vec<ExportableDataset>, IngestError> {
        const PAGE: usize = 100;
        let path = format!("/connectionSpecs/{DATA_LAKE_SPEC}/configs");
        let items = paging::collect(
            paging::Cursors::Counted,
            0usize,
            usize::MAX,
            item_key,
            |start| {
                let url = self.flow_url(&path);
                async move {
                    let mut url = url?;
                    url.query_pairs_mut()
                        .append_pair("outputType", "activationDatasets")
                        .append_pair("outputField", "datasets")
                        .append_pair("start", &start.to_string())
                        .append_pair("limit", &PAGE.to_string())
                        .append_pair("properties", "name,state");
                    let page: Value = self.get_json(&url).await?;
                    let items = match page.get("items") {
                        Some(Value::Array(items)) => items.clone(),
                        _ => Vec::new(),
                    };
                    let more = page
                        .pointer("/pageInfo/hasNext")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let next = (more && !items.is_empty()).then_some(start + items.len());
                    Ok(paging::Page { url, items, next })
                }
            },
        )
        .await?;
        Ok(items
            .iter()
            .filter_map(|v| {
                let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                Some(ExportableDataset {
                    id: text("id")?,
                    name: text("name").unwrap_or_default(),
                    state: text("state"),
                })
            })
            .collect())
    }

    /// Export dataflows (of the destinations we know), optionally only the one named `name`.
    pub async fn export_flows(&self, name: Option<&str>) -> Result<Vec<Flow>, IngestError> {
        let filters: Vec<String> = name.map(|n| format!("name=={n}")).into_iter().collect();
        let mut flows: Vec<Flow> = self
            .list_items("/flows", &filters)
            .await?
            .iter()
            .map(Flow::from_json)
            .filter(|f| f.destination.is_some() && name.is_none_or(|n| f.name == n))
            .collect();
        flows.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(flows)
    }

    /// A dataflow by id, or else by name.
    pub async fn export_flow(&self, id_or_name: &str) -> Result<Flow, IngestError> {
        match self.get_entity("flows", id_or_name).await {
            Ok(v) => return Ok(Flow::from_json(&v)),
            Err(IngestError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut found = self.export_flows(Some(id_or_name)).await?;
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(IngestError::NotFound {
                what: format!("export flow {id_or_name:?} (`scoreland export list` shows them)"),
            }),
            n => Err(IngestError::Ambiguous {
                what: format!("{n} export flows are named {id_or_name:?}; give the flow id"),
            }),
        }
    }

    /// The target of a flow (its first target connection).
    pub async fn export_target(&self, flow: &Flow) -> Result<ExportTarget, IngestError> {
        let id = flow
            .target_connection_ids
            .first()
            .ok_or_else(|| IngestError::NotFound {
                what: format!("a target connection of flow {}", flow.id),
            })?;
        let v = self.get_entity("targetConnections", id).await?;
        let destination = flow.destination.ok_or_else(|| IngestError::Unexpected {
            url: format!("flows/{}", flow.id),
            what: "not a dataset export flow".into(),
        })?;
        v.get("params")
            .and_then(|p| ExportTarget::from_params(destination, p))
            .ok_or_else(|| IngestError::Unexpected {
                url: format!("targetConnections/{id}"),
                what: "its params lack the folder, file type or compression".into(),
            })
    }

    /// The dataset ids a flow exports (from its source connection).
    pub async fn export_datasets(&self, flow: &Flow) -> Result<Vec<String>, IngestError> {
        let mut out = Vec::new();
        for id in &flow.source_connection_ids {
            let v = self.get_entity("sourceConnections", id).await?;
            for d in v
                .pointer("/params/datasets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(id) = d.get("dataSetId").and_then(Value::as_str) {
                    out.push(id.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Sets up the whole export (base, source and target connections, then the flow), each
    /// found by name first: running it again with the same name changes nothing. Returns the
    /// flow and whether it was created now.
    pub async fn create_export_flow(
        &self,
        spec: &ExportFlowSpec,
    ) -> Result<(Flow, bool), IngestError> {
        let config = |message: String| IngestError::Config {
            field: "export",
            message,
        };
        spec.target.check().map_err(config)?;
        spec.schedule.check().map_err(config)?;
        let destination = spec.target.destination;
        if spec.auth.destination() != destination {
            return Err(config(format!(
                "credentials for {} cannot reach a {} target",
                spec.auth.destination().key(),
                destination.key()
            )));
        }
        if let Some(existing) = self
            .export_flows(Some(&spec.name))
            .await?
            .into_iter()
            .next()
        {
            return Ok((existing, false));
        }
        let spec_ref = |id: &str| json!({"id": id, "version": "1.0"});
        let name = &spec.name;
        let (base, _) = self
            .ensure_entity(
                "connections",
                &format!("{name} base"),
                &json!({
                    "name": format!("{name} base"),
                    "auth": spec.auth.to_json(),
                    "connectionSpec": spec_ref(destination.connection_spec()),
                }),
            )
            .await?;
        let (source, _) = self
            .ensure_entity(
                "sourceConnections",
                &format!("{name} source"),
                &json!({
                    "name": format!("{name} source"),
                    "data": {"format": "parquet"},
                    "params": {"datasets": [{"dataSetId": spec.dataset_id}]},
                    "connectionSpec": spec_ref(DATA_LAKE_SPEC),
                }),
            )
            .await?;
        let (target, _) = self
            .ensure_entity(
                "targetConnections",
                &format!("{name} target"),
                &json!({
                    "name": format!("{name} target"),
                    "baseConnectionId": base,
                    "params": spec.target.params(),
                    "connectionSpec": spec_ref(destination.connection_spec()),
                }),
            )
            .await?;
        let (flow, created) = self
            .ensure_entity(
                "flows",
                name,
                &json!({
                    "name": name,
                    "flowSpec": spec_ref(destination.flow_spec()),
                    "sourceConnectionIds": [source],
                    "targetConnectionIds": [target],
                    "transformations": [],
                    "scheduleParams": spec.schedule,
                }),
            )
            .await?;
        Ok((self.export_flow(&flow).await?, created))
    }

    /// `POST /flows/{id}/action?op=enable|disable`.
    pub async fn set_flow_enabled(&self, flow: &Flow, enabled: bool) -> Result<(), IngestError> {
        let mut url = self.flow_url(&format!("/flows/{}/action", encode(&flow.id)))?;
        url.query_pairs_mut()
            .append_pair("op", if enabled { "enable" } else { "disable" });
        self.with_retry(url.as_str(), |_| async {
            self.call_json::<Value>(Method::POST, &url, None, &[("if-match", &flow.etag)])
                .await
                .map(drop)
        })
        .await
    }

    /// Replaces the flow's schedule (`PATCH` with `If-Match`: a flow changed meanwhile is
    /// refused by AEP with "does not match the current version").
    pub async fn set_flow_schedule(
        &self,
        flow: &Flow,
        schedule: &Schedule,
    ) -> Result<(), IngestError> {
        schedule.check().map_err(|message| IngestError::Config {
            field: "schedule",
            message,
        })?;
        let url = self.flow_url(&format!("/flows/{}", encode(&flow.id)))?;
        let patch = json!([{"op": "Replace", "path": "/scheduleParams", "value": schedule}]);
        self.with_retry(url.as_str(), |_| async {
            self.call_json::<Value>(
                Method::PATCH,
                &url,
                Some(&patch),
                &[("if-match", &flow.etag)],
            )
            .await
            .map(drop)
        })
        .await
    }

    /// Deletes the flow, then the connections it was made of.
    pub async fn delete_export_flow(&self, flow: &Flow) -> Result<(), IngestError> {
        let mut base_ids = Vec::new();
        for id in &flow.target_connection_ids {
            if let Ok(v) = self.get_entity("targetConnections", id).await
                && let Some(b) = v.get("baseConnectionId").and_then(Value::as_str)
            {
                base_ids.push(b.to_string());
            }
        }
        let delete = |kind: &'static str, id: String| async move {
            let url = self.flow_url(&format!("/{kind}/{}", encode(&id)))?;
            self.with_retry(url.as_str(), |_| async {
                match self
                    .call_json::<Value>(Method::DELETE, &url, None, &[])
                    .await
                {
                    Ok(_) | Err(IngestError::Status { status: 404, .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await
        };
        delete("flows", flow.id.clone()).await?;
        for id in flow.source_connection_ids.iter().cloned() {
            delete("sourceConnections", id).await?;
        }
        for id in flow.target_connection_ids.iter().cloned() {
            delete("targetConnections", id).await?;
        }
        for id in base_ids {
            delete("connections", id).await?;
        }
        Ok(())
    }

    /// Starts an export now (the ad-hoc run). A new flow is "not ready for dataset export" for a
    /// few minutes: that answer is waited out `retry.attempts` times. Returns the run id.
    pub async fn run_export_now(
        &self,
        flow: &Flow,
        dataset_id: &str,
        retry: NotReadyRetry,
    ) -> Result<String, IngestError> {
        let url = self.url(ADHOC_RUN)?;
        let body = json!({"activationInfo": {"destinations": [
            {"flowId": flow.id, "datasets": [{"id": dataset_id}]}
        ]}});
        let mut waited = 0u32;
        loop {
            let attempt = self
                .with_retry(url.as_str(), |_| {
                    self.call_json::<Value>(
                        Method::POST,
                        &url,
                        Some(&body),
                        &[("accept", ADHOC_ACCEPT)],
                    )
                })
                .await;
            match attempt {
                Ok(v) => {
                    let status_url = v
                        .pointer("/destinations/0/datasets/0/statusURL")
                        .and_then(Value::as_str)
                        .ok_or_else(|| IngestError::Unexpected {
                            url: url.to_string(),
                            what: "no destinations[].datasets[].statusURL in the answer".into(),
                        })?;
                    let run = status_url
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or("");
                    return Ok(run.to_string());
                }
                Err(IngestError::Status {
                    status: 400,
                    ref message,
                    ..
                }) if message.contains("not ready") && waited < retry.attempts => {
                    waited += 1;
                    tracing::info!(
                        flow = %flow.id,
                        attempt = waited,
                        wait_s = retry.every.as_secs(),
                        "the flow is not ready for an export yet; waiting"
                    );
                    tokio::time::sleep(retry.every).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The runs of a flow, newest first.
    pub async fn flow_runs(&self, flow_id: &str) -> Result<Vec<FlowRun>, IngestError> {
        let mut runs: Vec<FlowRun> = self
            .list_items("/runs", &[format!("flowId=={flow_id}")])
            .await?
            .iter()
            .map(FlowRun::from_json)
            .collect();
        runs.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(runs)
    }

    pub async fn flow_run(&self, run_id: &str) -> Result<FlowRun, IngestError> {
        Ok(FlowRun::from_json(&self.get_entity("runs", run_id).await?))
    }

    /// The credentials of the Data Landing Zone's destination (a SAS for its container, or
    /// AWS session credentials for its bucket); `refresh` asks for new ones.
    pub async fn dlz_credentials(&self, refresh: bool) -> Result<Dlz, IngestError> {
        let mut url = self.url("/data/foundation/connectors/landingzone/credentials")?;
        url.query_pairs_mut().append_pair("type", "dlz_destination");
        let creds = if refresh {
            url.query_pairs_mut().append_pair("action", "refresh");
            self.with_retry(url.as_str(), |_| {
                self.call_json(Method::POST, &url, None, &[])
            })
            .await
        } else {
            self.get_json(&url).await
        };
        let creds: Value = creds?;
        dlz_of(creds, &self.config().platform_url).map_err(|what| IngestError::Unexpected {
            url: url.to_string(),
            what,
        })
    }
}

fn first_item(v: Value) -> Option<Value> {
    match v {
        Value::Object(mut o) => match o.remove("items") {
            Some(Value::Array(mut a)) if !a.is_empty() => Some(a.swap_remove(0)),
            Some(_) => None,
            None => Some(Value::Object(o)),
        },
        _ => None,
    }
}

fn continuation_token(href: &str) -> Option<String> {
    let url = Url::parse(href)
        .or_else(|_| Url::parse("http://x/").and_then(|b| b.join(href)))
        .ok()?;
    url.query_pairs()
        .find(|(k, _)| k == "continuationToken")
        .map(|(_, v)| v.into_owned())
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sas_uri_of_file_or_http_is_only_taken_from_a_local_platform() {
        let url = |s: &str| Url::parse(s).unwrap();
        let creds = |sas: &str| -> DlzCredentials {
            serde_json::from_value(json!({"containerName": "dlz-user-container",
                "SASToken": "sv=x&sig=secret", "storageAccountName": "acct", "SASUri": sas}))
            .unwrap()
        };
        let (aep, sim) = (
            url("https://platform.adobe.io/"),
            url("http://127.0.0.1:4010/"),
        );
        let azure = creds("https://acct.blob.core.windows.net/dlz-user-container?sig=secret");
        assert!(azure.check_scheme(&aep).is_ok());
        for unkind in [
            "file:///etc/",
            "http://acct.blob.core.windows.net/c?sig=secret",
            "ftp://acct/c?sig=secret",
            "not a uri sig=secret",
        ] {
            let err = creds(unkind).check_scheme(&aep).unwrap_err();
            assert!(!err.contains("secret"), "the token leaked: {err}");
            if !unkind.starts_with("not") {
                assert!(err.contains("only https"), "{err}");
            }
        }
        for local in [
            "file:///tmp/dlz/",
            "http://127.0.0.1:10000/devstoreaccount1/c?sig=x",
        ] {
            assert!(creds(local).check_scheme(&sim).is_ok(), "{local}");
        }
    }

    /// A landing zone on AWS: session credentials, read nested or flat; what cannot be used
    /// safely is refused, and the secrets never print.
    #[test]
    fn aws_landing_zone_credentials_are_read_and_checked() {
        let url = |s: &str| Url::parse(s).unwrap();
        let (aep, sim) = (
            url("https://platform.adobe.io/"),
            url("http://127.0.0.1:4010/"),
        );
        let answer = json!({
            "credentials": {"awsAccessKeyId": "ASIAKEY", "awsSecretAccessKey": "s3cr3t",
                            "awsSessionToken": "t0ken"},
            "dlzPath": {"bucketName": "dlz-bucket", "dlzFolder": "dlz-destination/"},
            "dlzProvider": "Amazon S3",
            "expiryTime": 1796500000,
        });
        let Ok(Dlz::Aws(c)) = dlz_of(answer.clone(), &aep) else {
            panic!("not AWS")
        };
        assert_eq!(
            (c.bucket.as_str(), c.folder.as_str()),
            ("dlz-bucket", "dlz-destination")
        );
        assert_eq!(c.expiry.map(|e| e.timestamp()), Some(1796500000));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("t0ken"),
            "{shown}"
        );
        let mut flat = answer.clone();
        flat["awsAccessKeyId"] = json!("ASIAKEY");
        flat["awsSecretAccessKey"] = json!("s");
        flat["awsSessionToken"] = json!("t");
        flat.as_object_mut().unwrap().remove("credentials");
        flat["expiryTime"] = json!("2026-12-06T00:00:00Z");
        assert!(matches!(dlz_of(flat, &aep), Ok(Dlz::Aws(_))));
        for (change, said) in [
            (
                json!({"endpoint": "http://evil.example/"}),
                "endpoint of their own",
            ),
            (json!({"dlzPath": {"bucketName": "b/../c"}}), "plain bucket"),
            (
                json!({"dlzPath": {"bucketName": "b", "dlzFolder": "../x"}}),
                "plain bucket",
            ),
            (json!({"dlzPath": {"dlzFolder": "x"}}), "no bucketName"),
            (
                json!({"credentials": {"awsAccessKeyId": "k"}}),
                "no awsSecretAccessKey",
            ),
            (json!({"expiryTime": "soon"}), "not a time"),
        ] {
            let mut a = answer.clone();
            for (k, v) in change.as_object().unwrap() {
                a[k] = v.clone();
            }
            let e = dlz_of(a, &aep).unwrap_err();
            assert!(e.contains(said), "{change}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        let mut local = answer;
        local["endpoint"] = json!("http://127.0.0.1:5000");
        assert!(matches!(dlz_of(local, &sim), Ok(Dlz::Aws(c)) if c.endpoint.is_some()));
    }

    #[test]
    fn schedules_aep_accepts() {
        let s = |mode, unit, interval| Schedule {
            export_mode: mode,
            time_unit: unit,
            interval,
            start_time: 1_700_000_000,
            end_time: None,
            foldername_template: None,
        };
        use ExportMode::*;
        assert!(s(DailyFullExport, TimeUnit::Day, 0).check().is_ok());
        assert!(s(DailyFullExport, TimeUnit::Day, 1).check().is_err());
        assert!(
            s(FirstFullThenIncremental, TimeUnit::Hour, 6)
                .check()
                .is_ok()
        );
        assert!(
            s(FirstFullThenIncremental, TimeUnit::Hour, 5)
                .check()
                .is_err()
        );
        assert!(
            s(FirstFullThenIncremental, TimeUnit::Day, 1)
                .check()
                .is_ok()
        );
        let json = serde_json::to_value(s(FirstFullThenIncremental, TimeUnit::Hour, 3)).unwrap();
        assert_eq!(
            json,
            json!({"exportMode": "FIRST_FULL_THEN_INCREMENTAL", "timeUnit": "hour", "interval": 3, "startTime": 1_700_000_000})
        );
    }

    #[test]
    fn json_exports_must_be_compressed_and_buckets_named() {
        let mut t = ExportTarget {
            destination: Destination::S3,
            file_type: FileType::Json,
            compression: Compression::None,
            bucket: Some("b".into()),
            path: "scores".into(),
        };
        assert!(t.check().unwrap_err().contains("compressed"));
        t.compression = Compression::Gzip;
        assert!(t.check().is_ok());
        t.bucket = None;
        assert!(t.check().unwrap_err().contains("bucketName"));
        let sftp = ExportTarget {
            destination: Destination::Sftp,
            file_type: FileType::Parquet,
            compression: Compression::None,
            bucket: None,
            path: "/upload".into(),
        };
        assert_eq!(sftp.params()["remotePath"], "/upload");
        assert_eq!(
            ExportTarget::from_params(Destination::Sftp, &sftp.params()),
            Some(sftp)
        );
    }

    #[test]
    fn continuation_tokens_from_next_links() {
        assert_eq!(
            continuation_token(
                "/data/foundation/flowservice/runs?property=flowId%3D%3Dx&continuationToken=abc%3D"
            )
            .as_deref(),
            Some("abc=")
        );
        assert_eq!(
            continuation_token("https://platform.adobe.io/runs?limit=2"),
            None
        );
    }
}
