//! Profile export jobs (Real-Time Customer Profile's export jobs API): `POST /export/jobs` selects profiles from the
//! platform's profile store (`profiles.rs`) by the request's filter, and writes them as real
//! parquet batches into the target dataset: one batch, or one per segment with
//! `segmentPerBatch`. The batches are then served by Catalog and Data Access like any other.
//!
//! The job's life cycle takes time (NEW ▸ PROCESSING ▸ SUCCEEDED or FAILED). Scripted faults:
//! a failed job with `errors[]`, a job stuck in PROCESSING, a success with an empty `batchId`.
//! A cancelled job ends FAILED with a cancellation error (AEP's status enum has no CANCELLED).
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::profile::{bad_request, not_found, page_limit};
use crate::server::{AppState, SandboxName, now_ms, problem};

/// Profiles per parquet part of an exported batch.
const PART_ROWS: usize = 250_000;

/// What the next export jobs do instead of exporting (in order, one each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileExportFault {
    /// The job ends FAILED with this message in `errors[]`, and writes nothing.
    Fail(String),
    /// The job stays PROCESSING until it is cancelled.
    Stuck,
    /// The job succeeds with an empty `batchId` and writes nothing.
    EmptyBatchId,
}

#[derive(Default)]
pub(crate) struct ExportJobStore {
    state: Mutex<ExportJobState>,
}

#[derive(Default)]
struct ExportJobState {
    counter: i64,
    jobs: BTreeMap<i64, ExportJob>,
    faults: VecDeque<ProfileExportFault>,
}

/// A batch an export wrote: its id, and the segment it holds with `segmentPerBatch`.
#[derive(Debug, Clone)]
struct Written {
    batch_id: String,
    segment: Option<(String, String)>,
}

/// A (namespace, segment id) with the profiles exported for it.
type SegmentRows = (Option<(String, String)>, Vec<Value>);

#[derive(Debug, Clone)]
struct Outcome {
    batches: Vec<Written>,
    profiles: u64,
    by_namespace: BTreeMap<String, u64>,
}

struct ExportJob {
    sandbox: String,
    request: Value,
    created: i64,
    done_at: i64,
    fault: Option<ProfileExportFault>,
    cancelled_at: Option<i64>,
    /// Set by the background export once its batches are written (or it failed).
    outcome: Arc<OnceLock<Result<Outcome, String>>>,
}

impl ExportJob {
    fn status(&self, now: i64) -> &'static str {
        if self.cancelled_at.is_some() {
            return "FAILED";
        }
        if now < self.created + 100 {
            return "NEW";
        }
        match (&self.fault, self.outcome.get()) {
            (Some(ProfileExportFault::Stuck), _) => "PROCESSING",
            _ if now < self.done_at => "PROCESSING",
            (Some(ProfileExportFault::Fail(_)), _) => "FAILED",
            (Some(ProfileExportFault::EmptyBatchId), _) => "SUCCEEDED",
            (None, None) => "PROCESSING",
            (None, Some(Ok(_))) => "SUCCEEDED",
            (None, Some(Err(_))) => "FAILED",
        }
    }

    fn to_json(&self, id: i64, now: i64, dataset_key: &str) -> Value {
        let status = self.status(now);
        let mut v = self.request.clone();
        v["id"] = json!(id);
        v["jobType"] = json!("BATCH");
        v["status"] = json!(status);
        v["profileInstanceId"] = json!("ups");
        v["creationTime"] = json!(self.created);
        v["updateTime"] = json!(now.min(self.done_at));
        v["requestId"] = json!(format!("req-{id}"));
        let d = &mut v["destination"];
        if let Some(ds) = d.as_object_mut().and_then(|o| o.remove("datasetId")) {
            d[dataset_key] = ds;
        }
        let per_segment = d["segmentPerBatch"] == true;
        let mut errors = Vec::new();
        if let Some(c) = self.cancelled_at {
            errors.push(json!({"code": "0100000009", "msg": format!("The export job was cancelled at {c}"), "callStack": null}));
        }
        match (status, &self.fault, self.outcome.get()) {
            ("FAILED", Some(ProfileExportFault::Fail(msg)), _) | ("FAILED", _, Some(Err(msg))) => {
                errors.push(json!({"code": "0100000003", "msg": msg, "callStack": null}));
                d["batchId"] = json!("");
            }
            ("SUCCEEDED", Some(ProfileExportFault::EmptyBatchId), _) => {
                d["batchId"] = json!("");
            }
            ("SUCCEEDED", _, Some(Ok(out))) => {
                if per_segment {
                    d["batches"] = out
                        .batches
                        .iter()
                        .map(|b| {
                            let (ns, seg) = b.segment.clone().unwrap_or_default();
                            json!({"segmentId": seg, "segmentNs": ns, "status": "SUCCEEDED", "batchId": b.batch_id})
                        })
                        .collect();
                } else if let Some(b) = out.batches.first() {
                    d["batchId"] = json!(b.batch_id);
                }
                v["metrics"] = json!({
                    "totalTime": {"startTimeInMs": self.created, "endTimeInMs": self.done_at,
                                  "totalTimeInMs": self.done_at - self.created},
                    "totalExportedProfileCounter": out.profiles,
                    "exportedProfileByNamespaceCounter": out.by_namespace,
                });
            }
            _ => {}
        }
        if !errors.is_empty() {
            v["errors"] = json!(errors);
        }
        v
    }
}

