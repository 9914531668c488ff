//! Flow Service for dataset exports (Adobe's Flow Service API, as its dataset-export guide uses
//! it): connections, source and target connections,
//! flows with etags, runs, the ad-hoc run and the Data Landing Zone credentials; and the export
//! engine that writes a dataset's rows where a flow points, in AEP's layout (`engine`), and
//! the Data Landing Zone (`dlz`).
//!
//! Destinations are directories under the simulator's export root:
//! `{root}/{destination}/{bucket or container, if any}/{path}/{datasetId}/exportTime=YYYYMMDDHHMM/`.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::server::{AppState, SandboxName, now_ms, problem};

mod dlz;
mod engine;

pub(crate) use dlz::dlz_credentials;
pub use dlz::{DlzAws, DlzServer};
pub(crate) use engine::{adhoc_run, schedule};
#[allow(unused_imports)]
use {dlz::*, engine::*};

const DATA_LAKE_SPEC: &str = "23598e46-f560-407b-88d5-ea6207e49db0";
const ADHOC_ACCEPT: &str = "application/vnd.adobe.adhoc.dataset.activation+json";
const KINDS: [&str; 4] = [
    "connections",
    "sourceConnections",
    "targetConnections",
    "flows",
];
const PAGE: usize = 20;

/// A destination's specs as Flow Service knows them: connection spec, flow spec, the folder
/// directory name under the export root, its accepted auth specs with their required params,
/// and the target params it requires besides `datasetFileType` and `compression`.
struct Spec {
    connection: &'static str,
    flow: &'static str,
    dir: &'static str,
    auth: &'static [(&'static str, &'static [&'static str])],
    target: &'static [&'static str],
}

const SPECS: [Spec; 6] = [
    Spec {
        connection: "4fce964d-3f37-408f-9778-e597338a21ee",
        flow: "269ba276-16fc-47db-92b0-c1049a3c131f",
        dir: "s3",
        auth: &[("Access Key", &["s3AccessKey", "s3SecretKey"])],
        target: &["bucketName", "path"],
    },
    Spec {
        connection: "6d6b59bf-fb58-4107-9064-4d246c0e5bb2",
        flow: "95bd8965-fc8a-4119-b9c3-944c2c2df6d2",
        dir: "azure_blob",
        auth: &[("ConnectionString", &["connectionString"])],
        target: &["container", "path"],
    },
    Spec {
        connection: "be2c3209-53bc-47e7-ab25-145db8b873e1",
        flow: "17be2013-2549-41ce-96e7-a70363bec293",
        dir: "adls_gen2",
        auth: &[(
            "Azure Service Principal Auth",
            &["url", "servicePrincipalId", "servicePrincipalKey", "tenant"],
        )],
        target: &["path"],
    },
    Spec {
        connection: "10440537-2a7b-4583-ac39-ed38d4b848e8",
        flow: "cd2fc47e-e838-4f38-a581-8fff2f99b63a",
        dir: "dlz",
        auth: &[],
        target: &["path"],
    },
    Spec {
        connection: "c5d93acb-ea8b-4b14-8f53-02138444ae99",
        flow: "585c15c4-6cbf-4126-8f87-e26bff78b657",
        dir: "gcs",
        auth: &[(
            "Google Cloud Storage authentication credentials",
            &["accessKeyId", "secretAccessKey"],
        )],
        target: &["bucketName", "path"],
    },
    Spec {
        connection: "36965a81-b1c6-401b-99f8-22508f1e6a26",
        flow: "354d6aad-4754-46e4-a576-1b384561c440",
        dir: "sftp",
        auth: &[
            (
                "SFTP with Password",
                &["domain", "port", "username", "password"],
            ),
            (
                "SFTP with SSH Key",
                &["domain", "port", "username", "sshKey"],
            ),
        ],
        target: &["remotePath"],
    },
];

fn spec_by_connection(id: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.connection == id)
}

