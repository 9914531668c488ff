//! Dataset export folders (docs/exports.md): finding them in a store, and staging one
//! verified, as parquet, for the transform.
//!
//! A flow writes `{path}/{datasetId}/exportTime=YYYYMMDDHHMM/` (or a folder named by its
//! `foldernameTemplate`) holding randomly named `.parquet`, `.gz.parquet` or `.json.gz` files.
//! Which folders are complete is the caller's decision (the flow's runs, or a settle time); this
//! module lists what is there and stages exactly what was listed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::error::IngestError;
use crate::listing::is_safe_name;

/// AEP's folder when the flow has no `foldernameTemplate`.
pub const DEFAULT_FOLDER_TEMPLATE: &str = "%DATASET_ID%/exportTime=%EXPORT_TIME%";

/// The file formats a dataset export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Parquet,
    /// `.gz.parquet` (sic): parquet with gzip-compressed pages.
    GzParquet,
    /// `.json.gz`: JSON records, one per line or a top-level array, gzip-compressed.
    JsonGz,
    /// `.json`: JSON records uncompressed.
    Json,
}

impl ExportFormat {
    pub fn of(name: &str) -> Option<Self> {
        if name.ends_with(".gz.parquet") {
            Some(ExportFormat::GzParquet)
        } else if name.ends_with(".parquet") {
            Some(ExportFormat::Parquet)
        } else if name.ends_with(".json.gz") {
            Some(ExportFormat::JsonGz)
        } else if name.ends_with(".json") {
            Some(ExportFormat::Json)
        } else {
            None
        }
    }

    fn is_json(self) -> bool {
        matches!(self, ExportFormat::JsonGz | ExportFormat::Json)
    }
}

/// One data file of an export folder, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportFile {
    pub name: String,
    pub size: u64,
    /// The format of its contents (of the decrypted file, when it is encrypted).
    pub format: ExportFormat,
    /// OpenPGP-encrypted (`.gpg`, `.pgp` after the format's own suffix).
    #[serde(default)]
    pub encrypted: bool,
    #[serde(skip)]
    location: ObjectPath,
}

/// One export folder, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportFolder {
    /// Relative to the flow's folder: `{datasetId}/exportTime=YYYYMMDDHHMM`.
    pub rel: String,
    pub export_time: DateTime<Utc>,
    pub files: Vec<ExportFile>,
    /// Objects that are not (yet) data: a writer's temporary or hidden files.
    pub unfinished: Vec<String>,
    /// Names whose extension is not an export format's.
    pub unknown: Vec<String>,
    /// When the newest object of the folder was written.
    pub last_modified: DateTime<Utc>,
    /// What AEP's manifests in the folder (`manifest-<destination>-<run>.json`) list, when
    /// the flow writes them.
    pub manifest: Option<ExportManifest>,
}

/// The files AEP's manifests of a folder list (`exportResults[]`: `sinkPath`, `name`, `size`),
/// by name, and which manifests said so.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportManifest {
    pub names: Vec<String>,
    pub files: std::collections::BTreeMap<String, u64>,
}

/// One manifest file as AEP writes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestFile {
    #[serde(default)]
    export_results: Vec<ManifestEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestEntry {
    #[serde(default)]
    sink_path: String,
    name: String,
    size: u64,
}

/// Whether `name` (a file directly in a folder) is one of AEP's manifests.
fn is_manifest(name: &str) -> bool {
    name.starts_with("manifest-") && name.ends_with(".json")
}

impl ExportFolder {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// A directory name for the folder in staging: `export-YYYYMMDDHHMM`.
    pub fn staging_name(&self) -> String {
        format!("export-{}", self.export_time.format("%Y%m%d%H%M"))
    }
}

/// A folder template as a matcher of relative directory paths, giving each one's export time.
#[derive(Debug, Clone)]
pub struct FolderPattern {
    segments: Vec<Vec<Token>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(String),
    /// `%EXPORT_TIME%`: `YYYYMMDDHHMM`.
    ExportTime,
    /// `%DATETIME(YYYYMMdd_HHmmss)%`.
    DateTime,
    /// Any other macro: one or more characters other than `/`.
    Any,
}

