//! The `aep` and `simulator` sources: Customer AI scoring batches found through Catalog
//! (the newest, one by id, or every one since the last landed) and downloaded through Data
//! Access, verified and resumable.

use std::path::Path;
use std::time::Instant;

use scoreland_ingest::{
    ANY_CLIENT, AepClient, BatchSelection, CatalogBatch, DownloadOptions, HumanDuration,
    RowCountCheck, SCORING_CLIENT, Size,
};
use scoreland_transform::StagedBatch;
use serde::{Deserialize, Serialize};

use super::platform::{Platform, concurrency};
use super::{Ingested, Input};
use crate::context::{RunContext, RunOptions};
use crate::error::PipelineError;
use crate::record::{RunRecord, RunStatus, ms};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceCommon {
    /// The IMS client whose batches land (`createdClient`): `acp_foundation_push` (Customer
    /// AI) by default, any client (`"*"`) for a `[transform.dataset]` pipeline.
    #[serde(default)]
    pub created_client: Option<String>,
    /// `{ mode = "newest" }` (default), `{ mode = "batch", id = "…" }` or
    /// `{ mode = "catch_up" }` (every batch since the last one landed).
    #[serde(default)]
    pub batches: Option<BatchSelection>,
    /// Parts downloaded at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub row_count_check: Option<RowCountCheck>,
    /// Retry budget per request, e.g. "5m".
    #[serde(default)]
    pub max_retry_time: Option<HumanDuration>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Bytes per second below which a download is abandoned and resumed, e.g. "16KiB".
    #[serde(default)]
    pub min_speed: Option<Size>,
    /// Over how long `min_speed` is measured, e.g. "30s".
    #[serde(default)]
    pub min_speed_time: Option<HumanDuration>,
    /// Disk space a download must leave free in staging, e.g. "5GiB" (default: none).
    #[serde(default)]
    pub keep_free: Option<Size>,
}

impl SourceCommon {
    /// The download options these settings give; errors name the field.
    pub fn download_options(&self) -> Result<DownloadOptions, String> {
        let mut o = DownloadOptions::default();
        o.concurrency = concurrency(self.concurrency, o.concurrency)?;
        if let Some(r) = self.row_count_check {
            o.row_count_check = r;
        }
        if let Some(n) = self.max_attempts {
            if n == 0 {
                return Err("source.max_attempts = 0: must be at least 1".into());
            }
            o.retry.max_attempts = n;
        }
        if let Some(t) = self.max_retry_time {
            o.retry.max_elapsed = t.0;
        }
        if let Some(t) = self.min_speed_time {
            o.min_speed_window = t.0;
        }
        if let Some(s) = self.keep_free {
            o.keep_free = s.0;
        }
        // Per second: "16KiB" and "16KiB/s" say the same.
        if let Some(s) = self.min_speed {
            o.min_speed = s.0;
        }
        Ok(o)
    }
}

