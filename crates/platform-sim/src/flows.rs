//! Flow Service for dataset exports (Adobe's Flow Service API, as its dataset-export guide uses
//! it): connections, source and target connections,
//! flows with etags, runs, the ad-hoc run and the Data Landing Zone credentials; and the export
//! engine that writes a dataset's rows where a flow points, in AEP's layout.
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

// ---------------------------------------------------------------------------------------------
// Runs and the export engine

/// `POST /data/core/activation/disflowprovider/adhocrun`.
pub(crate) async fn adhoc_run(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !accept.contains(ADHOC_ACCEPT) {
        return bad_request(&format!(
            "the Accept header must be '{ADHOC_ACCEPT}; version=1'"
        ));
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not JSON");
    };
    let Some(dest) = req.pointer("/activationInfo/destinations/0") else {
        return bad_request("activationInfo.destinations is required");
    };
    let flow_id = dest["flowId"].as_str().unwrap_or("").to_string();
    let dataset_id = dest
        .pointer("/datasets/0/id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let job = {
        let g = st.flows.lock();
        let Some(flow) = g
            .entities
            .get("flows")
            .and_then(|m| m.get(&flow_id))
            .filter(|v| v["sandboxName"] == sandbox.as_str())
        else {
            return not_found(&format!("flow {flow_id}"));
        };
        let created = flow["createdAt"].as_i64().unwrap_or(0);
        if now_ms() - created < st.config.export_ready_after.as_millis() as i64 {
            return bad_request(&format!(
                "Following order ID(s) are not ready for dataset export: [{flow_id}]"
            ));
        }
        if flow["state"] != "enabled" {
            return bad_request(&format!("flow {flow_id} is disabled; enable it first"));
        }
        match export_job(&g, flow, &dataset_id, &st.config) {
            Ok(job) => job,
            Err(why) => return bad_request(&why),
        }
    };
    let run_id = start_run(&st, &sandbox, job, None);
    let status_url = format!("{}/data/foundation/flowservice/runs/{run_id}", st.base_url);
    axum::Json(json!({"destinations": [{"flowId": flow_id, "datasets": [
        {"id": dataset_id, "statusURL": status_url}
    ]}]}))
    .into_response()
}

/// What one export run writes, resolved while the store is locked.
struct ExportJob {
    flow_id: String,
    flow_spec: String,
    dataset_id: String,
    /// `{root}/{destination}/{bucket}/{path}`.
    folder_root: PathBuf,
    parquet: bool,
    gzip: bool,
    incremental_mode: bool,
    template: Option<String>,
    /// Written under this directory instead of the export root (SFTP destinations, when
    /// `export_sftp_root` names the directory an sshd serves).
    local_root: Option<PathBuf>,
    /// Where a destination that is a real server here (S3 at `export_s3_endpoint`, Azure Blob
    /// at its connection string's `BlobEndpoint`) is written, under `folder_root`'s path.
    remote: Option<Remote>,
}

#[derive(Clone)]
struct Remote {
    store: Arc<dyn ObjectStore>,
    /// The target's path in the bucket or container.
    prefix: String,
}

/// The store a target is written to, when it is a real server here: AEP writes with the base
/// connection's credentials, and so does the simulator.
fn remote_target(
    spec: &Spec,
    params: &Value,
    auth: Option<&Value>,
    config: &crate::SimConfig,
) -> Result<Option<Remote>, String> {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let prefix = s(params, "path");
    let s3_endpoint = config.export_s3_endpoint.as_deref();
    match (spec.dir, auth) {
        ("dlz", _) => match &config.export_dlz {
            Some(dlz) => Ok(Some(Remote {
                store: dlz.store()?,
                prefix,
            })),
            None => Ok(None),
        },
        ("s3", Some(auth)) => {
            let Some(endpoint) = s3_endpoint else {
                return Ok(None);
            };
            let store = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(s(params, "bucketName"))
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id(s(auth, "s3AccessKey"))
                .with_secret_access_key(s(auth, "s3SecretKey"))
                .build()
                .map_err(|e| format!("the S3 destination: {e}"))?;
            Ok(Some(Remote {
                store: Arc::new(store),
                prefix,
            }))
        }
        ("azure_blob", Some(auth)) => {
            let conn = s(auth, "connectionString");
            let part = |k: &str| {
                conn.split(';')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.to_string())
            };
            let Some(endpoint) = part("BlobEndpoint") else {
                return Ok(None);
            };
            let (Some(account), Some(key)) = (part("AccountName"), part("AccountKey")) else {
                return Err("the connection string has no AccountName or AccountKey".into());
            };
            let store = object_store::azure::MicrosoftAzureBuilder::new()
                .with_account(account)
                .with_access_key(key)
                .with_container_name(s(params, "container"))
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .build()
                .map_err(|e| format!("the Azure Blob destination: {e}"))?;
            Ok(Some(Remote {
                store: Arc::new(store),
                prefix,
            }))
        }
        _ => Ok(None),
    }
}

