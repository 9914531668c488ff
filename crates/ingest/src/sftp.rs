//! SFTP as an object store (russh + russh-sftp, pure Rust), for export folders on an SFTP
//! destination: `sftp://user@host[:port]/path`.
//!
//! The server's host key is checked against `known_hosts` (default `~/.ssh/known_hosts`) or a
//! pinned SHA-256 fingerprint; an unknown key is refused with its fingerprint in the error,
//! never accepted silently. Authentication is a private key file or a password from the
//! environment. A connection that drops is made again on the next request, so a file cut
//! short is resumed from where it stopped (the caller asks for the rest as a range).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::stream::{self, BoxStream, FuturesOrdered, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::SftpSession;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::auth::Secret;
use crate::error::IngestError;

const STORE: &str = "SFTP";
/// Bytes asked for per read (OpenSSH serves up to 255 KiB; russh-sftp splits larger reads).
const CHUNK: usize = 256 * 1024;
/// Reads in flight per file.
const PIPELINE: usize = 8;

type ReadResult = object_store::Result<(russh_sftp::client::fs::File, Bytes)>;

/// The state of one pipelined download: idle handles, the next offset to ask for, and the
/// reads in flight in offset order.
struct Pipeline {
    idle: Vec<russh_sftp::client::fs::File>,
    next: u64,
    end: u64,
    inflight: FuturesOrdered<futures::future::BoxFuture<'static, ReadResult>>,
    _conn: Arc<Connection>,
}

/// `len` bytes at `offset` through `file`, which is handed back for the next read.
async fn read_at(mut file: russh_sftp::client::fs::File, offset: u64, len: usize) -> ReadResult {
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(generic)?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read(&mut buf[got..]).await.map_err(generic)? {
            0 => {
                return Err(message(format!(
                    "the file ended at {} bytes, {} early",
                    offset + got as u64,
                    len - got
                )));
            }
            n => got += n,
        }
    }
    Ok((file, Bytes::from(buf)))
}

/// How to reach and trust an SFTP server.
#[derive(Clone)]
pub struct SftpOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub key_file: Option<PathBuf>,
    /// `known_hosts` file; default `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// A pinned host key fingerprint, `SHA256:…` as `ssh-keygen -lf` prints it.
    pub fingerprint: Option<String>,
}

