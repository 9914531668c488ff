//! Parallel, resumable, verified download of every part of a batch into staging.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use reqwest::Method;
use sha2::{Digest, Sha256};

use crate::catalog::CatalogBatch;
use crate::client::AepClient;
use crate::config::RowCountCheck;
use crate::error::IngestError;
use crate::listing::{RemotePart, is_safe_name};
use crate::manifest::{Manifest, ManifestPart};

/// Progress callbacks; every method has a no-op default.
pub trait DownloadObserver: Send + Sync {
    fn on_start(&self, _batch: &str, _parts: usize, _bytes: u64) {}
    /// Bytes written to staging (resumed bytes are not counted again).
    fn on_bytes(&self, _n: u64) {}
    fn on_part_done(&self, _name: &str, _skipped: bool) {}
}

pub struct NoProgress;
impl DownloadObserver for NoProgress {}

#[derive(Debug, Clone)]
pub struct DownloadReport {
    pub manifest: Manifest,
    pub batch_dir: PathBuf,
    pub downloaded_parts: usize,
    /// Parts already verified in staging by an earlier run.
    pub skipped_parts: usize,
    pub bytes_downloaded: u64,
    pub elapsed: Duration,
}

impl AepClient {
    /// Stages every part of `batch` under `staging/<dataset>/<batch>/` and writes its manifest.
    /// A batch already complete in staging is not downloaded again.
    pub async fn download_batch(
        &self,
        dataset: &str,
        batch: &CatalogBatch,
        staging: &Path,
        observer: &dyn DownloadObserver,
    ) -> Result<DownloadReport, IngestError> {
        let started = Instant::now();
        for (what, name) in [("dataset", dataset), ("batch", batch.id.as_str())] {
            if !is_safe_name(name) {
                return Err(IngestError::Config {
                    field: "dataset/batch id",
                    message: format!("{what} id {name:?} is not a safe directory name"),
                });
            }
        }
        let batch_dir = Manifest::batch_dir(staging, dataset, &batch.id);
        std::fs::create_dir_all(&batch_dir).map_err(|e| IngestError::io(&batch_dir, e))?;
        // One process stages a batch at a time: a second one waits, then finds it complete.
        let _staging_lock = lock_batch_dir(&batch_dir, &batch.id).await?;
        let previous = Manifest::read(&batch_dir)?;
        if let Some(manifest) = &previous
            && staged_intact(&batch_dir, manifest).await?
        {
            let manifest = manifest.clone();
            let n = manifest.parts.len();
            observer.on_start(&batch.id, n, manifest.bytes);
            for p in &manifest.parts {
                observer.on_part_done(&p.name, true);
            }
            return Ok(DownloadReport {
                manifest,
                batch_dir,
                downloaded_parts: 0,
                skipped_parts: n,
                bytes_downloaded: 0,
                elapsed: started.elapsed(),
            });
        }
        // What an earlier run recorded of each part: a staged part is reused only if its bytes
        // still hash to it.
        let recorded: HashMap<String, String> = previous
            .map(|m| m.parts.into_iter().map(|p| (p.path, p.sha256)).collect())
            .unwrap_or_default();
        let mut parts = self.list_parts(&batch.id).await?;
        // Largest first, so that no big part starts last and runs on alone at the end.
        parts.sort_by_key(|p| std::cmp::Reverse(p.length));
        let needed: u64 = parts
            .iter()
            .map(|p| {
                let kept = file_len(&part_path(&batch_dir, p)).unwrap_or(0);
                p.length.saturating_sub(kept)
            })
            .sum();
        check_free_space(&batch_dir, needed, self.options.keep_free)?;
        let total: u64 = parts.iter().map(|p| p.length).sum();
        observer.on_start(&batch.id, parts.len(), total);
        tracing::info!(batch = %batch.id, parts = parts.len(), bytes = total, "downloading batch");
        let written = AtomicU64::new(0);
        let results: Vec<(ManifestPart, bool)> = futures::stream::iter(parts.iter())
            .map(|part| {
                let relative = relative_path(part);
                let recorded = recorded.get(&relative).map(String::as_str);
                self.stage_part(&batch.id, &batch_dir, part, recorded, observer, &written)
            })
            .buffer_unordered(self.options.concurrency)
            .try_collect()
            .await?;
        let mut manifest_parts: Vec<ManifestPart> = Vec::with_capacity(results.len());
        let mut skipped = 0;
        for (p, was_skipped) in results {
            if was_skipped {
                skipped += 1;
            }
            manifest_parts.push(p);
        }
        manifest_parts.sort_by(|a, b| a.path.cmp(&b.path));
        let rows: u64 = manifest_parts.iter().map(|p| p.rows).sum();
        let mut mismatch = false;
        if let Some(expected) = batch.records
            && expected != rows
        {
            match self.options.row_count_check {
                RowCountCheck::Fail => {
                    return Err(IngestError::RowCountMismatch {
                        batch: batch.id.clone(),
                        expected,
                        actual: rows,
                    });
                }
                RowCountCheck::Warn => {
                    tracing::warn!(batch = %batch.id, expected, actual = rows, "row count differs from Catalog; landing it as configured");
                    mismatch = true;
                }
            }
        }
        make_durable(&batch_dir, &manifest_parts).await?;
        let manifest = Manifest {
            dataset_id: dataset.to_string(),
            batch: batch.clone(),
            bytes: manifest_parts.iter().map(|p| p.bytes).sum(),
            rows,
            parts: manifest_parts,
            row_count_mismatch: mismatch,
            verified_at: chrono::Utc::now().to_rfc3339(),
        };
        manifest.write(&batch_dir)?;
        Ok(DownloadReport {
            downloaded_parts: manifest.parts.len() - skipped,
            skipped_parts: skipped,
            manifest,
            batch_dir,
            bytes_downloaded: written.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        })
    }

