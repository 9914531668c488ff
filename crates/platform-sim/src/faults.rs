//! Scripted faults: per route, a queue consumed in request order.
//!
//! A test (in process, through [`crate::SimHandle`]) or any client (through
//! `POST /__sim/faults`) pushes faults; each matching request takes the next one. A fault with
//! `times: N` serves N requests before it is used up, so "keeps failing" is one entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The routes a fault can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `POST /ims/token/v3`
    Ims,
    /// `GET /data/foundation/catalog/batches` and `/batches/{id}`
    CatalogBatches,
    /// `GET /data/foundation/catalog/dataSets/{id}`
    CatalogDatasets,
    /// `GET /data/foundation/export/batches/{id}/files`
    BatchFiles,
    /// `GET /data/foundation/export/files/{id}` without `path` (directory listing)
    FileListing,
    /// `GET|HEAD /data/foundation/export/files/{id}?path=…` (bytes)
    Download,
    /// Flow Service (`/data/foundation/flowservice/…`) and the ad-hoc export run
    FlowService,
}

impl Route {
    /// Which route a request is, from its path and query; `None` for routes faults never touch.
    pub fn classify(path: &str, query: Option<&str>) -> Option<Route> {
        let has_path_param = query
            .map(|q| q.split('&').any(|kv| kv.starts_with("path=")))
            .unwrap_or(false);
        if path == "/ims/token/v3" {
            Some(Route::Ims)
        } else if path.starts_with("/data/foundation/catalog/batches") {
            Some(Route::CatalogBatches)
        } else if path.starts_with("/data/foundation/catalog/dataSets") {
            Some(Route::CatalogDatasets)
        } else if path.starts_with("/data/foundation/export/batches/") {
            Some(Route::BatchFiles)
        } else if path.starts_with("/data/foundation/export/files/") {
            Some(if has_path_param {
                Route::Download
            } else {
                Route::FileListing
            })
        } else if path.starts_with("/data/foundation/flowservice/")
            || path.starts_with("/data/core/activation/")
        {
            Some(Route::FlowService)
        } else {
            None
        }
    }
}

/// What goes wrong with one response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer with this status instead of handling the request. `retry_after` is sent verbatim
    /// (seconds or an HTTP date); `body` picks one of AEP's error-body styles.
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<String>,
        #[serde(default)]
        body: ErrorBodyStyle,
    },
    /// Serve the headers and `after_bytes` of the body, then reset the connection.
    ResetMidBody { after_bytes: u64 },
    /// Serve `after_bytes` of the body and end it, while `Content-Length` claims the whole.
    TruncateBody { after_bytes: u64 },
    /// Serve `after_bytes` of the body, send nothing for `delay`, then serve the rest: a stalled
    /// connection, for a client's stalled-body timeout.
    StallMidBody {
        after_bytes: u64,
        #[serde(with = "humantime_serde_ms")]
        delay: Duration,
    },
    /// Wait this long before answering.
    Latency {
        #[serde(with = "humantime_serde_ms")]
        delay: Duration,
    },
    /// Cap this response's body at this many bytes per second.
    Bandwidth { bytes_per_sec: u64 },
    /// Every token issued so far expires now, before this request is checked.
    ExpireTokens,
    /// Wait this long, then send `bytes` bytes of the body, again and again: a connection that
    /// dribbles and never goes quiet long enough for a read timeout.
    Drip {
        bytes: u64,
        #[serde(with = "humantime_serde_ms")]
        every: Duration,
    },
    /// Reset the connection once the response has taken this long, as AEP's gateway does at
    /// 60 s.
    ResponseCap {
        #[serde(with = "humantime_serde_ms")]
        after: Duration,
    },
    /// Downloads: answer 206 with at most this many bytes from where the client asked (or from
    /// the start), which RFC 9110 and AEP allow.
    ShortRange { max_bytes: u64 },
    /// Downloads: answer 200 with the whole file even to a ranged request.
    IgnoreRange,
    /// Listing routes: the `next` link points back at the page just served.
    RepeatNextLink,
    /// File listings: the next page starts at the last entry of this one, so it is listed
    /// twice (a name cursor that is inclusive).
    OverlappingCursor,
    /// Listing routes: an empty page whose `next` link is new each time and serves the page
    /// that was asked for.
    EmptyPage,
    /// File listings: Spark's `_SUCCESS`, `_started_*` and `_committed_*` marker files beside
    /// the parts.
    MarkerFiles,
    /// Listing routes: every href is a path relative to the host (`/data/…`).
    RelativeHrefs,
    /// Catalog batch lists: `start` is ignored, so every page is the first.
    CatalogIgnoresStart,
    /// Listing routes: every href in the body points at this other origin.
    ForeignHrefs { origin: String },
}

/// The error-body styles AEP's services answer with (RFC 7807 problem details, and the older
/// `error_code`/`message` bodies); all are seen with the same status codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorBodyStyle {
    /// `{"error_code": "...", "message": "..."}`
    #[default]
    Gateway,
    /// `{"type": ..., "title": ..., "status": ..., "detail": ...}`
    Problem,
    /// No body at all.
    Empty,
}

/// Durations in fault JSON are integer milliseconds (`"delay": 250`).
mod humantime_serde_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// One scripted entry: a fault for a route, used for `times` requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub route: Route,
    pub fault: Fault,
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default)]
pub struct FaultQueue {
    queues: Mutex<HashMap<Route, VecDeque<(Fault, u32)>>>,
}

impl FaultQueue {
    pub fn push(&self, spec: FaultSpec) {
        if spec.times == 0 {
            return;
        }
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(spec.route)
            .or_default()
            .push_back((spec.fault, spec.times));
    }

    /// The fault the next request on `route` gets, if any.
    pub fn take(&self, route: Route) -> Option<Fault> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.get_mut(&route)?;
        let (fault, times) = queue.front_mut()?;
        let fault = fault.clone();
        *times -= 1;
        if *times == 0 {
            queue.pop_front();
        }
        Some(fault)
    }

    pub fn clear(&self) {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How many scripted requests remain for `route`.
    pub fn pending(&self, route: Route) -> u32 {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .get(&route)
            .map(|q| q.iter().map(|(_, n)| *n).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_consumed_in_order_and_counts_times() {
        let q = FaultQueue::default();
        q.push(FaultSpec {
            route: Route::Download,
            fault: Fault::ExpireTokens,
            times: 2,
        });
        q.push(FaultSpec {
            route: Route::Download,
            fault: Fault::RepeatNextLink,
            times: 1,
        });
        assert_eq!(q.pending(Route::Download), 3);
        assert_eq!(q.take(Route::Download), Some(Fault::ExpireTokens));
        assert_eq!(q.take(Route::Ims), None);
        assert_eq!(q.take(Route::Download), Some(Fault::ExpireTokens));
        assert_eq!(q.take(Route::Download), Some(Fault::RepeatNextLink));
        assert_eq!(q.take(Route::Download), None);
    }

    #[test]
    fn classify_routes() {
        assert_eq!(
            Route::classify("/data/foundation/export/files/x-1", Some("path=a.parquet")),
            Some(Route::Download)
        );
        assert_eq!(
            Route::classify("/data/foundation/export/files/x-1", Some("start=abc")),
            Some(Route::FileListing)
        );
        assert_eq!(Route::classify("/__sim/faults", None), None);
    }

    #[test]
    fn fault_json_shape() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"route":"download","fault":{"kind":"status","status":503,"retry_after":"1"},"times":3}"#,
        )
        .unwrap();
        assert_eq!(spec.times, 3);
        assert!(matches!(spec.fault, Fault::Status { status: 503, .. }));
    }
}
