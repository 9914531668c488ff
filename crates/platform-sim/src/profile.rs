//! Segmentation (Adobe's Segmentation Service API: segment jobs, schedules): segment jobs whose life cycle takes time, with AEP's
//! 429 when too many run at once, and schedules with their cron checks.
//!
//! Segment jobs count their metrics from the platform's profile store (`profiles.rs`), when it
//! has one. Not yet: export jobs.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::server::{AppState, SandboxName, now_ms, problem};

/// Segment jobs running (not done) at once before AEP answers 429.
const MAX_RUNNING: usize = 2;

#[derive(Default)]
pub(crate) struct ProfileStore {
    state: Mutex<ProfileState>,
}

#[derive(Default)]
struct ProfileState {
    counter: u64,
    jobs: BTreeMap<String, Job>,
    schedules: BTreeMap<String, Value>,
    /// Messages the next segment jobs fail with.
    failures: VecDeque<String>,
}

struct Job {
    sandbox: String,
    /// Counted from the profile store in the background; the job stays PROCESSING until then.
    metrics: Arc<std::sync::OnceLock<Option<crate::profiles::SegmentMetrics>>>,
    created: i64,
    segments: Vec<String>,
    /// When it ends: SUCCEEDED, or FAILED with `failure`.
    done_at: i64,
    failure: Option<String>,
    /// When a cancel was asked for.
    cancelled_at: Option<i64>,
}

impl Job {
    fn status(&self, now: i64) -> &'static str {
        if let Some(c) = self.cancelled_at {
            return if now - c < 200 {
                "CANCELLING"
            } else {
                "CANCELLED"
            };
        }
        if now < self.created + 100 {
            "NEW"
        } else if now < self.done_at || self.metrics.get().is_none() {
            "PROCESSING"
        } else if self.failure.is_some() {
            "FAILED"
        } else {
            "SUCCEEDED"
        }
    }

    fn running(&self, now: i64) -> bool {
        matches!(self.status(now), "NEW" | "PROCESSING" | "CANCELLING")
    }

    fn to_json(&self, id: &str, base: &str, now: i64) -> Value {
        let status = self.status(now);
        let mut v = json!({
            "id": id,
            "status": status,
            "source": "api",
            "profileInstanceId": "ups",
            "sandbox": {"sandboxName": self.sandbox, "type": "production", "default": true},
            "segments": self.segments.iter().map(|s| json!({"segmentId": s})).collect::<Vec<_>>(),
            "schema": {"name": "_xdm.context.profile"},
            "creationTime": self.created,
            "updateTime": now.min(self.done_at),
            "updateEpoch": now.min(self.done_at) / 1000,
            "_links": {
                "cancel": {"href": format!("{base}/data/core/ups/segment/jobs/{id}"), "method": "DELETE"},
                "checkStatus": {"href": format!("{base}/data/core/ups/segment/jobs/{id}"), "method": "GET"},
            },
        });
        if status == "FAILED" {
            v["errors"] = json!([{"code": "0100000003", "msg": self.failure, "callStack": null}]);
        }
        if status == "SUCCEEDED"
            && let Some(Some(m)) = self.metrics.get()
        {
            v["metrics"] = json!({
                "totalTime": {"startTimeInMs": self.created, "endTimeInMs": self.done_at,
                              "totalTimeInMs": self.done_at - self.created},
                "totalProfiles": m.total,
                "segmentedProfileCounter": m.qualified,
                "segmentedProfileByStatusCounter": m.by_status,
                "segmentedProfileByNamespaceCounter": m.by_namespace,
            });
        }
        v
    }
}

impl ProfileStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProfileState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn fail_next_segment_job(&self, message: String) {
        self.lock().failures.push_back(message);
    }
}

/// The Profile and segmentation APIs' errors (`UPS-…`).
pub(crate) fn bad_request(detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, "UPS-400", "Bad Request", detail)
}

pub(crate) fn not_found(what: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "UPS-404",
        "Not Found",
        &format!("{what} not found"),
    )
}

