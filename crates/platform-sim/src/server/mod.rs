//! The axum server: its configuration and state, and the running handle. The APIs it serves
//! are one module each (`ims`, `catalog`, `data_access`; Flow Service, segmentation and profile
//! exports in the crate's `flows`, `profile` and `profile_export`), behind `router`'s header gate
//! and `faults`' layer.
// Handlers return early with a ready `Response` as their error: the cold path of a test
// server, where boxing would only add noise.
#![allow(clippy::result_large_err)]

mod catalog;
mod data_access;
mod faults;
mod ims;
mod router;
mod schemas;
pub use schemas::xdm_properties;

use catalog::*;
use data_access::*;
use faults::*;
pub use ims::EntraApp;
use ims::*;
use router::*;
use schemas::*;

pub(crate) use catalog::dataset_exists;
pub(crate) use router::{SandboxName, now_ms, problem};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::SimError;
use crate::data::{Batch, Platform};
use crate::faults::{ErrorBodyStyle, Fault, FaultQueue, FaultSpec, Route};
use crate::flows::{self, ExportFault, FlowStore};
use crate::profile::{self, ProfileStore};
use crate::profile_export;

/// How the simulator behaves beyond what its data directory says.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// `expires_in` of issued tokens.
    pub token_lifetime: Duration,
    /// Added to every request, to simulate a WAN round trip.
    pub latency: Duration,
    /// Cap on body bytes per second of each response (HTTP/1.1 serves one response at a time
    /// per connection, so this is the per-connection cap).
    pub bandwidth_per_connection: Option<u64>,
    /// Largest page Data Access listings serve, to force paging (AEP's own maximum is 100).
    pub page_size: Option<usize>,
    /// Where dataset exports land: each destination is a directory under it
    /// (`s3/{bucket}/{path}`, `azure_blob/{container}/{path}`, `sftp/{remotePath}`, `dlz/{path}`…).
    pub export_root: PathBuf,
    /// How long a new flow answers an ad-hoc run with "not ready for dataset export" (AEP:
    /// several minutes).
    pub export_ready_after: Duration,
    /// S3 destinations are written to this endpoint (an S3 server such as moto) with the base
    /// connection's keys, instead of a directory. Azure Blob destinations go to the
    /// `BlobEndpoint` of their connection string when it has one.
    pub export_s3_endpoint: Option<String>,
    /// SFTP destinations are written under this directory (the one an sshd serves), at their
    /// `remotePath`, instead of under the export root. The simulator writes the files itself,
    /// not over SSH.
    pub export_sftp_root: Option<PathBuf>,
    /// Run enabled flows on their schedules, on a clock this many times faster than the wall
    /// clock (3600: an hour a second). Without it, exports run only when asked (ad-hoc runs).
    pub export_clock_speed: Option<f64>,
    /// The Data Landing Zone on a real Azure Blob server: exports to it are written into its
    /// container and its credentials are SAS tokens signed for it. Without it the DLZ is the
    /// export root's `dlz` directory, handed out as a `file://` URI.
    pub export_dlz: Option<crate::flows::DlzServer>,
    /// The Data Landing Zone on AWS (a bucket on a real S3 server): its credentials are AWS
    /// session credentials (`credentials`, `dlzPath`, `expiryTime`, and `endpoint`, which AEP's
    /// answer has not); it takes precedence over `export_dlz`.
    pub export_dlz_aws: Option<crate::flows::DlzAws>,
    /// Encrypt every export file to this ASCII-armored OpenPGP public key (`….gpg`), as AEP
    /// does when a destination is given the user's key.
    pub export_pgp_public_key: Option<String>,
    /// An Entra ID application whose client-credentials token requests
    /// (`POST /{tenant}/oauth2/v2.0/token`) are answered, for storage with a service principal.
    pub entra_app: Option<EntraApp>,
    /// How long a segment job takes from creation to its end.
    pub job_duration: Duration,
    /// Write AEP's opt-in manifest into each export folder after its files:
    /// `manifest-<flow>-<run>.json`, listing every file (`exportResults[]`: `sinkPath`,
    /// `name`, `size`).
    pub export_manifests: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token_lifetime: Duration::from_secs(86_399),
            latency: Duration::ZERO,
            bandwidth_per_connection: None,
            page_size: None,
            export_root: std::env::temp_dir().join("scoreland-sim-exports"),
            export_ready_after: Duration::ZERO,
            export_s3_endpoint: None,
            export_sftp_root: None,
            export_clock_speed: None,
            export_dlz: None,
            export_dlz_aws: None,
            export_pgp_public_key: None,
            entra_app: None,
            job_duration: Duration::from_secs(2),
            export_manifests: false,
        }
    }
}

