//! Real-Time Customer Profile and Segmentation (docs/profile-exports.md): segment jobs
//! (evaluate audiences), export jobs (profiles into a dataset) and schedules.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::AepClient;
use crate::error::IngestError;
use crate::paging;

const UPS: &str = "/data/core/ups";

/// An error entry of a failed job, as AEP gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_stack: Option<String>,
}

/// `errors[]` as one suffix of a message: `; code: msg` each, verbatim.
fn errors_suffix(errors: &[JobError]) -> String {
    errors
        .iter()
        .map(|e| format!("; {}: {}", e.code, e.msg))
        .collect()
}

fn job_errors(v: &Value) -> Vec<JobError> {
    v.get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| JobError {
                    code: e
                        .get("code")
                        .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string))
                        .unwrap_or_default(),
                    msg: e
                        .get("msg")
                        .or_else(|| e.get("message"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    call_stack: e
                        .get("callStack")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn counts(v: Option<&Value>) -> BTreeMap<String, u64> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| n.as_u64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

/// A segment job: one evaluation of audiences.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentJob {
    pub id: String,
    /// `NEW`, `QUEUED`, `PROCESSING`, `CANCELLING`, `CANCELLED`, `FAILED`, `SUCCEEDED`.
    pub status: String,
    pub segments: Vec<String>,
    /// `metrics.totalProfiles`.
    pub profiles: Option<u64>,
    /// `metrics.segmentedProfileCounter`: profiles per segment.
    pub by_segment: BTreeMap<String, u64>,
    /// `metrics.segmentedProfileByStatusCounter`: per segment, profiles per status.
    pub by_status: BTreeMap<String, BTreeMap<String, u64>>,
    /// `metrics.segmentedProfileByNamespaceCounter`: per segment, profiles per namespace.
    pub by_namespace: BTreeMap<String, BTreeMap<String, u64>>,
    /// Epoch milliseconds.
    pub created: i64,
    pub errors: Vec<JobError>,
}

impl SegmentJob {
    pub fn from_json(v: &Value) -> Self {
        let nested = |k: &str| -> BTreeMap<String, BTreeMap<String, u64>> {
            v.pointer(&format!("/metrics/{k}"))
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(s, c)| (s.clone(), counts(Some(c))))
                        .collect()
                })
                .unwrap_or_default()
        };
        SegmentJob {
            id: v
                .get("id")
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .unwrap_or_default(),
            status: v["status"].as_str().unwrap_or("").to_string(),
            segments: v["segments"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["segmentId"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            profiles: v.pointer("/metrics/totalProfiles").and_then(Value::as_u64),
            by_segment: counts(v.pointer("/metrics/segmentedProfileCounter")),
            by_status: nested("segmentedProfileByStatusCounter"),
            by_namespace: nested("segmentedProfileByNamespaceCounter"),
            created: v["creationTime"].as_i64().unwrap_or(0),
            errors: job_errors(v),
        }
    }

    /// Whether the job will not change any more.
    pub fn is_done(&self) -> bool {
        matches!(self.status.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED")
    }

    /// Why the job did not succeed, with its `errors[]` verbatim; `None` when it did.
    pub fn failure(&self) -> Option<String> {
        (self.status != "SUCCEEDED").then(|| {
            format!(
                "segment job {} ended {}{}",
                self.id,
                self.status,
                errors_suffix(&self.errors)
            )
        })
    }
}

/// What a schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleType {
    BatchSegmentation,
    Export,
}

/// A segmentation or export schedule (`/config/schedules`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSchedule {
    pub id: String,
    pub name: String,
    /// `active` or `inactive`.
    pub state: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Quartz cron.
    pub schedule: Option<String>,
    pub segments: Vec<String>,
}

