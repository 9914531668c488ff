//! `scoreland batches` and `scoreland download`: the platform from flags or environment.

use std::path::PathBuf;

use clap::Args;
use scoreland_ingest::{
    AepClient, BatchSelection, DownloadOptions, IngestError, PlatformConfig, PlatformSettings,
    SCORING_CLIENT, Secret,
};

use scoreland_pipeline::Platform;

use crate::{Failure, progress, usage};

#[derive(Debug, Args)]
pub struct PlatformArgs {
    /// Platform gateway.
    #[arg(long, env = "SCORELAND_PLATFORM_URL", default_value = PlatformConfig::DEFAULT_PLATFORM_URL)]
    pub platform_url: String,
    /// IMS (token) endpoint.
    #[arg(long, env = "SCORELAND_IMS_URL", default_value = PlatformConfig::DEFAULT_IMS_URL)]
    pub ims_url: String,
    /// IMS organization, `…@AdobeOrg`.
    #[arg(long, env = "SCORELAND_ORG_ID", default_value = "")]
    pub org_id: String,
    #[arg(long, env = "SCORELAND_SANDBOX", default_value = "prod")]
    pub sandbox: String,
    /// OAuth server-to-server client id (also the API key).
    #[arg(long, env = "SCORELAND_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Prefer the environment variable: flags show up in process lists.
    #[arg(long, env = "SCORELAND_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    #[arg(long, env = "SCORELAND_SCOPES", default_value = PlatformConfig::DEFAULT_SCOPES)]
    pub scopes: String,
    /// A static bearer token instead of client credentials (testing).
    #[arg(long, env = "SCORELAND_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,
    /// The API key that goes with --access-token.
    #[arg(long, env = "SCORELAND_API_KEY")]
    pub api_key: Option<String>,
}

impl PlatformArgs {
    /// The client, through the same construction a pipeline file uses; errors name the flag
    /// and its environment variable.
    pub(crate) async fn client(&self, options: DownloadOptions) -> Result<AepClient, Failure> {
        let settings = PlatformSettings {
            platform_url: self.platform_url.clone(),
            ims_url: self.ims_url.clone(),
            org_id: self.org_id.clone(),
            sandbox: self.sandbox.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone().map(Secret::new),
            scopes: Some(self.scopes.clone()),
            access_token: self.access_token.clone().map(Secret::new),
            api_key: self.api_key.clone(),
        };
        let platform = Platform::aep(&settings).map_err(|e| match e {
            IngestError::Config { field, message } => {
                usage(anyhow::anyhow!("{}: {message}", flag_of(field)))
            }
            other => ingest_failure(other),
        })?;
        Ok(platform
            .connect(options)
            .await
            .map_err(Failure::pipeline)?
            .client)
    }
}

/// The flag and environment variable that set a platform setting.
fn flag_of(field: &str) -> String {
    match field {
        "credentials" => {
            "credentials (--client-id/SCORELAND_CLIENT_ID with --client-secret/SCORELAND_CLIENT_SECRET, or --access-token/SCORELAND_ACCESS_TOKEN with --api-key/SCORELAND_API_KEY)".into()
        }
        "concurrency" => "--concurrency".into(),
        f => format!(
            "--{} (SCORELAND_{})",
            f.replace('_', "-"),
            f.to_ascii_uppercase()
        ),
    }
}

pub(crate) fn ingest_failure(e: scoreland_ingest::IngestError) -> Failure {
    Failure {
        code: if e.is_user_error() { 2 } else { 1 },
        error: e.into(),
    }
}

#[derive(Debug, Args)]
pub struct BatchesArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Dataset id.
    #[arg(long)]
    pub dataset: String,
    /// How many batches, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn batches(args: BatchesArgs) -> Result<u8, Failure> {
    let client = args.platform.client(DownloadOptions::default()).await?;
    let list = client
        .list_batches(&args.dataset, &[], args.limit)
        .await
        .map_err(ingest_failure)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    // "replaced-by": from the batch's own tag, or from a newer batch's replay list.
    let replaced_by = |id: &str| -> String {
        list.iter()
            .find(|b| b.replaces.iter().any(|p| p == id))
            .map(|b| b.id.clone())
            .or_else(|| {
                list.iter()
                    .find(|b| b.id == id)
                    .and_then(|b| b.replaced_by.clone())
            })
            .unwrap_or_default()
    };
    println!(
        "{:<28} {:<9} {:<20} {:<20} {:>10} {:>12} {:>5}  REPLACED-BY",
        "BATCH", "STATUS", "CREATED", "CLIENT", "RECORDS", "BYTES", "FILES"
    );
    for b in &list {
        let created = chrono::DateTime::from_timestamp_millis(b.created)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<28} {:<9} {:<20} {:<20} {:>10} {:>12} {:>5}  {}",
            b.id,
            b.status,
            created,
            b.created_client,
            opt(b.records),
            opt(b.bytes),
            opt(b.files),
            replaced_by(&b.id)
        );
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Dataset id.
    #[arg(long)]
    pub dataset: String,
    /// A batch id; the newest successful batch by default.
    #[arg(long)]
    pub batch: Option<String>,
    /// The IMS client that created the batches.
    #[arg(long, default_value = SCORING_CLIENT)]
    pub created_client: String,
    /// Staging directory: parts land in OUT/<dataset>/<batch>/.
    #[arg(long)]
    pub out: PathBuf,
    /// Parts downloaded at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
}

pub async fn download(args: DownloadArgs, quiet: bool) -> Result<u8, Failure> {
    let mut options = DownloadOptions::default();
    if let Some(c) = args.concurrency {
        scoreland_ingest::check_concurrency(c)
            .map_err(|why| usage(anyhow::anyhow!("--concurrency {c}: {why}")))?;
        options.concurrency = c;
    }
    let client = args.platform.client(options).await?;
    let selection = match args.batch {
        Some(id) => BatchSelection::Batch { id },
        None => BatchSelection::Newest,
    };
    let batches = client
        .select_batches(&args.dataset, &args.created_client, &selection)
        .await
        .map_err(ingest_failure)?;
    let observer = progress::observer(quiet);
    for b in &batches {
        let report = client
            .download_batch(&args.dataset, b, &args.out, observer.as_ref())
            .await
            .map_err(ingest_failure)?;
        let secs = report.elapsed.as_secs_f64().max(1e-3);
        println!(
            "batch {}: {} parts ({} already staged), {} rows, {:.1} MB in {:.1} s ({:.1} MB/s), {} retries -> {}",
            b.id,
            report.manifest.parts.len(),
            report.skipped_parts,
            report.manifest.rows,
            report.manifest.bytes as f64 / 1e6,
            secs,
            report.bytes_downloaded as f64 / 1e6 / secs,
            client.retries(),
            report.batch_dir.display()
        );
    }
    Ok(0)
}