const MAX_PAGE: usize = 100;
const DA_PREFIX: &str = "/data/foundation/export";

pub(crate) struct AppState {
    pub platform: Platform,
    pub base_url: String,
    pub config: SimConfig,
    pub tokens: Mutex<HashMap<String, Instant>>,
    pub faults: FaultQueue,
    pub page_size: AtomicUsize,
    pub token_counter: AtomicU64,
    pub requests: Mutex<HashMap<Route, u64>>,
    pub flows: FlowStore,
    pub profiles: ProfileStore,
    pub export_jobs: crate::profile_export::ExportJobStore,
    /// Datasets made with `POST /dataSets` while running, by (sandbox, id).
    pub created_datasets: Mutex<BTreeMap<(String, String), Map<String, Value>>>,
    /// Batches written while running (profile export jobs), by sandbox and id: served by
    /// Catalog and Data Access like the ones loaded at start.
    pub written_batches: Mutex<BTreeMap<String, BTreeMap<String, Batch>>>,
}

impl AppState {
    /// Calls `f` with every batch of `sandbox`: those loaded at start and those written since
    /// (read in place, under the lock of the written ones).
    fn with_batches<R>(
        &self,
        sandbox: &str,
        f: impl FnOnce(&mut dyn Iterator<Item = &Batch>) -> R,
    ) -> R {
        let written = self
            .written_batches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut all = self.platform.sandboxes[sandbox]
            .batches
            .values()
            .chain(written.get(sandbox).into_iter().flat_map(|m| m.values()));
        f(&mut all)
    }

