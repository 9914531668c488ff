//! XDM schemas (the Schema Registry's expanded `xed-full` form) as the flat columns a dataset
//! lands as: nested objects flattened to `a_b_c` columns down to a depth, deeper objects kept
//! as structs, arrays as lists, maps as maps, and XDM's types as Arrow's (`meta:xdmType` when
//! the schema gives it, else JSON Schema's `type` and `format`). Titles and descriptions come
//! along, for the tables' column comments.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use serde::Serialize;
use serde_json::Value;

use crate::error::TransformError;

/// Nesting beyond this is refused: no real schema comes near it, and a hostile one could
/// otherwise exhaust the stack.
const MAX_NESTING: usize = 64;

/// One column of the flattened dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct XdmColumn {
    /// `a_b_c`.
    pub name: String,
    /// The field's path in the XDM row, `a.b.c`.
    pub path: String,
    #[serde(serialize_with = "type_name")]
    pub data_type: DataType,
    /// XDM's type (`string`, `date-time`, `long`, `object`, `array`…).
    pub xdm_type: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// An enum's values, kept as strings.
    pub enum_values: Vec<String>,
}

fn type_name<S: serde::Serializer>(t: &DataType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_string())
}

/// The columns of `schema` (its `properties`), objects flattened `depth` levels deep.
pub fn columns(schema: &Value, depth: usize) -> Result<Vec<XdmColumn>, TransformError> {
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("", "the schema has no properties"))?;
    let mut out = Vec::new();
    for (name, field) in properties {
        check_name(name, name)?;
        flatten(name, name, field, depth, 0, &mut out)?;
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for c in &out {
        if let Some(other) = seen.insert(&c.name, &c.path) {
            return Err(invalid(
                &c.path,
                &format!(
                    "flattens to column {} as {other} does; land with a smaller depth",
                    c.name
                ),
            ));
        }
    }
    Ok(out)
}

fn invalid(path: &str, what: &str) -> TransformError {
    if path.is_empty() {
        TransformError::Config(format!("the XDM schema: {what}"))
    } else {
        TransformError::Config(format!("the XDM schema, field {path}: {what}"))
    }
}

fn flatten(
    name: &str,
    path: &str,
    field: &Value,
    depth: usize,
    nesting: usize,
    out: &mut Vec<XdmColumn>,
) -> Result<(), TransformError> {
    if nesting > MAX_NESTING {
        return Err(invalid(path, "nested deeper than 64 levels"));
    }
    let kind = xdm_type(field);
    if kind == "object" && depth > 0 {
        let properties = field
            .get("properties")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid(path, "an object without properties"))?;
        for (child, f) in properties {
            check_name(child, &format!("{path}.{child}"))?;
            flatten(
                &format!("{name}_{child}"),
                &format!("{path}.{child}"),
                f,
                depth - 1,
                nesting + 1,
                out,
            )?;
        }
        return Ok(());
    }
    let text = |k: &str| field.get(k).and_then(Value::as_str).map(str::to_string);
    out.push(XdmColumn {
        name: name.to_string(),
        path: path.to_string(),
        data_type: arrow_type(field, path, nesting)?,
        xdm_type: kind,
        title: text("title"),
        description: text("description"),
        enum_values: field
            .get("enum")
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    });
    Ok(())
}