impl FolderPattern {
    /// `template` with `%DATASET_ID%` made literal; it must hold a time macro.
    pub fn new(template: &str, dataset: &str) -> Result<Self, String> {
        let template = template.replace("%DATASET_ID%", dataset);
        let mut segments = Vec::new();
        let mut timed = false;
        for seg in template.split('/').filter(|s| !s.is_empty()) {
            let mut tokens = Vec::new();
            let mut rest = seg;
            while let Some(start) = rest.find('%') {
                if start > 0 {
                    tokens.push(Token::Literal(rest[..start].to_string()));
                }
                let after = &rest[start + 1..];
                let end = after
                    .find('%')
                    .ok_or_else(|| format!("the folder template {template:?} has an unclosed %"))?;
                let token = match &after[..end] {
                    "EXPORT_TIME" => Token::ExportTime,
                    "DATETIME(YYYYMMdd_HHmmss)" => Token::DateTime,
                    _ => Token::Any,
                };
                timed |= matches!(token, Token::ExportTime | Token::DateTime);
                tokens.push(token);
                rest = &after[end + 1..];
            }
            if !rest.is_empty() {
                tokens.push(Token::Literal(rest.to_string()));
            }
            segments.push(tokens);
        }
        if !timed {
            return Err(format!(
                "the folder template {template:?} has no %EXPORT_TIME% or %DATETIME(YYYYMMdd_HHmmss)%: folders could not be ordered"
            ));
        }
        Ok(FolderPattern { segments })
    }

    pub fn depth(&self) -> usize {
        self.segments.len()
    }