impl ExportJobStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExportJobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn script(&self, fault: ProfileExportFault) {
        self.lock().faults.push_back(fault);
    }
}

/// What an export job selects, read from its request.
#[derive(Debug, Clone)]
struct Selection {
    /// Top-level fields to keep (`_id` and `identityMap` always are); all when `None`.
    fields: Option<Vec<String>>,
    /// (namespace, segment id, statuses).
    segments: Vec<(String, String, Vec<String>)>,
    /// `segmentQualificationTime`, epoch seconds.
    window: Option<(i64, i64)>,
    /// `fromIngestTimestamp`, epoch milliseconds.
    from_ingest: Option<i64>,
    empty_profiles: bool,
    per_segment: bool,
}

fn rfc3339(v: &Value, what: &str) -> Result<Option<i64>, String> {
    match v.as_str() {
        None => Ok(None),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp()))
            .map_err(|_| format!("{what} {s:?} is not an RFC 3339 time")),
    }
}

impl Selection {
    fn from_request(v: &Value) -> Result<Self, String> {
        let f = &v["filter"];
        let segments = f["segments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let id = s["segmentId"]
                    .as_str()
                    .ok_or("filter.segments[].segmentId is required")?;
                let statuses: Vec<String> = match s["status"].as_array() {
                    Some(a) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                    None => vec!["realized".into(), "existing".into()],
                };
                if let Some(bad) = statuses
                    .iter()
                    .find(|s| !crate::profiles::STATUSES.contains(&s.as_str()))
                {
                    return Err(format!(
                        "status {bad:?} is not realized, existing or exited"
                    ));
                }
                Ok((
                    s["segmentNs"].as_str().unwrap_or("ups").to_string(),
                    id.to_string(),
                    statuses,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let q = &f["segmentQualificationTime"];
        let window = match (
            rfc3339(&q["startTime"], "segmentQualificationTime.startTime")?,
            rfc3339(&q["endTime"], "segmentQualificationTime.endTime")?,
        ) {
            (None, None) => None,
            (a, b) => Some((a.unwrap_or(i64::MIN), b.unwrap_or(i64::MAX))),
        };
        let per_segment = v["destination"]["segmentPerBatch"] == true;
        if per_segment && segments.is_empty() {
            return Err("destination.segmentPerBatch needs filter.segments".into());
        }
        Ok(Selection {
            fields: v["fields"].as_str().map(|f| {
                f.split(',')
                    .map(|p| p.trim().split('.').next().unwrap_or("").to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            }),
            segments,
            window,
            from_ingest: f["fromIngestTimestamp"]
                .as_str()
                .map(|s| {
                    chrono::DateTime::parse_from_rfc3339(s)
                        .map(|t| t.timestamp_millis())
                        .map_err(|_| format!("fromIngestTimestamp {s:?} is not an RFC 3339 time"))
                })
                .transpose()?,
            empty_profiles: f["emptyProfiles"] == true,
            per_segment,
        })
    }

    /// Whether profile `p` qualifies for segment `(ns, id)` under `statuses` and the window.
    fn in_segment(&self, p: &Value, ns: &str, id: &str, statuses: &[String]) -> bool {
        let Some(m) = p.pointer(&format!("/segmentMembership/{ns}/{id}")) else {
            return false;
        };
        let status_ok = m["status"]
            .as_str()
            .is_some_and(|s| statuses.iter().any(|x| x == s));
        let time_ok = self.window.is_none_or(|(a, b)| {
            m["lastQualificationTime"]
                .as_str()
                .and_then(lenient_time)
                .is_some_and(|t| a <= t && t <= b)
        });
        status_ok && time_ok
    }

    /// The profile as exported (its selected fields), if the filter takes it.
    fn take(&self, p: &Value) -> Option<Value> {
        let events_only = p.get("segmentMembership").is_none() && p.get("person").is_none();
        let taken = if self.segments.is_empty() {
            !events_only || self.empty_profiles
        } else {
            self.segments
                .iter()
                .any(|(ns, id, st)| self.in_segment(p, ns, id, st))
        };
        if !taken {
            return None;
        }
        let mut out = p.clone();
        if let (Some(fields), Some(o)) = (&self.fields, out.as_object_mut()) {
            o.retain(|k, _| k == "_id" || k == "identityMap" || fields.contains(k));
        }
        Some(out)
    }
}

/// `…Z`, `+0000` and `2021-03-10 10:03:08` (taken as UTC), as epoch seconds.
fn lenient_time(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    if let Ok(t) = chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z") {
        return Some(t.timestamp());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// The Profile union schema as an export writes it, with the top-level `fields` kept.
fn export_schema(tenant: &str, fields: Option<&[String]>) -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let map = |value: DataType| {
        DataType::Map(
            Arc::new(Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", value, true),
                ])),
                false,
            )),
            false,
        )
    };
    let identity = DataType::Struct(Fields::from(vec![
        s("id"),
        Field::new("primary", DataType::Boolean, true),
        s("authenticatedState"),
    ]));
    let membership = DataType::Struct(Fields::from(vec![
        s("status"),
        s("lastQualificationTime"),
        s("version"),
        Field::new(
            "payload",
            DataType::Struct(Fields::from(vec![
                s("payloadType"),
                Field::new("payloadNumberValue", DataType::Float64, true),
                Field::new("payloadBooleanValue", DataType::Boolean, true),
                s("payloadStringValue"),
            ])),
            true,
        ),
    ]));
    let score = DataType::Struct(Fields::from(vec![
        Field::new("score", DataType::Float64, true),
        Field::new("percentile", DataType::Int32, true),
        s("propensityType"),
        s("scoreDate"),
    ]));
    let models: Vec<Field> = crate::profiles::MODELS
        .iter()
        .map(|m| Field::new(*m, score.clone(), true))
        .collect();
    let all = vec![
        s("_id"),
        Field::new(
            "identityMap",
            map(DataType::List(Arc::new(Field::new_list_field(
                identity, true,
            )))),
            true,
        ),
        Field::new("segmentMembership", map(map(membership)), true),
        Field::new(
            "person",
            DataType::Struct(Fields::from(vec![Field::new(
                "name",
                DataType::Struct(Fields::from(vec![s("firstName"), s("lastName")])),
                true,
            )])),
            true,
        ),
        Field::new(
            "personalEmail",
            DataType::Struct(Fields::from(vec![s("address")])),
            true,
        ),
        Field::new(
            crate::profiles::tenant_field(tenant),
            DataType::Struct(Fields::from(vec![Field::new(
                "CustomerAI",
                DataType::Struct(Fields::from(models)),
                true,
            )])),
            true,
        ),
    ];
    let kept = all
        .into_iter()
        .filter(|f| {
            let n = f.name();
            n == "_id" || n == "identityMap" || fields.is_none_or(|k| k.iter().any(|x| x == n))
        })
        .collect::<Vec<_>>();
    Arc::new(Schema::new(kept))
}

