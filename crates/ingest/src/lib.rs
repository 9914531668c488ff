//! Everything that talks to Adobe Experience Platform: IMS server-to-server auth, Catalog batch
//! discovery, Data Access listing, and parallel, resumable, verified downloads of every part of a
//! batch into local staging.
//!
//! A batch is handed on only when complete: each part is streamed to a temporary name, checked
//! (bytes against the listing and `Content-Length`, parquet footer readable), renamed, and the
//! batch's rows are checked against Catalog's `metrics.outputRecordCount` before its
//! `manifest.json` is written. The manifest is the mark of a complete batch.

mod auth;
mod catalog;
mod client;
mod config;
mod download;
mod error;
mod exports;
mod flows;
mod labels;
mod listing;
mod manifest;
mod paging;
mod pgp;
mod profile;
mod retry;
mod sftp;
mod values;

pub use auth::{Credentials, Secret};
pub use catalog::{ANY_CLIENT, BatchSelection, CatalogBatch, PROFILE_UNION_SCHEMA, SCORING_CLIENT};
pub use client::AepClient;
pub use config::{
    DownloadOptions, MAX_CONCURRENCY, PlatformConfig, PlatformSettings, RetryPolicy, RowCountCheck,
    check_concurrency,
};
pub use download::{DownloadObserver, DownloadReport, NoProgress, partial_name};
pub use error::IngestError;
pub use exports::{
    DEFAULT_FOLDER_TEMPLATE, ExportFile, ExportFolder, ExportFormat, ExportManifest, FolderPattern,
    StagedExport, list_export_folders, stage_export_folder,
};
pub use flows::{
    AwsDlzCredentials, Compression, DATA_LAKE_SPEC, DEFAULT_FLOW_LIFETIME, Destination,
    DestinationAuth, Dlz, DlzCredentials, ExportFlowSpec, ExportMode, ExportTarget,
    ExportableDataset, FileType, Flow, FlowRun, NotReadyRetry, Schedule, TimeUnit,
};
pub use labels::DataLabels;
pub use listing::RemotePart;
pub use manifest::{Manifest, ManifestPart};
pub use pgp::{PgpKey, encrypted_name};
pub use profile::{
    ExportBatch, ExportJob, ExportJobRequest, JobError, ScheduleType, SegmentFilter, SegmentJob,
    SegmentSchedule, check_cron,
};
pub use retry::{PollEvery, Polled, poll_job};
pub use sftp::{SftpOptions, SftpStore};
pub use values::{HumanDuration, Size};
