//! `[source]`: where a pipeline's rows come from. Each kind checks its own settings
//! ([`SourceConfig::check`]) and stages what a run lands ([`SourceConfig::prepare`]); that is
//! the only way a run reaches a source.
//!
//! - `aep` and `simulator` ([`catalog`]): Customer AI batches found through Catalog and
//!   downloaded through Data Access;
//! - `dataset-export` ([`export`]): the folders a Flow Service dataflow writes;
//! - `profile-export` ([`profile`]): profiles and audience memberships exported by a job.

pub(crate) mod catalog;
pub(crate) mod export;
pub mod platform;
pub(crate) mod profile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scoreland_ingest::PlatformSettings;
use scoreland_transform::{ProfileTables, StagedBatch};
use serde::{Deserialize, Serialize};

pub(crate) use catalog::DatasetSchema;
pub use catalog::SourceCommon;
pub use export::{
    ExportPlan, ExportRecord, ExportSource, FlowSection, FolderRecord, FolderSelection, PlanCheck,
    PlanVerdict, SECRET_VARS, SeenFolder, SimulatorSection, export_plan,
};
pub use profile::{
    MergePolicy, ProfileExportMode, ProfileExportRecord, ProfileExportSource, ProfileSimulator,
};

use crate::context::RunContext;
use crate::error::PipelineError;
use crate::record::RunRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A real AEP org (or anything that speaks its API).
    Aep {
        /// URLs, org, sandbox and credentials (use `${VAR}` to keep secrets out of the file).
        #[serde(flatten)]
        platform: PlatformSettings,
        dataset: String,
        #[serde(flatten)]
        common: SourceCommon,
    },
    /// The bundled simulator, started in process on a loopback port: no credentials needed.
    Simulator {
        data: PathBuf,
        /// Defaults to the platform's first dataset.
        #[serde(default)]
        dataset: Option<String>,
        #[serde(flatten)]
        common: SourceCommon,
    },
    /// The folders a Flow Service dataset export writes (docs/exports.md), from S3, Azure, GCS, a
    /// path or the Data Landing Zone.
    #[serde(rename = "dataset-export")]
    DatasetExport(Box<ExportSource>),
    /// Profiles and their audience memberships, exported by a profile export job into a
    /// dataset and landed as `profiles`, `audiences` and `audience_summary` (docs/profile-exports.md).
    #[serde(rename = "profile-export")]
    ProfileExport(Box<ProfileExportSource>),
}

impl SourceConfig {
    /// The platform whose Catalog and Schema Registry hold this source's dataset, and the
    /// dataset when the file names it (`None`: the simulator's first); `Err` says why a
    /// source has none.
    pub fn catalog_platform(&self) -> Result<(platform::Platform, Option<String>), String> {
        match self {
            SourceConfig::Aep {
                platform, dataset, ..
            } => Ok((
                platform::Platform::aep(platform).map_err(platform::source_error)?,
                Some(dataset.clone()),
            )),
            SourceConfig::Simulator { data, dataset, .. } => Ok((
                platform::Platform::simulator(data, Default::default()),
                dataset.clone(),
            )),
            SourceConfig::DatasetExport(e) => match (&e.platform, &e.simulator) {
                (Some(p), _) => Ok((
                    platform::Platform::aep(p).map_err(platform::source_error)?,
                    e.dataset.clone(),
                )),
                (None, Some(sim)) => Ok((
                    platform::Platform::simulator(&sim.data, Default::default()),
                    e.dataset.clone(),
                )),
                (None, None) => Err(
                    "[source.platform] (or [source.simulator]) is needed to read the dataset's schema"
                        .into(),
                ),
            },
            SourceConfig::ProfileExport(_) => Err(
                "a profile-export pipeline lands profiles and memberships, not a dataset's rows"
                    .into(),
            ),
        }
    }