/// Writes profiles (JSON, as the store keeps them) on `schema` as one snappy parquet file, a
/// chunk of them decoded at a time.
fn write_part<C: AsRef<[Value]>>(
    path: &Path,
    schema: &SchemaRef,
    chunks: impl Iterator<Item = C>,
) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
        .map_err(|e| e.to_string())?;
    for chunk in chunks {
        let chunk = chunk.as_ref();
        let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
            .with_batch_size(chunk.len().max(1))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        decoder.serialize(chunk).map_err(|e| e.to_string())?;
        if let Some(rows) = decoder.flush().map_err(|e| e.to_string())? {
            w.write(&rows).map_err(|e| e.to_string())?;
        }
    }
    w.close().map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes `profiles` as one batch of `dataset_id` under `dir`, and loads it as Catalog sees it.
fn write_batch(
    dir: &Path,
    dataset_id: &str,
    batch_id: &str,
    schema: &SchemaRef,
    profiles: &[Value],
    info: &crate::PlatformInfo,
) -> Result<crate::Batch, String> {
    let err = |e: &dyn std::fmt::Display| format!("writing batch {batch_id}: {e}");
    let batch_dir = dir.join(batch_id);
    let file_dir = batch_dir.join(format!("{batch_id}-f0"));
    std::fs::create_dir_all(&file_dir).map_err(|e| err(&e))?;
    // At least one part: an export of no profiles is a batch of one empty file.
    let mut parts: Vec<&[Value]> = profiles.chunks(PART_ROWS).collect();
    if parts.is_empty() {
        parts.push(&[]);
    }
    for (i, chunk) in parts.into_iter().enumerate() {
        write_part(
            &file_dir.join(format!("part-{i:05}.snappy.parquet")),
            schema,
            std::iter::once(chunk),
        )
        .map_err(|e| err(&e))?;
    }
    let now = now_ms();
    let object = json!({
        "status": "success",
        "created": now,
        "updated": now,
        "completed": now,
        "createdClient": "ups-export",
        "createdUser": "ups-export",
        "relatedObjects": [{"type": "batch", "id": batch_id}, {"type": "dataSet", "id": dataset_id}],
    });
    std::fs::write(
        batch_dir.join("batch.json"),
        serde_json::to_vec_pretty(&object).unwrap_or_default(),
    )
    .map_err(|e| err(&e))?;
    crate::data::load_batch(&batch_dir, dataset_id, info).map_err(|e| err(&e))
}