/// `POST /segment/jobs`: an array of `{segmentId}`, or `{schema, segments:[{segmentId:"*"}]}`.
pub(crate) async fn create_segment_job(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not JSON");
    };
    let list = match &v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o
            .get("segments")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let segments: Vec<String> = list
        .iter()
        .filter_map(|s| s["segmentId"].as_str().map(str::to_string))
        .collect();
    if segments.is_empty() || segments.len() > 1500 {
        return bad_request("give 1 to 1500 segments as [{\"segmentId\": …}], or segmentId \"*\"");
    }
    let now = now_ms();
    let mut g = st.profiles.lock();
    if g.jobs.values().filter(|j| j.running(now)).count() >= MAX_RUNNING {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "type": "http://ns.adobe.com/aep/errors/UPS-429",
                "title": "Too many segmentation jobs in processing at the moment",
                "status": 429,
            })),
        )
            .into_response();
    }
    g.counter += 1;
    let id = format!("{:08x}-5e9a-4b0b-9c1a-{:012x}", g.counter, now);
    let failure = g.failures.pop_front();
    let metrics = Arc::new(std::sync::OnceLock::new());
    {
        let metrics = metrics.clone();
        let dir = st.platform.dir.clone();
        let segments = segments.clone();
        tokio::task::spawn_blocking(move || {
            let _ = metrics.set(crate::profiles::segment_metrics(&dir, &segments));
        });
    }
    let job = Job {
        sandbox,
        metrics,
        created: now,
        segments,
        done_at: now + st.config.job_duration.as_millis() as i64,
        failure,
        cancelled_at: None,
    };
    let body = job.to_json(&id, &st.base_url, now);
    g.jobs.insert(id, job);
    axum::Json(body).into_response()
}

pub(crate) async fn get_segment_job(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let g = st.profiles.lock();
    match g.jobs.get(&id).filter(|j| j.sandbox == sandbox) {
        Some(j) => axum::Json(j.to_json(&id, &st.base_url, now_ms())).into_response(),
        None => not_found(&format!("segment job {id}")),
    }
}

/// `POST /segment/jobs/bulk-get`: 207 with each job found.
pub(crate) async fn bulk_get_segment_jobs(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not JSON");
    };
    let g = st.profiles.lock();
    let now = now_ms();
    let mut results = serde_json::Map::new();
    for id in v["ids"].as_array().into_iter().flatten() {
        let Some(id) = id["id"].as_str() else {
            continue;
        };
        if let Some(j) = g.jobs.get(id).filter(|j| j.sandbox == sandbox) {
            results.insert(id.to_string(), j.to_json(id, &st.base_url, now));
        }
    }
    (
        StatusCode::MULTI_STATUS,
        axum::Json(json!({"results": results})),
    )
        .into_response()
}

/// A list's `limit` (1 to 100, default 100), capped at the simulator's page size when one
/// is set; a 400 otherwise.
pub(crate) fn page_limit(st: &AppState, q: &BTreeMap<String, String>) -> Result<usize, Response> {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        _ => return Err(bad_request("limit must be an integer from 1 to 100")),
    };
    let cap = st.page_size.load(std::sync::atomic::Ordering::Relaxed);
    Ok(if cap > 0 { limit.min(cap) } else { limit })
}

/// `GET /segment/jobs?start=&limit=&status=`: newest first; `_page.next` is the next `start`.
pub(crate) async fn list_segment_jobs(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let limit = match page_limit(&st, &q) {
        Ok(n) => n,
        Err(response) => return response,
    };
    let start: usize = q.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
    let g = st.profiles.lock();
    let now = now_ms();
    let mut all: Vec<(&String, &Job)> = g
        .jobs
        .iter()
        .filter(|(_, j)| j.sandbox == sandbox)
        .filter(|(_, j)| q.get("status").is_none_or(|s| j.status(now) == s))
        .collect();
    all.sort_by(|a, b| b.1.created.cmp(&a.1.created).then_with(|| b.0.cmp(a.0)));
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|(id, j)| j.to_json(id, &st.base_url, now))
        .collect();
    let mut p = json!({"totalCount": all.len(), "pageSize": page.len()});
    if start + limit < all.len() {
        p["next"] = json!((start + limit).to_string());
    }
    axum::Json(json!({"_page": p, "children": page, "_links": {"next": {}}})).into_response()
}

