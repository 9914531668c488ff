//! The axum server: IMS, the header gate, Catalog and Data Access, with scripted faults.
// Handlers return early with a ready `Response` as their error: the cold path of a test
// server, where boxing would only add noise.
#![allow(clippy::result_large_err)]

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

fn router(state: Arc<AppState>) -> Router {
    let platform = Router::new()
        .route("/data/foundation/catalog/batches", get(list_batches))
        .route("/data/foundation/catalog/batches/{id}", get(get_batch))
        .route(
            "/data/foundation/catalog/dataSets",
            get(list_datasets).post(create_dataset),
        )
        .route("/data/foundation/catalog/dataSets/{id}", get(get_dataset))
        .route(
            "/data/foundation/export/batches/{id}/files",
            get(batch_files),
        )
        .route("/data/foundation/export/files/{id}", get(files))
        .route(
            "/data/foundation/flowservice/{kind}",
            get(flows::list).post(flows::create),
        )
        .route(
            "/data/foundation/flowservice/{kind}/{id}",
            get(flows::get_one)
                .patch(flows::patch_flow)
                .delete(flows::delete),
        )
        .route(
            "/data/foundation/flowservice/{kind}/{id}/action",
            post(flows::flow_action),
        )
        .route(
            "/data/core/activation/disflowprovider/adhocrun",
            post(flows::adhoc_run),
        )
        .route(
            "/data/core/ups/segment/jobs",
            get(profile::list_segment_jobs).post(profile::create_segment_job),
        )
        .route(
            "/data/core/ups/segment/jobs/bulk-get",
            post(profile::bulk_get_segment_jobs),
        )
        .route(
            "/data/core/ups/segment/jobs/{id}",
            get(profile::get_segment_job).delete(profile::cancel_segment_job),
        )
        .route(
            "/data/core/ups/export/jobs",
            get(profile_export::list_export_jobs).post(profile_export::create_export_job),
        )
        .route(
            "/data/core/ups/export/jobs/{id}",
            get(profile_export::get_export_job).delete(profile_export::cancel_export_job),
        )
        .route(
            "/data/core/ups/config/schedules",
            get(profile::list_schedules).post(profile::create_schedule),
        )
        .route(
            "/data/core/ups/config/schedules/{id}",
            get(profile::get_schedule)
                .patch(profile::patch_schedule)
                .delete(profile::delete_schedule),
        )
        .route(
            "/data/foundation/connectors/landingzone/credentials",
            get(flows::dlz_credentials).post(flows::dlz_credentials),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), header_gate));
    Router::new()
        .route("/ims/token/v3", post(ims_token))
        .route(
            "/__sim/faults",
            post(admin_push_faults).delete(admin_clear_faults),
        )
        .merge(platform)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), fault_layer))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Error bodies

fn gateway_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error_code": code, "message": message})),
    )
        .into_response()
}

/// The simulator's clock, in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "type": format!("http://ns.adobe.com/aep/errors/{code}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        })),
    )
        .into_response()
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "SIM-0404-404",
        "Not Found",
        "no such route",
    )
}

fn fault_response(status: u16, retry_after: Option<&str>, style: ErrorBodyStyle) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match style {
        ErrorBodyStyle::Empty => status.into_response(),
        ErrorBodyStyle::Gateway => gateway_error(
            status,
            &format!("{}000", status.as_u16()),
            status.canonical_reason().unwrap_or("error"),
        ),
        ErrorBodyStyle::Problem => {
            let title = if status == StatusCode::TOO_MANY_REQUESTS {
                "RequestRateTooLarge"
            } else {
                status.canonical_reason().unwrap_or("error")
            };
            problem(
                status,
                &format!("SIM-1000-{}", status.as_u16()),
                title,
                "scripted fault",
            )
        }
    };
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Faults, latency and bandwidth: the outermost layer

#[derive(Debug, Clone)]
enum ListingQuirk {
    RepeatNext,
    Foreign(String),
    Overlap,
    Empty,
    Markers,
    Relative,
}

