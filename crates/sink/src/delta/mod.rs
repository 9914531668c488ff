//! Delta Lake tables on the warehouse's own object store.
//!
//! Every table is a Delta table written with delta-rs through the store the warehouse opened
//! (one set of options, `[sink.options]`, for our files and Delta's), committed with the
//! put-if-absent log store: a commit is one create-if-absent put of `_delta_log/<version>.json`,
//! so of two writers of version N one wins and the other retries on top of it.
//!
//! This file opens tables (the log stores, the builder, a version or a time); `write` lands a
//! run's files, `read` serves readers, `maintain` vacuums and optimizes, `convert` turns the
//! old layout into Delta tables.

use std::collections::BTreeSet;
use std::path::Path as LocalPath;
use std::sync::{Arc, Once};

use arrow::datatypes::Schema as ArrowSchema;
use deltalake::datafusion::dataframe::DataFrameWriteOptions;
use deltalake::datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, lit};
use deltalake::delta_datafusion::DeltaSessionContext;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{
    Action, Add, DataType as KernelType, MetadataExt, StructField, StructType, Transaction,
};
use deltalake::logstore::{LogStore, LogStoreFactory, StorageConfig, default_logstore};
use deltalake::operations::create::CreateBuilder;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use serde::Serialize;
use url::Url;

use crate::datafiles::data_files;
use crate::error::SinkError;
use crate::store::{Warehouse, upload};

mod convert;
mod maintain;
mod published;
mod read;
mod write;

pub use maintain::{FORGET_POINTER, ForgetReport, OptimizeReport};
pub use published::PublishedTable;
pub use read::{QueryOutput, TableFile, TableFiles, TableLabels, TableVersion};
pub use write::{TableCommit, TableWrite};
#[allow(unused_imports)]
use {convert::*, maintain::*, read::*, write::*};

/// Commits between two checkpoints of a table's log.
pub const CHECKPOINT_INTERVAL: &str = "10";

/// Delta's own put-if-absent log store over a store we built, for the cloud schemes (delta-rs
/// registers only `file://` and `memory://` without its AWS, Azure and GCP crates).
struct OwnStoreLogStores;

impl LogStoreFactory for OwnStoreLogStores {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_log_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in [
            "s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "adl://",
        ] {
            if let Ok(url) = Url::parse(scheme) {
                deltalake::logstore::logstore_factories().insert(url, Arc::new(OwnStoreLogStores));
            }
        }
    });
}

fn delta_err<'a>(table: &'a str, op: &'static str) -> impl Fn(DeltaTableError) -> SinkError + 'a {
    move |source| SinkError::Delta {
        table: table.to_string(),
        op,
        source: Box::new(source),
    }
}

impl Warehouse {
    /// The URL of a table's directory (with a trailing slash).
    pub fn table_url(&self, table: &str) -> Url {
        let mut u = self.file_url(table);
        if !u.path().ends_with('/') {
            let p = format!("{}/", u.path());
            u.set_path(&p);
        }
        u
    }

    /// A builder for a table on this warehouse's store.
    fn delta_builder(&self, table: &str) -> Result<DeltaTableBuilder, SinkError> {
        register_log_stores();
        let url = self.table_url(table);
        // Delta takes the store at the root of the bucket (or of the file system) and finds the
        // table under it by the URL's path.
        let root: Arc<dyn ObjectStore> = if url.scheme() == "file" {
            // delta-rs wants a local table's directory to exist, even to create the table.
            if let Ok(dir) = url.to_file_path() {
                std::fs::create_dir_all(&dir)
                    .map_err(|source| SinkError::Local { path: dir, source })?;
            }
            Arc::new(crate::durable::DurableLocal::new())
        } else {
            self.store.clone()
        };
        Ok(DeltaTableBuilder::from_url(url.clone())
            .map_err(delta_err(table, "open"))?
            .with_storage_backend(root, url))
    }

    /// A table at its newest version, or at `version`; `None` when it does not exist yet.
    pub async fn delta_table(
        &self,
        table: &str,
        version: Option<u64>,
    ) -> Result<Option<DeltaTable>, SinkError> {
        self.open_table(table, version.map_or(At::Newest, At::Version))
            .await
    }

    /// A table as of `at`; `None` when it does not exist yet. The log is asked for first, so
    /// that a first run does not make delta-rs log an error for a table it is about to create.
    async fn open_table(&self, table: &str, at: At) -> Result<Option<DeltaTable>, SinkError> {
        if !self.has_objects(&format!("{table}/_delta_log")).await? {
            return Ok(None);
        }
        let builder = self.delta_builder(table)?;
        let builder = match at {
            At::Newest => builder,
            At::Version(v) => builder.with_version(v),
            At::Time(t) => builder
                .with_datestring(t.to_rfc3339())
                .map_err(delta_err(table, "time travel"))?,
        };
        match builder.load().await {
            Ok(t) => Ok(Some(t)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(delta_err(table, "open")(e)),
        }
    }
}

/// Which version of one table to open.
#[derive(Debug, Clone, Copy)]
enum At {
    Newest,
    Version(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

/// Which snapshot of each table a reader sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The versions the newest complete runs published (`_published/`), or the newest
    /// version of a table no run has published.
    Published,
    /// This version of every table.
    Version(u64),
    /// Every table as it was at this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// What a run published: the version of each table its commits made, written once all of
/// them are committed. Readers take these versions, so a crash between two tables' commits is
/// invisible to them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub run_id: String,
    pub versions: std::collections::BTreeMap<String, u64>,
}