pub(crate) async fn cancel_segment_job(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let mut g = st.profiles.lock();
    let now = now_ms();
    match g.jobs.get_mut(&id).filter(|j| j.sandbox == sandbox) {
        Some(j) if j.running(now) => {
            j.cancelled_at.get_or_insert(now);
            (
                StatusCode::NO_CONTENT,
                axum::Json(json!({"status": true, "message": format!("Segment job with id '{id}' has been marked for cancelling")})),
            )
                .into_response()
        }
        Some(j) => bad_request(&format!("segment job {id} is {} already", j.status(now))),
        None => not_found(&format!("segment job {id}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// AEP's cron rule: Quartz, 6 or 7 fields, at most once a day.
fn cron_ok(cron: &str) -> bool {
    let f: Vec<&str> = cron.split_whitespace().collect();
    (6..=7).contains(&f.len()) && f[..3].iter().all(|x| x.parse::<u32>().is_ok())
}

pub(crate) async fn create_schedule(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(Value::Object(mut v)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not a JSON object");
    };
    if v.get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return bad_request("name is required");
    }
    if !matches!(
        v.get("type").and_then(Value::as_str),
        Some("batch_segmentation" | "export")
    ) {
        return bad_request("type must be batch_segmentation or export");
    }
    match v.get("schedule").and_then(Value::as_str) {
        Some(c) if !cron_ok(c) => {
            return bad_request(&format!(
                "schedule {c:?} is not a Quartz cron running at most once a day"
            ));
        }
        Some(_) => {}
        None => {
            v.insert("schedule".into(), json!("0 0 1 * * ?"));
        }
    }
    let state = v
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("inactive")
        .to_string();
    if state != "active" && state != "inactive" {
        return bad_request("state must be active or inactive");
    }
    let mut g = st.profiles.lock();
    g.counter += 1;
    let id = format!("{:08x}-5c4e-4d1e-8f0a-{:012x}", g.counter, now_ms());
    let secs = now_ms() / 1000;
    v.insert("id".into(), json!(id));
    v.insert("state".into(), json!(state));
    v.insert("sandbox".into(), json!({"sandboxName": sandbox}));
    v.insert("createEpoch".into(), json!(secs));
    v.insert("updateEpoch".into(), json!(secs));
    let v = Value::Object(v);
    g.schedules.insert(id, v.clone());
    axum::Json(v).into_response()
}

fn schedules_of<'a>(g: &'a ProfileState, sandbox: &'a str) -> impl Iterator<Item = &'a Value> {
    g.schedules
        .values()
        .filter(move |s| s["sandbox"]["sandboxName"] == sandbox)
}

pub(crate) async fn list_schedules(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100)
        .max(1);
    let page: usize = q.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
    let g = st.profiles.lock();
    let all: Vec<&Value> = schedules_of(&g, &sandbox).collect();
    let children: Vec<&Value> = all.iter().copied().skip(page * limit).take(limit).collect();
    axum::Json(json!({
        "_page": {"totalCount": all.len(), "pageSize": children.len()},
        "children": children,
        "_links": {"next": {}},
    }))
    .into_response()
}

pub(crate) async fn get_schedule(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let g = st.profiles.lock();
    match schedules_of(&g, &sandbox).find(|s| s["id"] == id.as_str()) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => not_found(&format!("schedule {id}")),
    }
}

/// `PATCH /config/schedules/{id}` with JSON Patch on `/state` or `/schedule`: 204.
pub(crate) async fn patch_schedule(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not a JSON Patch array");
    };
    let mut g = st.profiles.lock();
    let Some(s) = g
        .schedules
        .get_mut(&id)
        .filter(|s| s["sandbox"]["sandboxName"] == sandbox.as_str())
    else {
        return not_found(&format!("schedule {id}"));
    };
    let mut updated = s.clone();
    for op in &ops {
        let value = &op["value"];
        match (op["op"].as_str(), op["path"].as_str()) {
            (Some("add" | "replace"), Some("/state"))
                if matches!(value.as_str(), Some("active" | "inactive")) =>
            {
                updated["state"] = value.clone();
            }
            (Some("add" | "replace"), Some("/schedule")) if value.as_str().is_some_and(cron_ok) => {
                updated["schedule"] = value.clone();
            }
            _ => return bad_request(&format!("operation {op} is not one AEP accepts here")),
        }
    }
    updated["updateEpoch"] = json!(now_ms() / 1000);
    *s = updated;
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn delete_schedule(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let mut g = st.profiles.lock();
    let found = g
        .schedules
        .get(&id)
        .is_some_and(|s| s["sandbox"]["sandboxName"] == sandbox.as_str());
    if !found {
        return not_found(&format!("schedule {id}"));
    }
    g.schedules.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}