/// Download quirks, for the `download` handler.
#[derive(Debug, Clone, Copy)]
enum RangeQuirk {
    Short(u64),
    Ignore,
}

/// Catalog quirks.
#[derive(Debug, Clone, Copy)]
struct IgnoreStart;

async fn fault_layer(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let route = Route::classify(req.uri().path(), req.uri().query());
    if let Some(r) = route {
        *st.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(r)
            .or_default() += 1;
    }
    let fault = route.and_then(|r| st.faults.take(r));
    if !st.config.latency.is_zero() {
        tokio::time::sleep(st.config.latency).await;
    }
    let mut shape = Shape {
        rate: st.config.bandwidth_per_connection,
        ..Shape::default()
    };
    match fault {
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => return fault_response(status, retry_after.as_deref(), body),
        Some(Fault::Latency { delay }) => tokio::time::sleep(delay).await,
        Some(Fault::ExpireTokens) => st.expire_tokens(),
        Some(Fault::RepeatNextLink) => {
            req.extensions_mut().insert(ListingQuirk::RepeatNext);
        }
        Some(Fault::ForeignHrefs { origin }) => {
            req.extensions_mut().insert(ListingQuirk::Foreign(origin));
        }
        Some(Fault::OverlappingCursor) => {
            req.extensions_mut().insert(ListingQuirk::Overlap);
        }
        Some(Fault::EmptyPage) => {
            req.extensions_mut().insert(ListingQuirk::Empty);
        }
        Some(Fault::MarkerFiles) => {
            req.extensions_mut().insert(ListingQuirk::Markers);
        }
        Some(Fault::RelativeHrefs) => {
            req.extensions_mut().insert(ListingQuirk::Relative);
        }
        Some(Fault::CatalogIgnoresStart) => {
            req.extensions_mut().insert(IgnoreStart);
        }
        Some(Fault::ShortRange { max_bytes }) => {
            req.extensions_mut().insert(RangeQuirk::Short(max_bytes));
        }
        Some(Fault::IgnoreRange) => {
            req.extensions_mut().insert(RangeQuirk::Ignore);
        }
        Some(Fault::ResetMidBody { after_bytes }) => shape.cut = Some((after_bytes, true)),
        Some(Fault::TruncateBody { after_bytes }) => shape.cut = Some((after_bytes, false)),
        Some(Fault::StallMidBody { after_bytes, delay }) => {
            shape.stall = Some((after_bytes, delay))
        }
        Some(Fault::Bandwidth { bytes_per_sec }) => shape.rate = Some(bytes_per_sec),
        Some(Fault::Drip { bytes, every }) => shape.drip = Some((bytes.max(1), every)),
        Some(Fault::ResponseCap { after }) => shape.cap = Some(after),
        None => {}
    }
    let resp = next.run(req).await;
    if shape.is_plain() {
        return resp;
    }
    shape_body(resp, shape)
}

/// How a response body is re-streamed.
#[derive(Debug, Default, Clone, Copy)]
struct Shape {
    /// Bytes to send, then end (false) or reset (true).
    cut: Option<(u64, bool)>,
    /// Bytes to send, then a pause.
    stall: Option<(u64, Duration)>,
    /// Bytes per second.
    rate: Option<u64>,
    /// So many bytes every so often.
    drip: Option<(u64, Duration)>,
    /// Reset once the body has taken this long.
    cap: Option<Duration>,
}

impl Shape {
    fn is_plain(&self) -> bool {
        self.cut.is_none()
            && self.stall.is_none()
            && self.rate.is_none()
            && self.drip.is_none()
            && self.cap.is_none()
    }
}

/// Bytes read from a part file at a time. Each read is a trip to tokio's blocking pool, so larger
/// reads leave more of the machine to the client under test.
const PART_READ: usize = 256 * 1024;

