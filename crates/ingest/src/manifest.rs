//! `manifest.json`: the record of a complete, verified staged batch. It is written last, so a
//! batch directory without one is incomplete and is never handed on.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::CatalogBatch;
use crate::error::IngestError;

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestPart {
    pub dataset_file_id: String,
    pub name: String,
    /// Relative to the batch directory.
    pub path: String,
    pub bytes: u64,
    pub rows: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub dataset_id: String,
    pub batch: CatalogBatch,
    pub parts: Vec<ManifestPart>,
    pub rows: u64,
    pub bytes: u64,
    /// `true` when the rows differed from Catalog's count and the check was set to warn.
    pub row_count_mismatch: bool,
    /// RFC 3339.
    pub verified_at: String,
}

impl Manifest {
    /// `staging/<dataset>/<batch>`.
    pub fn batch_dir(staging: &Path, dataset: &str, batch: &str) -> PathBuf {
        staging.join(dataset).join(batch)
    }

    /// The manifest of a complete staged batch, or `None` when the batch is not (yet) complete.
    pub fn read(batch_dir: &Path) -> Result<Option<Manifest>, IngestError> {
        let path = batch_dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IngestError::io(path, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            IngestError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Absolute paths of the parts.
    pub fn part_paths(&self, batch_dir: &Path) -> Vec<PathBuf> {
        self.parts.iter().map(|p| batch_dir.join(&p.path)).collect()
    }

    /// Removes the staged batches of `dataset` verified longer than `older_than` ago (or, with
    /// no manifest, last touched that long ago), except those in `keep`. Returns the batch ids
    /// removed. This is the staging retention: staged parts are the resume cache and the audit
    /// trail of recent nights, not an archive.
    pub fn prune(
        staging: &Path,
        dataset: &str,
        keep: &[String],
        older_than: std::time::Duration,
    ) -> Result<Vec<String>, IngestError> {
        let dir = staging.join(dataset);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IngestError::io(&dir, e)),
        };
        let now = chrono::Utc::now();
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IngestError::io(&dir, e))?;
            let path = entry.path();
            let id = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() || keep.contains(&id) {
                continue;
            }
            let verified = Manifest::read(&path).ok().flatten().and_then(|m| {
                chrono::DateTime::parse_from_rfc3339(&m.verified_at)
                    .ok()
                    .map(|t| t.with_timezone(&chrono::Utc))
            });
            let touched = || {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .map(chrono::DateTime::<chrono::Utc>::from)
            };
            let Some(at) = verified.or_else(touched) else {
                continue;
            };
            let age = now.signed_duration_since(at).to_std().unwrap_or_default();
            if age > older_than {
                std::fs::remove_dir_all(&path).map_err(|e| IngestError::io(&path, e))?;
                removed.push(id);
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// Writes the manifest under a temporary name and renames it into place.
    pub(crate) fn write(&self, batch_dir: &Path) -> Result<(), IngestError> {
        let path = batch_dir.join(MANIFEST_FILE);
        let tmp = batch_dir.join(".manifest.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| {
            IngestError::io(
                &tmp,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            use std::io::Write;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        written.map_err(|e| IngestError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| IngestError::io(&path, e))?;
        std::fs::File::open(batch_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| IngestError::io(batch_dir, e))
    }
}