    /// Downloads one part (resuming a partial file), verifies it and renames it into place.
    /// Returns its manifest entry and whether it was already staged.
    async fn stage_part(
        &self,
        batch: &str,
        batch_dir: &Path,
        part: &RemotePart,
        recorded: Option<&str>,
        observer: &dyn DownloadObserver,
        written: &AtomicU64,
    ) -> Result<(ManifestPart, bool), IngestError> {
        let final_path = part_path(batch_dir, part);
        let dir = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| batch_dir.to_path_buf());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| IngestError::io(&dir, e))?;
        let relative = relative_path(part);
        if file_len(&final_path) == Some(part.length) {
            // Renamed into place only after verification by an earlier run. Hash it again: the
            // manifest records what is on disk now, and bytes changed since (same size, other
            // content) are downloaded anew rather than trusted.
            let sha256 = hash_prefix(&final_path, part.length).await?;
            let hex = hex::encode(sha256.clone().finalize());
            if recorded.is_none_or(|r| r == hex) {
                let entry = verify_part(batch, part, &final_path, relative, sha256).await?;
                observer.on_part_done(&part.name, true);
                return Ok((entry, true));
            }
            tracing::warn!(part = %relative, recorded = recorded.unwrap_or(""), found = %hex, "a staged part changed since it was verified; downloading it again");
            tokio::fs::remove_file(&final_path)
                .await
                .map_err(|e| IngestError::io(&final_path, e))?;
        }
        let partial = dir.join(partial_name(&part.name));
        let started = Instant::now();
        // The bytes kept in the partial file and their SHA-256 so far, carried from one request
        // to the next so that a resume never reads them back.
        let kept: std::sync::Mutex<Option<Kept>> = std::sync::Mutex::new(None);
        let kept_len = || lock(&kept).as_ref().map_or(0, |k| k.len);
        let sha256 = loop {
            let got = self
                .with_retry_progress(part.href.as_str(), kept_len, |_| {
                    self.fetch_into(batch, part, &partial, observer, written, &kept)
                })
                .await?;
            if let Some(hasher) = got {
                break hasher;
            }
            // A shorter range than asked for arrived whole: ask for the rest.
        };
        let entry = verify_part(batch, part, &partial, relative, sha256).await?;
        tokio::fs::rename(&partial, &final_path)
            .await
            .map_err(|e| IngestError::io(&final_path, e))?;
        tracing::debug!(part = %entry.path, bytes = part.length, ms = started.elapsed().as_millis() as u64, "part staged");
        observer.on_part_done(&part.name, false);
        Ok((entry, false))
    }

    /// One request: asks for the bytes not yet in `partial` and appends them, hashing as they
    /// arrive. Returns the SHA-256 of the whole part once it is complete, or `None` when the
    /// server answered a shorter range than asked (which is legal) and sent it whole. What
    /// arrived is recorded in `kept` either way, even when the request fails.
    async fn fetch_into(
        &self,
        batch: &str,
        part: &RemotePart,
        partial: &Path,
        observer: &dyn DownloadObserver,
        written: &AtomicU64,
        kept: &std::sync::Mutex<Option<Kept>>,
    ) -> Result<Option<Sha256>, IngestError> {
        let prior = lock(kept).take();
        let mut have = match &prior {
            Some(k) => k.len,
            None => file_len(partial).unwrap_or(0),
        };
        if have > part.length {
            have = 0;
        }
        if have == part.length && have > 0 {
            let hasher = match prior {
                Some(k) => k.hasher,
                None => hash_prefix(partial, have).await?,
            };
            return Ok(Some(hasher));
        }
        let asked = Instant::now();
        let resp = match self
            .send(Method::GET, &part.href, |r| {
                if have > 0 {
                    r.header("range", format!("bytes={have}-"))
                } else {
                    r
                }
            })
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                *lock(kept) = prior;
                return Err(e);
            }
        };
        let verify = |reason: String| IngestError::Verify {
            batch: batch.into(),
            name: part.name.clone(),
            reason,
        };
        // (first byte, one past the last byte) of what this answer carries.
        let (start, end) = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            let range = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range)
                .ok_or_else(|| verify("206 without a usable Content-Range".into()))?;
            if range.2 != part.length {
                return Err(verify(format!(
                    "the server says the file has {} bytes, the listing {}",
                    range.2, part.length
                )));
            }
            // The server may answer a different range than asked (AEP says so); take it if it
            // starts within what we have and ends within the file.
            if range.0 > have || range.1 < range.0 || range.1 >= part.length {
                return Err(verify(format!(
                    "asked for bytes from {have}, got the range {}-{}",
                    range.0, range.1
                )));
            }
            (range.0, range.1 + 1)
        } else {
            (0, part.length)
        };
        let expected = end - start;
        if let Some(cl) = resp.content_length()
            && cl != expected
        {
            return Err(verify(format!(
                "Content-Length is {cl}, expected {expected} bytes"
            )));
        }
        let head_ms = asked.elapsed().as_millis() as u64;
        let prior = prior.filter(|k| k.len == start).map(|k| k.hasher);
        let writer = PartWriter::open(partial, start, prior);
        let mut received = 0u64;
        let mut body = resp.bytes_stream();
        let mut speed = SpeedCheck::new(self.options.min_speed, self.options.min_speed_window);
        let outcome = async {
            loop {
                let next = match speed.deadline() {
                    Some(at) => match tokio::time::timeout_at(at, body.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            speed.check(&part.href)?;
                            continue;
                        }
                    },
                    None => body.next().await,
                };
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|source| IngestError::Http {
                    method: "GET",
                    url: part.href.to_string(),
                    source: source.without_url(),
                })?;
                let n = chunk.len() as u64;
                if received + n > expected {
                    return Err(verify("the body is longer than the file".into()));
                }
                if !writer.write(chunk).await {
                    break; // the writer stopped on a disk error, which `finish` returns
                }
                received += n;
                speed.add(n);
                written.fetch_add(n, Ordering::Relaxed);
                observer.on_bytes(n);
            }
            Ok(())
        }
        .await;
        // What arrived is kept, even on error: the next attempt resumes after it. The part is
        // made durable later (see `make_durable`), so a slot is not held while the disk catches up.
        let body_ms = asked.elapsed().as_millis() as u64;
        let hasher = writer.finish().await?;
        tracing::debug!(part = %part.name, head_ms, body_ms, written_ms = asked.elapsed().as_millis() as u64, "part received");
        *lock(kept) = Some(Kept {
            len: start + received,
            hasher: hasher.clone(),
        });
        outcome?;
        if received != expected {
            return Err(IngestError::CutShort {
                url: part.href.to_string(),
                expected,
                received,
            });
        }
        if end < part.length {
            tracing::debug!(part = %part.name, first = start, end, length = part.length, "a shorter range than asked; asking for the rest");
            return Ok(None);
        }
        *lock(kept) = None;
        Ok(Some(hasher))
    }
}