/// Re-streams a response body, cutting it short, stalling it once, pacing it, dripping it or
/// resetting it after a time.
fn shape_body(resp: Response, shape: Shape) -> Response {
    let Shape {
        cut,
        stall,
        rate,
        drip,
        cap,
    } = shape;
    use axum::body::HttpBody as _;
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    if cut.is_some() || cap.is_some() {
        // The connection dies with this body; say so, as a server closing it would.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let chunk = match (drip, rate) {
        (Some((bytes, _)), _) => (bytes as usize).min(PART_READ),
        // About twenty pauses a second keep pacing smooth without tiny writes; at most one read
        // of a part file (see `PART_READ`) at a time.
        (None, Some(r)) => ((r / 20) as usize).clamp(1024, PART_READ),
        (None, None) => PART_READ,
    };
    struct Shaper {
        inner: axum::body::BodyDataStream,
        buf: Bytes,
        sent: u64,
        started: Instant,
        stall: Option<(u64, Duration)>,
        done: bool,
    }
    let shaper = Shaper {
        inner: body.into_data_stream(),
        buf: Bytes::new(),
        sent: 0,
        started: Instant::now(),
        stall,
        done: false,
    };
    let stream = futures::stream::unfold(shaper, move |mut s| async move {
        if s.done {
            return None;
        }
        if let Some(after) = cap
            && s.started.elapsed() >= after
        {
            s.done = true;
            let err = std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated gateway time limit",
            );
            return Some((Err(err), s));
        }
        if let Some((_, every)) = drip {
            tokio::time::sleep(every).await;
        }
        if s.buf.is_empty() {
            match s.inner.next().await {
                Some(Ok(b)) => s.buf = b,
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(std::io::Error::other(e)), s));
                }
                None => return None,
            }
        }
        let mut n = s.buf.len().min(chunk);
        if let Some((limit, reset)) = cut {
            let remaining = limit.saturating_sub(s.sent);
            if remaining == 0 {
                s.done = true;
                // Let the server flush the head and the bytes sent so far before the cut: ended
                // at once, hyper may drop its unflushed buffer with the connection, and the
                // client sees no response at all instead of a short one.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if reset {
                    let err = std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "simulated connection reset",
                    );
                    return Some((Err(err), s));
                }
                return None;
            }
            n = n.min(remaining as usize);
        }
        if let Some((at, delay)) = s.stall {
            if s.sent >= at {
                s.stall = None;
                tokio::time::sleep(delay).await;
            } else {
                n = n.min((at - s.sent) as usize);
            }
        }
        let piece = s.buf.split_to(n);
        s.sent += n as u64;
        if let Some(r) = rate {
            let due = s.started + Duration::from_secs_f64(s.sent as f64 / r.max(1) as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        Some((Ok(piece), s))
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

// ---------------------------------------------------------------------------------------------
// Admin (scripting faults from another process)

async fn admin_push_faults(
    State(st): State<Arc<AppState>>,
    axum::Json(specs): axum::Json<Vec<FaultSpec>>,
) -> StatusCode {
    for spec in specs {
        st.faults.push(spec);
    }
    StatusCode::NO_CONTENT
}

async fn admin_clear_faults(State(st): State<Arc<AppState>>) -> StatusCode {
    st.faults.clear();
    StatusCode::NO_CONTENT
}

// ---------------------------------------------------------------------------------------------
// IMS

async fn ims_token(
    State(st): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    // IMS accepts the parameters in the form body (recommended) or the query string.
    let mut params: HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    for (k, v) in query {
        params.entry(k).or_insert(v);
    }
    let oauth = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            axum::Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            );
        }
        None => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing grant_type parameter",
            );
        }
    }
    let info = &st.platform.info;
    match params.get("client_id") {
        None => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing client_id parameter",
            );
        }
        Some(id) if *id != info.client_id => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "invalid client_id parameter",
            );
        }
        Some(_) => {}
    }
    if params.get("client_secret") != Some(&info.client_secret) {
        return oauth(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "invalid client_secret parameter",
        );
    }
    let n = st.token_counter.fetch_add(1, Ordering::Relaxed);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ n.rotate_left(32);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let token = format!(
        "eyJhbGciOiJSUzI1NiJ9.sim{:016x}{:016x}.{:016x}",
        rng.random::<u64>(),
        rng.random::<u64>(),
        rng.random::<u64>()
    );
    let lifetime = st.config.token_lifetime;
    st.tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone(), Instant::now() + lifetime);
    axum::Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime.as_secs(),
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Header gate on every platform route: `Authorization`, `x-api-key`, `x-gw-ims-org-id` and
// `x-sandbox-name`, as every Experience Platform API asks

