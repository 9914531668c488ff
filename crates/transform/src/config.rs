//! The `[transform]` section of a pipeline.

use scoreland_runtime::MemoryLimit;
use serde::{Deserialize, Serialize};

use crate::error::TransformError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Where scores live in the XDM rows. Without it, Customer AI's layout is discovered from
    /// the schema (`_<tenant>.CustomerAI.<instance>.*`, identity at `_<tenant>.identity`).
    #[serde(default)]
    pub mapping: Option<Mapping>,
    /// Land the source's dataset as it is, flattened from its XDM schema (an ExperienceEvent
    /// dataset: partitioned by event date, each `_id` once), instead of Customer AI scores.
    #[serde(default)]
    pub dataset: Option<crate::dataset::DatasetLanding>,
    /// Keep rows that have no identity (they are never deduplicated); dropped by default.
    #[serde(default)]
    pub keep_null_identities: bool,
    /// The transform's memory, e.g. "2GiB": the dedupe's table takes at most half (built in
    /// ranges of identities beyond it), and what DataFusion runs spills to disk beyond it.
    /// By default half of the machine's memory (or of the cgroup's limit, if lower);
    /// `"unlimited"` opts out.
    #[serde(default, skip_serializing_if = "MemoryLimit::is_default")]
    pub memory_limit: MemoryLimit,
    /// Parallelism; all cores by default.
    #[serde(default)]
    pub target_partitions: Option<usize>,
    /// How many of the most frequent influential factor codes each summary row lists.
    #[serde(default)]
    pub top_factors: Option<usize>,
    /// Write `influential_factors` as JSON text rather than a list of structs, for readers
    /// without nested types. CSV and NDJSON output always write it as JSON text.
    #[serde(default)]
    pub factors_as_json: bool,
    /// Where the scores job runs: here by default, or on a distributed engine,
    /// `engine = { cluster = "df://HOST:PORT" }` (see docs/cluster.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
}

/// `[transform] engine`: the cluster whose executors run the scores job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    /// The scheduler, `df://HOST:PORT`.
    pub cluster: String,
    /// How many tasks the scan and the dedupe are split into; this machine's cores by default
    /// (a cluster with more cores wants more).
    #[serde(default)]
    pub partitions: Option<usize>,
    /// A bucket or container (`s3://bucket/prefix`, `gs://…`, `az://…`) the staged parts are
    /// copied to for each run, when the executors do not mount this machine's staging
    /// directory; the copies are removed when the job ends. This machine and the executors
    /// open it with the credentials of their own environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<String>,
}

impl TransformConfig {
    pub fn validate(&self) -> Result<(), TransformError> {
        if let Some(m) = &self.mapping {
            if m.models.is_empty() {
                return Err(TransformError::Config(
                    "mapping.models is empty; list at least one model".into(),
                ));
            }
            for model in &m.models {
                if model.name.trim().is_empty() {
                    return Err(TransformError::Config("a mapping model has no name".into()));
                }
            }
        }
        if let Some(d) = &self.dataset {
            d.validate()?;
            if self.mapping.is_some() {
                return Err(TransformError::Config(
                    "[transform.dataset] and [transform.mapping] exclude each other: a dataset \
                     lands from its schema, scores through a mapping"
                        .into(),
                ));
            }
        }
        if let Some(engine) = &self.engine {
            if self.dataset.is_some() {
                return Err(TransformError::Config(
                    "[transform] engine = { cluster = … } runs the scores job; a \
                     [transform.dataset] landing runs here only (remove one of them)"
                        .into(),
                ));
            }
            if engine.partitions == Some(0) {
                return Err(TransformError::Config(
                    "engine.partitions must be at least 1".into(),
                ));
            }
            if let Some(staging) = &engine.staging {
                crate::shared::staging_url(staging)?;
            }
        }
        if self.target_partitions == Some(0) {
            return Err(TransformError::Config(
                "target_partitions must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Dotted XDM paths (`_tenant.identity.id`) of the identity and of each model's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub identity: String,
    #[serde(default)]
    pub identity_namespace: Option<String>,
    /// Row id used as the last, deterministic tie-break (default `_id`).
    #[serde(default)]
    pub record_id: Option<String>,
    pub models: Vec<ModelMapping>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMapping {
    /// The value of the `model` column.
    pub name: String,
    pub score: String,
    #[serde(default)]
    pub probability: Option<String>,
    #[serde(default)]
    pub percentile: Option<String>,
    #[serde(default)]
    pub propensity_type: Option<String>,
    #[serde(default)]
    pub score_date: Option<String>,
    #[serde(default)]
    pub influential_factors: Option<String>,
    /// A row belongs to this model when this path is not null (default: the score's).
    #[serde(default)]
    pub present: Option<String>,
}

/// File format of the landed tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputFormat {
    Parquet {
        #[serde(default = "default_codec")]
        compression: String,
        #[serde(default)]
        compression_level: Option<i32>,
        #[serde(default)]
        row_group_size: Option<usize>,
    },
    Csv,
    Ndjson,
}

fn default_codec() -> String {
    "zstd".into()
}

impl Default for OutputFormat {
    fn default() -> Self {
        OutputFormat::Parquet {
            compression: default_codec(),
            compression_level: None,
            row_group_size: None,
        }
    }
}

impl OutputFormat {
    pub fn extension(&self) -> &'static str {
        match self {
            OutputFormat::Parquet { .. } => "parquet",
            OutputFormat::Csv => "csv",
            OutputFormat::Ndjson => "json",
        }
    }

    /// DataFusion's `compression` setting, e.g. `zstd(3)`.
    pub(crate) fn parquet_compression(&self) -> Option<String> {
        match self {
            OutputFormat::Parquet {
                compression,
                compression_level,
                ..
            } => Some(match (compression.as_str(), compression_level) {
                ("zstd", None) => "zstd(3)".to_string(),
                (c, Some(l)) => format!("{c}({l})"),
                (c, None) => c.to_string(),
            }),
            _ => None,
        }
    }
}