fn export_job(
    g: &FlowState,
    flow: &Value,
    dataset_id: &str,
    config: &crate::SimConfig,
) -> Result<ExportJob, String> {
    let flow_id = flow["id"].as_str().unwrap_or("").to_string();
    let sources_have = flow["sourceConnectionIds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| g.entities.get("sourceConnections")?.get(id.as_str()?))
        .flat_map(|s| {
            s.pointer("/params/datasets")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .any(|d| d["dataSetId"].as_str() == Some(dataset_id));
    if !sources_have {
        return Err(format!(
            "dataset {dataset_id} is not part of flow {flow_id}"
        ));
    }
    let target = flow["targetConnectionIds"][0]
        .as_str()
        .and_then(|id| g.entities.get("targetConnections")?.get(id))
        .ok_or("the flow's target connection is gone")?;
    let spec = target
        .pointer("/connectionSpec/id")
        .and_then(Value::as_str)
        .and_then(spec_by_connection)
        .ok_or("the target's connection spec is unknown")?;
    let p = &target["params"];
    let auth = target["baseConnectionId"]
        .as_str()
        .and_then(|id| g.secrets.get(id));
    let remote = remote_target(spec, p, auth, config)?;
    let local_root = (spec.dir == "sftp")
        .then(|| config.export_sftp_root.clone())
        .flatten();
    let mut folder = match local_root {
        Some(_) => PathBuf::new(),
        None => PathBuf::from(spec.dir),
    };
    for k in spec.target {
        folder.push(safe_relative(p[*k].as_str().unwrap_or(""))?);
    }
    Ok(ExportJob {
        flow_id,
        flow_spec: flow
            .pointer("/flowSpec/id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
        dataset_id: dataset_id.to_string(),
        folder_root: folder,
        parquet: p["datasetFileType"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("parquet")),
        gzip: p["compression"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("gzip")),
        incremental_mode: flow
            .pointer("/scheduleParams/exportMode")
            .and_then(Value::as_str)
            == Some("FIRST_FULL_THEN_INCREMENTAL"),
        template: flow
            .pointer("/scheduleParams/foldernameTemplate")
            .and_then(Value::as_str)
            .map(str::to_string),
        remote,
        local_root,
    })
}

/// A bucket or path as a relative directory, refusing `..`.
fn safe_relative(p: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for part in p.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if part == ".." {
            return Err(format!("'{p}' leaves the destination"));
        }
        out.push(part);
    }
    Ok(out)
}

/// Starts an export run; `at_ms` is its export time (a scheduled run on the simulated clock),
/// else now.
fn start_run(st: &Arc<AppState>, sandbox: &str, job: ExportJob, at_ms: Option<i64>) -> String {
    let now = now_ms();
    let (run_id, fault, minute, batches) = {
        let mut g = st.flows.lock();
        g.counter += 1;
        let run_id = format!("{:08x}-run0-4000-8000-{:012x}", g.counter, now);
        // Export folders are per minute; runs in the same minute take the next one.
        let mut minute = at_ms.unwrap_or(now) / 60_000;
        if let Some(last) = g.last_export_minute.get(&job.flow_id)
            && minute <= *last
        {
            minute = last + 1;
        }
        g.last_export_minute.insert(job.flow_id.clone(), minute);
        let done = g.exported.get(&job.flow_id).cloned().unwrap_or_default();
        // The dataset as it stands: successful batches (less the newest `hold_back`, which
        // "arrive" later), without those a later batch replaced (replay).
        let hold_back = g.hold_back;
        let batches: Vec<(String, Vec<PathBuf>)> = st
            .platform
            .sandboxes
            .get(sandbox)
            .map(|sb| {
                let mut visible: Vec<&crate::data::Batch> = sb
                    .batches
                    .values()
                    .filter(|b| b.dataset_id == job.dataset_id && b.status() == "success")
                    .collect();
                visible.sort_by_key(|b| (b.created(), b.id.clone()));
                visible.truncate(visible.len().saturating_sub(hold_back));
                let replaced: HashSet<&str> = visible.iter().flat_map(|b| b.replaces()).collect();
                visible
                    .into_iter()
                    .filter(|b| !replaced.contains(b.id.as_str()))
                    .filter(|b| !(job.incremental_mode && done.contains(&b.id)))
                    .map(|b| (b.id.clone(), b.part_paths()))
                    .collect()
            })
            .unwrap_or_default();
        let run = json!({
            "id": run_id,
            "flowId": job.flow_id,
            "flowSpec": {"id": job.flow_spec, "version": "1.0"},
            "createdAt": now,
            "updatedAt": now,
            "sandboxName": sandbox,
            "providerRefId": format!("{minute}"),
            "metrics": {
                "durationSummary": {"startedAtUTC": now},
                "statusSummary": {"status": "inProgress"},
            },
        });
        g.runs.insert(run_id.clone(), run);
        let fault = g.faults.pop_front();
        (run_id, fault, minute, batches)
    };
    let st2 = st.clone();
    let id = run_id.clone();
    let root = st.config.export_root.clone();
    let manifest = st.config.export_manifests;
    tokio::spawn(async move {
        let outcome = tokio::task::spawn_blocking({
            let fault = fault.clone();
            let batches = batches.clone();
            let run_id = id.clone();
            move || {
                let manifest = manifest.then_some(run_id.as_str());
                write_export(&root, &job, minute, &batches, fault.as_ref(), manifest)
                    .map(|m| (m, job))
            }
        })
        .await;
        let mut g = st2.flows.lock();
        let finished = now_ms();
        let Some(run) = g.runs.get_mut(&id) else {
            return;
        };
        run["updatedAt"] = json!(finished);
        run["metrics"]["durationSummary"]["completedAtUTC"] = json!(finished);
        match outcome {
            Ok(Ok((m, job))) => {
                let failed = match &fault {
                    Some(ExportFault::Fail { message }) => Some(message.clone()),
                    _ => None,
                };
                let mut m = m;
                if fault == Some(ExportFault::MixedCounts) {
                    m.files += 1;
                    m.bytes += 4096;
                    m.records += 50;
                }
                run["metrics"]["sizeSummary"] =
                    json!({"inputBytes": m.bytes, "outputBytes": m.bytes});
                run["metrics"]["recordSummary"] = json!({
                    "inputRecordCount": m.records, "outputRecordCount": m.records,
                    "failedRecordCount": 0, "skippedRecordCount": 0,
                });
                run["metrics"]["fileSummary"] = json!({
                    "inputFileCount": m.files, "outputFileCount": m.files,
                    "activityRefs": [],
                    "extensions": {"manifest": {"pathPrefix": m.folder}},
                });
                match failed {
                    Some(message) => {
                        run["metrics"]["statusSummary"] = json!({"status": "Failed", "errors": [
                            {"code": "EXPORT-500", "message": message}
                        ]});
                    }
                    None => {
                        run["metrics"]["statusSummary"] = json!({"status": "success"});
                        let done = g.exported.entry(job.flow_id.clone()).or_default();
                        done.extend(batches.into_iter().map(|(b, _)| b));
                    }
                }
            }
            Ok(Err(e)) => {
                run["metrics"]["statusSummary"] =
                    json!({"status": "Failed", "errors": [{"code": "EXPORT-500", "message": e}]});
            }
            Err(e) => {
                run["metrics"]["statusSummary"] = json!({"status": "Failed", "errors": [
                    {"code": "EXPORT-500", "message": e.to_string()}
                ]});
            }
        }
    });
    run_id
}

struct Written {
    files: u64,
    bytes: u64,
    records: u64,
    folder: String,
}

/// Writes one export folder: one file per dataset part, named like Spark's part files.
fn write_export(
    root: &Path,
    job: &ExportJob,
    minute: i64,
    batches: &[(String, Vec<PathBuf>)],
    fault: Option<&ExportFault>,
    manifest_of_run: Option<&str>,
) -> Result<Written, String> {
    // A folder of an earlier simulator (same export root) is never written into: the next
    // free minute is taken.
    let mut minute = minute;
    let (folder_name, rel, dir) = loop {
        let time = chrono::DateTime::from_timestamp(minute * 60, 0).unwrap_or_default();
        let folder_name = match &job.template {
            Some(t) => t
                .replace("%DATASET_ID%", &job.dataset_id)
                .replace("%EXPORT_TIME%", &time.format("%Y%m%d%H%M").to_string())
                .replace(
                    "%DATETIME(YYYYMMdd_HHmmss)%",
                    &time.format("%Y%m%d_%H%M%S").to_string(),
                ),
            None => format!(
                "{}/exportTime={}",
                job.dataset_id,
                time.format("%Y%m%d%H%M")
            ),
        };
        let rel = job.folder_root.join(safe_relative(&folder_name)?);
        // A remote destination's files pass through a local directory on their way.
        let dir = match (&job.remote, &job.local_root) {
            (Some(_), _) => root.join(".outgoing").join(&rel),
            (None, Some(local)) => local.join(&rel),
            (None, None) => root.join(&rel),
        };
        if !dir.exists() {
            break (folder_name, rel, dir);
        }
        minute += 1;
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ext = match (job.parquet, job.gzip) {
        (true, false) => ".parquet",
        (true, true) => ".gz.parquet",
        (false, _) => ".json.gz",
    };
    let parts: Vec<&PathBuf> = batches.iter().flat_map(|(_, p)| p).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64 ^ minute as u64,
    );
    let tid: u64 = rng.random_range(1_000_000_000..9_999_999_999);
    let uuid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u64>() & 0xffff_ffff_ffff
    );
    let remote_dir = job.remote.as_ref().map(|r| {
        format!(
            "{}/{}",
            r.prefix.trim_matches('/'),
            folder_name.trim_matches('/')
        )
    });
    let mut out = Written {
        files: 0,
        bytes: 0,
        records: 0,
        folder: remote_dir
            .clone()
            .unwrap_or_else(|| rel.to_string_lossy().into_owned()),
    };
    // A small object beside the data files: a marker or the manifest.
    let put_beside = |name: &str, body: Vec<u8>| -> Result<(), String> {
        match (&job.remote, &remote_dir) {
            (Some(remote), Some(remote_dir)) => {
                let location = object_store::path::Path::from(format!("{remote_dir}/{name}"));
                tokio::runtime::Handle::current()
                    .block_on(remote.store.put(&location, body.into()))
                    .map(|_| ())
                    .map_err(|e| format!("writing {location}: {e}"))
            }
            _ => std::fs::write(dir.join(name), body).map_err(|e| format!("writing {name}: {e}")),
        }
    };
    if fault == Some(&ExportFault::UncommittedSparkJob) {
        put_beside(&format!("_started_{tid}"), Vec::new())?;
    }
    let mut listed = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if let Some(ExportFault::Slow { millis }) = fault {
            std::thread::sleep(Duration::from_millis(*millis));
        }
        let name = format!("part-{i:05}-tid-{tid}-{uuid}-{}-1-c000{ext}", 2000 + i);
        let path = dir.join(&name);
        let (bytes, records) = write_file(part, &path, job.parquet, job.gzip)?;
        listed.push(json!({"sinkPath": format!("/{}", out.folder.trim_matches('/')), "name": name, "size": bytes}));
        out.files += 1;
        out.bytes += bytes;
        out.records += records;
        let missing = fault == Some(&ExportFault::MissingFile) && i == 0;
        if let (Some(remote), Some(remote_dir)) = (&job.remote, &remote_dir) {
            if !missing {
                let body = std::fs::read(&path).map_err(|e| e.to_string())?;
                let location = object_store::path::Path::from(format!("{remote_dir}/{name}"));
                tokio::runtime::Handle::current()
                    .block_on(remote.store.put(&location, body.into()))
                    .map_err(|e| format!("writing {location}: {e}"))?;
            }
            std::fs::remove_file(&path).map_err(|e| e.to_string())?;
        } else if missing {
            std::fs::remove_file(&path).map_err(|e| e.to_string())?;
        }
    }
    // AEP's manifest, after the files: every file the run wrote (a file lost on the way is
    // listed all the same).
    if let Some(run_id) = manifest_of_run {
        let body = serde_json::to_vec_pretty(&json!({
            "flowRunId": run_id,
            "scheduledTime": chrono::DateTime::from_timestamp(minute * 60, 0).unwrap_or_default().to_rfc3339(),
            "exportResults": listed,
        }))
        .map_err(|e| e.to_string())?;
        put_beside(&format!("manifest-{}-{run_id}.json", job.flow_id), body)?;
    }
    if job.remote.is_some() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(out)
}

/// Rewrites one dataset part as an export file; returns its size and rows. Written under a
/// dot name first, as Spark's committers do, so a listed file is a whole file.
fn write_file(src: &Path, dst: &Path, parquet: bool, gzip: bool) -> Result<(u64, u64), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", src.display());
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(src).map_err(|e| err(&e))?)
        .map_err(|e| err(&e))?
        .build()
        .map_err(|e| err(&e))?;
    let tmp = dst.with_file_name(format!(
        ".{}.inprogress",
        dst.file_name().and_then(|n| n.to_str()).unwrap_or("part")
    ));
    let file = BufWriter::new(File::create(&tmp).map_err(|e| err(&e))?);
    let mut rows = 0u64;
    if parquet {
        let props = WriterProperties::builder()
            .set_compression(if gzip {
                Compression::GZIP(GzipLevel::default())
            } else {
                Compression::SNAPPY
            })
            .build();
        let mut writer: Option<ArrowWriter<BufWriter<File>>> = None;
        let mut file = Some(file);
        for batch in reader {
            let batch = batch.map_err(|e| err(&e))?;
            if writer.is_none() {
                writer = Some(
                    ArrowWriter::try_new(
                        file.take().expect("once"),
                        batch.schema(),
                        Some(props.clone()),
                    )
                    .map_err(|e| err(&e))?,
                );
            }
            rows += batch.num_rows() as u64;
            writer
                .as_mut()
                .expect("set")
                .write(&batch)
                .map_err(|e| err(&e))?;
        }
        if let Some(w) = writer {
            w.close().map_err(|e| err(&e))?;
        }
    } else {
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut writer = arrow::json::LineDelimitedWriter::new(gz);
        for batch in reader {
            let batch = utc_offsets(&batch.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            rows += batch.num_rows() as u64;
            writer.write(&batch).map_err(|e| err(&e))?;
        }
        writer.finish().map_err(|e| err(&e))?;
        let mut gz = writer.into_inner();
        gz.flush().map_err(|e| err(&e))?;
        gz.finish()
            .map_err(|e| err(&e))?
            .flush()
            .map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, dst).map_err(|e| err(&e))?;
    let size = std::fs::metadata(dst).map_err(|e| err(&e))?.len();
    Ok((size, rows))
}

