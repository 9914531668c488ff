//! The simulator's data directory: what is on disk and the in-memory index built from it.
//!
//! ```text
//! DIR/platform.json                                   org, credentials, tenant
//! DIR/<sandbox>/<datasetId>/dataset.json              Catalog dataset object (served as is)
//! DIR/<sandbox>/<datasetId>/<batchId>/batch.json      Catalog batch object (metrics derived)
//! DIR/<sandbox>/<datasetId>/<batchId>/<dataSetFileId>/part-*.parquet
//! ```
//!
//! Batch metrics (`outputRecordCount`, `outputByteSize`, …) are derived from the parquet parts
//! unless `batch.json` already carries a `metrics` object, which lets a test stage a batch whose
//! Catalog record disagrees with its files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::SimError;

/// `platform.json`: who may call the platform, and the tenant namespace of its schemas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformInfo {
    pub org_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub tenant: String,
}

/// One parquet part of a dataSetFile.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub path: PathBuf,
    pub length: u64,
    pub rows: u64,
}

/// One dataSetFile: in Customer AI output, a directory of parts.
#[derive(Debug, Clone)]
pub struct DataSetFile {
    pub id: String,
    /// Sorted by name: listings page through them in this order.
    pub parts: Vec<Part>,
}

impl DataSetFile {
    pub fn records(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum()
    }
    pub fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.length).sum()
    }
}

#[derive(Debug, Clone)]
pub struct Batch {
    pub id: String,
    pub dataset_id: String,
    /// The Catalog object as served (without the id key wrapper).
    pub object: Map<String, Value>,
    pub files: Vec<DataSetFile>,
}

impl Batch {
    pub fn created(&self) -> i64 {
        self.object
            .get("created")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }
    /// `replay.predecessors`: the batches this one replaces.
    pub fn replaces(&self) -> impl Iterator<Item = &str> {
        self.object
            .get("replay")
            .and_then(|r| r.get("predecessors"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }
    /// Every part of every dataSetFile, in listing order.
    pub fn part_paths(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .flat_map(|f| f.parts.iter().map(|p| p.path.clone()))
            .collect()
    }
    pub fn status(&self) -> &str {
        self.object
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn created_client(&self) -> &str {
        self.object
            .get("createdClient")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub id: String,
    pub object: Map<String, Value>,
}

impl Dataset {
    pub fn name(&self) -> &str {
        self.object
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    pub datasets: BTreeMap<String, Dataset>,
    pub batches: BTreeMap<String, Batch>,
}

/// Everything the simulator serves, loaded once at start.
#[derive(Debug, Clone)]
pub struct Platform {
    pub info: PlatformInfo,
    pub sandboxes: BTreeMap<String, Sandbox>,
    /// The directory it was loaded from (its profile store, if any, is under it).
    pub dir: PathBuf,
}

impl Platform {
    pub fn load(dir: &Path) -> Result<Self, SimError> {
        let info_path = dir.join("platform.json");
        let info: PlatformInfo = read_json(&info_path)?;
        let mut sandboxes = BTreeMap::new();
        for sandbox_dir in subdirs(dir)? {
            let sandbox_name = file_name(&sandbox_dir);
            if sandbox_name == crate::profiles::PROFILES_DIR {
                continue; // the profile store, not a sandbox
            }
            let mut sandbox = Sandbox::default();
            for dataset_dir in subdirs(&sandbox_dir)? {
                let dataset_id = file_name(&dataset_dir);
                let object: Map<String, Value> = read_json(&dataset_dir.join("dataset.json"))?;
                for batch_dir in subdirs(&dataset_dir)? {
                    let batch = load_batch(&batch_dir, &dataset_id, &info)?;
                    sandbox.batches.insert(batch.id.clone(), batch);
                }
                sandbox.datasets.insert(
                    dataset_id.clone(),
                    Dataset {
                        id: dataset_id,
                        object,
                    },
                );
            }
            sandboxes.insert(sandbox_name, sandbox);
        }
        Ok(Platform {
            info,
            sandboxes,
            dir: dir.to_path_buf(),
        })
    }
}

pub(crate) fn load_batch(
    dir: &Path,
    dataset_id: &str,
    info: &PlatformInfo,
) -> Result<Batch, SimError> {
    let id = file_name(dir);
    let mut object: Map<String, Value> = read_json(&dir.join("batch.json"))?;
    let mut files = Vec::new();
    for file_dir in subdirs(dir)? {
        let mut parts = Vec::new();
        for entry in std::fs::read_dir(&file_dir).map_err(|e| SimError::io(&file_dir, e))? {
            let entry = entry.map_err(|e| SimError::io(&file_dir, e))?;
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let length = entry.metadata().map_err(|e| SimError::io(&path, e))?.len();
            let rows = parquet_rows(&path)?;
            parts.push(Part {
                name: file_name(&path),
                path,
                length,
                rows,
            });
        }
        parts.sort_by(|a, b| a.name.cmp(&b.name));
        files.push(DataSetFile {
            id: file_name(&file_dir),
            parts,
        });
    }
    files.sort_by(|a, b| a.id.cmp(&b.id));

    object.insert("id".into(), json!(id));
    object.entry("imsOrg").or_insert_with(|| json!(info.org_id));
    object.entry("externalId").or_insert_with(|| json!(id));
    object.entry("version").or_insert_with(|| json!("1.0.5"));
    let has_related = object.contains_key("relatedObjects");
    if !has_related {
        // AEP lists related objects in no fixed order; clients must search by `type`.
        object.insert(
            "relatedObjects".into(),
            json!([{"type": "batch", "id": id}, {"type": "dataSet", "id": dataset_id}]),
        );
    }
    let success = matches!(
        object.get("status").and_then(Value::as_str),
        Some("success" | "active")
    );
    if success && !object.contains_key("metrics") {
        let records: u64 = files.iter().map(DataSetFile::records).sum();
        let bytes: u64 = files.iter().map(DataSetFile::size).sum();
        let parts: usize = files.iter().map(|f| f.parts.len()).sum();
        object.insert(
            "metrics".into(),
            json!({
                "partitionCount": parts,
                "outputByteSize": bytes,
                "inputFileCount": -1,
                "inputByteSize": bytes,
                "outputRecordCount": records,
                "outputFileCount": files.len(),
                "inputRecordCount": records,
            }),
        );
    }
    Ok(Batch {
        id,
        dataset_id: dataset_id.to_string(),
        object,
        files,
    })
}

fn parquet_rows(path: &Path) -> Result<u64, SimError> {
    let file = File::open(path).map_err(|e| SimError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|source| SimError::Parquet {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SimError> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| SimError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| SimError::io(dir, e))? {
        let entry = entry.map_err(|e| SimError::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() && !file_name(&path).starts_with('.') {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