impl fmt::Debug for SftpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("key_file", &self.key_file)
            .field("known_hosts", &self.known_hosts)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl SftpOptions {
    /// From `sftp://user@host[:port]/path` and the source's options (`sftp_key_file`,
    /// `sftp_known_hosts`, `sftp_host_key_fingerprint`); the password comes only from
    /// `SCORELAND_SFTP_PASSWORD`, a key file also from `SCORELAND_SFTP_KEY_FILE`. Returns the
    /// options and the path.
    pub fn from_url(
        url: &url::Url,
        options: &std::collections::BTreeMap<String, String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, String), IngestError> {
        let config = |message: String| IngestError::Config {
            field: "url",
            message,
        };
        let host = url
            .host_str()
            .ok_or_else(|| config(format!("{url} has no host")))?
            .to_string();
        if url.username().is_empty() {
            return Err(config(format!(
                "{url} has no user: write sftp://USER@{host}/path"
            )));
        }
        if url.password().is_some() {
            return Err(config(
                "a password in the URL would be written into files and logs; set SCORELAND_SFTP_PASSWORD instead"
                    .into(),
            ));
        }
        for key in options.keys() {
            if ![
                "sftp_key_file",
                "sftp_known_hosts",
                "sftp_host_key_fingerprint",
            ]
            .contains(&key.as_str())
            {
                return Err(config(format!(
                    "option {key} is not an SFTP option (sftp_key_file, sftp_known_hosts, sftp_host_key_fingerprint); the password comes from SCORELAND_SFTP_PASSWORD"
                )));
            }
        }
        let key_file = options
            .get("sftp_key_file")
            .cloned()
            .or_else(|| env("SCORELAND_SFTP_KEY_FILE"))
            .map(PathBuf::from);
        let password = env("SCORELAND_SFTP_PASSWORD")
            .filter(|p| !p.is_empty())
            .map(Secret::new);
        if key_file.is_none() && password.is_none() {
            return Err(config(format!(
                "no credentials for {host}: set options.sftp_key_file (or SCORELAND_SFTP_KEY_FILE), or SCORELAND_SFTP_PASSWORD"
            )));
        }
        let path = percent_decode(url.path());
        Ok((
            SftpOptions {
                host,
                port: url.port().unwrap_or(22),
                user: percent_decode(url.username()),
                password,
                key_file,
                known_hosts: options.get("sftp_known_hosts").map(PathBuf::from),
                fingerprint: options.get("sftp_host_key_fingerprint").cloned(),
            },
            path,
        ))
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Checks the server's key; keeps why it refused, for the error.
struct Checker {
    opts: SftpOptions,
    refused: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let who = format!(
            "{}:{} ({} {fingerprint})",
            self.opts.host,
            self.opts.port,
            key.algorithm()
        );
        let verdict = if let Some(pinned) = &self.opts.fingerprint {
            if pinned.trim() == fingerprint {
                Ok(())
            } else {
                Err(format!(
                    "the host key of {who} is not the pinned sftp_host_key_fingerprint {pinned}; if the server's key changed on purpose, pin the new one"
                ))
            }
        } else {
            let file = self.opts.known_hosts.clone().or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts"))
            });
            match file {
                None => Err(format!(
                    "the host key of {who} cannot be checked: no known_hosts file; pin it with sftp_host_key_fingerprint = \"{fingerprint}\""
                )),
                Some(file) => match russh::keys::check_known_hosts_path(
                    &self.opts.host,
                    self.opts.port,
                    key,
                    &file,
                ) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!(
                        "the host key of {who} is not in {}; if this is the right server, add it (ssh-keyscan -p {} {}) or pin it with sftp_host_key_fingerprint = \"{fingerprint}\"",
                        file.display(),
                        self.opts.port,
                        self.opts.host
                    )),
                    Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                        "the host key of {who} differs from the one in {} line {line}: refusing it (a changed server, or someone in between)",
                        file.display()
                    )),
                    Err(e) => Err(format!(
                        "the host key of {who} cannot be checked against {}: {e}; pin it with sftp_host_key_fingerprint = \"{fingerprint}\"",
                        file.display()
                    )),
                },
            }
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

struct Connection {
    _ssh: russh::client::Handle<Checker>,
    sftp: SftpSession,
}

/// An SFTP server seen as an object store rooted at `/`; object paths are absolute paths
/// without their leading slash.
pub struct SftpStore {
    inner: Arc<Inner>,
}

struct Inner {
    opts: SftpOptions,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SftpStore({})", self.inner)
    }
}

impl fmt::Display for SftpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sftp://{}@{}:{}",
            self.opts.user, self.opts.host, self.opts.port
        )
    }
}

fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(e),
    }
}

fn message(m: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: m.into(),
    }
}

fn sftp_error(path: &str, e: russh_sftp::client::error::Error) -> object_store::Error {
    use russh_sftp::client::error::Error as E;
    match &e {
        E::Status(s) if s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile => {
            object_store::Error::NotFound {
                path: path.to_string(),
                source: Box::new(e),
            }
        }
        E::Status(s) if s.status_code == russh_sftp::protocol::StatusCode::PermissionDenied => {
            object_store::Error::PermissionDenied {
                path: path.to_string(),
                source: Box::new(e),
            }
        }
        _ => generic(e),
    }
}

impl SftpStore {
    /// Connects now, so that an unknown host key or refused credentials are said at once.
    pub async fn connect(opts: SftpOptions) -> Result<Self, IngestError> {
        let inner = Arc::new(Inner {
            opts,
            conn: tokio::sync::Mutex::new(None),
        });
        inner
            .connection()
            .await
            .map_err(|source| IngestError::Store {
                what: format!("connecting to {inner}"),
                source,
            })?;
        Ok(SftpStore { inner })
    }
}

