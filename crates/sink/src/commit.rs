//! The commit protocol: upload, then one create-if-absent commit record, then `_latest.json`.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path as LocalPath, PathBuf};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error::SinkError;
use crate::store::Warehouse;

/// One data file of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFile {
    /// Relative to the table directory.
    pub path: String,
    /// `score_date=2026-11-16`, or none for an unpartitioned table.
    pub partition: Option<String>,
    pub rows: u64,
    pub bytes: u64,
}

/// A commit record: what one run added and the table's live files after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub table: String,
    pub seq: u64,
    pub run_id: String,
    pub batches: Vec<String>,
    pub committed_at: String,
    pub added: Vec<CommitFile>,
    pub removed: Vec<String>,
    pub live: Vec<CommitFile>,
}

impl Commit {
    pub fn rows(&self) -> u64 {
        self.live.iter().map(|f| f.rows).sum()
    }
}

/// Data files uploaded for a table and not yet committed.
#[derive(Debug, Clone)]
pub struct UploadedTable {
    pub table: String,
    pub run_id: String,
    pub added: Vec<CommitFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VacuumReport {
    pub deleted: Vec<String>,
}

const COMMITS: &str = "_commits";
const MULTIPART_CHUNK: usize = 16 * 1024 * 1024;

impl Warehouse {
    /// The newest commit of `table`, if any.
    pub async fn latest_commit(&self, table: &str) -> Result<Option<Commit>, SinkError> {
        let prefix = self.path(&format!("{table}/{COMMITS}"));
        let listed = self.list(&prefix).await?;
        let newest = listed
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                name.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max();
        match newest {
            None => Ok(None),
            Some(seq) => self.get_json(&commit_rel(table, seq)).await,
        }
    }

    /// Uploads every file under `local_dir` into `table` and commits them. Partitions (Hive
    /// directories) this run writes replace the same partitions of the previous state; files
    /// of an unpartitioned table are added.
    pub async fn publish(
        &self,
        table: &str,
        local_dir: &LocalPath,
        run_id: &str,
        batches: &[String],
    ) -> Result<Commit, SinkError> {
        let staged = self.upload_table(table, local_dir, run_id).await?;
        self.commit(staged, batches).await
    }

    /// Step one: uploads the data files under names unique to the run. Until
    /// [`Warehouse::commit`], no reader sees them.
    pub async fn upload_table(
        &self,
        table: &str,
        local_dir: &LocalPath,
        run_id: &str,
    ) -> Result<UploadedTable, SinkError> {
        let mut files = Vec::new();
        collect_files(local_dir, local_dir, &mut files)?;
        files.sort();
        let mut added = Vec::with_capacity(files.len());
        for (n, (rel_dir, local)) in files.iter().enumerate() {
            let ext = local.extension().and_then(|e| e.to_str()).unwrap_or("dat");
            let name = format!("part-{run_id}-{n:05}.{ext}");
            let rel = match rel_dir {
                Some(d) => format!("{d}/{name}"),
                None => name,
            };
            let bytes = self
                .upload(local, &self.path(&format!("{table}/{rel}")))
                .await?;
            // The footer is read on a blocking thread, off the ones driving the uploads.
            let path = local.clone();
            let rows = tokio::task::spawn_blocking(move || count_rows(&path))
                .await
                .map_err(|e| SinkError::Local {
                    path: local.clone(),
                    source: std::io::Error::other(e),
                })??;
            added.push(CommitFile {
                path: rel,
                partition: rel_dir.clone(),
                rows,
                bytes,
            });
        }
        Ok(UploadedTable {
            table: table.to_string(),
            run_id: run_id.to_string(),
            added,
        })
    }

    /// Step two: writes the commit record that makes an uploaded table live.
    pub async fn commit(
        &self,
        uploaded: UploadedTable,
        batches: &[String],
    ) -> Result<Commit, SinkError> {
        let commit = self.plan_commit(uploaded, batches).await?;
        self.write_commit(commit).await
    }

    /// The commit record an uploaded table would make on top of the table's newest commit.
    pub async fn plan_commit(
        &self,
        uploaded: UploadedTable,
        batches: &[String],
    ) -> Result<Commit, SinkError> {
        let UploadedTable {
            table,
            run_id,
            added,
        } = uploaded;
        let table = table.as_str();
        let previous = self.latest_commit(table).await?;
        let touched: HashSet<Option<String>> = added.iter().map(|f| f.partition.clone()).collect();
        let (kept, removed): (Vec<CommitFile>, Vec<CommitFile>) = previous
            .as_ref()
            .map(|c| c.live.clone())
            .unwrap_or_default()
            .into_iter()
            .partition(|f| f.partition.is_none() || !touched.contains(&f.partition));
        let mut live = kept;
        live.extend(added.iter().cloned());
        let commit = Commit {
            table: table.to_string(),
            seq: previous.as_ref().map_or(0, |c| c.seq + 1),
            run_id,
            batches: batches.to_vec(),
            committed_at: chrono::Utc::now().to_rfc3339(),
            added,
            removed: removed.into_iter().map(|f| f.path).collect(),
            live,
        };
        Ok(commit)
    }