/// Parts live under `files/` in the batch directory, apart from scoreland's own files
/// (`manifest.json`, `.lock`): no part or file id can collide with them.
const PARTS_DIR: &str = "files";

/// A part's path relative to its batch directory, as the manifest records it.
fn relative_path(part: &RemotePart) -> String {
    format!("{PARTS_DIR}/{}/{}", part.dataset_file_id, part.name)
}

fn part_path(batch_dir: &Path, part: &RemotePart) -> PathBuf {
    batch_dir
        .join(PARTS_DIR)
        .join(&part.dataset_file_id)
        .join(&part.name)
}

/// Whether every part a manifest lists is on disk with its recorded size and SHA-256.
async fn staged_intact(batch_dir: &Path, manifest: &Manifest) -> Result<bool, IngestError> {
    for p in &manifest.parts {
        let path = batch_dir.join(&p.path);
        if file_len(&path) != Some(p.bytes) {
            return Ok(false);
        }
        let sha = hash_prefix(&path, p.bytes).await?;
        if hex::encode(sha.finalize()) != p.sha256 {
            tracing::warn!(part = %p.path, "a staged part no longer matches its manifest");
            return Ok(false);
        }
    }
    Ok(true)
}

/// An exclusive lock on a staged batch (`.lock` in its directory), held while it is staged, so
/// two processes never append to the same partial files. Waits for another holder.
async fn lock_batch_dir(batch_dir: &Path, batch: &str) -> Result<std::fs::File, IngestError> {
    let path = batch_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| IngestError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(
                batch,
                "another process is staging this batch; waiting for it"
            );
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(IngestError::io(&path, e)),
    }
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|e| IngestError::io("lock task", std::io::Error::other(e)))?
        .map_err(|e| IngestError::io(&path, e))
}

