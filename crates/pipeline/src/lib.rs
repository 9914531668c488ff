//! Pipeline files (TOML: source, transform, sink), the wiring of ingest ▸ transform ▸ sink
//! under one run id, the per-pipeline state and lock kept with the warehouse, and JSON run
//! records. ingest, transform and sink never depend on each other; this crate joins them.
//!
//! A run ([`run`]) takes the pipeline's lock, has its source ([`source`]) select and stage
//! what is new, transforms it (`transform`), and publishes the tables (`publish`); what it
//! keeps of itself is in [`record`].

mod config;
mod context;
mod error;
pub mod forget;
mod interpolate;
mod lineage;
mod publish;
pub mod record;
mod run;
pub mod source;
mod transform;

pub use config::{PipelineFile, SinkSection};
pub use context::RunOptions;
pub use error::PipelineError;
pub use interpolate::interpolate;
pub use lineage::LineageConfig;
pub use record::{
    ALL_TABLES, AUDIENCE_TABLES, DriftRecord, PipelineState, RunRecord, RunStatus, StageTimings,
    TABLES, TableRecord, by_score_date, date_column, error_chain, warehouse_tables,
};
pub use run::run;
pub use source::export::download as download_export;
pub use source::platform::{Connected, Platform};
pub use source::{
    ExportPlan, ExportRecord, ExportSource, FlowSection, FolderRecord, FolderSelection,
    MergePolicy, PlanCheck, PlanVerdict, ProfileExportMode, ProfileExportRecord,
    ProfileExportSource, ProfileSimulator, SECRET_VARS, SimulatorSection, SourceCommon,
    SourceConfig, export_plan,
};