    /// Writes a planned commit record. This is the one atomic step: create-if-absent, so of two
    /// writers that planned commit N on the same parent, the second gets
    /// [`SinkError::CommitConflict`].
    pub async fn write_commit(&self, commit: Commit) -> Result<Commit, SinkError> {
        let table = commit.table.as_str();
        let path = self.path(&commit_rel(table, commit.seq));
        let body = serde_json::to_vec_pretty(&commit).map_err(|source| SinkError::Json {
            path: path.to_string(),
            source,
        })?;
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(body), create)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(SinkError::CommitConflict {
                    table: table.to_string(),
                    seq: commit.seq,
                });
            }
            Err(source) => {
                return Err(SinkError::Store {
                    op: "commit",
                    path: path.to_string(),
                    source,
                });
            }
        }
        self.write_latest(&commit).await?;
        Ok(commit)
    }

    /// `_latest.json`: the live files as full URLs, for engines that do not read commits.
    async fn write_latest(&self, commit: &Commit) -> Result<(), SinkError> {
        let files: Vec<serde_json::Value> = commit
            .live
            .iter()
            .map(|f| {
                serde_json::json!({
                    "url": self.file_url(&format!("{}/{}", commit.table, f.path)).to_string(),
                    "partition": f.partition,
                    "rows": f.rows,
                    "bytes": f.bytes,
                })
            })
            .collect();
        self.put_json(
            &format!("{}/_latest.json", commit.table),
            &serde_json::json!({
                "table": commit.table,
                "seq": commit.seq,
                "run_id": commit.run_id,
                "committed_at": commit.committed_at,
                "rows": commit.rows(),
                "files": files,
            }),
        )
        .await
    }

    /// URLs of the live files of `table` (empty when nothing is committed).
    pub async fn live_files(&self, table: &str) -> Result<Vec<url::Url>, SinkError> {
        Ok(self
            .latest_commit(table)
            .await?
            .map(|c| {
                c.live
                    .iter()
                    .map(|f| self.file_url(&format!("{table}/{}", f.path)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Deletes data files of `table` that no commit made live: what failed runs left behind.
    /// With `replaced`, files that an older commit had live but the newest no longer has go
    /// too.
    pub async fn vacuum(&self, table: &str, replaced: bool) -> Result<VacuumReport, SinkError> {
        let Some(latest) = self.latest_commit(table).await? else {
            return Ok(VacuumReport::default());
        };
        let mut keep: BTreeSet<String> = latest.live.iter().map(|f| f.path.clone()).collect();
        if !replaced {
            for seq in 0..latest.seq {
                if let Some(c) = self.get_json::<Commit>(&commit_rel(table, seq)).await? {
                    keep.extend(c.live.into_iter().map(|f| f.path));
                }
            }
        }
        let prefix = self.path(table);
        let listed = self.list(&prefix).await?;
        let mut report = VacuumReport::default();
        for meta in listed {
            let Some(rel) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
            let rel = rel.join("/");
            if rel.starts_with('_') || keep.contains(&rel) {
                continue;
            }
            self.store
                .delete(&meta.location)
                .await
                .map_err(|source| SinkError::Store {
                    op: "delete",
                    path: meta.location.to_string(),
                    source,
                })?;
            report.deleted.push(rel);
        }
        Ok(report)
    }

    async fn upload(&self, local: &LocalPath, dest: &Path) -> Result<u64, SinkError> {
        let store_err = |source| SinkError::Store {
            op: "upload",
            path: dest.to_string(),
            source,
        };
        let local_err = |source| SinkError::Local {
            path: local.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(local).map_err(local_err)?.len();
        if size <= MULTIPART_CHUNK as u64 {
            let data = tokio::fs::read(local).await.map_err(local_err)?;
            self.store
                .put(dest, PutPayload::from(data))
                .await
                .map_err(store_err)?;
            return Ok(size);
        }
        let upload = self.store.put_multipart(dest).await.map_err(store_err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
        let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
        let mut buf = vec![0u8; MULTIPART_CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(local_err)?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(store_err)?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(store_err)?;
        Ok(size)
    }
}

fn commit_rel(table: &str, seq: u64) -> String {
    format!("{table}/{COMMITS}/{seq:020}.json")
}

/// Data files under `dir`, with their Hive partition directory (relative), if any.
fn collect_files(
    root: &LocalPath,
    dir: &LocalPath,
    out: &mut Vec<(Option<String>, PathBuf)>,
) -> Result<(), SinkError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SinkError::Local {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| SinkError::Local {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel_dir = path
                .parent()
                .and_then(|p| p.strip_prefix(root).ok())
                .map(|p| p.to_string_lossy().replace('\\', "/"))
                .filter(|s| !s.is_empty());
            out.push((rel_dir, path));
        }
    }
    Ok(())
}

/// Rows of a data file: the parquet footer, or lines for CSV (less the header) and NDJSON.
fn count_rows(path: &LocalPath) -> Result<u64, SinkError> {
    let local_err = |source| SinkError::Local {
        path: path.to_path_buf(),
        source,
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            let f = std::fs::File::open(path).map_err(local_err)?;
            let reader = SerializedFileReader::new(f).map_err(|source| SinkError::Parquet {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
        }
        ext => {
            use std::io::BufRead;
            let f = std::fs::File::open(path).map_err(local_err)?;
            let mut lines = 0u64;
            for line in std::io::BufReader::new(f).lines() {
                if !line.map_err(local_err)?.is_empty() {
                    lines += 1;
                }
            }
            Ok(if ext == Some("csv") {
                lines.saturating_sub(1)
            } else {
                lines
            })
        }
    }
}