/// What goes wrong with the next export run, scripted by a test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExportFault {
    /// The run fails with this message; files written so far stay.
    Fail { message: String },
    /// One file is never written, but the run's metrics count it.
    MissingFile,
    /// Each file is written this many milliseconds after the previous one (the first, after
    /// the run starts).
    Slow { millis: u64 },
    /// The run's file, byte and record counts include another export's, as AEP's do at times
    /// (a known limitation): one file and 4 KiB more than the folder holds.
    MixedCounts,
    /// A Spark job's `_started_<txn>` marker is written first and its `_committed_<txn>`
    /// never: a writer that died, whose folder must never count as finished.
    UncommittedSparkJob,
}

/// The Flow Service entities and runs (per simulator, across sandboxes).
#[derive(Default)]
pub(crate) struct FlowStore {
    state: Mutex<FlowState>,
}

#[derive(Default)]
struct FlowState {
    counter: u64,
    /// kind → id → entity (with `etag`, `sandboxName`).
    entities: HashMap<&'static str, BTreeMap<String, Value>>,
    runs: BTreeMap<String, Value>,
    /// Batches each flow has exported in a successful run.
    exported: HashMap<String, HashSet<String>>,
    last_export_minute: HashMap<String, i64>,
    faults: VecDeque<ExportFault>,
    dlz_generation: u64,
    /// The newest successful batches of each dataset that exports do not see yet.
    hold_back: usize,
    /// Base connections' credentials as given (served masked), by connection id.
    secrets: HashMap<String, Value>,
    /// The next DLZ credentials handed out (without `action=refresh`) have expired.
    dlz_expire_next: bool,
}

impl FlowStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlowState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn script(&self, fault: ExportFault) {
        self.lock().faults.push_back(fault);
    }

    pub(crate) fn expire_dlz_next(&self) {
        self.lock().dlz_expire_next = true;
    }

    pub(crate) fn dlz_generation(&self) -> u64 {
        self.lock().dlz_generation
    }

    pub(crate) fn set_hold_back(&self, n: usize) {
        self.lock().hold_back = n;
    }

    pub(crate) fn run(&self, id: &str) -> Option<Value> {
        self.lock().runs.get(id).cloned()
    }
}

fn kind_of(kind: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| *k == kind)
}

/// Flow Service's validation error.
fn bad_request(detail: &str) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "FLOW-1010-400",
        "Bad Request",
        detail,
    )
}

fn not_found(what: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "FLOW-1404-404",
        "Not Found",
        &format!("{what} not found"),
    )
}

fn etag_of(n: u64) -> String {
    format!("\"{:08x}-0000-0200-0000-{:012x}\"", n, n)
}

// ---------------------------------------------------------------------------------------------
// Exportable datasets

