//! Opening a warehouse URL, small JSON objects in it, and the pipeline lock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::SinkError;

/// The `[sink]` section of a pipeline: where tables land.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A local path, `file://…`, `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` or `abfss://container@account.dfs.core.windows.net/prefix`.
    pub url: String,
    /// object_store options (e.g. `aws_endpoint`, `aws_allow_http`, `azure_storage_account_name`);
    /// the standard `AWS_*`, `GOOGLE_*` and `AZURE_*` variables are read as well.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Accept a store that does not refuse a second create-if-absent put (some S3-compatible
    /// servers ignore `If-None-Match`). Unsafe with concurrent runs: two writers could then
    /// both commit the same Delta version. Off by default.
    #[serde(default)]
    pub single_writer: bool,
}

impl SinkConfig {
    /// Parses the URL (a bare path is made absolute) without touching the store.
    pub fn url(&self) -> Result<Url, SinkError> {
        let raw = self.url.trim();
        let bad = |message: String| SinkError::Url {
            url: raw.to_string(),
            message,
        };
        match Url::parse(raw) {
            Ok(u) if u.scheme().len() > 1 => Ok(u),
            _ => {
                let path = std::path::Path::new(raw);
                let abs = if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    std::env::current_dir()
                        .map_err(|e| bad(e.to_string()))?
                        .join(path)
                };
                Url::from_directory_path(&abs).map_err(|_| bad("not a usable path".into()))
            }
        }
    }

    /// Opens the warehouse and checks that it can be written, before any data is.
    pub async fn build(&self) -> Result<Warehouse, SinkError> {
        let wh = self.open()?;
        wh.check_writable(self.single_writer).await?;
        Ok(wh)
    }

    /// Opens the warehouse without writing (for readers).
    pub fn open(&self) -> Result<Warehouse, SinkError> {
        let url = self.url()?;
        let open_err = |source| SinkError::Open {
            url: url.to_string(),
            source,
        };
        let (store, root): (Arc<dyn ObjectStore>, Path) = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|_| SinkError::Url {
                    url: url.to_string(),
                    message: "not a local path".into(),
                })?;
                std::fs::create_dir_all(&dir).map_err(|source| SinkError::Local {
                    path: dir.clone(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(open_err)?;
                (Arc::new(fs), Path::default())
            }
            other => match scoreland_runtime::stores::remote(&url, &self.options) {
                Some(store) => (store.map_err(open_err)?, Path::from(url.path())),
                None => {
                    return Err(SinkError::Url {
                        url: url.to_string(),
                        message: format!(
                            "scheme '{other}' is not supported; use a path, file://, s3://, gs://, az:// or abfss://"
                        ),
                    });
                }
            },
        };
        Ok(Warehouse { store, root, url })
    }
}

/// An opened warehouse: an object store and the prefix tables live under.
#[derive(Debug, Clone)]
pub struct Warehouse {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) root: Path,
    url: Url,
}