impl SegmentSchedule {
    pub fn from_json(v: &Value) -> Self {
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        SegmentSchedule {
            id: s("id"),
            name: s("name"),
            state: s("state"),
            kind: s("type"),
            schedule: v["schedule"].as_str().map(str::to_string),
            segments: v
                .pointer("/properties/segments")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Checks a Quartz cron expression as AEP requires before it is sent: 6 or 7 fields
/// (seconds, minutes, hours, day of month, month, day of week, optional year), running at most
/// once a day, so seconds, minutes and hours are each one number.
pub fn check_cron(cron: &str) -> Result<(), String> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if !(6..=7).contains(&fields.len()) {
        return Err(format!(
            "{cron:?} has {} fields; a Quartz cron has 6 or 7: seconds minutes hours day-of-month month day-of-week [year], e.g. \"0 0 2 * * ?\"",
            fields.len()
        ));
    }
    for (name, field, max) in [
        ("seconds", fields[0], 59),
        ("minutes", fields[1], 59),
        ("hours", fields[2], 23),
    ] {
        match field.parse::<u32>() {
            Ok(n) if n <= max => {}
            Ok(n) => return Err(format!("{cron:?}: {name} {n} is out of range 0-{max}")),
            Err(_) => {
                return Err(format!(
                    "{cron:?}: {name} is {field:?}; AEP runs a schedule at most once a day, so seconds, minutes and hours must each be one number"
                ));
            }
        }
    }
    if fields[3] != "?" && fields[5] != "?" {
        return Err(format!(
            "{cron:?}: Quartz needs `?` in day-of-month or day-of-week"
        ));
    }
    Ok(())
}

/// What `POST /export/jobs` asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportJobRequest {
    /// Comma-separated XDM paths; all fields when absent.
    pub fields: Option<String>,
    /// Merge policy id and version.
    pub merge_policy: Option<(String, u32)>,
    pub segments: Vec<SegmentFilter>,
    /// `segmentQualificationTime` start and end, RFC 3339.
    pub qualified_between: Option<(String, String)>,
    /// `fromIngestTimestamp`, RFC 3339.
    pub from_ingest: Option<String>,
    pub empty_profiles: Option<bool>,
    /// `additionalFields.eventList.fields`.
    pub event_fields: Option<String>,
    pub dataset_id: String,
    pub segment_per_batch: bool,
    /// Default `_xdm.context.profile`.
    pub schema: Option<String>,
    /// `evaluationInfo.segmentation`: evaluate the segments first.
    pub evaluate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentFilter {
    pub segment_id: String,
    /// Default `ups`.
    pub namespace: Option<String>,
    /// `realized`, `existing`, `exited`; AEP's default is realized and existing.
    pub statuses: Vec<String>,
}

impl ExportJobRequest {
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "destination": {"datasetId": self.dataset_id, "segmentPerBatch": self.segment_per_batch},
            "schema": {"name": self.schema.as_deref().unwrap_or("_xdm.context.profile")},
        });
        if let Some(f) = &self.fields {
            body["fields"] = json!(f);
        }
        if let Some((id, version)) = &self.merge_policy {
            body["mergePolicy"] = json!({"id": id, "version": version});
        }
        let mut filter = serde_json::Map::new();
        if !self.segments.is_empty() {
            filter.insert(
                "segments".into(),
                self.segments
                    .iter()
                    .map(|s| {
                        let mut v = json!({
                            "segmentId": s.segment_id,
                            "segmentNs": s.namespace.as_deref().unwrap_or("ups"),
                        });
                        if !s.statuses.is_empty() {
                            v["status"] = json!(s.statuses);
                        }
                        v
                    })
                    .collect(),
            );
        }
        if let Some((start, end)) = &self.qualified_between {
            filter.insert(
                "segmentQualificationTime".into(),
                json!({"startTime": start, "endTime": end}),
            );
        }
        if let Some(t) = &self.from_ingest {
            filter.insert("fromIngestTimestamp".into(), json!(t));
        }
        if let Some(e) = self.empty_profiles {
            filter.insert("emptyProfiles".into(), json!(e));
        }
        if !filter.is_empty() {
            body["filter"] = Value::Object(filter);
        }
        if let Some(f) = &self.event_fields {
            body["additionalFields"] = json!({"eventList": {"fields": f}});
        }
        if self.evaluate {
            body["evaluationInfo"] = json!({"segmentation": true});
        }
        body
    }
}

/// One batch an export job wrote: the whole export, or one segment's (`segmentPerBatch`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportBatch {
    pub batch_id: String,
    pub segment_id: Option<String>,
    pub segment_ns: Option<String>,
}