/// `GET /connectionSpecs/{data lake}/configs?outputType=activationDatasets&outputField=datasets`:
/// the sandbox's datasets that can be exported, paged by `start` and `limit` (default 20, at
/// most 100), with `pageInfo`. A dataset whose `dataset.json` says `"exportable": false` is
/// left out, as AEP leaves out datasets created through the API.
pub(crate) async fn dataset_configs(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(spec): UrlPath<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if spec != DATA_LAKE_SPEC {
        return not_found(&format!("connectionSpec {spec} configs"));
    }
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if param("outputType") != Some("activationDatasets") || param("outputField") != Some("datasets")
    {
        return bad_request("outputType=activationDatasets and outputField=datasets are required");
    }
    let number = |k: &str, default: usize| match param(k) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad_request(&format!("{k} must be a non-negative integer, got '{v}'"))),
    };
    let (start, limit) = match (number("start", 0), number("limit", 20)) {
        (Ok(s), Ok(l)) if (1..=100).contains(&l) => (s, l),
        (Ok(_), Ok(l)) => return bad_request(&format!("limit must be 1 to 100, got {l}")),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let cap = st.page_size.load(std::sync::atomic::Ordering::Relaxed);
    let limit = if cap > 0 { limit.min(cap) } else { limit };
    let items: Vec<Value> = st.platform.sandboxes[&sandbox]
        .datasets
        .values()
        .filter(|d| d.object.get("exportable") != Some(&Value::Bool(false)))
        .map(|d| {
            json!({
                "id": d.id,
                "name": d.name(),
                "description": d.object.get("description"),
                "fileDescription": d.object.get("fileDescription"),
                "aspect": "dataset",
                "state": d.object.get("state"),
            })
        })
        .collect();
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let end = start + page.len();
    axum::Json(json!({
        "items": page,
        "pageInfo": {"start": start, "end": end, "total": items.len(), "hasNext": end < items.len()},
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Entities

pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(kind): UrlPath<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let store = &st.flows;
    let items: Vec<Value> = {
        let g = store.lock();
        let source: Box<dyn Iterator<Item = &Value>> = if kind == "runs" {
            Box::new(g.runs.values())
        } else if let Some(k) = kind_of(&kind) {
            Box::new(g.entities.get(k).into_iter().flat_map(|m| m.values()))
        } else {
            return not_found(&kind);
        };
        let filters: Vec<(String, String)> = q
            .iter()
            .filter(|(k, _)| k == "property")
            .filter_map(|(_, v)| v.split_once("==").map(|(a, b)| (a.into(), b.into())))
            .collect();
        let mut items: Vec<Value> = source
            .filter(|v| v["sandboxName"] == sandbox.as_str())
            .filter(|v| {
                filters.iter().all(|(path, want)| {
                    v.pointer(&format!("/{}", path.replace('.', "/")))
                        .is_some_and(|x| {
                            x.as_str() == Some(want)
                                || serde_json::from_str::<Value>(want).ok().as_ref() == Some(x)
                        })
                })
            })
            .cloned()
            .collect();
        items.sort_by_key(|v| {
            (
                v["createdAt"].as_i64(),
                v["id"].as_str().map(str::to_string),
            )
        });
        if kind == "runs" {
            items.reverse();
        }
        items
    };
    let limit = match q.iter().find(|(k, _)| k == "limit") {
        None => PAGE,
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return bad_request(&format!("limit must be a positive integer, got '{v}'")),
        },
    };
    let cap = st.page_size.load(std::sync::atomic::Ordering::Relaxed);
    let limit = if cap > 0 { limit.min(cap) } else { limit };
    // The continuation token is opaque to clients: here, the offset in base 36 behind a prefix.
    let start = match q.iter().find(|(k, _)| k == "continuationToken") {
        None => 0,
        Some((_, t)) => match t
            .strip_prefix("ct~")
            .and_then(|n| usize::from_str_radix(n, 36).ok())
        {
            Some(n) => n,
            None => return bad_request("continuationToken is not valid"),
        },
    };
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let mut body = json!({ "items": page });
    if start + limit < items.len() {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in q.iter().filter(|(k, _)| k != "continuationToken") {
            next.append_pair(k, v);
        }
        next.append_pair(
            "continuationToken",
            &format!("ct~{}", radix36(start + limit)),
        );
        body["_links"] = json!({"next": {"href": format!("/data/foundation/flowservice/{kind}?{}", next.finish())}});
    }
    axum::Json(body).into_response()
}

fn radix36(mut n: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(digits[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

pub(crate) async fn get_one(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath((kind, id)): UrlPath<(String, String)>,
) -> Response {
    let g = st.flows.lock();
    let found = if kind == "runs" {
        g.runs.get(&id)
    } else {
        kind_of(&kind).and_then(|k| g.entities.get(k)?.get(&id))
    };
    match found.filter(|v| v["sandboxName"] == sandbox.as_str()) {
        Some(v) => axum::Json(json!({ "items": [v] })).into_response(),
        None => not_found(&format!("{kind} {id}")),
    }
}

pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(kind): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(kind) = kind_of(&kind) else {
        return not_found(&kind);
    };
    let Ok(Value::Object(mut entity)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not a JSON object");
    };
    let mut g = st.flows.lock();
    let has_dataset = |id: &str| {
        st.platform
            .sandboxes
            .get(&sandbox)
            .is_some_and(|sb| sb.datasets.contains_key(id))
    };
    if let Err(why) = validate(
        &g,
        kind,
        &sandbox,
        &Value::Object(entity.clone()),
        &has_dataset,
    ) {
        return bad_request(&why);
    }
    g.counter += 1;
    let n = g.counter;
    let id = format!("{:08x}-{:04x}-4000-8000-{:012x}", n, kind.len(), now_ms());
    let etag = etag_of(n);
    let now = now_ms();
    entity.insert("id".into(), json!(id));
    entity.insert("etag".into(), json!(etag));
    entity.insert("createdAt".into(), json!(now));
    entity.insert("updatedAt".into(), json!(now));
    entity.insert("sandboxName".into(), json!(sandbox));
    if kind == "flows" {
        entity.insert("state".into(), json!("enabled"));
    }
    if kind == "connections" {
        // Flow Service never answers with the secrets it keeps.
        if let Some(params) = entity.get("auth").and_then(|a| a.get("params")) {
            g.secrets.insert(id.clone(), params.clone());
        }
        if let Some(Value::Object(params)) =
            entity.get_mut("auth").and_then(|a| a.get_mut("params"))
        {
            for v in params.values_mut() {
                *v = json!("***");
            }
        }
    }
    g.entities
        .entry(kind)
        .or_default()
        .insert(id.clone(), Value::Object(entity));
    (
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "etag": etag})),
    )
        .into_response()
}

/// What Flow Service checks of a new entity.
fn validate(
    g: &FlowState,
    kind: &str,
    sandbox: &str,
    e: &Value,
    has_dataset: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let s = |p: &str| e.pointer(p).and_then(Value::as_str);
    let exists = |kind: &str, id: &str| {
        g.entities
            .get(kind)
            .and_then(|m| m.get(id))
            .is_some_and(|v| v["sandboxName"] == sandbox)
    };
    if s("/name").is_none_or(|n| n.trim().is_empty()) {
        return Err("name is required".into());
    }
    match kind {
        "connections" => {
            let spec_id = s("/connectionSpec/id").ok_or("connectionSpec.id is required")?;
            let spec = spec_by_connection(spec_id).ok_or_else(|| {
                format!("connection spec {spec_id} is not a known connection spec")
            })?;
            if spec.auth.is_empty() {
                if !e["auth"].is_null() {
                    return Err("this connection spec takes no auth: send \"auth\": null".into());
                }
                return Ok(());
            }
            let name = s("/auth/specName").ok_or("auth.specName is required")?;
            let (_, required) = spec.auth.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                format!("auth spec '{name}' is not one of this connection spec's auth specs")
            })?;
            for p in *required {
                let v = &e["auth"]["params"][*p];
                if v.is_null() || v.as_str() == Some("") {
                    return Err(format!("auth.params.{p} is required by auth spec '{name}'"));
                }
            }
            Ok(())
        }
        "sourceConnections" => {
            if s("/connectionSpec/id") != Some(DATA_LAKE_SPEC) {
                return Err(format!(
                    "a dataset export's source connection uses the data lake connection spec {DATA_LAKE_SPEC}"
                ));
            }
            let datasets = e
                .pointer("/params/datasets")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .ok_or("params.datasets must list at least one dataset")?;
            for d in datasets {
                let id = d["dataSetId"].as_str().unwrap_or("");
                if !has_dataset(id) {
                    return Err(format!("dataset {id} does not exist in sandbox {sandbox}"));
                }
            }
            Ok(())
        }
        "targetConnections" => {
            let spec_id = s("/connectionSpec/id").ok_or("connectionSpec.id is required")?;
            let spec = spec_by_connection(spec_id).ok_or_else(|| {
                format!("connection spec {spec_id} is not a known connection spec")
            })?;
            let base = s("/baseConnectionId").ok_or("baseConnectionId is required")?;
            let base_spec = g
                .entities
                .get("connections")
                .and_then(|m| m.get(base))
                .filter(|v| v["sandboxName"] == sandbox)
                .ok_or_else(|| format!("base connection {base} does not exist"))?
                .pointer("/connectionSpec/id")
                .and_then(Value::as_str);
            if base_spec != Some(spec_id) {
                return Err("the base connection is of another connection spec".into());
            }
            for p in spec
                .target
                .iter()
                .chain(&["datasetFileType", "compression", "mode"])
            {
                if s(&format!("/params/{p}")).is_none_or(str::is_empty) {
                    return Err(format!("params.{p} is required"));
                }
            }
            let file_type = s("/params/datasetFileType")
                .unwrap_or("")
                .to_ascii_uppercase();
            let compression = s("/params/compression").unwrap_or("").to_ascii_uppercase();
            if !["JSON", "PARQUET"].contains(&file_type.as_str()) {
                return Err(format!(
                    "params.datasetFileType must be one of [JSON, PARQUET], got '{file_type}'"
                ));
            }
            if !["NONE", "GZIP"].contains(&compression.as_str()) {
                return Err(format!(
                    "params.compression must be one of [NONE, GZIP], got '{compression}'"
                ));
            }
            if file_type == "JSON" && compression == "NONE" {
                return Err("JSON exports are supported in compressed mode only".into());
            }
            Ok(())
        }
        "flows" => {
            let flow_spec = s("/flowSpec/id").ok_or("flowSpec.id is required")?;
            let spec = SPECS
                .iter()
                .find(|sp| sp.flow == flow_spec)
                .ok_or_else(|| format!("flow spec {flow_spec} is not a known flow spec"))?;
            let ids = |k: &str| -> Vec<String> {
                e[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let sources = ids("sourceConnectionIds");
            let targets = ids("targetConnectionIds");
            if sources.is_empty() || targets.is_empty() {
                return Err("sourceConnectionIds and targetConnectionIds are required".into());
            }
            for id in &sources {
                if !exists("sourceConnections", id) {
                    return Err(format!("source connection {id} does not exist"));
                }
            }
            for id in &targets {
                if !exists("targetConnections", id) {
                    return Err(format!("target connection {id} does not exist"));
                }
                let t = &g.entities["targetConnections"][id];
                if t.pointer("/connectionSpec/id").and_then(Value::as_str) != Some(spec.connection)
                {
                    return Err(format!(
                        "target connection {id} is not of flow spec {flow_spec}'s destination"
                    ));
                }
            }
            check_schedule(&e["scheduleParams"])
        }
        _ => Ok(()),
    }
}

fn check_schedule(p: &Value) -> Result<(), String> {
    if p.is_null() {
        return Err("scheduleParams is required".into());
    }
    let mode = p["exportMode"].as_str().unwrap_or("");
    let unit = p["timeUnit"].as_str().unwrap_or("");
    let interval = p["interval"].as_i64().unwrap_or(-1);
    match (mode, unit, interval) {
        ("DAILY_FULL_EXPORT", "day", 0) => {}
        ("FIRST_FULL_THEN_INCREMENTAL", "day", 1) => {}
        ("FIRST_FULL_THEN_INCREMENTAL", "hour", 3 | 6 | 9 | 12) => {}
        ("DAILY_FULL_EXPORT" | "FIRST_FULL_THEN_INCREMENTAL", ..) => {
            return Err(format!(
                "scheduleParams: timeUnit '{unit}' with interval {interval} is not valid for exportMode {mode}"
            ));
        }
        _ => {
            return Err(format!(
                "scheduleParams.exportMode must be one of [DAILY_FULL_EXPORT, FIRST_FULL_THEN_INCREMENTAL], got '{mode}'"
            ));
        }
    }
    if p["startTime"].as_i64().is_none() {
        return Err("scheduleParams.startTime (epoch seconds) is required".into());
    }
    if let Some(end) = p["endTime"].as_i64()
        && end <= p["startTime"].as_i64().unwrap_or(0)
    {
        return Err("scheduleParams.endTime must be after startTime".into());
    }
    Ok(())
}

/// `PATCH /flows/{id}` with `If-Match` and JSON Patch operations.
pub(crate) async fn patch_flow(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath((kind, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if kind != "flows" {
        return not_found(&kind);
    }
    let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not a JSON Patch array");
    };
    let mut g = st.flows.lock();
    let (flow, n) = match flow_to_change(&mut g, &sandbox, &id, &headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut updated = flow.clone();
    for op in &ops {
        let (Some(kind), Some(path)) = (op["op"].as_str(), op["path"].as_str()) else {
            return bad_request("each operation needs op and path");
        };
        if !kind.eq_ignore_ascii_case("replace") && !kind.eq_ignore_ascii_case("add") {
            return bad_request(&format!("operation '{kind}' is not supported here"));
        }
        if !["/scheduleParams", "/name", "/description"].contains(&path) {
            return bad_request(&format!("path {path} cannot be changed"));
        }
        updated[&path[1..]] = op["value"].clone();
    }
    if let Err(why) = check_schedule(&updated["scheduleParams"]) {
        return bad_request(&why);
    }
    let etag = etag_of(n);
    updated["etag"] = json!(etag);
    updated["updatedAt"] = json!(now_ms());
    *flow = updated;
    axum::Json(json!({"id": id, "etag": etag})).into_response()
}

/// The flow `id` of `sandbox` to change, after its `If-Match` check, and a new etag number.
fn flow_to_change<'a>(
    g: &'a mut FlowState,
    sandbox: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<(&'a mut Value, u64), Response> {
    g.counter += 1;
    let n = g.counter;
    let flow = g
        .entities
        .get_mut("flows")
        .and_then(|m| m.get_mut(id))
        .filter(|v| v["sandboxName"] == sandbox)
        .ok_or_else(|| not_found(&format!("flow {id}")))?;
    check_etag(flow, headers, id)?;
    Ok((flow, n))
}

fn check_etag(entity: &Value, headers: &HeaderMap, id: &str) -> Result<(), Response> {
    let Some(given) = headers.get("if-match").and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let current = entity["etag"].as_str().unwrap_or("");
    if given != current {
        return Err((
            StatusCode::PRECONDITION_FAILED,
            axum::Json(json!({"errorMessage": format!(
                "Supplied version=[{given}] does not match the current version on entity=[{id}]"
            )})),
        )
            .into_response());
    }
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct ActionQuery {
    op: Option<String>,
}

/// `POST /flows/{id}/action?op=enable|disable`.
pub(crate) async fn flow_action(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath((kind, id)): UrlPath<(String, String)>,
    Query(q): Query<ActionQuery>,
    headers: HeaderMap,
) -> Response {
    if kind != "flows" {
        return not_found(&kind);
    }
    let state = match q.op.as_deref() {
        Some("enable") => "enabled",
        Some("disable") => "disabled",
        other => return bad_request(&format!("op must be enable or disable, got {other:?}")),
    };
    let mut g = st.flows.lock();
    let (flow, n) = match flow_to_change(&mut g, &sandbox, &id, &headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    flow["state"] = json!(state);
    flow["etag"] = json!(etag_of(n));
    axum::Json(json!({"id": id, "etag": flow["etag"]})).into_response()
}

pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath((kind, id)): UrlPath<(String, String)>,
) -> Response {
    let Some(k) = kind_of(&kind) else {
        return not_found(&kind);
    };
    let mut g = st.flows.lock();
    let in_use = match k {
        "sourceConnections" | "targetConnections" => {
            let field = if k == "sourceConnections" {
                "sourceConnectionIds"
            } else {
                "targetConnectionIds"
            };
            g.entities.get("flows").is_some_and(|m| {
                m.values().any(|f| {
                    f[field]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(&id)))
                })
            })
        }
        "connections" => g.entities.get("targetConnections").is_some_and(|m| {
            m.values()
                .any(|t| t["baseConnectionId"].as_str() == Some(&id))
        }),
        _ => false,
    };
    if in_use {
        return bad_request(&format!(
            "{kind} {id} is in use by another entity; delete that first"
        ));
    }
    match g.entities.get_mut(k).and_then(|m| {
        m.remove(&id)
            .filter(|v| v["sandboxName"] == sandbox.as_str())
    }) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(&format!("{kind} {id}")),
    }
}