/// Writes `profiles` (JSON, as the profile store keeps them) into `path` as one part of an
/// export, on the Profile union schema an export job writes (for tests).
pub fn write_export_part(path: &Path, tenant: &str, profiles: &[Value]) -> Result<(), String> {
    write_part(
        path,
        &export_schema(tenant, None),
        std::iter::once(profiles),
    )
}

/// Writes what an export of `profiles` generated profiles (all fields, no filter) puts into
/// its batch, as `parts` parquet files under `dir`, without a profile store on disk (for
/// benchmarks at millions of profiles). Returns the profiles written.
pub fn write_profile_export(
    dir: &Path,
    profiles: u64,
    segments: u32,
    seed: u64,
    tenant: &str,
    parts: u64,
) -> Result<u64, String> {
    let ids = crate::profiles::segment_ids(segments, seed);
    let schema = export_schema(tenant, None);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let per_part = profiles.div_ceil(parts.max(1));
    for part in 0..parts.max(1) {
        let (start, end) = (part * per_part, ((part + 1) * per_part).min(profiles));
        let chunks = (start..end).step_by(50_000).map(|i| {
            (i..(i + 50_000).min(end))
                .map(|k| crate::profiles::profile(k, &ids, tenant, seed))
                .collect::<Vec<_>>()
        });
        write_part(
            &dir.join(format!("part-{part:05}.snappy.parquet")),
            &schema,
            chunks,
        )?;
    }
    Ok(profiles)
}

/// Runs an export: selects from the store, writes the batches, and adds them to the served
/// platform.
fn export(
    st: &AppState,
    sandbox: &str,
    job_id: i64,
    dataset_id: &str,
    sel: &Selection,
) -> Result<Outcome, String> {
    let platform = &st.platform.dir;
    let ingested = std::fs::metadata(
        platform
            .join(crate::profiles::PROFILES_DIR)
            .join("segments.json"),
    )
    .and_then(|m| m.modified())
    .map(|t| chrono::DateTime::<chrono::Utc>::from(t).timestamp_millis())
    .map_err(|_| "the platform has no profile store (scoreland sim generate --profiles N)")?;
    let fresh = sel.from_ingest.is_none_or(|from| ingested >= from);
    let mut all: Vec<Value> = Vec::new();
    let mut per_segment: Vec<Vec<Value>> = vec![Vec::new(); sel.segments.len()];
    let mut by_namespace = BTreeMap::new();
    if fresh {
        crate::profiles::for_each_profile(platform, |p| {
            let Some(out) = sel.take(p) else {
                return;
            };
            let ns = crate::profiles::primary_namespace(p).unwrap_or("unknown");
            *by_namespace.entry(ns.to_string()).or_insert(0u64) += 1;
            if sel.per_segment {
                for (k, (ns, id, statuses)) in sel.segments.iter().enumerate() {
                    if sel.in_segment(p, ns, id, statuses) {
                        per_segment[k].push(out.clone());
                    }
                }
            } else {
                all.push(out);
            }
        })
        .map_err(|e| e.to_string())?;
    }
    let profiles = by_namespace.values().sum();
    let dir: PathBuf = st
        .config
        .export_root
        .join("profile-exports")
        .join(sandbox)
        .join(dataset_id);
    let schema = export_schema(&st.platform.info.tenant, sel.fields.as_deref());
    let mut batches = Vec::new();
    let groups: Vec<SegmentRows> = if sel.per_segment {
        sel.segments
            .iter()
            .map(|(ns, id, _)| Some((ns.clone(), id.clone())))
            .zip(per_segment)
            .collect()
    } else {
        vec![(None, all)]
    };
    for (k, (segment, rows)) in groups.into_iter().enumerate() {
        let batch_id = format!("01EXP{job_id:010}{k:04}{:x}", now_ms() % 0x1000_0000);
        let batch = write_batch(
            &dir,
            dataset_id,
            &batch_id,
            &schema,
            &rows,
            &st.platform.info,
        )?;
        st.add_batch(sandbox, batch);
        batches.push(Written { batch_id, segment });
    }
    Ok(Outcome {
        batches,
        profiles,
        by_namespace,
    })
}