    /// The leading segments that are plain names (`{datasetId}` by default): the listing
    /// starts there, so other datasets' folders beside it are not read.
    pub fn literal_prefix(&self) -> Vec<String> {
        self.segments
            .iter()
            .map_while(|tokens| match tokens.as_slice() {
                [Token::Literal(l)] => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    /// The export time of a folder path (relative, `/`-separated), if it matches.
    pub fn export_time(&self, rel: &str) -> Option<DateTime<Utc>> {
        let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut time = None;
        for (part, tokens) in parts.iter().zip(&self.segments) {
            if let Some(t) = match_segment(part, tokens)? {
                time = Some(t);
            }
        }
        time
    }
}

/// Matches one path segment; `Some(time)` when it matched and held a time.
fn match_segment(mut s: &str, tokens: &[Token]) -> Option<Option<DateTime<Utc>>> {
    let mut time = None;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Literal(l) => s = s.strip_prefix(l.as_str())?,
            Token::ExportTime => {
                let digits = s.get(..12)?;
                let t = NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M").ok()?;
                time = Some(t.and_utc());
                s = &s[12..];
            }
            Token::DateTime => {
                let digits = s.get(..15)?;
                let t = NaiveDateTime::parse_from_str(digits, "%Y%m%d_%H%M%S").ok()?;
                time = Some(t.and_utc());
                s = &s[15..];
            }
            Token::Any => {
                // Up to the next literal, or the rest.
                match tokens.get(i + 1) {
                    Some(Token::Literal(next)) => {
                        let at = s.find(next.as_str())?;
                        if at == 0 {
                            return None;
                        }
                        s = &s[at..];
                    }
                    _ => {
                        if s.is_empty() {
                            return None;
                        }
                        s = "";
                    }
                }
            }
        }
    }
    s.is_empty().then_some(time)
}

fn store_error(what: &str, source: object_store::Error) -> IngestError {
    IngestError::Store {
        what: what.to_string(),
        source,
    }
}

/// Every export folder under `root` that matches `pattern`, oldest first. Directories under
/// the dataset that do not match are returned as errors: a folder name that does not parse is
/// never skipped silently.
pub async fn list_export_folders(
    store: &Arc<dyn ObjectStore>,
    root: &ObjectPath,
    pattern: &FolderPattern,
) -> Result<Vec<ExportFolder>, IngestError> {
    let start = pattern
        .literal_prefix()
        .iter()
        .fold(root.clone(), |p, s| p.clone().join(s.as_str()));
    let objects: Vec<object_store::ObjectMeta> = store
        .list(Some(&start))
        .try_collect()
        .await
        .map_err(|e| store_error(&format!("listing {root}"), e))?;
    let prefix: Vec<String> = root.parts().map(|p| p.as_ref().to_string()).collect();
    let mut folders: std::collections::BTreeMap<String, ExportFolder> = Default::default();
    let (mut started, mut committed) = (BTreeSet::new(), BTreeSet::new());
    let mut manifests = Vec::new();
    for o in objects {
        let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
        let rel_parts = &parts[prefix.len().min(parts.len())..];
        if rel_parts.len() <= pattern.depth() {
            continue; // files beside the folders (a manifest, a marker)
        }
        // Files of writers' temporary subdirectories (`_temporary/…`) belong to the folder.
        let folder_rel = rel_parts[..pattern.depth()].join("/");
        let Some(time) = pattern.export_time(&folder_rel) else {
            return Err(IngestError::BadExportFolder {
                folder: folder_rel,
                why: "its name does not follow the flow's folder pattern".into(),
            });
        };
        let name = rel_parts[pattern.depth()..].join("/");
        let folder = folders
            .entry(folder_rel.clone())
            .or_insert_with(|| ExportFolder {
                rel: folder_rel.clone(),
                export_time: time,
                files: Vec::new(),
                unfinished: Vec::new(),
                unknown: Vec::new(),
                last_modified: o.last_modified,
                manifest: None,
            });
        folder.last_modified = folder.last_modified.max(o.last_modified);
        // Spark's transactional commit protocol: `_started_<txn>` when a job begins writing,
        // `_committed_<txn>` when it has. A started job without its commit is unfinished.
        if let Some(txn) = name.strip_prefix("_started_") {
            started.insert((folder_rel.clone(), txn.to_string()));
            continue;
        }
        if let Some(txn) = name.strip_prefix("_committed_") {
            committed.insert((folder_rel.clone(), txn.to_string()));
            continue;
        }
        if is_manifest(&name) {
            manifests.push((folder_rel.clone(), name, o.location));
            continue;
        }
        if name.contains('/') || name.starts_with('.') || name.starts_with('_') {
            if name != "_SUCCESS" {
                folder.unfinished.push(name);
            }
            continue;
        }
        let plain = crate::pgp::encrypted_name(&name);
        match ExportFormat::of(plain.unwrap_or(&name)) {
            Some(format) => folder.files.push(ExportFile {
                encrypted: plain.is_some(),
                name,
                size: o.size,
                format,
                location: o.location,
            }),
            None => folder.unknown.push(name),
        }
    }
    for (folder, txn) in started.difference(&committed) {
        if let Some(f) = folders.get_mut(folder) {
            f.unfinished
                .push(format!("_started_{txn} (no _committed_{txn} yet)"));
        }
    }
    for (folder_rel, name, location) in manifests {
        let bad = |why: String| IngestError::BadExportFolder {
            folder: folder_rel.clone(),
            why,
        };
        let bytes = object_store::ObjectStoreExt::get(store.as_ref(), &location)
            .await
            .map_err(|e| store_error(&format!("reading {location}"), e))?
            .bytes()
            .await
            .map_err(|e| store_error(&format!("reading {location}"), e))?;
        let parsed: ManifestFile = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "its manifest {name} is not AEP's manifest JSON: {e}"
            ))
        })?;
        let Some(folder) = folders.get_mut(&folder_rel) else {
            continue;
        };
        let m = folder.manifest.get_or_insert_with(ExportManifest::default);
        m.names.push(name.clone());
        for entry in parsed.export_results {
            // The entry's folder, when it says, must be this one.
            let sink = entry.sink_path.trim_end_matches('/');
            if !sink.is_empty() && !sink.ends_with(folder_rel.as_str()) {
                return Err(bad(format!(
                    "its manifest {name} lists {} under {sink}, another folder",
                    entry.name
                )));
            }
            m.files.insert(entry.name, entry.size);
        }
    }
    let mut out: Vec<ExportFolder> = folders.into_values().collect();
    for f in &mut out {
        f.files.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out.sort_by(|a, b| {
        a.export_time
            .cmp(&b.export_time)
            .then_with(|| a.rel.cmp(&b.rel))
    });
    Ok(out)
}