#[derive(Debug, Clone)]
pub(crate) struct SandboxName(pub(crate) String);

async fn header_gate(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header_str("authorization") else {
        return gateway_error(StatusCode::FORBIDDEN, "403010", "Oauth token is missing.");
    };
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "));
    let valid = token.is_some_and(|t| {
        st.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(t)
            .is_some_and(|exp| Instant::now() < *exp)
    });
    if !valid {
        return gateway_error(
            StatusCode::UNAUTHORIZED,
            "401013",
            "Oauth token is not valid",
        );
    }
    let info = &st.platform.info;
    match header_str("x-api-key") {
        None => return gateway_error(StatusCode::FORBIDDEN, "403000", "Api Key is required"),
        Some(k) if k != info.client_id => {
            return gateway_error(StatusCode::FORBIDDEN, "403003", "Api Key is invalid");
        }
        Some(_) => {}
    }
    match header_str("x-gw-ims-org-id") {
        None => return gateway_error(StatusCode::BAD_REQUEST, "400003", "Missing header"),
        Some(o) if o != info.org_id => {
            return gateway_error(StatusCode::FORBIDDEN, "403025", "Profile is not valid");
        }
        Some(_) => {}
    }
    let sandbox = match header_str("x-sandbox-name") {
        None => return gateway_error(StatusCode::BAD_REQUEST, "400003", "Missing header"),
        Some(s) => s.to_string(),
    };
    if !st.platform.sandboxes.contains_key(&sandbox) {
        return problem(
            StatusCode::FORBIDDEN,
            "SBX-1003-403",
            "Sandbox validation error",
            &format!("sandbox '{sandbox}' does not exist in this organization"),
        );
    }
    req.extensions_mut().insert(SandboxName(sandbox));
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Catalog

/// A JSON object whose keys keep the order they were given in (Catalog lists are objects keyed
/// by id, in `orderBy` order).
struct Keyed(Vec<(String, Value)>);

impl Serialize for Keyed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Catalog's simple filter syntax: `v`, `v1,v2` (any of), `!v` and `!v1,v2` (none of).
fn simple_filter(spec: &str, value: &str) -> bool {
    match spec.strip_prefix('!') {
        Some(rest) => !rest.split(',').any(|v| v == value),
        None => spec.split(',').any(|v| v == value),
    }
}

fn catalog_bad_request(detail: &str) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "CAT-1400-400",
        "Bad Request",
        detail,
    )
}

fn parse_limit_start(q: &HashMap<String, String>) -> Result<(usize, usize), Response> {
    let limit = match q.get("limit") {
        None => 20,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(catalog_bad_request(&format!(
                    "limit must be between 1 and 100 (got '{v}')"
                )));
            }
        },
    };
    let start = match q.get("start") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| {
            catalog_bad_request(&format!("start must be a non-negative integer (got '{v}')"))
        })?,
    };
    Ok((limit, start))
}

