//! Pipeline files (TOML: source, transform, sink), the wiring of ingest ▸ transform ▸ sink
//! under one run id, the per-pipeline state and lock kept with the warehouse, and JSON run
//! records. ingest, transform and sink never depend on each other; this crate joins them.

mod config;
mod error;
mod exports;
mod profiles;
mod run;

pub use config::{PipelineFile, SinkSection, SourceCommon, SourceConfig, interpolate};
pub use error::PipelineError;
pub use exports::{
    ExportRecord, ExportSource, FlowSection, FolderRecord, FolderSelection, SECRET_VARS,
    SimulatorSection, download as download_export,
};
pub use profiles::{
    AUDIENCE_TABLES, MergePolicy, ProfileExportMode, ProfileExportRecord, ProfileExportSource,
    ProfileSimulator,
};
pub use run::{
    ALL_TABLES, DriftRecord, PipelineState, RunOptions, RunRecord, RunStatus, StageTimings, TABLES,
    TableRecord, by_score_date, date_column, error_chain, run,
};
