//! Catalog: batches, datasets (listed, read, made), with its filter syntax and `orderBy`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Catalog

/// A JSON object whose keys keep the order they were given in (Catalog lists are objects keyed
/// by id, in `orderBy` order).
pub(super) struct Keyed(Vec<(String, Value)>);

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
pub(super) fn simple_filter(spec: &str, value: &str) -> bool {
    match spec.strip_prefix('!') {
        Some(rest) => !rest.split(',').any(|v| v == value),
        None => spec.split(',').any(|v| v == value),
    }
}

pub(super) fn catalog_bad_request(detail: &str) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "CAT-1400-400",
        "Bad Request",
        detail,
    )
}

pub(super) fn parse_limit_start(q: &HashMap<String, String>) -> Result<(usize, usize), Response> {
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

pub(super) fn project(object: &Map<String, Value>, properties: Option<&String>) -> Value {
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

pub(super) fn batch_dataset(batch: &Batch) -> Option<&str> {
    batch
        .object
        .get("relatedObjects")?
        .as_array()?
        .iter()
        .find(|o| o.get("type").and_then(Value::as_str) == Some("dataSet"))?
        .get("id")?
        .as_str()
}

pub(super) async fn list_batches(
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

pub(super) async fn get_batch(
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

pub(super) fn dataset_object(st: &AppState, sandbox: &str, id: &str) -> Option<Value> {
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

pub(super) async fn get_dataset(
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

pub(super) async fn list_datasets(
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
pub(super) async fn create_dataset(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_filters() {
        assert!(simple_filter("success", "success"));
        assert!(simple_filter("success,failure", "failure"));
        assert!(!simple_filter("!success", "success"));
        assert!(simple_filter("!success,failure", "loading"));
        assert!(!simple_filter("!success,failure", "failure"));
    }
}