fn project(object: &Map<String, Value>, properties: Option<&String>) -> Value {
    match properties {
        None => Value::Object(object.clone()),
        Some(list) => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
            Value::Object(
                object
                    .iter()
                    .filter(|(k, _)| wanted.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        }
    }
}

fn batch_dataset(batch: &Batch) -> Option<&str> {
    batch
        .object
        .get("relatedObjects")?
        .as_array()?
        .iter()
        .find(|o| o.get("type").and_then(Value::as_str) == Some("dataSet"))?
        .get("id")?
        .as_str()
}

async fn list_batches(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    ignore_start: Option<Extension<IgnoreStart>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (limit, start) = match parse_limit_start(&q) {
        Ok((limit, _)) if ignore_start.is_some() => (limit, 0),
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let bound = |name: &str| -> Result<Option<i64>, Response> {
        q.get(name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    catalog_bad_request(&format!("{name} must be epoch milliseconds (got '{v}')"))
                })
            })
            .transpose()
    };
    let (after, before) = match (bound("createdAfter"), bound("createdBefore")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let page = st.with_batches(&sandbox, |all| {
        let mut batches: Vec<&Batch> = all
            .filter(|b| {
                q.get("dataSet")
                    .is_none_or(|d| batch_dataset(b).is_some_and(|id| simple_filter(d, id)))
                    && q.get("status").is_none_or(|s| simple_filter(s, b.status()))
                    && q.get("createdClient")
                        .is_none_or(|c| simple_filter(c, b.created_client()))
                    && after.is_none_or(|a| b.created() > a)
                    && before.is_none_or(|x| b.created() < x)
            })
            .collect();
        // Stable order: the requested field and direction, then id.
        let order = q.get("orderBy").map(String::as_str).unwrap_or("created");
        let (desc, field) = match order.split(',').next().unwrap_or("created") {
            o if o.starts_with("desc:") => (true, &o[5..]),
            o if o.starts_with("asc:") => (false, &o[4..]),
            o if o.starts_with('-') => (true, &o[1..]),
            o => (false, o),
        };
        let key = |b: &Batch| b.object.get(field).and_then(Value::as_i64).unwrap_or(0);
        batches.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id)));
        if desc {
            batches.reverse();
        }
        batches
            .into_iter()
            .skip(start)
            .take(limit)
            .map(|b| (b.id.clone(), project(&b.object, q.get("properties"))))
            .collect()
    });
    axum::Json(Keyed(page)).into_response()
}

async fn get_batch(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match st.batch(&sandbox, &id) {
        Some(b) => axum::Json(Keyed(vec![(id, Value::Object(b.object))])).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "CAT-1404-404",
            "Not Found",
            &format!("batch '{id}' not found"),
        ),
    }
}

/// Whether `id` is a dataset of `sandbox` (loaded or created).
pub(crate) fn dataset_exists(st: &AppState, sandbox: &str, id: &str) -> Option<()> {
    if st
        .platform
        .sandboxes
        .get(sandbox)?
        .datasets
        .contains_key(id)
    {
        return Some(());
    }
    st.created_datasets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&(sandbox.to_string(), id.to_string()))
        .then_some(())
}

fn dataset_object(st: &AppState, sandbox: &str, id: &str) -> Option<Value> {
    let sb = &st.platform.sandboxes[sandbox];
    let mut object = match sb.datasets.get(id) {
        Some(ds) => ds.object.clone(),
        None => st
            .created_datasets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(sandbox.to_string(), id.to_string()))?
            .clone(),
    };
    // The newest batch, and the newest successful one, with its status.
    let (last, last_ok) = st.with_batches(sandbox, |all| {
        let mut last: Option<&Batch> = None;
        let mut last_ok: Option<&Batch> = None;
        for b in all.filter(|b| b.dataset_id == id) {
            if last.is_none_or(|l| b.created() >= l.created()) {
                last = Some(b);
            }
            if b.status() == "success" && last_ok.is_none_or(|l| b.created() >= l.created()) {
                last_ok = Some(b);
            }
        }
        (
            last.map(|b| (b.id.clone(), b.status().to_string())),
            last_ok.map(|b| b.id.clone()),
        )
    });
    object.insert("imsOrg".into(), json!(st.platform.info.org_id));
    object.insert(
        "files".into(),
        json!(format!("@/dataSetFiles?dataSetId={id}")),
    );
    if let Some((id, status)) = last {
        object.insert("lastBatchId".into(), json!(id));
        object.insert("lastBatchStatus".into(), json!(status));
    }
    if let Some(id) = last_ok {
        object.insert("lastSuccessfulBatch".into(), json!(id));
    }
    Some(Value::Object(object))
}

