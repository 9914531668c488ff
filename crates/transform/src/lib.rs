//! The transform stage: staged parts of one or more batches become two clean tables, one row
//! per identity and model with flat typed columns (`scores`), and score summaries per model and
//! score date (`summary`); plus population-stability drift against the previous run (`drift`).
//!
//! Parts are read as one union (schemas merged by column name: parts are grouped by schema and
//! each group flattened to the same flat columns, so a field only some parts have is null
//! elsewhere). The winner of each (identity, model) is chosen on narrow keys (`dedupe.rs`);
//! then each part is read once and its winners written, on every core (`scores.rs`), with the
//! summaries accumulated on the way (`summary.rs`). The tables are written into a local work
//! directory (scores Hive-partitioned by `score_date`), from where the sink publishes them.
//! DataFusion types the union, writes the small tables and the text formats, under a memory
//! pool that spills to disk.

mod attribution;
mod audiences;
mod checks;
mod config;
mod dataset;
mod dedupe;
mod distributed;
mod drift;
mod error;
mod flatten;
mod forget;
mod json;
mod records;
mod run;
mod scores;
mod shared;
mod summary;
mod workers;
mod xdm;

pub use audiences::{
    Carry, ProfileOutput, ProfileStats, ProfileTables, STATUSES as AUDIENCE_STATUSES, parse_time,
    write_profile_tables,
};
pub use checks::{
    CHECK_NAMES, CheckResult, ChecksConfig, Drift as DriftCheck, Freshness, Level, ModelRows,
    Night, NullRate, ScoreRange, Status as CheckStatus, UniqueKey, Volume,
};
pub use config::{Engine, Mapping, ModelMapping, OutputFormat, TransformConfig};
pub use dataset::{
    DatasetLanding, DatasetSummary, EVENT_CLASS, EVENT_DATE, EventDataset, EventScan, EventStats,
    Explode, FieldLabels, NamedExplode, column_labels, is_event_schema,
};
pub use drift::{DRIFT_EPSILON, ModelHistogram, psi};
pub use error::TransformError;
pub use forget::{drop_identities, identity_digest};
pub use records::{RecordDataset, RecordStats};
pub use run::{StagedBatch, TableFacts, TransformOutput, TransformStats, Transformer, table_facts};
pub use scoreland_runtime::{MemoryLimit, default_memory_limit, labels};
pub use xdm::{XdmColumn, columns as xdm_columns};

/// The plan node a cluster's executors write the scores job's kept rows with, which every
/// process of the cluster must carry (`scoreland cluster`).
pub fn cluster_writer() -> std::sync::Arc<dyn scoreland_runtime::engine::NodeCodec> {
    std::sync::Arc::new(distributed::KeptWriterCodec)
}

/// Re-exported so callers can name record batches without their own arrow dependency.
pub use datafusion::arrow;