/// Refuses to start a download the disk cannot hold: `needed` bytes more, plus `keep_free`.
fn check_free_space(dir: &Path, needed: u64, keep_free: u64) -> Result<(), IngestError> {
    let Some(available) = free_space(dir) else {
        return Ok(());
    };
    if needed.saturating_add(keep_free) > available {
        return Err(IngestError::NoSpace {
            dir: dir.to_path_buf(),
            needed,
            available,
            keep_free,
        });
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
#[cfg(unix)]
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
fn free_space(_dir: &Path) -> Option<u64> {
    None
}

/// The bytes of a part already in its partial file, and their SHA-256 state.
struct Kept {
    len: u64,
    hasher: Sha256,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The partial file of a part: a fixed-length name, so that a part whose name is near the file
/// system's 255-byte limit still has one, and no part name can collide with it.
pub fn partial_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    format!(".partial-{}", hex::encode(&digest[..16]))
}

/// The low-speed limit: a body must bring at least `min` bytes per second over each window.
struct SpeedCheck {
    min: u64,
    window: Duration,
    window_start: tokio::time::Instant,
    bytes: u64,
}

impl SpeedCheck {
    fn new(min: u64, window: Duration) -> Self {
        SpeedCheck {
            min,
            window,
            window_start: tokio::time::Instant::now(),
            bytes: 0,
        }
    }

    /// When the current window closes; `None` when the limit is off.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        (self.min > 0 && !self.window.is_zero()).then(|| self.window_start + self.window)
    }

    fn add(&mut self, n: u64) {
        self.bytes += n;
    }

    /// At the end of a window: an error if it brought too little, else a new window.
    fn check(&mut self, url: &url::Url) -> Result<(), IngestError> {
        let needed = (self.min as f64 * self.window.as_secs_f64()) as u64;
        if self.bytes < needed {
            return Err(IngestError::TooSlow {
                url: url.to_string(),
                received: self.bytes,
                window: self.window,
                min_bytes_per_sec: self.min,
            });
        }
        self.window_start = tokio::time::Instant::now();
        self.bytes = 0;
        Ok(())
    }
}

/// `bytes a-b/total` → (a, b, total).
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Appends a part's bytes to its partial file and hashes them on a blocking thread of its own:
/// the copy into the page cache and the SHA-256 of every part in flight then run beside the
/// network, not on the one task that polls all the downloads. Every [`WRITEBACK_STEP`] bytes it
/// has the kernel start writing them to disk, so that [`make_durable`] finds little left to wait
/// for.
struct PartWriter {
    chunks: tokio::sync::mpsc::Sender<bytes::Bytes>,
    done: tokio::task::JoinHandle<Result<Sha256, IngestError>>,
}

impl PartWriter {
    /// Keeps the first `keep` bytes of `path` and appends after them. `prior` is the SHA-256
    /// state of those bytes when the caller has it; otherwise they are read back and hashed.
    fn open(path: &Path, keep: u64, prior: Option<Sha256>) -> Self {
        // A few chunks in hand per part (hyper's are up to ~400 KB): enough to ride out a slow
        // write, few enough that memory follows the concurrency, not the part size, when the disk
        // falls behind (16 in hand: 105 MB peak on a 1.8 GB batch).
        let (chunks, mut incoming) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let path = path.to_path_buf();
        let done = tokio::task::spawn_blocking(move || {
            use std::io::{Seek, Write};
            let io = |e| IngestError::io(&path, e);
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            // Only cut the file if it must be: on ext4 a truncation, even of a new empty file to
            // zero bytes, makes its close allocate and flush the whole file on the spot, which
            // held up every other part being written for 50–100 ms each time a part finished.
            if file.metadata().map_err(io)?.len() != keep {
                file.set_len(keep).map_err(io)?;
            }
            let mut hasher = match prior {
                Some(h) => h,
                None => hash_first(&path, keep)?,
            };
            file.seek(std::io::SeekFrom::Start(keep)).map_err(io)?;
            let (mut end, mut flushed) = (keep, keep);
            while let Some(chunk) = incoming.blocking_recv() {
                file.write_all(&chunk).map_err(io)?;
                hasher.update(&chunk);
                end += chunk.len() as u64;
                if end - flushed >= WRITEBACK_STEP {
                    start_writeback(&file, flushed, end - flushed);
                    flushed = end;
                }
            }
            start_writeback(&file, flushed, end - flushed);
            Ok(hasher)
        });
        Self { chunks, done }
    }

    /// Hands a chunk to the writer; false if it has stopped (`finish` says why).
    async fn write(&self, chunk: bytes::Bytes) -> bool {
        self.chunks.send(chunk).await.is_ok()
    }

    /// Waits for every chunk handed over to be written; the SHA-256 of the whole file so far.
    async fn finish(self) -> Result<Sha256, IngestError> {
        drop(self.chunks);
        self.done
            .await
            .map_err(|e| IngestError::io("write task", std::io::Error::other(e)))?
    }
}

/// Bytes a part writer lets pile up in the page cache before it starts their write-out. Measured
/// at concurrency 16 on ext4: started only when each part was complete, the write-out left the
/// final fsyncs ~110 ms of the last parts to wait for; every 8 MiB, ~30 ms but with 10 ms stalls
/// of the other writers; every 2 MiB, ~10 ms and no stalls.
const WRITEBACK_STEP: u64 = 2 << 20;

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, and returns
/// without waiting for them: unlike an `fsync` it does not commit the file system's journal
/// while other parts are being written.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return; // zero would mean "to the end of the file"
    }
    // SAFETY: `file` is open for the whole call; SYNC_FILE_RANGE_WRITE only starts write-out of
    // the range's dirty pages. Offsets of a part file fit in `off64_t`. A failure is ignored:
    // this is only a head start, `make_durable` decides.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// Makes the staged parts and their directories durable, even across a power loss, before the