async fn get_dataset(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match dataset_object(&st, &sandbox, &id) {
        Some(obj) => axum::Json(Keyed(vec![(id, obj)])).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "CAT-1404-404",
            "Not Found",
            &format!("dataSet '{id}' not found"),
        ),
    }
}

async fn list_datasets(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (limit, start) = match parse_limit_start(&q) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let mut ids: Vec<String> = st.platform.sandboxes[&sandbox]
        .datasets
        .keys()
        .cloned()
        .collect();
    ids.extend(
        st.created_datasets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|(sb, _)| *sb == sandbox)
            .map(|(_, id)| id.clone()),
    );
    ids.sort();
    let page = ids
        .iter()
        .filter_map(|id| Some((id.clone(), dataset_object(&st, &sandbox, id)?)))
        .filter(|(_, o)| q.get("name").is_none_or(|n| o["name"] == n.as_str()))
        .skip(start)
        .take(limit)
        .collect();
    axum::Json(Keyed(page)).into_response()
}

/// `POST /dataSets`: 201 with `["@/dataSets/{id}"]` and a `Location`.
async fn create_dataset(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    body: Bytes,
) -> Response {
    let bad = |detail: &str| catalog_bad_request(detail);
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&body) else {
        return bad("the request body is not a JSON object");
    };
    if object
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return bad("name is required");
    }
    if object
        .get("schemaRef")
        .and_then(|r| r.get("id"))
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return bad("schemaRef.id is required");
    }
    let now = now_ms();
    // The same (sandbox, name) gets the same id each time the simulator starts, as a dataset
    // made once stays in AEP: pipelines that find or make their dataset by name land into one.
    let id = {
        use sha2::Digest;
        let name = object["name"].as_str().unwrap_or_default();
        let digest = sha2::Sha256::digest(format!("{sandbox}/{name}"));
        digest[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    object.insert("created".into(), json!(now));
    object.insert("updated".into(), json!(now));
    object.insert("createdClient".into(), json!(st.platform.info.client_id));
    object.insert("version".into(), json!("1.0.0"));
    st.created_datasets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((sandbox, id.clone()), object);
    (
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("{}/data/foundation/catalog/dataSets/{id}", st.base_url),
        )],
        axum::Json(json!([format!("@/dataSets/{id}")])),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Data Access

fn links_origin(st: &AppState, quirk: Option<&ListingQuirk>) -> String {
    match quirk {
        Some(ListingQuirk::Foreign(origin)) => origin.trim_end_matches('/').to_string(),
        Some(ListingQuirk::Relative) => String::new(),
        _ => st.base_url.clone(),
    }
}

/// An empty listing page whose `next` link is new each time and serves `next_query` again.
fn empty_page(base: &str, next_query: &str) -> Response {
    static HOPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let hop = HOPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!({
        "data": [],
        "_page": {"count": 0},
        "_links": {"next": {"href": format!("{base}?{next_query}&hop={hop}")}},
    }))
    .into_response()
}

fn da_not_found(what: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "DAS-1404-404",
        "Not Found",
        &format!("{what} not found"),
    )
}