impl Warehouse {
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The object path of `rel` (slash-separated) under the warehouse root.
    pub fn path(&self, rel: &str) -> Path {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.root.clone(), |p, part| p.clone().join(part))
    }

    /// The URL of the store's root (`file:///`, `s3://bucket/`…): what a scan of the
    /// warehouse's files by their object paths names as its store.
    pub fn store_url(&self) -> Url {
        let mut u = self.url.clone();
        u.set_path("/");
        u
    }

    /// Lets `ctx` read the warehouse's files by [`Self::store_url`], for a plan over a
    /// version's files (`TableFiles`) that runs in this process. A local warehouse's files are
    /// read by their paths already.
    pub fn register_store(&self, ctx: &deltalake::datafusion::prelude::SessionContext) {
        if self.url.scheme() != "file" {
            ctx.register_object_store(&self.store_url(), self.store.clone());
        }
    }

    /// A full URL for `rel`, for engines that read the files.
    pub fn file_url(&self, rel: &str) -> Url {
        let mut u = self.url.clone();
        let base = u.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{base}/{}", rel.trim_start_matches('/')));
        u
    }

    /// Writes and deletes a probe object, and checks that the store refuses a second
    /// create-if-absent put of it: Delta's commits rely on that to keep two writers from both
    /// committing version N.
    async fn check_writable(&self, single_writer: bool) -> Result<(), SinkError> {
        let probe = self.path(&format!(
            "_scoreland_probe_{}",
            uuid::Uuid::new_v4().simple()
        ));
        let not_writable = |source| SinkError::NotWritable {
            url: self.url.to_string(),
            source,
        };
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&probe, PutPayload::from_static(b"1"), create())
            .await
            .map_err(not_writable)?;
        let second = self
            .store
            .put_opts(&probe, PutPayload::from_static(b"2"), create())
            .await;
        self.store.delete(&probe).await.map_err(not_writable)?;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Ok(_) | Err(object_store::Error::NotImplemented { .. }) if single_writer => {
                tracing::warn!(url = %self.url, "the warehouse does not refuse a second create-if-absent put; single_writer is set, so concurrent runs are unsafe here");
                Ok(())
            }
            Ok(_) | Err(object_store::Error::NotImplemented { .. }) => {
                Err(SinkError::NoConditionalPut {
                    url: self.url.to_string(),
                })
            }
            Err(source) => Err(not_writable(source)),
        }
    }

    /// Reads a JSON object; `None` when absent.
    pub async fn get_json<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>, SinkError> {
        self.get_json_at(&self.path(rel)).await
    }

    /// Reads the JSON object at a full object path (as a listing gives it); `None` when absent.
    pub(crate) async fn get_json_at<T: DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, SinkError> {
        let read_err = |source| SinkError::Store {
            op: "read",
            path: path.to_string(),
            source,
        };
        let bytes = match self.store.get(path).await {
            Ok(r) => r.bytes().await.map_err(read_err)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(read_err(source)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| SinkError::Json {
                path: path.to_string(),
                source,
            })
    }

    /// Whether any object lies under `rel`.
    pub(crate) async fn has_objects(&self, rel: &str) -> Result<bool, SinkError> {
        Ok(!self.list(&self.path(rel)).await?.is_empty())
    }

    /// Writes a JSON object (replacing it). Object stores make single puts atomic.
    pub async fn put_json<T: Serialize>(&self, rel: &str, value: &T) -> Result<(), SinkError> {
        self.put_json_at(&self.path(rel), value).await
    }

    /// [`Self::put_json`] at a full object path.
    pub(crate) async fn put_json_at<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<(), SinkError> {
        let body = serde_json::to_vec_pretty(value).map_err(|source| SinkError::Json {
            path: path.to_string(),
            source,
        })?;
        self.store
            .put(path, PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|source| SinkError::Store {
                op: "write",
                path: path.to_string(),
                source,
            })
    }

    /// Deletes the object at `rel`; an absent one is not an error.
    pub async fn delete(&self, rel: &str) -> Result<(), SinkError> {
        let path = self.path(rel);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(SinkError::Store {
                op: "delete",
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Uploads a local file to `rel`, streaming it; the object appears whole or not at all (a
    /// multipart upload becomes visible when it completes; on local disk it is renamed into
    /// place).
    pub async fn upload_file(&self, local: &std::path::Path, rel: &str) -> Result<u64, SinkError> {
        upload(self.store.as_ref(), local, &self.path(rel)).await
    }

    /// The names of the objects directly under `rel` (a folder of the warehouse).
    pub async fn file_names(&self, rel: &str) -> Result<Vec<String>, SinkError> {
        Ok(self
            .list(&self.path(rel))
            .await?
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    /// Every object under `prefix`.
    pub(crate) async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, SinkError> {
        use futures::TryStreamExt;
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|source| SinkError::Store {
                op: "list",
                path: prefix.to_string(),
                source,
            })
    }

    /// Pipelines holding a lock on this warehouse now (stale locks are not counted).
    pub async fn active_locks(&self, stale_after: Duration) -> Result<Vec<String>, SinkError> {
        let prefix = self.path("_locks");
        let listed = self.list(&prefix).await?;
        let mut active = Vec::new();
        for meta in listed {
            let Some(name) = meta
                .location
                .filename()
                .and_then(|n| n.strip_suffix(".lock"))
            else {
                continue;
            };
            let held: Option<LockInfo> = self.get_json_at(&meta.location).await?;
            if held.is_some_and(|h| !h.is_stale(stale_after)) {
                active.push(name.to_string());
            }
        }
        Ok(active)
    }

    /// Takes the pipeline's lock, or says who holds it. A lock older than `stale_after`, or
    /// held by a process of this host (same boot) that no longer runs, is stale and taken over
    /// by compare-and-swap: of two runs that find it stale at once, one wins. A lock whose
    /// time is in the future or cannot be read is held. `before_takeover` runs between finding
    /// a lock stale and replacing it (tests pause there).
    pub async fn lock(
        &self,
        pipeline: &str,
        run_id: &str,
        stale_after: Duration,
        before_takeover: &(dyn Fn() + Sync),
    ) -> Result<Lock, SinkError> {
        let rel = format!("_locks/{pipeline}.lock");
        let path = self.path(&rel);
        let info = LockInfo {
            run_id: run_id.to_string(),
            pid: std::process::id(),
            host: host_identity(),
            started_at: chrono::Utc::now().to_rfc3339(),
            renewed_at: None,
            released: false,
        };
        let body = serde_json::to_vec(&info).map_err(|source| SinkError::Json {
            path: path.to_string(),
            source,
        })?;
        let store_err = |source| SinkError::Store {
            op: "lock",
            path: path.to_string(),
            source,
        };
        let locked = |held: &LockInfo| SinkError::Locked {
            pipeline: pipeline.to_string(),
            run_id: held.run_id.clone(),
            started_at: held.started_at.clone(),
            path: self.file_url(&rel).to_string(),
        };
        let acquired = || Lock::held(self.clone(), pipeline, path.clone(), run_id, stale_after);
        // A lock released between our create and our read makes another round; a few are
        // plenty (each needs another run to take and release the lock meanwhile).
        for _ in 0..4 {
            let create = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&path, PutPayload::from(body.clone()), create)
                .await
            {
                Ok(_) => return Ok(acquired()),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(source) => return Err(store_err(source)),
            }
            let current = match self.store.get(&path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(source) => return Err(store_err(source)),
            };
            let version = UpdateVersion {
                e_tag: current.meta.e_tag.clone(),
                version: current.meta.version.clone(),
            };
            let raw = current.bytes().await.map_err(store_err)?;
            let held = serde_json::from_slice::<LockInfo>(&raw).unwrap_or_else(|_| {
                LockInfo::unknown(
                    "unreadable",
                    "unreadable (delete the lock file if no run holds it)",
                )
            });
            if !held.is_stale(stale_after) {
                return Err(locked(&held));
            }
            if !held.released {
                tracing::warn!(pipeline, holder = %held.run_id, started_at = %held.started_at, "taking over a stale lock");
                before_takeover();
            }
            match self
                .replace_if_unchanged(&path, &raw, version, &body)
                .await?
            {
                Swap::Done => return Ok(acquired()),
                Swap::Changed => {
                    // Someone else took it over (or released it) first: look again.
                    continue;
                }
            }
        }
        let held: Option<LockInfo> = self.get_json(&rel).await?;
        Err(locked(
            &held.unwrap_or_else(|| LockInfo::unknown("unknown", "unknown")),
        ))
    }

    /// Writes `body` at `path` only if the object is still the one read as `seen` (at
    /// `version`): a conditional put where the store has one, and on local disk a check and an
    /// atomic rename under an exclusive file lock.
    async fn replace_if_unchanged(
        &self,
        path: &Path,
        seen: &[u8],
        version: UpdateVersion,
        body: &[u8],
    ) -> Result<Swap, SinkError> {
        let store_err = |source| SinkError::Store {
            op: "lock",
            path: path.to_string(),
            source,
        };
        if let Some(dir) = self.local_root() {
            let file = dir.join(path.as_ref());
            let seen = seen.to_vec();
            let body = body.to_vec();
            return tokio::task::spawn_blocking(move || local_swap(&file, &seen, &body))
                .await
                .map_err(|e| SinkError::Local {
                    path: PathBuf::from(path.as_ref()),
                    source: std::io::Error::other(e),
                })?;
        }
        let update = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(body.to_vec()), update)
            .await
        {
            Ok(_) => Ok(Swap::Done),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(Swap::Changed),
            Err(source) => Err(store_err(source)),
        }
    }

    /// The directory of a local warehouse.
    fn local_root(&self) -> Option<PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }
}

enum Swap {
    Done,
    Changed,
}

/// Compare-and-swap of a small local file: under an exclusive lock of a guard file beside it,
/// replace `file` by `body` (written to a temporary name, synced, renamed) only if it still
/// holds `seen`.
fn local_swap(file: &std::path::Path, seen: &[u8], body: &[u8]) -> Result<Swap, SinkError> {
    use std::io::Write;
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| SinkError::Local { path, source }
    };
    let guard_path = file.with_extension("lock.guard");
    let guard = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&guard_path)
        .map_err(io(&guard_path))?;
    guard.lock().map_err(io(&guard_path))?;
    let now = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Swap::Changed),
        Err(e) => return Err(io(file)(e)),
    };
    if now != seen {
        return Ok(Swap::Changed);
    }
    let tmp = file.with_extension(format!("lock.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(body).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, file).map_err(io(file))?;
    Ok(Swap::Done)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockInfo {
    run_id: String,
    pid: u32,
    host: String,
    started_at: String,
    /// When the holder last renewed it (it does every quarter of the stale time while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renewed_at: Option<String>,
    /// Released by its run: free to take.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    released: bool,
}

impl LockInfo {
    /// A holder that cannot be told (its time does not parse, so it counts as held).
    fn unknown(run_id: &str, started_at: &str) -> LockInfo {
        LockInfo {
            run_id: run_id.into(),
            pid: 0,
            host: String::new(),
            started_at: started_at.into(),
            renewed_at: None,
            released: false,
        }
    }

    /// Stale when released, when not renewed for `stale_after`, or when it belongs to a
    /// process of this host and boot that is gone. A time in the future or unreadable is not
    /// stale: held.
    fn is_stale(&self, stale_after: Duration) -> bool {
        if self.released {
            return true;
        }
        let last = self.renewed_at.as_deref().unwrap_or(&self.started_at);
        let Ok(started) = chrono::DateTime::parse_from_rfc3339(last) else {
            return false;
        };
        let age = chrono::Utc::now().signed_duration_since(started);
        let Ok(age) = age.to_std() else {
            return false; // in the future
        };
        if age > stale_after {
            return true;
        }
        self.host == host_identity()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// This machine and boot: the host name and the kernel's boot id, so that a process id is
/// only ever compared with processes of the same host since the same boot (two containers
/// can share a host name, and ids start over after a reboot).
fn host_identity() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let host = read("/proc/sys/kernel/hostname")
        .or_else(|| read("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    match read("/proc/sys/kernel/random/boot_id") {
        Some(boot) => format!("{host}/{boot}"),
        None => host,
    }
}

/// The warehouse's publish lock (`_locks/_publish.lock`): held by one run's publish at a time,
/// and by `vacuum`, so that no commit lands between another run's tables and no upload of a
/// publish is taken for an orphan.
pub const PUBLISH_LOCK: &str = "_publish";

/// A held pipeline lock, renewed while the run lives (a crash leaves it to go stale);
/// [`Lock::release`] marks it released, and only if it is still this run's.
pub struct Lock {
    warehouse: Warehouse,
    pipeline: String,
    path: Path,
    run_id: String,
    /// Set by the renewal when the lock is found to be another run's (or cannot be renewed
    /// for longer than the stale time).
    lost: Arc<std::sync::atomic::AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for Lock {
    /// A lock dropped without [`Lock::release`] (an early return, a panic) stops being renewed,
    /// so that it goes stale rather than stay held by a live process that no longer uses it.
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl Lock {
    fn held(
        warehouse: Warehouse,
        pipeline: &str,
        path: Path,
        run_id: &str,
        stale_after: Duration,
    ) -> Lock {
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renewal = {
            let (warehouse, path, run_id, lost) = (
                warehouse.clone(),
                path.clone(),
                run_id.to_string(),
                lost.clone(),
            );
            let every = (stale_after / 4).max(Duration::from_millis(100));
            tokio::spawn(async move {
                let mut last_renewed = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(every).await;
                    match warehouse
                        .rewrite_lock(&path, &run_id, |info| {
                            info.renewed_at = Some(chrono::Utc::now().to_rfc3339())
                        })
                        .await
                    {
                        Ok(true) => last_renewed = tokio::time::Instant::now(),
                        Ok(false) => {
                            tracing::error!(lock = %path, "the pipeline lock was taken over by another run");
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(lock = %path, error = %e, "cannot renew the pipeline lock; trying again");
                            if last_renewed.elapsed() >= stale_after {
                                lost.store(true, std::sync::atomic::Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                }
            })
        };
        Lock {
            warehouse,
            pipeline: pipeline.to_string(),
            path,
            run_id: run_id.to_string(),
            lost,
            renewal,
        }
    }

    /// Whether the lock is still this run's, as far as its renewal knows.
    pub fn check_held(&self) -> Result<(), SinkError> {
        if self.lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SinkError::LockLost {
                pipeline: self.pipeline.clone(),
                run_id: self.run_id.clone(),
                path: self.warehouse.file_url(self.path.as_ref()).to_string(),
            });
        }
        Ok(())
    }

    /// Marks the lock released, in one conditional write, if it is still ours; a lock another
    /// run took over is left alone. (Released, not deleted: a delete could not be made
    /// conditional, and would remove a lock taken over in between.)
    pub async fn release(self) -> Result<(), SinkError> {
        self.renewal.abort();
        if !self
            .warehouse
            .rewrite_lock(&self.path, &self.run_id, |info| info.released = true)
            .await?
        {
            tracing::warn!(lock = %self.path, "the pipeline lock is no longer this run's; leaving it");
        }
        Ok(())
    }
}

impl Warehouse {
    /// Rewrites the lock at `path` with `change`, in one conditional write, if it is still
    /// `run_id`'s; false if it is not (or is gone).
    async fn rewrite_lock(
        &self,
        path: &Path,
        run_id: &str,
        change: impl Fn(&mut LockInfo),
    ) -> Result<bool, SinkError> {
        let store_err = |source| SinkError::Store {
            op: "lock",
            path: path.to_string(),
            source,
        };
        // A write that raced with another renewal of ours is retried; a few are plenty.
        for _ in 0..4 {
            let current = match self.store.get(path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(source) => return Err(store_err(source)),
            };
            let version = UpdateVersion {
                e_tag: current.meta.e_tag.clone(),
                version: current.meta.version.clone(),
            };
            let raw = current.bytes().await.map_err(store_err)?;
            let Ok(mut info) = serde_json::from_slice::<LockInfo>(&raw) else {
                return Ok(false);
            };
            if info.run_id != run_id || info.released {
                return Ok(false);
            }
            change(&mut info);
            let body = serde_json::to_vec(&info).map_err(|source| SinkError::Json {
                path: path.to_string(),
                source,
            })?;
            match self
                .replace_if_unchanged(path, &raw, version, &body)
                .await?
            {
                Swap::Done => return Ok(true),
                Swap::Changed => continue,
            }
        }
        Ok(false)
    }
}

/// Uploads a local file to `path` in `store` ([`scoreland_runtime::stores::upload`]).
pub(crate) async fn upload(
    store: &dyn ObjectStore,
    local: &std::path::Path,
    path: &Path,
) -> Result<u64, SinkError> {
    use scoreland_runtime::stores::UploadError;
    scoreland_runtime::stores::upload(store, local, path)
        .await
        .map_err(|e| match e {
            UploadError::Local(source) => SinkError::Local {
                path: local.to_path_buf(),
                source,
            },
            UploadError::Store(source) => SinkError::Store {
                op: "upload",
                path: path.to_string(),
                source,
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, PutMultipartOptions,
        PutResult,
    };

    /// A store that ignores create-if-absent, as some S3-compatible servers do.
    #[derive(Debug, Default)]
    struct Clobbering(InMemory);

    impl std::fmt::Display for Clobbering {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Clobbering")
        }
    }

    #[async_trait]
    impl ObjectStore for Clobbering {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            _opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.0
                .put_opts(location, payload, PutOptions::default())
                .await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    fn warehouse(store: Arc<dyn ObjectStore>) -> Warehouse {
        Warehouse {
            store,
            root: Path::from("wh"),
            url: Url::parse("s3://bucket/wh").unwrap(),
        }
    }

    #[tokio::test]
    async fn a_store_that_ignores_create_if_absent_is_refused_unless_single_writer() {
        let clobbering = warehouse(Arc::new(Clobbering::default()));
        let err = clobbering.check_writable(false).await.unwrap_err();
        assert!(matches!(err, SinkError::NoConditionalPut { .. }), "{err}");
        assert!(err.to_string().contains("single_writer"), "{err}");
        clobbering.check_writable(true).await.unwrap();
        // A store that honours it passes, and the probe leaves nothing behind.
        let memory = Arc::new(InMemory::new());
        warehouse(memory.clone())
            .check_writable(false)
            .await
            .unwrap();
        assert!(
            futures::StreamExt::next(&mut memory.list(None))
                .await
                .is_none()
        );
    }
}
