//! Data usage labels of a dataset (Dataset Service: `GET /data/foundation/dataset/datasets/{id}/labels`):
//! the labels of the whole dataset (`labels`) and of single fields (`optionalLabels`, each
//! naming a field of the dataset's schema by `option.schemaPath`, `/properties/a/properties/b`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::client::AepClient;
use crate::error::IngestError;

/// A dataset's labels: its own, and each labelled field's (by dotted XDM path, `a.b`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataLabels {
    pub dataset: BTreeSet<String>,
    pub fields: BTreeMap<String, BTreeSet<String>>,
}

impl DataLabels {
    pub fn is_empty(&self) -> bool {
        self.dataset.is_empty() && self.fields.is_empty()
    }
}

impl AepClient {
    /// The data usage labels of dataset `id`; none when the dataset has none (404).
    pub async fn dataset_labels(&self, id: &str) -> Result<DataLabels, IngestError> {
        let url = self.url_with_segments("/data/foundation/dataset/datasets/", &[id, "labels"])?;
        let found: Value = match self.get_json(&url).await {
            Err(IngestError::Status { status: 404, .. }) => return Ok(DataLabels::default()),
            other => other?,
        };
        labels_of(&found, id).map_err(|what| IngestError::Unexpected {
            url: url.to_string(),
            what,
        })
    }
}

/// The labels in a Dataset Service answer for dataset `id` (`{"AEP:dataset:<id>": {"labels":
/// [...], "optionalLabels": [{"option": {"schemaPath": "/properties/a"}, "labels": [...]}]}}`).
/// A label is letters and digits (`C1`, `I2`, `RHD`, a custom `Partner_3`); a field path is
/// `/properties/<name>` repeated. Anything else is refused with what was wrong: labels that
/// cannot be read must not land as none.
pub(crate) fn labels_of(found: &Value, id: &str) -> Result<DataLabels, String> {
    let Some(entry) = found.get(format!("AEP:dataset:{id}")) else {
        return Err(format!("the answer has no AEP:dataset:{id} entry"));
    };
    let list = |v: Option<&Value>, whose: &str| -> Result<BTreeSet<String>, String> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(BTreeSet::new());
        };
        let items = v
            .as_array()
            .ok_or_else(|| format!("the labels of {whose} are not a list"))?;
        items
            .iter()
            .map(|l| match l.as_str() {
                Some(l)
                    if !l.is_empty()
                        && l.len() <= 64
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    Ok(l.to_string())
                }
                _ => Err(format!("{whose} has a label that is not a label name: {l}")),
            })
            .collect()
    };
    let mut out = DataLabels {
        dataset: list(entry.get("labels"), "the dataset")?,
        fields: BTreeMap::new(),
    };
    let optional = match entry.get("optionalLabels") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("optionalLabels is not a list".into()),
    };
    for o in optional {
        let schema_path = o
            .pointer("/option/schemaPath")
            .and_then(Value::as_str)
            .ok_or_else(|| "an optionalLabels entry has no option.schemaPath".to_string())?;
        let path = field_path(schema_path)
            .ok_or_else(|| format!("the schemaPath {schema_path:?} is not /properties/<name>/…"))?;
        let labels = list(o.get("labels"), &path)?;
        out.fields.entry(path).or_default().extend(labels);
    }
    Ok(out)
}

/// `/properties/a/properties/b` as `a.b`.
fn field_path(schema_path: &str) -> Option<String> {
    let mut parts = schema_path.strip_prefix('/')?.split('/');
    let mut names = Vec::new();
    while let Some(p) = parts.next() {
        if p != "properties" {
            return None;
        }
        let name = parts.next()?;
        let plain = !name.is_empty()
            && name.len() <= 256
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '@');
        if !plain {
            return None;
        }
        names.push(name);
    }
    (!names.is_empty()).then(|| names.join("."))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dataset_and_field_labels_are_read() {
        let found = json!({"AEP:dataset:abc": {
            "imsOrg": "X@AdobeOrg",
            "labels": ["C1", "C2"],
            "optionalLabels": [
                {"option": {"id": "https://ns.adobe.com/x/schemas/1", "contentType": "application/vnd.adobe.xed-full+json;version=1",
                            "schemaPath": "/properties/personalEmail/properties/address"},
                 "labels": ["I1", "C2"]},
                {"option": {"schemaPath": "/properties/personalEmail/properties/address"}, "labels": ["S1"]},
            ]
        }});
        let l = labels_of(&found, "abc").unwrap();
        assert_eq!(l.dataset, BTreeSet::from(["C1".into(), "C2".into()]));
        assert_eq!(
            l.fields["personalEmail.address"],
            BTreeSet::from(["C2".into(), "I1".into(), "S1".into()])
        );
        assert!(
            labels_of(&json!({"AEP:dataset:abc": {}}), "abc")
                .unwrap()
                .is_empty()
        );
    }

    /// Hostile or broken answers are refused, never read as "no labels".
    #[test]
    fn answers_that_cannot_be_read_are_refused() {
        for (found, said) in [
            (
                json!({"AEP:dataset:other": {"labels": ["C1"]}}),
                "no AEP:dataset:abc",
            ),
            (json!({"AEP:dataset:abc": {"labels": "C1"}}), "not a list"),
            (
                json!({"AEP:dataset:abc": {"labels": ["C1", 7]}}),
                "not a label name",
            ),
            (
                json!({"AEP:dataset:abc": {"labels": ["C1,I1"]}}),
                "not a label name",
            ),
            (
                json!({"AEP:dataset:abc": {"labels": [""]}}),
                "not a label name",
            ),
            (
                json!({"AEP:dataset:abc": {"optionalLabels": {"a": 1}}}),
                "not a list",
            ),
            (
                json!({"AEP:dataset:abc": {"optionalLabels": [{"labels": ["C1"]}]}}),
                "no option.schemaPath",
            ),
            (
                json!({"AEP:dataset:abc": {"optionalLabels": [{"option": {"schemaPath": "/properties/a/items/b"}, "labels": ["C1"]}]}}),
                "is not /properties",
            ),
            (
                json!({"AEP:dataset:abc": {"optionalLabels": [{"option": {"schemaPath": "/properties/a.b"}, "labels": ["C1"]}]}}),
                "is not /properties",
            ),
            (
                json!({"AEP:dataset:abc": {"optionalLabels": [{"option": {"schemaPath": "/properties/"}, "labels": ["C1"]}]}}),
                "is not /properties",
            ),
            (
                json!({"AEP:dataset:abc": {"optionalLabels": [{"option": {"schemaPath": "properties/a"}, "labels": ["C1"]}]}}),
                "is not /properties",
            ),
        ] {
            let e = labels_of(&found, "abc").unwrap_err();
            assert!(e.contains(said), "{found}: {e}");
        }
    }
}