/// `POST /export/jobs`.
pub(crate) async fn create_export_job(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not JSON");
    };
    let d = &request["destination"];
    let Some(dataset_id) = d["datasetId"]
        .as_str()
        .or(d["dataSetId"].as_str())
        .map(str::to_string)
    else {
        return bad_request("destination.datasetId is required");
    };
    if request["schema"]["name"].as_str().is_none() {
        return bad_request("schema.name is required");
    }
    if crate::server::dataset_exists(&st, &sandbox, &dataset_id).is_none() {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "UPS-422",
            "Unprocessable Entity",
            &format!("dataset {dataset_id} not found in sandbox {sandbox}"),
        );
    }
    let sel = match Selection::from_request(&request) {
        Ok(s) => s,
        Err(e) => return bad_request(&e),
    };
    let now = now_ms();
    let (id, fault) = {
        let mut g = st.export_jobs.lock();
        g.counter += 1;
        (g.counter, g.faults.pop_front())
    };
    let outcome = Arc::new(OnceLock::new());
    if fault.is_none() {
        let outcome = outcome.clone();
        let st = st.clone();
        let sandbox = sandbox.clone();
        tokio::task::spawn_blocking(move || {
            let _ = outcome.set(export(&st, &sandbox, id, &dataset_id, &sel));
        });
    }
    let mut request = request;
    if let Some(o) = request["destination"].as_object_mut() {
        let ds = o.remove("dataSetId").or_else(|| o.remove("datasetId"));
        o.insert("datasetId".into(), ds.unwrap_or_default());
    }
    let job = ExportJob {
        sandbox,
        request,
        created: now,
        done_at: now + st.config.job_duration.as_millis() as i64,
        fault,
        cancelled_at: None,
        outcome,
    };
    let body = job.to_json(id, now, "datasetId");
    st.export_jobs.lock().jobs.insert(id, job);
    let mut resp = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/data/core/ups/export/jobs/{id}", st.base_url))
    {
        resp.headers_mut().insert("X-Location", v);
    }
    resp
}

fn job_id(raw: &str) -> Option<i64> {
    raw.parse().ok()
}

pub(crate) async fn get_export_job(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let g = st.export_jobs.lock();
    match job_id(&id).and_then(|n| Some((n, g.jobs.get(&n)?))) {
        // AEP's GET spells the key `dataSetId`; its create answer `datasetId`.
        Some((n, j)) if j.sandbox == sandbox => {
            axum::Json(j.to_json(n, now_ms(), "dataSetId")).into_response()
        }
        _ => not_found(&format!("export job {id}")),
    }
}