impl Inner {
    async fn open(&self) -> Result<Connection, object_store::Error> {
        let refused = Arc::new(Mutex::new(None));
        let checker = Checker {
            opts: self.opts.clone(),
            refused: refused.clone(),
        };
        // AES-GCM first (hardware AES: several times chacha20's speed here), a window large
        // enough for the pipelined reads, and no Nagle delay on small requests.
        let config = Arc::new(russh::client::Config {
            inactivity_timeout: Some(std::time::Duration::from_secs(120)),
            window_size: 16 << 20,
            nodelay: true,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(&[
                    russh::cipher::AES_128_GCM,
                    russh::cipher::AES_256_GCM,
                    russh::cipher::CHACHA20_POLY1305,
                    russh::cipher::AES_256_CTR,
                    russh::cipher::AES_128_CTR,
                ]),
                ..Default::default()
            },
            ..Default::default()
        });
        let addr = (self.opts.host.as_str(), self.opts.port);
        let mut ssh = match russh::client::connect(config, addr, checker).await {
            Ok(s) => s,
            Err(e) => {
                let why = refused.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(match why {
                    Some(why) => message(why),
                    None => message(format!("cannot connect to {self}: {e}")),
                });
            }
        };
        let user = self.opts.user.clone();
        let mut ok = false;
        if let Some(file) = &self.opts.key_file {
            let key = russh::keys::load_secret_key(file, None)
                .map_err(|e| message(format!("cannot read the SSH key {}: {e}", file.display())))?;
            let hash = ssh
                .best_supported_rsa_hash()
                .await
                .map_err(generic)?
                .flatten();
            ok = ssh
                .authenticate_publickey(
                    user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(generic)?
                .success();
        }
        if !ok && let Some(password) = &self.opts.password {
            ok = ssh
                .authenticate_password(user.clone(), password.expose())
                .await
                .map_err(generic)?
                .success();
        }
        if !ok {
            return Err(object_store::Error::Unauthenticated {
                path: self.to_string(),
                source: format!(
                    "{self} refused user {user}'s {}",
                    match (&self.opts.key_file, &self.opts.password) {
                        (Some(k), Some(_)) => format!("key {} and password", k.display()),
                        (Some(k), None) => format!("key {}", k.display()),
                        _ => "password".into(),
                    }
                )
                .into(),
            });
        }
        let channel = ssh.channel_open_session().await.map_err(generic)?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(generic)?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| message(format!("{self}: the SFTP subsystem did not start: {e}")))?;
        Ok(Connection { _ssh: ssh, sftp })
    }

    /// The live connection, made (again) when there is none.
    async fn connection(&self) -> Result<Arc<Connection>, object_store::Error> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref()
            && !c._ssh.is_closed()
        {
            return Ok(c.clone());
        }
        let c = Arc::new(self.open().await?);
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Drops the connection after a failure: the next request connects again.
    async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    async fn walk(
        &self,
        dir: String,
        recursive: bool,
        out: &mut Vec<ObjectMeta>,
        dirs: &mut Vec<Path>,
    ) -> Result<(), object_store::Error> {
        let conn = self.connection().await?;
        let entries = match conn.sftp.read_dir(dir.clone()).await {
            Ok(e) => e,
            Err(e) => {
                let err = sftp_error(&dir, e);
                if !matches!(err, object_store::Error::NotFound { .. }) {
                    self.reset().await;
                }
                return Err(err);
            }
        };
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let full = format!("{}/{name}", dir.trim_end_matches('/'));
            let meta = entry.metadata();
            let location = Path::from(full.trim_start_matches('/'));
            if meta.is_dir() {
                if recursive {
                    subdirs.push(full);
                } else {
                    dirs.push(location);
                }
            } else if meta.is_regular() {
                out.push(ObjectMeta {
                    location,
                    last_modified: listed_time(meta.modified().ok()),
                    size: meta.size.unwrap_or(0),
                    e_tag: None,
                    version: None,
                });
            }
        }
        for d in subdirs {
            Box::pin(self.walk(d, true, out, dirs)).await?;
        }
        Ok(())
    }
}

fn remote(location: &Path) -> String {
    format!("/{location}")
}