/// A folder staged as parquet: the files, in listing order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedExport {
    pub folder: String,
    pub export_time: DateTime<Utc>,
    pub files: Vec<PathBuf>,
    pub rows: u64,
    /// Bytes as listed in the store.
    pub bytes: u64,
    /// Bytes fetched by this call (files already staged are not fetched again).
    pub bytes_downloaded: u64,
}

const STAGED_MARK: &str = "export.json";
/// Attempts at a file in a row without a byte of progress.
const FETCH_ATTEMPTS: u32 = 5;

/// Stages every file of `folder` under `dir`: each is fetched to a temporary name, checked
/// against the listed size, made parquet (JSON records are decoded with one schema for the
/// whole folder), and only then renamed. A folder staged completely before is reused.
pub async fn stage_export_folder(
    store: &Arc<dyn ObjectStore>,
    folder: &ExportFolder,
    dir: &Path,
    concurrency: usize,
    key: Option<&Arc<crate::pgp::PgpKey>>,
) -> Result<StagedExport, IngestError> {
    if let Some(staged) = read_mark(dir)?
        && staged.folder == folder.rel
        && staged.bytes == folder.bytes()
        && staged.files.iter().all(|f| f.exists())
    {
        return Ok(StagedExport {
            bytes_downloaded: 0,
            ..staged
        });
    }
    if let Some(name) = folder.unknown.first() {
        return Err(IngestError::BadExportFolder {
            folder: folder.rel.clone(),
            why: format!(
                "{name:?} is not a dataset export file (.parquet, .gz.parquet, .json.gz or .json, \
                 each maybe .gpg)"
            ),
        });
    }
    if key.is_none()
        && let Some(f) = folder.files.iter().find(|f| f.encrypted)
    {
        return Err(IngestError::BadExportFolder {
            folder: folder.rel.clone(),
            why: format!(
                "{} is OpenPGP-encrypted: give the source a private key to decrypt with \
                 ([source.pgp], its key and passphrase from the environment)",
                f.name
            ),
        });
    }
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).map_err(|e| IngestError::io(&raw, e))?;
    let fetched: Vec<(PathBuf, u64)> = futures::stream::iter(folder.files.iter().map(|f| {
        let raw = raw.clone();
        async move { fetch(store, f, &raw).await }
    }))
    .buffered(concurrency.max(1))
    .try_collect()
    .await?;
    let bytes_downloaded = fetched.iter().map(|(_, n)| n).sum();
    let mut raw_paths: Vec<PathBuf> = fetched.into_iter().map(|(p, _)| p).collect();
    if let Some(key) = key {
        raw_paths = decrypt_files(key, folder, raw_paths).await?;
    }
    let out = dir.join("files");
    std::fs::create_dir_all(&out).map_err(|e| IngestError::io(&out, e))?;
    let files: Vec<(ExportFile, PathBuf)> = folder.files.iter().cloned().zip(raw_paths).collect();
    let folder_rel = folder.rel.clone();
    let out2 = out.clone();
    let (paths, rows) = tokio::task::spawn_blocking(move || to_parquet(&folder_rel, &files, &out2))
        .await
        .map_err(|e| IngestError::BadExportFolder {
            folder: folder.rel.clone(),
            why: format!("conversion stopped: {e}"),
        })??;
    let staged = StagedExport {
        folder: folder.rel.clone(),
        export_time: folder.export_time,
        files: paths,
        rows,
        bytes: folder.bytes(),
        bytes_downloaded,
    };
    let mark = dir.join(STAGED_MARK);
    let text = serde_json::to_vec_pretty(&staged).unwrap_or_default();
    std::fs::write(&mark, text).map_err(|e| IngestError::io(&mark, e))?;
    let _ = std::fs::remove_dir_all(&raw);
    Ok(staged)
}