    /// Where the source's dataset lives, as lineage names it: `aep://{org}/{sandbox}`, or
    /// `aep://simulator` for the bundled simulator.
    pub(crate) fn lineage_namespace(&self) -> String {
        let platform = match self {
            SourceConfig::Aep { platform, .. } => Some(platform),
            SourceConfig::Simulator { .. } => None,
            SourceConfig::DatasetExport(e) => e.platform.as_ref(),
            SourceConfig::ProfileExport(p) => p.platform.as_ref(),
        };
        match platform {
            Some(p) => format!("aep://{}/{}", p.org_id, p.sandbox),
            None => "aep://simulator".to_string(),
        }
    }
}

/// What a source staged for the transform, and what the state keeps of it.
pub(crate) struct Ingested {
    pub input: Input,
    /// Batch ids, or export folders, landed by this run.
    pub landed: Vec<String>,
    /// Creation (batches, export jobs) or export time (folders) of the newest, epoch ms.
    pub last_created: Option<i64>,
    /// What the state keeps of export folders not landed yet (see [`export::observe`]).
    pub seen_folders: BTreeMap<String, SeenFolder>,
}

/// The rows to transform.
pub(crate) enum Input {
    /// Customer AI score rows, from batches or export folders.
    Scores {
        staged: Vec<StagedBatch>,
        /// Files of the scores already landed, to merge with (an incremental export).
        merge_with: Vec<PathBuf>,
        /// The run holds the dataset's whole content: every score date of it is replaced.
        replace_dataset: bool,
    },
    /// A profile export's night, with the landed nights it builds on.
    Profiles(Box<ProfileTables>),
    /// Any dataset's rows, with its schema (the Schema Registry's `xed-full` form), landed
    /// from that schema (`[transform.dataset]`).
    Dataset {
        staged: Vec<StagedBatch>,
        schema: catalog::DatasetSchema,
    },
}

impl SourceConfig {
    /// Everything that can be checked without running; errors name the key. `placeholders`:
    /// for `validate`, variables not set here stand as `unset-NAME`, and a platform URL made of
    /// one is checked where the pipeline runs.
    pub(crate) fn check(&self, placeholders: bool) -> Result<(), String> {
        let unset_url = |p: Option<&PlatformSettings>| {
            placeholders && p.is_some_and(|p| crate::interpolate::is_unset(&p.platform_url))
        };
        match self {
            SourceConfig::Aep {
                platform, common, ..
            } => {
                let mut platform = platform.clone();
                if placeholders {
                    for url in [&mut platform.platform_url, &mut platform.ims_url] {
                        if crate::interpolate::is_unset(url) {
                            *url = "https://unset.invalid".into();
                        }
                    }
                }
                platform::Platform::aep(&platform).map_err(platform::source_error)?;
                common.download_options().map(drop)
            }
            SourceConfig::Simulator { common, .. } => common.download_options().map(drop),
            SourceConfig::DatasetExport(src) if !unset_url(src.platform.as_ref()) => src.check(),
            SourceConfig::ProfileExport(src) if !unset_url(src.platform.as_ref()) => src.check(),
            SourceConfig::DatasetExport(_) | SourceConfig::ProfileExport(_) => Ok(()),
        }
    }

    /// Selects what is new and stages it for the transform. `None`: nothing to land (nothing
    /// new, or a dry run, whose record says what would be landed).
    pub(crate) async fn prepare(
        &self,
        cx: &RunContext<'_>,
        record: &mut RunRecord,
    ) -> Result<Option<Ingested>, PipelineError> {
        match self {
            SourceConfig::Aep {
                platform,
                dataset,
                common,
            } => {
                let platform = platform::Platform::aep(platform)
                    .map_err(|e| cx.invalid(platform::source_error(e)))?;
                catalog::prepare(platform, Some(dataset), common, cx, record).await
            }
            SourceConfig::Simulator {
                data,
                dataset,
                common,
            } => {
                let platform = platform::Platform::simulator(data, Default::default());
                catalog::prepare(platform, dataset.as_ref(), common, cx, record).await
            }
            SourceConfig::DatasetExport(src) => src.prepare(cx, record).await,
            SourceConfig::ProfileExport(src) => src.prepare(cx, record).await,
        }
    }
}

/// Where the simulator writes the destinations of its exports, by default.
pub(crate) fn sim_exports(staging: &Path) -> PathBuf {
    crate::context::absolute(&staging.join("sim-exports"))
}