/// manifest promises a complete batch. The part writers started the write-out as the bytes
/// came, so this mostly waits for the last few megabytes of each part.
async fn make_durable(batch_dir: &Path, parts: &[ManifestPart]) -> Result<(), IngestError> {
    let mut paths: Vec<PathBuf> = parts.iter().map(|p| batch_dir.join(&p.path)).collect();
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    paths.extend(dirs);
    futures::stream::iter(paths)
        .map(|path| tokio::task::spawn_blocking(move || fsync(&path)))
        .buffer_unordered(8)
        .map(|r| r.map_err(|e| IngestError::io("flush task", std::io::Error::other(e)))?)
        .try_collect::<()>()
        .await
}

fn fsync(path: &Path) -> Result<(), IngestError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| IngestError::io(path, e))
}

/// SHA-256 state over the first `len` bytes of `path` (all of a part staged by an earlier run,
/// or the bytes an interrupted attempt kept).
async fn hash_prefix(path: &Path, len: u64) -> Result<Sha256, IngestError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || hash_first(&path, len))
        .await
        .map_err(|e| IngestError::io("hash task", std::io::Error::other(e)))?
}

fn hash_first(path: &Path, len: u64) -> Result<Sha256, IngestError> {
    use std::io::Read;
    let mut hasher = Sha256::new();
    if len == 0 {
        return Ok(hasher);
    }
    let file = std::fs::File::open(path).map_err(|e| IngestError::io(path, e))?;
    let mut reader = file.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| IngestError::io(path, e))?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buf[..n]);
    }
}