/// The encrypted files among `raw` decrypted beside them (on the blocking pool, a file at a
/// time); the paths to read the folder's contents from.
async fn decrypt_files(
    key: &Arc<crate::pgp::PgpKey>,
    folder: &ExportFolder,
    raw: Vec<PathBuf>,
) -> Result<Vec<PathBuf>, IngestError> {
    let mut out = Vec::with_capacity(raw.len());
    for (f, path) in folder.files.iter().zip(raw) {
        if !f.encrypted {
            out.push(path);
            continue;
        }
        let plain = path.with_extension("decrypted");
        let (k, src, dst) = (key.clone(), path.clone(), plain.clone());
        let decrypted = tokio::task::spawn_blocking(move || k.decrypt_file(&src, &dst))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if let Err(why) = decrypted {
            // Fetched again next time: a copy that does not decrypt is not kept.
            let _ = std::fs::remove_file(&path);
            return Err(IngestError::BadExportFolder {
                folder: folder.rel.clone(),
                why: format!("{}: {why}; nothing of the folder was staged", f.name),
            });
        }
        let _ = std::fs::remove_file(&path);
        out.push(plain);
    }
    Ok(out)
}

fn read_mark(dir: &Path) -> Result<Option<StagedExport>, IngestError> {
    let path = dir.join(STAGED_MARK);
    match std::fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IngestError::io(path, e)),
    }
}

/// Fetches one file to `raw/NAME` (via `NAME.partial`), checking its size. A whole file
/// already there is kept. Returns the path and the bytes fetched.
async fn fetch(
    store: &Arc<dyn ObjectStore>,
    f: &ExportFile,
    raw: &Path,
) -> Result<(PathBuf, u64), IngestError> {
    if !is_safe_name(&f.name) {
        return Err(IngestError::BadExportFolder {
            folder: f.location.to_string(),
            why: format!("{:?} is not a safe file name", f.name),
        });
    }
    let path = raw.join(&f.name);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == f.size) {
        return Ok((path, 0));
    }
    let partial = raw.join(format!("{}.partial", f.name));
    let mut out = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| IngestError::io(&partial, e))?;
    let what = format!("reading {}", f.location);
    // A connection that drops mid-file is resumed where it stopped: bounded attempts, each
    // counted only while no byte moves (as for Data Access parts).
    let mut n = 0u64;
    let mut failures = 0u32;
    let mut since = std::time::Instant::now();
    loop {
        let options = GetOptions {
            range: (n > 0).then_some(GetRange::Offset(n)),
            ..Default::default()
        };
        let before = n;
        let failure = match store.get_opts(&f.location, options).await {
            Ok(got) => {
                let mut stream = got.into_stream();
                let mut failure = None;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => {
                            n += chunk.len() as u64;
                            out.write_all(&chunk)
                                .await
                                .map_err(|e| IngestError::io(&partial, e))?;
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                match failure {
                    None => break,
                    Some(e) => e,
                }
            }
            Err(e) => e,
        };
        let err = store_error(&what, failure);
        if !err.is_retryable() {
            return Err(err);
        }
        if n > before {
            failures = 1;
            since = std::time::Instant::now();
        } else {
            failures += 1;
        }
        if failures > FETCH_ATTEMPTS {
            return Err(IngestError::GaveUp {
                url: f.location.to_string(),
                attempts: failures,
                elapsed: since.elapsed(),
                source: Box::new(err),
            });
        }
        tracing::warn!(target: "scoreland::retry", file = %f.location, at = n, error = %err, "resuming the file");
        tokio::time::sleep(std::time::Duration::from_millis(200 << failures.min(5))).await;
    }
    out.flush()
        .await
        .map_err(|e| IngestError::io(&partial, e))?;
    drop(out);
    if n != f.size {
        return Err(IngestError::Verify {
            batch: f.location.to_string(),
            name: f.name.clone(),
            reason: format!("{n} bytes read, {} listed", f.size),
        });
    }
    std::fs::rename(&partial, &path).map_err(|e| IngestError::io(&path, e))?;
    Ok((path, n))
}

