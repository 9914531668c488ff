//! A faithful local simulator of the Adobe Experience Platform endpoints scoreland calls (IMS
//! token, Catalog, Data Access), serving batches from a data directory, with scripted faults;
//! and the generator of sample Customer AI platforms it serves.
//!
//! Tests start it in process on `127.0.0.1:0` with [`start`]; users run `scoreland sim`.
//! Behaviour follows Adobe's public API references and guides for these services; where the
//! simulator differs from AEP, the difference is listed in `docs/simulator.md`.

pub mod attribution;
mod data;
pub mod events;
mod faults;
mod flows;
pub mod generate;
mod profile;
mod profile_export;
pub mod profiles;
pub mod records;
mod server;
pub mod truth;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use data::{Batch, DataSetFile, Dataset, Part, Platform, PlatformInfo, Sandbox};
pub use faults::{ErrorBodyStyle, Fault, FaultSpec, Route};
pub use flows::{DlzAws, DlzServer, ExportFault};
pub use generate::{GenerateOptions, GenerateSummary, generate};
pub use profile_export::{ProfileExportFault, write_export_part, write_profile_export};
pub use server::{EntraApp, SimConfig, SimHandle, start, xdm_properties};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON for the simulator")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not a readable parquet file")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate the sample platform: {0}")]
    Generate(String),
}

impl SimError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SimError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Loads `dir` and serves it on `addr` (port 0 picks a free port).
pub async fn serve_dir(
    dir: &Path,
    config: SimConfig,
    addr: SocketAddr,
) -> Result<SimHandle, SimError> {
    let platform = Platform::load(dir)?;
    start(platform, config, addr).await
}
