//! Schema Registry: `GET /data/foundation/schemaregistry/tenant/schemas/{id}` with
//! `Accept: application/vnd.adobe.xed-full+json; version=1`, the schema a dataset's
//! `schemaRef` names, fully expanded. The simulator derives it from the parquet parts of the
//! dataset's newest batch, so it always describes the rows it serves: each field with its XDM
//! type (`meta:xdmType`), JSON type and format, and a title.

use super::*;

use arrow::datatypes::{DataType, Field};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value, json};

/// The Accept header the expanded form needs, as AEP asks for it.
const XED_FULL: &str = "application/vnd.adobe.xed-full+json";
const EVENT_CLASS: &str = "https://ns.adobe.com/xdm/context/experienceevent";
const PROFILE_CLASS: &str = "https://ns.adobe.com/xdm/context/profile";
const RECORD_CLASS: &str = "https://ns.adobe.com/xdm/data/record";

pub(super) async fn get_schema(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !accept.contains(XED_FULL) {
        return problem(
            StatusCode::NOT_ACCEPTABLE,
            "XDM-1010-406",
            "Not Acceptable",
            &format!("the schema's expanded form needs Accept: {XED_FULL}; version=1"),
        );
    }
    let datasets = &st.platform.sandboxes[&sandbox].datasets;
    let Some(dataset) = datasets.values().find(|d| {
        d.object
            .get("schemaRef")
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
            == Some(id.as_str())
    }) else {
        return problem(
            StatusCode::NOT_FOUND,
            "XDM-1021-404",
            "Not Found",
            &format!("schema '{id}' not found"),
        );
    };
    let part = st.with_batches(&sandbox, |all| {
        all.filter(|b| b.dataset_id == dataset.id && b.status() == "success")
            .max_by_key(|b| b.created())
            .and_then(|b| b.part_paths().into_iter().next())
    });
    let fields = match part.map(|p| {
        std::fs::File::open(&p)
            .map_err(|e| e.to_string())
            .and_then(|f| ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| e.to_string()))
            .map(|b| b.schema().fields().clone())
    }) {
        Some(Ok(fields)) => fields,
        Some(Err(e)) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "XDM-1500-500",
                "Internal Server Error",
                &format!("cannot read the dataset's parts: {e}"),
            );
        }
        None => {
            return problem(
                StatusCode::NOT_FOUND,
                "XDM-1021-404",
                "Not Found",
                &format!("schema '{id}' has no rows to describe yet"),
            );
        }
    };
    let properties = xdm_properties(&fields);
    // The class, from the rows: Customer AI writes its scores as profile records; other rows
    // with `_id` and `timestamp` are events.
    let scores = fields.iter().any(|f| {
        matches!(f.data_type(), DataType::Struct(c) if c.iter().any(|c| c.name() == "CustomerAI"))
    });
    let class = if scores {
        PROFILE_CLASS
    } else if fields.find("_id").is_some() && fields.find("timestamp").is_some() {
        EVENT_CLASS
    } else {
        RECORD_CLASS
    };
    let body = json!({
        "meta:class": class,
        "meta:extends": [class],
        "$id": id,
        "meta:altId": format!("{}.schemas.{}", st.platform.info.tenant, dataset.id),
        "meta:resourceType": "schemas",
        "version": "1.0",
        "title": format!("{} schema", dataset.name()),
        "type": "object",
        "description": format!("The schema of dataset {}", dataset.name()),
        "properties": properties,
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.adobe.xed-full+json; version=1"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// `GET /data/foundation/schemaregistry/tenant/descriptors?property=xdm:sourceSchema==ID` with
/// `Accept: application/vnd.adobe.xdm+json`: the descriptors of a dataset's schema, grouped by
/// type (`{"xdm:descriptorIdentity": [...]}`), from the dataset's `descriptors.json` (none
/// without one).
pub(super) async fn get_descriptors(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !accept.contains("application/vnd.adobe.xdm+json") {
        return problem(
            StatusCode::NOT_ACCEPTABLE,
            "XDM-1010-406",
            "Not Acceptable",
            "descriptors need Accept: application/vnd.adobe.xdm+json",
        );
    }
    let Some(schema) = q
        .iter()
        .filter(|(k, _)| k == "property")
        .find_map(|(_, v)| v.strip_prefix("xdm:sourceSchema=="))
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "XDM-1000-400",
            "Bad Request",
            "give property=xdm:sourceSchema==<schema id>",
        );
    };
    let mut grouped = Map::new();
    let datasets = &st.platform.sandboxes[&sandbox].datasets;
    let found = datasets.values().find(|d| {
        d.object
            .get("schemaRef")
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
            == Some(schema)
    });
    if let Some(d) = found {
        let path = st
            .platform
            .dir
            .join(&sandbox)
            .join(&d.id)
            .join("descriptors.json");
        let listed: Vec<Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for (i, mut desc) in listed.into_iter().enumerate() {
            let kind = desc["@type"]
                .as_str()
                .unwrap_or("xdm:descriptor")
                .to_string();
            if let Some(o) = desc.as_object_mut() {
                o.insert("xdm:sourceSchema".into(), json!(schema));
                o.insert("xdm:sourceVersion".into(), json!(1));
                o.insert("@id".into(), json!(format!("{}{i:04x}", &d.id[..8])));
            }
            if let Some(a) = grouped
                .entry(kind)
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                a.push(desc);
            }
        }
    }
    axum::Json(Value::Object(grouped)).into_response()
}