/// Makes every fetched file parquet under `out`; parquet files are checked (footer and rows)
/// and moved, JSON files decoded with one schema inferred over all of them.
fn to_parquet(
    folder: &str,
    files: &[(ExportFile, PathBuf)],
    out: &Path,
) -> Result<(Vec<PathBuf>, u64), IngestError> {
    let bad = |name: &str, why: String| IngestError::BadExportFolder {
        folder: folder.to_string(),
        why: format!("{name}: {why}"),
    };
    let json: Vec<&(ExportFile, PathBuf)> =
        files.iter().filter(|(f, _)| f.format.is_json()).collect();
    let schema = if json.is_empty() {
        None
    } else {
        let mut schemas = Vec::new();
        for (f, path) in &json {
            let values = json_values(f, path).map_err(|why| bad(&f.name, why))?;
            let s = arrow::json::reader::infer_json_schema_from_iterator(
                values.map(|v| v.map_err(arrow::error::ArrowError::JsonError)),
            )
            .map_err(|e| bad(&f.name, e.to_string()))?;
            schemas.push(s);
        }
        Some(Arc::new(
            arrow::datatypes::Schema::try_merge(schemas).map_err(|e| {
                bad(
                    "the JSON files",
                    format!("their records disagree on types: {e}"),
                )
            })?,
        ))
    };
    let mut paths = Vec::new();
    let mut rows = 0u64;
    for (i, (f, raw)) in files.iter().enumerate() {
        let dst = out.join(format!("part-{i:05}.parquet"));
        let tmp = out.join(format!("part-{i:05}.parquet.partial"));
        if f.format.is_json() {
            let schema = schema.clone().expect("inferred above");
            let file = std::fs::File::create(&tmp).map_err(|e| IngestError::io(&tmp, e))?;
            let mut writer = ArrowWriter::try_new(file, schema.clone(), None)
                .map_err(|e| bad(&f.name, e.to_string()))?;
            let mut decoder = arrow::json::ReaderBuilder::new(schema)
                .build_decoder()
                .map_err(|e| bad(&f.name, e.to_string()))?;
            let mut pending = 0usize;
            for v in json_values(f, raw).map_err(|why| bad(&f.name, why))? {
                let v = v.map_err(|why| bad(&f.name, why))?;
                decoder
                    .serialize(std::slice::from_ref(&v))
                    .map_err(|e| bad(&f.name, e.to_string()))?;
                pending += 1;
                if pending == 8192 {
                    if let Some(batch) = decoder.flush().map_err(|e| bad(&f.name, e.to_string()))? {
                        rows += batch.num_rows() as u64;
                        writer
                            .write(&batch)
                            .map_err(|e| bad(&f.name, e.to_string()))?;
                    }
                    pending = 0;
                }
            }
            if let Some(batch) = decoder.flush().map_err(|e| bad(&f.name, e.to_string()))? {
                rows += batch.num_rows() as u64;
                writer
                    .write(&batch)
                    .map_err(|e| bad(&f.name, e.to_string()))?;
            }
            writer.close().map_err(|e| bad(&f.name, e.to_string()))?;
        } else {
            let file = std::fs::File::open(raw).map_err(|e| IngestError::io(raw, e))?;
            let meta = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| bad(&f.name, format!("not a readable parquet file: {e}")))?;
            rows += meta.metadata().file_metadata().num_rows().max(0) as u64;
            std::fs::rename(raw, &tmp).map_err(|e| IngestError::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &dst).map_err(|e| IngestError::io(&dst, e))?;
        paths.push(dst);
    }
    Ok((paths, rows))
}

/// The JSON records of a file: one per line, or the elements of a top-level array.
type Records = Box<dyn Iterator<Item = Result<serde_json::Value, String>>>;

fn json_values(f: &ExportFile, path: &Path) -> Result<Records, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader: Box<dyn Read> = if f.format == ExportFormat::JsonGz {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let first = loop {
        let buf = reader
            .fill_buf()
            .map_err(|e| format!("not gzip or not readable: {e}"))?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let c = buf[i];
                reader.consume(i);
                break Some(c);
            }
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    match first {
        None => Ok(Box::new(std::iter::empty())),
        Some(b'[') => {
            reader.consume(1);
            Ok(Box::new(ArrayElements {
                reader,
                done: false,
                index: 0,
            }))
        }
        Some(_) => Ok(Box::new(
            serde_json::Deserializer::from_reader(reader)
                .into_iter::<serde_json::Value>()
                .enumerate()
                .map(|(i, v)| v.map_err(|e| format!("record {}: not JSON: {e}", i + 1))),
        )),
    }
}