#[async_trait]
impl ObjectStore for SftpStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let conn = self.inner.connection().await?;
        let path = remote(location);
        // Parent directories first, as object stores have none to make.
        let mut dir = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            dir.push('/');
            dir.push_str(p);
            if !conn.sftp.try_exists(dir.clone()).await.unwrap_or(false) {
                conn.sftp
                    .create_dir(dir.clone())
                    .await
                    .map_err(|e| sftp_error(&dir, e))?;
            }
        }
        let mut file = conn
            .sftp
            .create(path.clone())
            .await
            .map_err(|e| sftp_error(&path, e))?;
        for chunk in payload.iter() {
            file.write_all(chunk).await.map_err(generic)?;
        }
        file.shutdown().await.map_err(generic)?;
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(object_store::Error::NotImplemented {
            operation: "put_multipart".into(),
            implementer: STORE.into(),
        })
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let path = remote(location);
        let conn = self.inner.connection().await?;
        let mut file = match conn.sftp.open(path.clone()).await {
            Ok(f) => f,
            Err(e) => {
                let err = sftp_error(&path, e);
                if matches!(err, object_store::Error::Generic { .. }) {
                    self.inner.reset().await;
                }
                return Err(err);
            }
        };
        let meta = file.metadata().await.map_err(|e| sftp_error(&path, e))?;
        let size = meta.size.unwrap_or(0);
        let range = match options.range {
            None => 0..size,
            Some(GetRange::Bounded(r)) => r.start.min(size)..r.end.min(size),
            Some(GetRange::Offset(o)) => o.min(size)..size,
            Some(GetRange::Suffix(n)) => size.saturating_sub(n)..size,
        };
        file.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(generic)?;
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: listed_time(meta.modified().ok()),
            size,
            e_tag: None,
            version: None,
        };
        // Reads are pipelined: up to PIPELINE chunks are asked for at once, each through a
        // handle of its own (one SFTP read is in flight per handle), and handed on in order.
        // One request at a time per file left a loopback transfer at a third of OpenSSH's
        // speed (docs/benchmarks.md).
        let chunks = (range.end - range.start).div_ceil(CHUNK as u64) as usize;
        let mut idle = vec![file];
        while idle.len() < PIPELINE.min(chunks) {
            match conn.sftp.open(path.clone()).await {
                Ok(f) => idle.push(f),
                Err(_) => break,
            }
        }
        let state = Pipeline {
            idle,
            next: range.start,
            end: range.end,
            inflight: FuturesOrdered::new(),
            _conn: conn,
        };
        let body = stream::unfold(state, |mut st| async move {
            while st.next < st.end {
                let Some(handle) = st.idle.pop() else { break };
                let len = (st.end - st.next).min(CHUNK as u64) as usize;
                st.inflight.push_back(read_at(handle, st.next, len).boxed());
                st.next += len as u64;
            }
            match st.inflight.next().await? {
                Ok((handle, bytes)) => {
                    st.idle.push(handle);
                    Some((Ok(bytes), st))
                }
                Err(e) => {
                    // The rest is not asked for: the caller resumes from what it has.
                    st.inflight = FuturesOrdered::new();
                    st.next = st.end;
                    Some((Err(e), st))
                }
            }
        })
        .boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(body),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        _locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        stream::once(async {
            Err(object_store::Error::NotImplemented {
                operation: "delete".into(),
                implementer: STORE.into(),
            })
        })
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // The walk borrows the store; listings of export folders are small, so it is collected
        // first (a missing directory lists nothing, as with other stores).
        let dir = format!("/{}", prefix.map(|p| p.to_string()).unwrap_or_default());
        let inner = self.inner.clone();
        stream::once(async move {
            let mut out = Vec::new();
            match inner.walk(dir, true, &mut out, &mut Vec::new()).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(out),
                Err(e) => Err(e),
            }
        })
        .flat_map(|r| match r {
            Ok(v) => stream::iter(v.into_iter().map(Ok)).boxed(),
            Err(e) => stream::once(async { Err(e) }).boxed(),
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let dir = format!("/{}", prefix.map(|p| p.to_string()).unwrap_or_default());
        let mut objects = Vec::new();
        let mut common_prefixes = Vec::new();
        match self
            .inner
            .walk(dir, false, &mut objects, &mut common_prefixes)
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(ListResult {
                common_prefixes,
                objects,
            }),
            Err(e) => Err(e),
        }
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(object_store::Error::NotImplemented {
            operation: "copy".into(),
            implementer: STORE.into(),
        })
    }
}

/// An entry's modification time; a server that gives none makes it "now", so that the settle
/// rule never takes such an entry for an old, finished one.
fn listed_time(modified: Option<std::time::SystemTime>) -> DateTime<Utc> {
    modified.map_or_else(Utc::now, DateTime::<Utc>::from)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_entry_without_a_modification_time_is_taken_as_new() {
        let before = chrono::Utc::now();
        assert!(super::listed_time(None) >= before);
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        assert_eq!(super::listed_time(Some(old)).timestamp(), 86_400);
    }
}