/// `GET /export/jobs?limit=&offset=&status=`: newest first; the opaque cursor is
/// `{creationTime}_{id}` of the last job on the page, and `link.next` carries it.
pub(crate) async fn list_export_jobs(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let limit = match page_limit(&st, &q) {
        Ok(n) => n,
        Err(response) => return response,
    };
    let after: Option<(i64, i64)> = match q.get("offset") {
        None => None,
        Some(o) => match o
            .split_once('_')
            .and_then(|(t, i)| Some((t.parse().ok()?, i.parse().ok()?)))
        {
            Some(c) => Some(c),
            None => return bad_request(&format!("offset {o:?} is not a cursor this API gave")),
        },
    };
    let g = st.export_jobs.lock();
    let now = now_ms();
    let mut all: Vec<(&i64, &ExportJob)> = g
        .jobs
        .iter()
        .filter(|(_, j)| j.sandbox == sandbox)
        .filter(|(_, j)| q.get("status").is_none_or(|s| j.status(now) == s))
        .collect();
    all.sort_by(|a, b| (b.1.created, b.0).cmp(&(a.1.created, a.0)));
    let rest: Vec<&(&i64, &ExportJob)> = all
        .iter()
        .filter(|(id, j)| after.is_none_or(|c| (j.created, **id) < c))
        .collect();
    let page: Vec<&&(&i64, &ExportJob)> = rest.iter().take(limit).collect();
    let records: Vec<Value> = page
        .iter()
        .map(|(id, j)| j.to_json(**id, now, "dataSetId"))
        .collect();
    let mut link = json!({});
    let cursor = page.last().map(|(id, j)| format!("{}_{}", j.created, id));
    if rest.len() > page.len()
        && let Some(c) = &cursor
    {
        link["next"] = json!(format!("/export/jobs/?limit={limit}&offset={c}"));
    }
    axum::Json(json!({
        "records": records,
        "page": {"sortField": "createdTime", "sort": "desc", "pageOffset": cursor, "pageSize": records.len()},
        "link": link,
    }))
    .into_response()
}

/// `DELETE /export/jobs/{id}`: 204 with AEP's body; a running job ends FAILED, cancelled.
pub(crate) async fn cancel_export_job(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let mut g = st.export_jobs.lock();
    let now = now_ms();
    match job_id(&id).and_then(|n| g.jobs.get_mut(&n)) {
        Some(j) if j.sandbox == sandbox => {
            if matches!(j.status(now), "NEW" | "PROCESSING") {
                j.cancelled_at = Some(now);
            }
            (
                StatusCode::NO_CONTENT,
                axum::Json(
                    json!({"status": true, "message": "Export job has been marked for cancelling"}),
                ),
            )
                .into_response()
        }
        _ => not_found(&format!("export job {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_times() {
        assert_eq!(lenient_time("2021-03-10T10:03:08Z"), Some(1_615_370_588));
        assert_eq!(
            lenient_time("2021-03-10T10:03:08+0000"),
            Some(1_615_370_588)
        );
        assert_eq!(lenient_time("2021-03-10 10:03:08"), Some(1_615_370_588));
        assert_eq!(lenient_time("not a time"), None);
    }

    #[test]
    fn filters_take_segments_statuses_and_fields() {
        let p = json!({
            "_id": "p1",
            "identityMap": {"ECID": [{"id": "1", "primary": true}]},
            "segmentMembership": {"ups": {"s1": {"status": "exited", "lastQualificationTime": "2026-11-01T00:00:00Z"}}},
            "person": {"name": {"firstName": "A"}},
            "personalEmail": {"address": "a@example.com"},
        });
        let req =
            |filter: Value| json!({"filter": filter, "fields": "person.name", "destination": {}});
        let sel =
            Selection::from_request(&req(json!({"segments": [{"segmentId": "s1"}]}))).unwrap();
        assert!(
            sel.take(&p).is_none(),
            "exited is not in the default statuses"
        );
        let sel = Selection::from_request(&req(
            json!({"segments": [{"segmentId": "s1", "status": ["exited"]}]}),
        ))
        .unwrap();
        let out = sel.take(&p).unwrap();
        assert!(out.get("person").is_some() && out.get("personalEmail").is_none());
        let sel = Selection::from_request(&req(json!({
            "segments": [{"segmentId": "s1", "status": ["exited"]}],
            "segmentQualificationTime": {"startTime": "2026-11-02T00:00:00Z", "endTime": "2026-11-03T00:00:00Z"},
        })))
        .unwrap();
        assert!(sel.take(&p).is_none(), "outside the qualification window");
        let events_only =
            json!({"_id": "p2", "identityMap": {"ECID": [{"id": "2", "primary": true}]}});
        let all = Selection::from_request(&json!({"destination": {}})).unwrap();
        assert!(all.take(&events_only).is_none());
        let with_empty =
            Selection::from_request(&json!({"destination": {}, "filter": {"emptyProfiles": true}}))
                .unwrap();
        assert!(with_empty.take(&events_only).is_some());
        assert!(
            Selection::from_request(&json!({"destination": {"segmentPerBatch": true}})).is_err()
        );
    }
}