async fn batch_files(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    quirk: Option<Extension<ListingQuirk>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(batch) = st.batch(&sandbox, &id) else {
        return da_not_found(&format!("batch '{id}'"));
    };
    let limit = match st.page_limit(q.get("limit")) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let start = match q.get("start").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "DAS-1400-400",
                "Bad Request",
                "start must be a non-negative integer",
            );
        }
    };
    let quirk = quirk.map(|Extension(q)| q);
    let origin = links_origin(&st, quirk.as_ref());
    let created = batch.created().to_string();
    let view_id = format!("{}v", &batch.dataset_id);
    let files = if matches!(batch.status(), "success" | "active") {
        &batch.files[..]
    } else {
        &[]
    };
    let data: Vec<Value> = files
        .iter()
        .skip(start)
        .take(limit)
        .map(|f| {
            json!({
                "dataSetFileId": f.id,
                "dataSetViewId": view_id,
                "version": "1.0.0",
                "created": created,
                "updated": created,
                "records": f.records().to_string(),
                "size": f.size().to_string(),
                "isValid": false,
                "_links": {"self": {"href": format!("{origin}{DA_PREFIX}/files/{}", f.id)}},
            })
        })
        .collect();
    let base = format!("{origin}{DA_PREFIX}/batches/{id}/files");
    if matches!(quirk, Some(ListingQuirk::Empty)) {
        return empty_page(&base, &format!("start={start}&limit={limit}"));
    }
    let mut links = Map::new();
    let next_start = match quirk {
        Some(ListingQuirk::RepeatNext) => Some(start),
        _ if start + data.len() < files.len() => Some(start + data.len()),
        _ => None,
    }
    .map(|n| match quirk {
        Some(ListingQuirk::Overlap) => n.saturating_sub(1).max(start),
        _ => n,
    });
    if let Some(n) = next_start {
        links.insert(
            "next".into(),
            json!({"href": format!("{base}?start={n}&limit={limit}")}),
        );
    }
    links.insert(
        "page".into(),
        json!({"href": format!("{base}?start={{start}}&limit={{limit}}"), "templated": true}),
    );
    axum::Json(json!({
        "data": data,
        "_page": {"limit": limit, "count": data.len()},
        "_links": links,
    }))
    .into_response()
}

async fn files(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    quirk: Option<Extension<ListingQuirk>>,
    range_quirk: Option<Extension<RangeQuirk>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let file = st.with_batches(&sandbox, |all| {
        all.filter(|b| matches!(b.status(), "success" | "active"))
            .flat_map(|b| b.files.iter())
            .find(|f| f.id == id)
            .cloned()
    });
    let Some(file) = file else {
        return da_not_found(&format!("dataSetFile '{id}'"));
    };
    if let Some(name) = q.get("path") {
        // Names are looked up exactly; nothing the client sends becomes a filesystem path.
        let Some(part) = file.parts.iter().find(|p| &p.name == name) else {
            return da_not_found(&format!("file '{name}' in dataSetFile '{id}'"));
        };
        return download(
            &part.path,
            &part.name,
            part.length,
            &headers,
            range_quirk.map(|Extension(q)| q),
        )
        .await;
    }
    let limit = match st.page_limit(q.get("limit")) {
        Ok(l) => l,
        Err(r) => return r,
    };
    // The listing cursor is the name to start at: opaque to clients, which follow `next`.
    let start_idx = match q.get("start") {
        None => 0,
        Some(name) => file
            .parts
            .partition_point(|p| p.name.as_str() < name.as_str()),
    };
    let quirk = quirk.map(|Extension(q)| q);
    let origin = links_origin(&st, quirk.as_ref());
    let base = format!("{origin}{DA_PREFIX}/files/{id}");
    if matches!(quirk, Some(ListingQuirk::Empty)) {
        let start = q.get("start").map(|s| encode(s)).unwrap_or_default();
        return empty_page(&base, &format!("start={start}&limit={limit}"));
    }
    let page = &file.parts[start_idx.min(file.parts.len())..];
    let page = &page[..page.len().min(limit)];
    let mut data: Vec<Value> = page
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "length": p.length.to_string(),
                "_links": {"self": {"href": format!("{base}?path={}", encode(&p.name))}},
            })
        })
        .collect();
    if matches!(quirk, Some(ListingQuirk::Markers)) {
        for marker in [
            "_SUCCESS",
            "_started_5521860254457337425",
            "_committed_5521860254457337425",
        ] {
            data.push(json!({
                "name": marker,
                "length": "0",
                "_links": {"self": {"href": format!("{base}?path={marker}")}},
            }));
        }
    }
    let mut links = Map::new();
    let next_name = match quirk {
        Some(ListingQuirk::RepeatNext) => page.first().map(|p| p.name.clone()),
        // An inclusive cursor: the next page starts with this page's last entry.
        Some(ListingQuirk::Overlap) if start_idx + page.len() < file.parts.len() => {
            page.last().map(|p| p.name.clone())
        }
        _ => file
            .parts
            .get(start_idx + page.len())
            .map(|p| p.name.clone()),
    };
    if let Some(n) = next_name {
        links.insert(
            "next".into(),
            json!({"href": format!("{base}?start={}&limit={limit}", encode(&n))}),
        );
    }
    links.insert(
        "page".into(),
        json!({"href": format!("{base}?start={{start}}&limit={{limit}}"), "templated": true}),
    );
    axum::Json(json!({
        "data": data,
        "_page": {"limit": limit, "count": data.len()},
        "_links": links,
    }))
    .into_response()
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A single byte range, as asked for by `Range: bytes=…`.
#[derive(Debug, PartialEq)]
enum RangeAsk {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses `Range` against a file of `size` bytes. Malformed or multi-range headers are ignored
/// (the whole file is served, as RFC 9110 allows).
fn parse_range(value: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return match b.parse::<u64>() {
            Ok(0) => RangeAsk::Unsatisfiable,
            Ok(_) if size == 0 => RangeAsk::Unsatisfiable,
            Ok(n) => RangeAsk::Part(size.saturating_sub(n), size - 1),
            Err(_) => RangeAsk::Whole,
        };
    }
    let Ok(first) = a.parse::<u64>() else {
        return RangeAsk::Whole;
    };
    let last = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(l) if l >= first => l.min(size.saturating_sub(1)),
            _ => return RangeAsk::Whole,
        }
    };
    if first >= size {
        RangeAsk::Unsatisfiable
    } else {
        RangeAsk::Part(first, last)
    }
}