/// Dataset Service's `GET /data/foundation/dataset/datasets/{id}/labels`: the dataset's data
/// usage labels from its `labels.json` (`{"labels": [...], "fields": {"a.b": [...]}}`), in
/// AEP's form (field labels as `optionalLabels` with a `schemaPath`); 404 without one.
pub(super) async fn get_labels(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let datasets = &st.platform.sandboxes[&sandbox].datasets;
    let not_found = |what: &str| problem(StatusCode::NOT_FOUND, "DSS-1404-404", "Not Found", what);
    let Some(dataset) = datasets.get(&id) else {
        return not_found(&format!("dataset '{id}' not found"));
    };
    let path = st.platform.dir.join(&sandbox).join(&id).join("labels.json");
    let Some(labels) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return not_found(&format!("no labels on dataset '{id}'"));
    };
    let schema_id = dataset
        .object
        .get("schemaRef")
        .and_then(|r| r.get("id"))
        .cloned()
        .unwrap_or(Value::Null);
    let optional: Vec<Value> = labels["fields"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(field, l)| {
            let schema_path: String = field
                .split('.')
                .map(|n| format!("/properties/{n}"))
                .collect();
            json!({
                "option": {
                    "id": schema_id,
                    "contentType": "application/vnd.adobe.xed-full+json;version=1",
                    "schemaPath": schema_path,
                },
                "labels": l,
            })
        })
        .collect();
    axum::Json(json!({
        format!("AEP:dataset:{id}"): {
            "imsOrg": st.platform.info.org_id,
            "labels": labels.get("labels").cloned().unwrap_or_else(|| json!([])),
            "optionalLabels": optional,
        }
    }))
    .into_response()
}

/// The `properties` of the schema whose rows have these columns, in XDM's JSON form.
pub fn xdm_properties(fields: &arrow::datatypes::Fields) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|f| (f.name().clone(), xdm_field(f)))
            .collect(),
    )
}

/// One field in XDM's JSON form.
fn xdm_field(f: &Field) -> Value {
    let mut v = xdm_type(f.data_type());
    if let Some(o) = v.as_object_mut() {
        o.insert("title".into(), json!(title(f.name())));
    }
    v
}

fn xdm_type(t: &DataType) -> Value {
    let integer = |xdm: &str, bound: i64| json!({"type": "integer", "meta:xdmType": xdm, "minimum": -bound, "maximum": bound});
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            json!({"type": "string", "meta:xdmType": "string"})
        }
        DataType::Boolean => json!({"type": "boolean", "meta:xdmType": "boolean"}),
        DataType::Int64 | DataType::UInt64 => integer("long", 9_007_199_254_740_991),
        DataType::Int32 | DataType::UInt32 => integer("int", 2_147_483_648),
        DataType::Int16 | DataType::UInt16 => integer("short", 32_768),
        DataType::Int8 | DataType::UInt8 => integer("byte", 128),
        DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            json!({"type": "number", "meta:xdmType": "number"})
        }
        DataType::Date32 | DataType::Date64 => {
            json!({"type": "string", "format": "date", "meta:xdmType": "date"})
        }
        DataType::Timestamp(..) => {
            json!({"type": "string", "format": "date-time", "meta:xdmType": "date-time"})
        }
        DataType::List(item) | DataType::LargeList(item) => {
            json!({"type": "array", "meta:xdmType": "array", "items": xdm_field(item)})
        }
        DataType::Struct(fields) => {
            let properties: Map<String, Value> = fields
                .iter()
                .map(|f| (f.name().clone(), xdm_field(f)))
                .collect();
            json!({"type": "object", "meta:xdmType": "object", "properties": properties})
        }
        DataType::Map(entry, _) => {
            let value = match entry.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => xdm_field(&kv[1]),
                _ => json!({"type": "string"}),
            };
            json!({"type": "object", "meta:xdmType": "map", "additionalProperties": value})
        }
        _ => json!({"type": "string", "meta:xdmType": "string"}),
    }
}

/// `scoreDate` → "Score Date", `CustomerAI` → "Customer AI", `_id` → "Id".
fn title(name: &str) -> String {
    let mut out = String::new();
    let mut previous: Option<char> = None;
    for c in name.trim_start_matches('_').chars() {
        match previous {
            _ if c == '_' => out.push(' '),
            None => out.extend(c.to_uppercase()),
            Some(p) if c.is_uppercase() && p.is_lowercase() => {
                out.push(' ');
                out.push(c);
            }
            _ => out.push(c),
        }
        previous = Some(c);
    }
    out
}