/// An export job (`/export/jobs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportJob {
    pub id: i64,
    /// `NEW`, `PROCESSING`, `SUCCEEDED`, `FAILED`.
    pub status: String,
    /// `destination.datasetId` (or `dataSetId`: AEP spells it both ways).
    pub dataset_id: Option<String>,
    /// The batches written; an empty `batchId` is left out.
    pub batches: Vec<ExportBatch>,
    /// `metrics.totalExportedProfileCounter`.
    pub profiles: Option<u64>,
    /// `metrics.exportedProfileByNamespaceCounter`.
    pub by_namespace: BTreeMap<String, u64>,
    /// Epoch milliseconds.
    pub created: i64,
    pub errors: Vec<JobError>,
}

impl ExportJob {
    pub fn from_json(v: &Value) -> Self {
        let d = &v["destination"];
        let non_empty = |x: &Value| {
            x.as_str()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
        };
        let mut batches: Vec<ExportBatch> = d["batches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| {
                Some(ExportBatch {
                    batch_id: non_empty(&b["batchId"])?,
                    segment_id: non_empty(&b["segmentId"]),
                    segment_ns: non_empty(&b["segmentNs"]),
                })
            })
            .collect();
        if let Some(id) = non_empty(&d["batchId"]) {
            batches.insert(
                0,
                ExportBatch {
                    batch_id: id,
                    segment_id: None,
                    segment_ns: None,
                },
            );
        }
        ExportJob {
            id: v["id"]
                .as_i64()
                .or_else(|| v["id"].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0),
            status: v["status"].as_str().unwrap_or("").to_string(),
            dataset_id: non_empty(&d["datasetId"]).or_else(|| non_empty(&d["dataSetId"])),
            batches,
            profiles: v
                .pointer("/metrics/totalExportedProfileCounter")
                .and_then(Value::as_u64),
            by_namespace: counts(v.pointer("/metrics/exportedProfileByNamespaceCounter")),
            created: v["creationTime"].as_i64().unwrap_or(0),
            errors: job_errors(v),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.status.as_str(), "SUCCEEDED" | "FAILED")
    }

    /// Why the job gave nothing to land, with its `errors[]` verbatim; `None` when it succeeded
    /// with at least one batch.
    pub fn failure(&self) -> Option<String> {
        let errors = errors_suffix(&self.errors);
        match self.status.as_str() {
            "SUCCEEDED" if !self.batches.is_empty() => None,
            "SUCCEEDED" => Some(format!(
                "export job {} succeeded without a batch id{errors}",
                self.id
            )),
            other => Some(format!("export job {} ended {other}{errors}", self.id)),
        }
    }
}

/// The items of a page's array `field`, each read with `from_json`.
fn children<T>(page: &Value, field: &str, from_json: impl Fn(&Value) -> T) -> Vec<T> {
    page[field]
        .as_array()
        .map(|items| items.iter().map(from_json).collect())
        .unwrap_or_default()
}

impl AepClient {
    fn ups_url(&self, path: &str) -> Result<url::Url, IngestError> {
        self.url(&format!("{UPS}{path}"))
    }

