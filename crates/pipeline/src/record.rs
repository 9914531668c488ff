//! What a run leaves in the warehouse besides its tables: the pipeline's state
//! (`_state/<pipeline>.json`) and the run record (`_runs/<pipeline>/<run id>.json`), and the
//! tables a warehouse holds.

use std::time::Duration;

use scoreland_transform::{CheckResult, ModelHistogram};
use serde::{Deserialize, Serialize};

/// The tables a scores run lands.
pub const TABLES: [&str; 3] = ["scores", "summary", "drift"];

/// Every table a warehouse can hold: the scores tables, the checks' results, and those of
/// profile exports.
pub const ALL_TABLES: [&str; 7] = [
    "scores",
    "summary",
    "drift",
    "checks",
    "profiles",
    "audiences",
    "audience_summary",
];

/// Every table readers of `warehouse` see: scoreland's own, and each dataset a pipeline
/// landed from its schema (`[transform.dataset]`), as `_published` names them. A name that
/// is not a plain table name (lower-case letters, digits, `_`) is not a table.
pub async fn warehouse_tables(
    warehouse: &scoreland_sink::Warehouse,
) -> Result<Vec<String>, scoreland_sink::SinkError> {
    let mut tables: Vec<String> = ALL_TABLES.iter().map(|t| t.to_string()).collect();
    for name in warehouse.published_versions().await?.into_keys() {
        let plain = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain && !tables.contains(&name) {
            tables.push(name);
        }
    }
    Ok(tables)
}

/// Whether a table's nights are date partitions (`score_date`, or `night` for the profile
/// tables), each replaced whole by the run that lands it; `drift` instead gains rows (one per
/// model and run; `checks`, one per check and run).
pub fn by_score_date(table: &str) -> bool {
    table != "drift" && table != "checks"
}

/// A table's date partition column.
pub fn date_column(table: &str) -> &'static str {
    if AUDIENCE_TABLES.contains(&table) {
        "night"
    } else {
        "score_date"
    }
}

/// Where a pipeline's state is kept in the warehouse.
pub(crate) fn state_rel(pipeline: &str) -> String {
    format!("_state/{pipeline}.json")
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
    /// Rows of the last landed night's scores: the baseline of the `volume` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rows: Option<u64>,
    /// A profile export job made by a run that has not landed it yet: the next run waits for
    /// it (or lands it) rather than exporting again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_export_job: Option<i64>,
    /// Export folders newer than the last landed, as runs without platform access saw them:
    /// the settle time counts from the first run that saw a folder's present content.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub seen_folders: std::collections::BTreeMap<String, crate::source::SeenFolder>,
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
    /// The quality gate's results (`[checks]`), landed or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    /// Checks whose failure the operator chose to land anyway (`--skip-checks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_checks: Vec<String>,
    pub error: Option<String>,
    pub warehouse: String,
    /// What an operator should know although the run did not fail (a flow ending soon, an
    /// export folder gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For a `dataset-export` source: which folders, why each was complete, gaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::source::ExportRecord>,
    /// For a `profile-export` source: the jobs, the night and the counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_export: Option<crate::source::ProfileExportRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftRecord {
    pub model: String,
    pub psi: Option<f64>,
}

/// The tables a profile export lands, each partitioned by `night`.
pub const AUDIENCE_TABLES: [&str; 3] = ["profiles", "audiences", "audience_summary"];

impl RunRecord {
    /// The record of a run starting now: failed until it says otherwise.
    pub(crate) fn start(
        run_id: &str,
        pipeline: &str,
        started: chrono::DateTime<chrono::Utc>,
        warehouse: &str,
    ) -> RunRecord {
        RunRecord {
            run_id: run_id.to_string(),
            pipeline: pipeline.to_string(),
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
            checks: Vec::new(),
            skipped_checks: Vec::new(),
            error: None,
            warehouse: warehouse.to_string(),
            warnings: Vec::new(),
            export: None,
            profile_export: None,
        }
    }

    /// Notes what an operator should know although the run goes on (logged, and kept).
    pub(crate) fn warn(&mut self, warning: String) {
        tracing::warn!("{warning}");
        self.warnings.push(warning);
    }
}

/// Milliseconds, for [`StageTimings`].
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The error and its sources on one line (the run record's `error`).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `_published` comes from the warehouse: a name that is not a plain table name (a path,
    /// a quote, upper case) is never a table, whatever a file there says.
    #[tokio::test]
    async fn only_plain_published_names_are_tables() {
        let dir = tempfile::tempdir().unwrap();
        let wh = scoreland_sink::SinkConfig {
            url: dir.path().display().to_string(),
            options: Default::default(),
            single_writer: false,
        }
        .open()
        .unwrap();
        let versions: std::collections::BTreeMap<&str, u64> = [
            "web_events",
            "../_state",
            "a/b",
            "Web",
            "x\"; DROP",
            "_locks",
            "scores",
            "",
        ]
        .into_iter()
        .map(|n| (n, 1))
        .collect();
        wh.put_json(
            "_published/hostile.json",
            &serde_json::json!({"run_id": "r", "versions": versions}),
        )
        .await
        .unwrap();
        let tables = warehouse_tables(&wh).await.unwrap();
        let mut want: Vec<String> = ALL_TABLES.iter().map(|t| t.to_string()).collect();
        want.push("web_events".into());
        assert_eq!(tables, want);
    }
}