/// Checks the size and parquet footer of a staged part and makes its manifest entry.
async fn verify_part(
    batch: &str,
    part: &RemotePart,
    path: &Path,
    relative: String,
    sha256: Sha256,
) -> Result<ManifestPart, IngestError> {
    let path = path.to_path_buf();
    let batch = batch.to_string();
    let part = part.clone();
    tokio::task::spawn_blocking(move || {
        let bytes = file_len(&path).unwrap_or(0);
        if bytes != part.length {
            return Err(IngestError::Verify {
                batch,
                name: part.name,
                reason: format!("{bytes} bytes staged, the listing says {}", part.length),
            });
        }
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = std::fs::File::open(&path).map_err(|e| IngestError::io(&path, e))?;
        let rows = SerializedFileReader::new(reader)
            .map_err(|source| IngestError::Parquet {
                path: path.clone(),
                source,
            })?
            .metadata()
            .file_metadata()
            .num_rows()
            .max(0) as u64;
        Ok(ManifestPart {
            dataset_file_id: part.dataset_file_id,
            name: part.name,
            path: relative,
            bytes,
            rows,
            sha256: hex::encode(sha256.finalize()),
        })
    })
    .await
    .map_err(|e| IngestError::io("verify task", std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-99/249058"),
            Some((0, 99, 249058))
        );
        assert_eq!(parse_content_range("bytes */10"), None);
    }
}