    fn batch(&self, sandbox: &str, id: &str) -> Option<Batch> {
        if let Some(b) = self.platform.sandboxes[sandbox].batches.get(id) {
            return Some(b.clone());
        }
        self.written_batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sandbox)?
            .get(id)
            .cloned()
    }

    /// Adds a batch written while running (it is served from then on).
    pub(crate) fn add_batch(&self, sandbox: &str, batch: Batch) {
        self.written_batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sandbox.to_string())
            .or_default()
            .insert(batch.id.clone(), batch);
    }

    fn expire_tokens(&self) {
        let now = Instant::now();
        for exp in self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            *exp = now;
        }
    }

    fn page_limit(&self, requested: Option<&String>) -> Result<usize, Response> {
        let mut limit = match requested {
            None => MAX_PAGE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(problem(
                        StatusCode::BAD_REQUEST,
                        "DAS-1400-400",
                        "Bad Request",
                        &format!("limit must be an integer from 1 to {MAX_PAGE}, got '{v}'"),
                    ));
                }
            },
        };
        let cap = self.page_size.load(Ordering::Relaxed);
        if cap > 0 {
            limit = limit.min(cap);
        }
        Ok(limit)
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    pub(crate) state: Arc<AppState>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Runs flows on their schedules (with `export_clock_speed`).
    scheduler: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`: the platform gateway (what `platform.adobe.io` is for AEP).
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }
    /// The IMS origin; the simulator serves IMS on the same port.
    pub fn ims_url(&self) -> &str {
        &self.state.base_url
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn platform(&self) -> &Platform {
        &self.state.platform
    }
    pub fn push_fault(&self, route: Route, fault: Fault, times: u32) {
        self.state.faults.push(FaultSpec {
            route,
            fault,
            times,
        });
    }
    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }
    pub fn pending_faults(&self, route: Route) -> u32 {
        self.state.faults.pending(route)
    }
    pub fn set_page_size(&self, size: Option<usize>) {
        self.state
            .page_size
            .store(size.unwrap_or(0), Ordering::Relaxed);
    }
    pub fn expire_tokens(&self) {
        self.state.expire_tokens();
    }
    /// Makes the next export run go wrong this way.
    pub fn script_export(&self, fault: ExportFault) {
        self.state.flows.script(fault);
    }
    /// The next segment job fails with this message.
    pub fn fail_next_segment_job(&self, message: &str) {
        self.state
            .profiles
            .fail_next_segment_job(message.to_string());
    }
    /// What the next profile export job does instead of exporting.
    pub fn script_profile_export(&self, fault: crate::profile_export::ProfileExportFault) {
        self.state.export_jobs.script(fault);
    }
    /// How many Data Landing Zone credentials were issued (the first, and one per refresh).
    pub fn dlz_credentials_issued(&self) -> u64 {
        self.state.flows.dlz_generation()
    }
    /// The next Data Landing Zone credentials handed out (not a refresh) have already expired.
    pub fn expire_dlz_credentials(&self) {
        self.state.flows.expire_dlz_next();
    }
    /// Exports leave out the newest `n` successful batches of a dataset, as if they had not
    /// been written yet: lowering it makes data "arrive" for incremental exports.
    pub fn set_export_hold_back(&self, n: usize) {
        self.state.flows.set_hold_back(n);
    }
    /// A flow run as `GET /runs/{id}` would show it.
    pub fn export_run(&self, id: &str) -> Option<Value> {
        self.state.flows.run(id)
    }
    pub fn export_root(&self) -> &std::path::Path {
        &self.state.config.export_root
    }
    /// Requests seen on a route so far (including faulted ones).
    pub fn request_count(&self, route: Route) -> u64 {
        *self
            .state
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&route)
            .unwrap_or(&0)
    }

    /// The one JSON line `scoreland sim` prints on start: where to point a client.
    pub fn announcement(&self) -> Value {
        let info = &self.state.platform.info;
        let (sandbox, datasets) = match self.state.platform.sandboxes.iter().next() {
            Some((name, sb)) => (
                name.clone(),
                sb.datasets
                    .values()
                    .map(|d| json!({"id": d.id, "name": d.name()}))
                    .collect::<Vec<_>>(),
            ),
            None => (String::new(), Vec::new()),
        };
        json!({
            "base_url": self.base_url(),
            "ims_url": self.ims_url(),
            "client_id": info.client_id,
            "client_secret": info.client_secret,
            "org_id": info.org_id,
            "sandbox": sandbox,
            "datasets": datasets,
            "exports": self.state.config.export_root,
        })
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.scheduler.take() {
            s.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Serves until Ctrl-C.
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(s) = self.scheduler.take() {
            s.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr` (use port 0 for a free port) and serves `platform` in the background.
pub async fn start(
    platform: Platform,
    config: SimConfig,
    addr: SocketAddr,
) -> Result<SimHandle, SimError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SimError::Bind { addr, source })?;
    let state = Arc::new(AppState {
        platform,
        base_url: format!("http://{addr}"),
        page_size: AtomicUsize::new(config.page_size.unwrap_or(0)),
        config,
        tokens: Mutex::new(HashMap::new()),
        faults: FaultQueue::default(),
        token_counter: AtomicU64::new(0),
        requests: Mutex::new(HashMap::new()),
        flows: FlowStore::default(),
        profiles: ProfileStore::default(),
        export_jobs: Default::default(),
        created_datasets: Mutex::new(BTreeMap::new()),
        written_batches: Mutex::new(BTreeMap::new()),
    });
    let app = router(state.clone());
    let scheduler = state
        .config
        .export_clock_speed
        .filter(|s| *s > 0.0)
        .map(|speed| tokio::spawn(flows::schedule(state.clone(), speed)));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // As servers in front of real APIs do: without TCP_NODELAY, a small write that follows
    // another (a body after its head) waits for the client's delayed ACK, up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        state,
        addr,
        shutdown: Some(tx),
        task: Some(task),
        scheduler,
    })
}