/// A field's name (`name`, at `path`) as a column name: not empty, and none of what separates our paths
/// (`.`) or what a Delta column name cannot hold without column mapping (` ,;{}()=`, controls).
fn check_name(name: &str, path: &str) -> Result<(), TransformError> {
    if name.is_empty() {
        return Err(invalid(path, "a field without a name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || " ,;{}()=.".contains(*c))
    {
        return Err(invalid(
            path,
            &format!("its name holds {c:?}, which a column name cannot hold"),
        ));
    }
    Ok(())
}

/// XDM's type of a field: `meta:xdmType`, else from JSON Schema's `type` and `format`.
fn xdm_type(field: &Value) -> String {
    if let Some(t) = field.get("meta:xdmType").and_then(Value::as_str) {
        return t.to_string();
    }
    let format = field.get("format").and_then(Value::as_str);
    match (field.get("type").and_then(Value::as_str), format) {
        (Some("string"), Some("date-time")) => "date-time".into(),
        (Some("string"), Some("date")) => "date".into(),
        (Some("integer"), _) => "long".into(),
        (Some("object"), _) if field.get("additionalProperties").is_some() => "map".into(),
        (Some(t), _) => t.to_string(),
        (None, _) => "unknown".into(),
    }
}

fn arrow_type(field: &Value, path: &str, nesting: usize) -> Result<DataType, TransformError> {
    if nesting > MAX_NESTING {
        return Err(invalid(path, "nested deeper than 64 levels"));
    }
    Ok(match xdm_type(field).as_str() {
        "string" => DataType::Utf8,
        "number" | "double" => DataType::Float64,
        "long" => DataType::Int64,
        "int" => DataType::Int32,
        "short" => DataType::Int16,
        "byte" => DataType::Int8,
        "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "date-time" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "array" => {
            let items = field
                .get("items")
                .ok_or_else(|| invalid(path, "an array without items"))?;
            DataType::new_list(arrow_type(items, &format!("{path}[]"), nesting + 1)?, true)
        }
        "map" => {
            let values = field
                .get("additionalProperties")
                .filter(|v| v.is_object())
                .map(|v| arrow_type(v, &format!("{path}{{}}"), nesting + 1))
                .transpose()?
                .unwrap_or(DataType::Utf8);
            let entries = Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", values, true),
            ]);
            DataType::Map(
                Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                false,
            )
        }
        "object" => {
            let properties = field
                .get("properties")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(path, "an object without properties"))?;
            let fields = properties
                .iter()
                .map(|(n, f)| {
                    check_name(n, &format!("{path}.{n}"))?;
                    Ok(Field::new(
                        n,
                        arrow_type(f, &format!("{path}.{n}"), nesting + 1)?,
                        true,
                    ))
                })
                .collect::<Result<Vec<_>, TransformError>>()?;
            DataType::Struct(Fields::from(fields))
        }
        other => {
            return Err(invalid(
                path,
                &format!(
                    "type {other:?} is not one XDM has (string, number, long, int, short, byte, boolean, date, date-time, object, array, map)"
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"properties": {
            "_id": {"type": "string", "title": "Identifier", "meta:xdmType": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "_acme": {"type": "object", "meta:xdmType": "object", "properties": {
                "identity": {"type": "object", "properties": {
                    "id": {"type": "string", "description": "The person"},
                    "namespace": {"type": "object", "properties": {"code": {"type": "string"}}}
                }},
                "tier": {"type": "string", "enum": ["gold", "silver"]},
                "visits": {"type": "integer", "meta:xdmType": "int"},
                "day": {"type": "string", "format": "date"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "scores": {"type": "object", "additionalProperties": {"type": "number"}}
            }}
        }})
    }

    #[test]
    fn objects_flatten_to_the_depth_and_types_map() {
        let cols = columns(&schema(), 2).unwrap();
        let got: Vec<(&str, String)> = cols
            .iter()
            .map(|c| (c.name.as_str(), c.data_type.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("_acme_day", "Date32".to_string()),
                ("_acme_identity_id", "Utf8".into()),
                (
                    "_acme_identity_namespace",
                    "Struct(\"code\": Utf8)".into()
                ),
                (
                    "_acme_scores",
                    "Map(\"entries\": non-null Struct(\"key\": non-null Utf8, \"value\": Float64), unsorted)"
                        .into()
                ),
                ("_acme_tags", "List(Utf8)".into()),
                ("_acme_tier", "Utf8".into()),
                ("_acme_visits", "Int32".into()),
                ("_id", "Utf8".into()),
                ("timestamp", "Timestamp(µs, \"UTC\")".into()),
            ]
        );
        let id = cols.iter().find(|c| c.name == "_acme_identity_id").unwrap();
        assert_eq!(
            (id.path.as_str(), id.description.as_deref()),
            ("_acme.identity.id", Some("The person"))
        );
        let tier = cols.iter().find(|c| c.name == "_acme_tier").unwrap();
        assert_eq!(tier.enum_values, ["gold", "silver"]);
        assert_eq!(columns(&schema(), 0).unwrap().len(), 3);
    }

    #[test]
    fn hostile_schemas_are_refused_with_the_field() {
        let unknown =
            json!({"properties": {"a": {"type": "object", "properties": {"b": {"type": "blob"}}}}});
        let e = columns(&unknown, 0).unwrap_err().to_string();
        assert!(e.contains("field a.b") && e.contains("\"blob\""), "{e}");
        let clash = json!({"properties": {
            "a_b": {"type": "string"},
            "a": {"type": "object", "properties": {"b": {"type": "string"}}}
        }});
        let e = columns(&clash, 1).unwrap_err().to_string();
        assert!(e.contains("flattens to column a_b"), "{e}");
        let mut deep = json!({"type": "string"});
        for _ in 0..200 {
            deep = json!({"type": "object", "properties": {"x": deep}});
        }
        let e = columns(&json!({"properties": {"d": deep}}), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("deeper than 64"), "{e}");
        assert!(columns(&json!({}), 1).is_err());
        for bad in ["a b", "a.b", "x=1", "", "tab\there", "(c)"] {
            let schema = json!({"properties": {"o": {"type": "object", "properties": {bad: {"type": "string"}}}}});
            let e = columns(&schema, 1).unwrap_err().to_string();
            assert!(e.contains("field o."), "{bad:?}: {e}");
            // Also inside an object kept as a struct.
            assert!(columns(&schema, 0).is_err(), "{bad:?}");
        }
    }
}