/// Timestamps with a named zone ("UTC") as the same instants at offset "+00:00", which arrow's
/// JSON writer can print without a time zone database: `…T10:03:08+00:00`, as Spark writes them.
fn utc_offsets(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    fn fix(t: &DataType) -> DataType {
        match t {
            DataType::Timestamp(unit, Some(_)) => DataType::Timestamp(*unit, Some("+00:00".into())),
            DataType::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|f| Arc::new(f.as_ref().clone().with_data_type(fix(f.data_type()))))
                    .collect(),
            ),
            DataType::List(f) => DataType::List(Arc::new(
                f.as_ref().clone().with_data_type(fix(f.data_type())),
            )),
            other => other.clone(),
        }
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let t = fix(f.data_type());
        columns.push(if &t == f.data_type() {
            c.clone()
        } else {
            arrow::compute::cast(c, &t)?
        });
        fields.push(f.as_ref().clone().with_data_type(t));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// Runs enabled flows on their schedules, on a clock `speed` times faster than the wall clock
/// that starts now: with 3600, an hour of schedule passes every second.
pub(crate) async fn schedule(st: Arc<AppState>, speed: f64) {
    let started = std::time::Instant::now();
    let origin = now_ms();
    let mut due: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sim_now = origin + (started.elapsed().as_secs_f64() * 1000.0 * speed) as i64;
        let mut jobs = Vec::new();
        {
            let g = st.flows.lock();
            for flow in g.entities.get("flows").into_iter().flat_map(|m| m.values()) {
                let id = flow["id"].as_str().unwrap_or("").to_string();
                let p = &flow["scheduleParams"];
                if flow["state"] != "enabled" || p.is_null() {
                    continue;
                }
                let start = (p["startTime"].as_i64().unwrap_or(0) * 1000)
                    .max(flow["createdAt"].as_i64().unwrap_or(0));
                let every = p["interval"].as_i64().unwrap_or(0)
                    * match p["timeUnit"].as_str() {
                        Some("hour") => 3_600_000,
                        _ => 86_400_000,
                    };
                let next = *due.entry(id.clone()).or_insert(start);
                let ended = p["endTime"].as_i64().is_some_and(|e| next > e * 1000);
                if next > sim_now || next == i64::MAX || ended {
                    continue;
                }
                due.insert(id, if every > 0 { next + every } else { i64::MAX });
                let sandbox = flow["sandboxName"].as_str().unwrap_or("").to_string();
                let datasets: Vec<String> = flow["sourceConnectionIds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|sid| g.entities.get("sourceConnections")?.get(sid.as_str()?))
                    .flat_map(|sc| {
                        sc.pointer("/params/datasets")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|d| d["dataSetId"].as_str().map(str::to_string))
                    .collect();
                for ds in datasets {
                    match export_job(&g, flow, &ds, &st.config) {
                        Ok(job) => jobs.push((sandbox.clone(), job, next)),
                        Err(e) => {
                            tracing::warn!(flow = %flow["id"], error = %e, "scheduled export not started")
                        }
                    }
                }
            }
        }
        for (sandbox, job, at) in jobs {
            start_run(&st, &sandbox, job, Some(at));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data Landing Zone

#[derive(Deserialize)]
pub(crate) struct DlzQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    action: Option<String>,
}

/// `GET|POST /data/foundation/connectors/landingzone/credentials?type=dlz_destination`: a SAS
/// for the destination container, as a `file://` URI to the export root's `dlz` directory.
pub(crate) async fn dlz_credentials(
    State(st): State<Arc<AppState>>,
    Query(q): Query<DlzQuery>,
) -> Response {
    if q.kind.as_deref() != Some("dlz_destination") && q.kind.as_deref() != Some("user_drop_zone") {
        return bad_request("type must be dlz_destination or user_drop_zone");
    }
    let mut g = st.flows.lock();
    let refresh = q.action.as_deref() == Some("refresh");
    if refresh || g.dlz_generation == 0 {
        g.dlz_generation += 1;
    }
    // A scripted expiry hands out a token that expired an hour ago, once; a refresh is good.
    let expired = !refresh && std::mem::take(&mut g.dlz_expire_next);
    let expiry = if expired {
        chrono::Utc::now() - chrono::Duration::hours(1)
    } else {
        chrono::Utc::now() + chrono::Duration::days(7)
    };
    let body = match &st.config.export_dlz {
        Some(dlz) => {
            let token = dlz.sas(expiry, g.dlz_generation);
            json!({
                "containerName": dlz.container,
                "SASToken": token,
                "storageAccountName": dlz.account,
                "SASUri": format!("{}/{}?{token}", dlz.endpoint.trim_end_matches('/'), dlz.container),
                "expiryDate": expiry.format("%Y-%m-%d").to_string(),
            })
        }
        None => {
            let token = format!(
                "sv=2020-10-02&si=dlz-{}&sr=c&sp=racwdlm&sig=sim{:x}",
                g.dlz_generation,
                g.dlz_generation * 7919
            );
            let dir = st.config.export_root.join("dlz");
            json!({
                "containerName": "dlz-destination",
                "SASToken": token,
                "storageAccountName": "simdlz",
                "SASUri": format!("file://{}?{token}", dir.display()),
                "expiryDate": expiry.format("%Y-%m-%d").to_string(),
            })
        }
    };
    axum::Json(body).into_response()
}

/// A Data Landing Zone on a real Azure Blob server (azurite): its container, and the account
/// key that signs the SAS tokens handed out.
#[derive(Debug, Clone)]
pub struct DlzServer {
    /// The account's blob endpoint, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: String,
    pub account: String,
    pub key: String,
    pub container: String,
}

impl DlzServer {
    /// A service SAS for the container (read and list), signed with the account key
    /// (string-to-sign of service version 2020-12-06 and later).
    fn sas(&self, expiry: chrono::DateTime<chrono::Utc>, generation: u64) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let version = "2021-08-06";
        let se = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        // The start time differs per generation, so a refreshed token is a new token.
        let st = (chrono::Utc::now() - chrono::Duration::minutes(5 + generation as i64))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let resource = format!("/blob/{}/{}", self.account, self.container);
        let to_sign = format!("rl\n{st}\n{se}\n{resource}\n\n\n\n{version}\nc\n\n\n\n\n\n\n");
        let key = base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .unwrap_or_default();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        format!(
            "sv={version}&st={}&se={}&sr=c&sp=rl&sig={}",
            enc(&st),
            enc(&se),
            enc(&sig)
        )
    }

    fn store(&self) -> Result<Arc<dyn ObjectStore>, String> {
        let store = object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(&self.account)
            .with_access_key(&self.key)
            .with_container_name(&self.container)
            .with_endpoint(self.endpoint.clone())
            .with_allow_http(true)
            .build()
            .map_err(|e| format!("the Data Landing Zone's container: {e}"))?;
        Ok(Arc::new(store))
    }
}