/// The elements of a top-level JSON array, one at a time (its `[` already read): each element's
/// bytes are found by following strings and nesting, then parsed alone, so memory holds one
/// record, never the whole file.
struct ArrayElements<R> {
    reader: R,
    done: bool,
    index: usize,
}

impl<R: BufRead> Iterator for ArrayElements<R> {
    type Item = Result<serde_json::Value, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.index += 1;
        let index = self.index;
        let parse = |bytes: &[u8]| {
            serde_json::from_slice(bytes).map_err(|e| format!("record {index}: not JSON: {e}"))
        };
        let mut element = Vec::new();
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) => {
                    self.done = true;
                    return Some(Err(format!("not readable: {e}")));
                }
            };
            if chunk.is_empty() {
                self.done = true;
                return Some(Err(format!(
                    "the JSON array is not closed: the file ends in record {index}"
                )));
            }
            let mut used = 0;
            let mut end = None;
            for &b in chunk {
                used += 1;
                if in_string {
                    element.push(b);
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => depth -= 1,
                    b']' => {
                        end = Some(true);
                        break;
                    }
                    b',' if depth == 0 => {
                        end = Some(false);
                        break;
                    }
                    _ => {}
                }
                element.push(b);
            }
            self.reader.consume(used);
            match end {
                None => continue,
                Some(last) => {
                    self.done = last;
                    let blank = element.iter().all(|c| c.is_ascii_whitespace());
                    return match (last, blank) {
                        // `[]`, or the end after the last element.
                        (true, true) if index == 1 => None,
                        (_, true) => Some(Err(format!("record {index}: empty (a stray comma)"))),
                        _ => Some(parse(&element)),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spark_commit_markers_say_whether_a_folder_is_still_written() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let put = |p: &str| {
            let store = store.clone();
            let p = ObjectPath::from(p);
            async move {
                object_store::ObjectStoreExt::put(store.as_ref(), &p, vec![1u8; 3].into())
                    .await
                    .unwrap();
            }
        };
        let done = "aep/ds1/exportTime=202612010200";
        let writing = "aep/ds1/exportTime=202612010300";
        for p in [
            format!("{done}/_started_123"),
            format!("{done}/part-0.parquet"),
            format!("{done}/_committed_123"),
            format!("{done}/_SUCCESS"),
            format!("{writing}/_started_456"),
            format!("{writing}/part-0.parquet"),
        ] {
            put(&p).await;
        }
        let pattern = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds1").unwrap();
        let folders = list_export_folders(&store, &ObjectPath::from("aep"), &pattern)
            .await
            .unwrap();
        assert_eq!(folders.len(), 2);
        assert_eq!(folders[0].files.len(), 1);
        assert!(
            folders[0].unfinished.is_empty(),
            "{:?}",
            folders[0].unfinished
        );
        assert_eq!(
            folders[1].unfinished,
            ["_started_456 (no _committed_456 yet)"]
        );
    }

    #[tokio::test]
    async fn manifests_are_read_with_their_folder_and_unkind_ones_refused() {
        let folder = "aep/ds1/exportTime=202612010200";
        let listing = |manifest: &'static str| async move {
            let pattern = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds1").unwrap();
            let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            for (name, body) in [
                ("part-0.parquet", "abc"),
                ("manifest-flow1-run1.json", manifest),
            ] {
                let path = ObjectPath::from(format!("{folder}/{name}"));
                object_store::ObjectStoreExt::put(store.as_ref(), &path, body.into())
                    .await
                    .unwrap();
            }
            list_export_folders(&store, &ObjectPath::from("aep"), &pattern).await
        };
        // AEP's shape: the manifest is not a data file; what it lists is kept by name.
        let ok = listing(
            r#"{"flowRunId": "run1", "exportResults": [
                {"sinkPath": "/aep/ds1/exportTime=202612010200", "name": "part-0.parquet", "size": 3},
                {"sinkPath": "/aep/ds1/exportTime=202612010200", "name": "part-1.parquet", "size": 9}]}"#,
        )
        .await
        .unwrap();
        assert_eq!(ok[0].files.len(), 1);
        let m = ok[0].manifest.as_ref().unwrap();
        assert_eq!(m.names, ["manifest-flow1-run1.json"]);
        assert_eq!(m.files.get("part-1.parquet"), Some(&9));
        // Not JSON, not AEP's shape, or listing another folder's files: the folder is refused,
        // the manifest named.
        for unkind in [
            "not json",
            r#"{"exportResults": [{"name": "part-0.parquet"}]}"#,
            r#"{"exportResults": [{"sinkPath": "/aep/ds1/exportTime=202612010300", "name": "part-0.parquet", "size": 3}]}"#,
        ] {
            let err = listing(unkind).await.unwrap_err().to_string();
            assert!(err.contains("manifest-flow1-run1.json"), "{unkind}: {err}");
        }
    }

    #[test]
    fn a_json_array_is_read_one_record_at_a_time() {
        let records = |text: &str| -> Result<Vec<serde_json::Value>, String> {
            let mut r = BufReader::with_capacity(7, text.as_bytes());
            // What json_values does before handing over: up to and including the `[`.
            let skip = text.find('[').unwrap() + 1;
            std::io::Read::read_exact(&mut r, &mut vec![0; skip]).unwrap();
            ArrayElements {
                reader: r,
                done: false,
                index: 0,
            }
            .collect()
        };
        let text = r#" [ {"a": "x,]}\"[", "b": [1, [2, {"c": null}]]}, {"a": "\\"} ,{"d": 1.5e3}]"#;
        let want: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
        assert_eq!(records(text).unwrap(), want);
        assert_eq!(records("[]").unwrap(), Vec::<serde_json::Value>::new());
        assert_eq!(records("[ \n ]").unwrap(), Vec::<serde_json::Value>::new());
        assert!(
            records(r#"[{"a": 1}, {"b": "#)
                .unwrap_err()
                .contains("not closed")
        );
        assert!(
            records(r#"[{"a": 1},, {"b": 2}]"#)
                .unwrap_err()
                .contains("record 2")
        );
        assert!(
            records(r#"[{"a": 1}, {"b": 2},]"#)
                .unwrap_err()
                .contains("record 3")
        );
        assert!(
            records(r#"[{"a": x}]"#)
                .unwrap_err()
                .contains("record 1: not JSON")
        );
    }

    #[test]
    fn folder_patterns() {
        let p = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds1").unwrap();
        let t = p.export_time("ds1/exportTime=202612010230").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T02:30:00+00:00");
        assert!(p.export_time("ds2/exportTime=202612010230").is_none());
        assert!(p.export_time("ds1/exportTime=2026120102").is_none());
        assert!(p.export_time("ds1/exportTime=202613010230").is_none());
        let p = FolderPattern::new(
            "%DESTINATION_INSTANCE_NAME%/%DATASET_ID%_%DATETIME(YYYYMMdd_HHmmss)%",
            "ds1",
        )
        .unwrap();
        assert_eq!(
            p.export_time("nightly/ds1_20261201_023000")
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T02:30:00+00:00"
        );
        assert!(FolderPattern::new("%DATASET_ID%", "ds1").is_err());
    }

    #[test]
    fn export_formats_by_name() {
        assert_eq!(
            ExportFormat::of("part-0-c000.gz.parquet"),
            Some(ExportFormat::GzParquet)
        );
        assert_eq!(
            ExportFormat::of("part-0-c000.parquet"),
            Some(ExportFormat::Parquet)
        );
        assert_eq!(
            ExportFormat::of("part-0-c000.json.gz"),
            Some(ExportFormat::JsonGz)
        );
        assert_eq!(ExportFormat::of("part-0-c000.csv"), None);
    }
}