async fn download(
    path: &std::path::Path,
    name: &str,
    size: u64,
    headers: &HeaderMap,
    quirk: Option<RangeQuirk>,
) -> Response {
    let asked = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let range = match (quirk, asked) {
        (Some(RangeQuirk::Ignore), _) => RangeAsk::Whole,
        (Some(RangeQuirk::Short(max)), RangeAsk::Whole) if size > 0 => {
            RangeAsk::Part(0, max.clamp(1, size) - 1)
        }
        (Some(RangeQuirk::Short(max)), RangeAsk::Part(a, b)) => {
            RangeAsk::Part(a, b.min(a.saturating_add(max.max(1) - 1)))
        }
        (_, asked) => asked,
    };
    let content_type = if name.ends_with(".parquet") {
        "application/parquet"
    } else {
        "application/octet-stream"
    };
    let (status, first, len) = match range {
        RangeAsk::Whole => (StatusCode::OK, 0, size),
        RangeAsk::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeAsk::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({
                        "type": "http://ns.adobe.com/aep/errors/DAS-1416-416",
                        "title": "Range Not Satisfiable",
                        "status": 416,
                        "detail": format!("file '{name}' has {size} bytes"),
                    })
                    .to_string(),
                ))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open part");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if first > 0
        && let Err(e) = file.seek(std::io::SeekFrom::Start(first)).await
    {
        tracing::error!(path = %path.display(), error = %e, "cannot seek part");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(len),
        PART_READ,
    ));
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{}/{size}", first + len - 1),
        );
    }
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), RangeAsk::Part(0, 3));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeAsk::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-4"), 10), RangeAsk::Part(6, 9));
        assert_eq!(parse_range(Some("bytes=-40"), 10), RangeAsk::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), RangeAsk::Part(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeAsk::Whole);
    }

    #[test]
    fn catalog_filters() {
        assert!(simple_filter("success", "success"));
        assert!(simple_filter("success,failure", "failure"));
        assert!(!simple_filter("!success", "success"));
        assert!(simple_filter("!success,failure", "loading"));
        assert!(!simple_filter("!success,failure", "failure"));
    }
}