    /// Starts a segment job for `segments` (`["*"]`: every segment). AEP answers 429 while too
    /// many jobs run; that is waited out with backoff within the retry budget (a 429 creates
    /// nothing, so repeating is safe).
    pub async fn create_segment_job(&self, segments: &[String]) -> Result<SegmentJob, IngestError> {
        let url = self.ups_url("/segment/jobs")?;
        let body = if segments.iter().any(|s| s == "*") {
            json!({"schema": {"name": "_xdm.context.profile"}, "segments": [{"segmentId": "*"}]})
        } else {
            Value::Array(segments.iter().map(|s| json!({"segmentId": s})).collect())
        };
        // Anything but a 429 is not repeated: the job may exist already. A 429 is a queue, so
        // it is waited out by time only, at a job poll's pace.
        let busy = |e: &IngestError| matches!(e, IngestError::Status { status: 429, .. });
        let queue = crate::config::RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(60),
            ..self.options.retry
        };
        let v: Value = self
            .retry_if(
                url.as_str(),
                queue,
                busy,
                || 0,
                |_| self.call_json(Method::POST, &url, Some(&body), &[]),
            )
            .await?;
        Ok(SegmentJob::from_json(&v))
    }

    pub async fn segment_job(&self, id: &str) -> Result<SegmentJob, IngestError> {
        let url = self.ups_url(&format!("/segment/jobs/{}", encode(id)))?;
        match self.get_json::<Value>(&url).await {
            Ok(v) => Ok(SegmentJob::from_json(&v)),
            Err(IngestError::Status { status: 404, .. }) => Err(IngestError::NotFound {
                what: format!("segment job {id}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Several segment jobs at once (`POST /segment/jobs/bulk-get`, answered with 207).
    pub async fn segment_jobs_by_id(&self, ids: &[String]) -> Result<Vec<SegmentJob>, IngestError> {
        let url = self.ups_url("/segment/jobs/bulk-get")?;
        let body = json!({"ids": ids.iter().map(|i| json!({"id": i})).collect::<Vec<_>>()});
        let v: Value = self
            .with_retry(url.as_str(), |_| {
                self.call_json(Method::POST, &url, Some(&body), &[])
            })
            .await?;
        let mut jobs: Vec<SegmentJob> = v["results"]
            .as_object()
            .map(|m| m.values().map(SegmentJob::from_json).collect())
            .unwrap_or_default();
        jobs.sort_by_key(|j| ids.iter().position(|i| *i == j.id));
        Ok(jobs)
    }

    /// Segment jobs, newest first, optionally of one status; at most `limit`.
    pub async fn segment_jobs(
        &self,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SegmentJob>, IngestError> {
        paging::collect(
            paging::Cursors::Served,
            None,
            limit,
            |j: &SegmentJob| j.id.clone(),
            |start: Option<String>| {
                let url = self.ups_url("/segment/jobs");
                async move {
                    let mut url = url?;
                    {
                        let mut q = url.query_pairs_mut();
                        q.append_pair("limit", &limit.clamp(1, 100).to_string())
                            .append_pair("sort", "creationTime:desc");
                        if let Some(s) = status {
                            q.append_pair("status", s);
                        }
                        if let Some(s) = &start {
                            q.append_pair("start", s);
                        }
                    }
                    let page: Value = self.get_json(&url).await?;
                    let items = children(&page, "children", SegmentJob::from_json);
                    let next = page
                        .pointer("/_page/next")
                        .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_string))
                        .filter(|n| !n.is_empty() && n != "null")
                        .map(Some);
                    Ok(paging::Page { url, items, next })
                }
            },
        )
        .await
    }

    /// Asks AEP to cancel a segment job (it goes CANCELLING, then CANCELLED).
    pub async fn cancel_segment_job(&self, id: &str) -> Result<(), IngestError> {
        self.delete_accepting(&format!("/segment/jobs/{}", encode(id)), "segment job", id)
            .await
    }

    /// Starts an export job.
    pub async fn create_export_job(
        &self,
        req: &ExportJobRequest,
    ) -> Result<ExportJob, IngestError> {
        let url = self.ups_url("/export/jobs")?;
        let body = req.to_json();
        // Not repeated on failure: a job made by a request whose answer was lost would be
        // exported twice.
        let v: Value = self.call_json(Method::POST, &url, Some(&body), &[]).await?;
        Ok(ExportJob::from_json(&v))
    }

    pub async fn export_job(&self, id: i64) -> Result<ExportJob, IngestError> {
        let url = self.ups_url(&format!("/export/jobs/{id}"))?;
        match self.get_json::<Value>(&url).await {
            Ok(v) => Ok(ExportJob::from_json(&v)),
            Err(IngestError::Status { status: 404, .. }) => Err(IngestError::NotFound {
                what: format!("export job {id}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Export jobs, newest first, following the opaque `offset` cursor of `link.next`.
    pub async fn export_jobs(
        &self,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ExportJob>, IngestError> {
        paging::collect(
            paging::Cursors::Served,
            None,
            limit,
            |j: &ExportJob| j.id,
            |offset: Option<String>| {
                let url = self.ups_url("/export/jobs");
                async move {
                    let mut url = url?;
                    {
                        let mut q = url.query_pairs_mut();
                        q.append_pair("limit", &limit.clamp(1, 100).to_string());
                        if let Some(s) = status {
                            q.append_pair("status", s);
                        }
                        if let Some(o) = &offset {
                            q.append_pair("offset", o);
                        }
                    }
                    let page: Value = self.get_json(&url).await?;
                    let items = children(&page, "records", ExportJob::from_json);
                    let next = page["link"]["next"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .and_then(|n| {
                            url.join(n)
                                .ok()?
                                .query_pairs()
                                .find(|(k, _)| k == "offset")
                                .map(|(_, v)| Some(v.into_owned()))
                        });
                    Ok(paging::Page { url, items, next })
                }
            },
        )
        .await
    }

    /// Cancels an export job (AEP answers 200, 202 or 204, with or without a body).
    pub async fn cancel_export_job(&self, id: i64) -> Result<(), IngestError> {
        self.delete_accepting(&format!("/export/jobs/{id}"), "export job", &id.to_string())
            .await
    }

    async fn delete_accepting(&self, path: &str, what: &str, id: &str) -> Result<(), IngestError> {
        let url = self.ups_url(path)?;
        match self
            .with_retry(url.as_str(), |_| {
                self.call_json::<Value>(Method::DELETE, &url, None, &[])
            })
            .await
        {
            Ok(_) | Err(IngestError::Json { .. }) => Ok(()),
            Err(IngestError::Status { status: 404, .. }) => Err(IngestError::NotFound {
                what: format!("{what} {id}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Segmentation and export schedules.
    pub async fn segment_schedules(&self) -> Result<Vec<SegmentSchedule>, IngestError> {
        paging::collect(
            paging::Cursors::Counted,
            0usize,
            usize::MAX,
            |s: &SegmentSchedule| s.id.clone(),
            |start| {
                let url = self.ups_url("/config/schedules");
                async move {
                    let mut url = url?;
                    url.query_pairs_mut()
                        .append_pair("start", &start.to_string())
                        .append_pair("limit", "100");
                    let page: Value = self.get_json(&url).await?;
                    let items = children(&page, "children", SegmentSchedule::from_json);
                    // `start` counts pages of 100; the last is short, or reaches the total.
                    let n = items.len();
                    let total = page.pointer("/_page/totalCount").and_then(Value::as_u64);
                    let last = n < 100 || total.is_some_and(|t| (start * 100 + n) as u64 >= t);
                    Ok(paging::Page {
                        url,
                        items,
                        next: (!last).then_some(start + 1),
                    })
                }
            },
        )
        .await
    }

    /// Makes a schedule; the cron is checked first (6–7 fields, at most once a day).
    pub async fn create_segment_schedule(
        &self,
        name: &str,
        kind: ScheduleType,
        segments: &[String],
        cron: &str,
        active: bool,
    ) -> Result<SegmentSchedule, IngestError> {
        check_cron(cron).map_err(|message| IngestError::Config {
            field: "schedule",
            message,
        })?;
        let url = self.ups_url("/config/schedules")?;
        let body = json!({
            "name": name,
            "type": kind,
            "properties": {"segments": segments},
            "schedule": cron,
            "state": if active { "active" } else { "inactive" },
        });
        let v: Value = self.call_json(Method::POST, &url, Some(&body), &[]).await?;
        Ok(SegmentSchedule::from_json(&v))
    }

    pub async fn segment_schedule(&self, id: &str) -> Result<SegmentSchedule, IngestError> {
        let url = self.ups_url(&format!("/config/schedules/{}", encode(id)))?;
        match self.get_json::<Value>(&url).await {
            Ok(v) => Ok(SegmentSchedule::from_json(&v)),
            Err(IngestError::Status { status: 404, .. }) => Err(IngestError::NotFound {
                what: format!("schedule {id}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// `active` or `inactive`, by JSON Patch.
    pub async fn set_schedule_active(&self, id: &str, active: bool) -> Result<(), IngestError> {
        let state = if active { "active" } else { "inactive" };
        self.patch_schedule(id, json!([{"op": "add", "path": "/state", "value": state}]))
            .await
    }

    /// A new cron, checked first, by JSON Patch.
    pub async fn set_schedule_cron(&self, id: &str, cron: &str) -> Result<(), IngestError> {
        check_cron(cron).map_err(|message| IngestError::Config {
            field: "schedule",
            message,
        })?;
        self.patch_schedule(
            id,
            json!([{"op": "add", "path": "/schedule", "value": cron}]),
        )
        .await
    }

    async fn patch_schedule(&self, id: &str, ops: Value) -> Result<(), IngestError> {
        let url = self.ups_url(&format!("/config/schedules/{}", encode(id)))?;
        self.with_retry(url.as_str(), |_| {
            self.call_json::<Value>(Method::PATCH, &url, Some(&ops), &[])
        })
        .await
        .map(drop)
    }

    pub async fn delete_segment_schedule(&self, id: &str) -> Result<(), IngestError> {
        self.delete_accepting(&format!("/config/schedules/{}", encode(id)), "schedule", id)
            .await
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crons_at_most_once_a_day() {
        assert!(check_cron("0 0 2 * * ?").is_ok());
        assert!(check_cron("0 30 23 ? * MON-FRI 2027").is_ok());
        assert!(
            check_cron("0 0 * * * ?")
                .unwrap_err()
                .contains("once a day")
        );
        assert!(check_cron("0 */5 2 * * ?").unwrap_err().contains("minutes"));
        assert!(check_cron("0 0 2 * *").unwrap_err().contains("5 fields"));
        assert!(
            check_cron("0 0 24 * * ?")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(check_cron("0 0 2 * * MON").unwrap_err().contains("`?`"));
    }

    #[test]
    fn export_jobs_read_both_spellings_batches_and_errors() {
        let one = ExportJob::from_json(&json!({
            "id": 24115, "status": "SUCCEEDED", "creationTime": 1538573416687i64,
            "destination": {"dataSetId": "ds1", "segmentPerBatch": false, "batchId": "b1"},
            "metrics": {"totalExportedProfileCounter": 195, "exportedProfileByNamespaceCounter": {"ECID": 150, "Email": 45}}
        }));
        assert_eq!(one.dataset_id.as_deref(), Some("ds1"));
        assert_eq!(one.batches.len(), 1);
        assert_eq!(one.by_namespace["Email"], 45);
        let per_segment = ExportJob::from_json(&json!({
            "id": "7", "status": "SUCCEEDED",
            "destination": {"datasetId": "ds1", "segmentPerBatch": true, "batches": [
                {"segmentId": "s1", "segmentNs": "ups", "status": ["realized"], "batchId": "b1"},
                {"segmentId": "s2", "segmentNs": "ups", "status": ["realized"], "batchId": "b2"}
            ]}
        }));
        assert_eq!(per_segment.id, 7);
        assert_eq!(per_segment.batches[1].segment_id.as_deref(), Some("s2"));
        let failed = ExportJob::from_json(&json!({
            "id": 8, "status": "FAILED", "destination": {"datasetId": "ds1", "batchId": ""},
            "errors": [{"code": "0090000009", "msg": "Error writing profiles to output path", "callStack": "com.adobe…"}]
        }));
        assert!(failed.batches.is_empty(), "an empty batchId is no batch");
        assert_eq!(
            failed.errors[0].msg,
            "Error writing profiles to output path"
        );
    }

    #[test]
    fn export_job_requests_carry_the_filters_given() {
        let req = ExportJobRequest {
            fields: Some("identityMap,segmentMembership".into()),
            segments: vec![SegmentFilter {
                segment_id: "s1".into(),
                namespace: None,
                statuses: vec!["realized".into(), "exited".into()],
            }],
            from_ingest: Some("2026-11-29T00:00:00Z".into()),
            dataset_id: "ds1".into(),
            segment_per_batch: true,
            evaluate: true,
            ..Default::default()
        };
        let v = req.to_json();
        assert_eq!(
            v["destination"],
            json!({"datasetId": "ds1", "segmentPerBatch": true})
        );
        assert_eq!(v["schema"]["name"], "_xdm.context.profile");
        assert_eq!(v["filter"]["segments"][0]["segmentNs"], "ups");
        assert_eq!(v["filter"]["fromIngestTimestamp"], "2026-11-29T00:00:00Z");
        assert_eq!(v["evaluationInfo"]["segmentation"], true);
        assert!(v.get("mergePolicy").is_none());
    }

    #[test]
    fn segment_jobs_read_their_metrics() {
        let j = SegmentJob::from_json(&json!({
            "id": "d3b4", "status": "SUCCEEDED", "creationTime": 1,
            "segments": [{"segmentId": "s1"}],
            "metrics": {"totalProfiles": 13, "segmentedProfileCounter": {"s1": 5},
                        "segmentedProfileByStatusCounter": {"s1": {"realized": 4, "exited": 1}},
                        "segmentedProfileByNamespaceCounter": {"s1": {"ECID": 5}}}
        }));
        assert!(j.is_done());
        assert_eq!(j.by_status["s1"]["exited"], 1);
        assert_eq!(j.by_namespace["s1"]["ECID"], 5);
    }
}