/// Selects, and stages, the batches of an `aep` or `simulator` source. `None`: nothing to
/// land.
pub(super) async fn prepare(
    platform: Platform,
    dataset: Option<&String>,
    common: &SourceCommon,
    cx: &RunContext<'_>,
    record: &mut RunRecord,
) -> Result<Option<Ingested>, PipelineError> {
    let (options, state) = (cx.options, cx.state);
    let t = Instant::now();
    let download = common.download_options().map_err(|m| cx.invalid(m))?;
    let connected = platform.connect(download).await?;
    let dataset = dataset
        .cloned()
        .or_else(|| connected.first_dataset())
        .ok_or_else(|| {
            cx.invalid("source.dataset: the simulated platform has no dataset".into())
        })?;
    let client = &connected.client;
    // Customer AI's scoring client by default; any client's batches for a dataset landed as
    // it is.
    let default_client = if cx.dataset.is_some() {
        ANY_CLIENT
    } else {
        SCORING_CLIENT
    };
    let created_client = common.created_client.as_deref().unwrap_or(default_client);
    record.dataset = dataset.clone();
    let selection = match common.batches.clone().unwrap_or(BatchSelection::Newest) {
        BatchSelection::CatchUp { after: None } => BatchSelection::CatchUp {
            after: state.landed_batches.last().cloned(),
        },
        s => s,
    };
    let batches: Vec<CatalogBatch> = match (&selection, state.last_batch_created) {
        (BatchSelection::CatchUp { after: Some(after) }, Some(created)) => {
            client
                .batches_after(&dataset, created_client, after, created)
                .await
        }
        // A dataset landed as it is starts from its first batch (a Customer AI batch holds
        // every score, so scores start from the newest).
        (BatchSelection::CatchUp { after: None }, _) if cx.dataset.is_some() => {
            client.batches_after(&dataset, created_client, "", 0).await
        }
        _ => {
            client
                .select_batches(&dataset, created_client, &selection)
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
            let parts = client
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

    // Read before the rows: a dataset whose schema cannot be read or landed stops here.
    let schema = match cx.dataset {
        Some(landing) => Some(checked_schema(client, &dataset, landing, cx).await?),
        None => None,
    };
    let t = Instant::now();
    let staged = stage_batches(client, &dataset, &batches, cx.staging, options, record).await?;
    record.timings.ingest_ms = ms(t.elapsed());
    Ok(Some(Ingested {
        input: match schema {
            Some(schema) => Input::Dataset { staged, schema },
            None => Input::Scores {
                staged,
                merge_with: Vec::new(),
                replace_dataset: false,
            },
        },
        landed: record.batches.clone(),
        last_created: batches.iter().map(|b| b.created).max(),
        seen_folders: Default::default(),
    }))
}

/// `dataset`'s schema from the Schema Registry, checked to be one `landing` can land: an
/// ExperienceEvent's, or a record's with a primary identity descriptor (whose path is
/// returned as well). A pipeline setting that does not hold otherwise.
pub(super) async fn checked_schema(
    client: &AepClient,
    dataset: &str,
    landing: &scoreland_transform::DatasetLanding,
    cx: &RunContext<'_>,
) -> Result<DatasetSchema, PipelineError> {
    let schema = client
        .dataset_schema(dataset)
        .await
        .map_err(PipelineError::Ingest)?;
    let invalid = |e: String| cx.invalid(format!("[transform.dataset]: dataset {dataset}: {e}"));
    // Its data usage labels land with it: labels that cannot be read stop the run rather
    // than land the dataset as unlabelled.
    let labels = client
        .dataset_labels(dataset)
        .await
        .map_err(PipelineError::Ingest)?;
    if scoreland_transform::is_event_schema(&schema) {
        scoreland_transform::EventDataset::new(&schema, landing)
            .map_err(|e| invalid(e.to_string()))?;
        return Ok(DatasetSchema {
            schema,
            identity: None,
            labels,
        });
    }
    let id = schema
        .get("$id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let identity = client
        .primary_identity(id)
        .await
        .map_err(PipelineError::Ingest)?
        .ok_or_else(|| {
            invalid(format!(
                "its schema ({}) is a record's, which keeps the newest row per primary \
                 identity, and it has no primary identity descriptor; mark one in the schema \
                 (Schema Registry, identity descriptor with xdm:isPrimary)",
                schema
                    .get("title")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or(id)
            ))
        })?;
    scoreland_transform::RecordDataset::new(&schema, landing, &identity)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(DatasetSchema {
        schema,
        identity: Some(identity),
        labels,
    })
}

/// A dataset's schema, the primary identity of a record dataset (dotted path), and the
/// dataset's data usage labels.
pub(crate) struct DatasetSchema {
    pub schema: serde_json::Value,
    pub identity: Option<String>,
    pub labels: scoreland_ingest::DataLabels,
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
