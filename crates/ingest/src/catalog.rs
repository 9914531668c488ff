//! Catalog: which batches to land.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::AepClient;
use crate::error::IngestError;
use crate::paging;

/// Customer AI writes its scoring batches as this IMS client.
pub const SCORING_CLIENT: &str = "acp_foundation_push";
/// As a `createdClient`: batches from any client (no `createdClient` filter).
pub const ANY_CLIENT: &str = "*";

/// The `createdClient` filter for `client`: none for [`ANY_CLIENT`].
fn client_filter(client: &str) -> Option<(&'static str, &str)> {
    (client != ANY_CLIENT).then_some(("createdClient", client))
}

/// A Catalog batch, reduced to what landing needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogBatch {
    pub id: String,
    pub status: String,
    /// Epoch milliseconds.
    pub created: i64,
    pub created_client: String,
    pub dataset_id: Option<String>,
    /// `metrics.outputRecordCount`.
    pub records: Option<u64>,
    /// `metrics.outputByteSize`.
    pub bytes: Option<u64>,
    /// `metrics.outputFileCount`.
    pub files: Option<u64>,
    /// `replay.predecessors`: the batches this one replaces.
    pub replaces: Vec<String>,
    /// `tags.acp_successor`: the batch that replaced this one.
    pub replaced_by: Option<String>,
}

impl CatalogBatch {
    fn from_json(id: &str, v: &Value) -> Self {
        let str_of = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let metric = |k: &str| {
            v.get("metrics")
                .and_then(|m| m.get(k))
                .and_then(Value::as_u64)
        };
        let dataset_id = v
            .get("relatedObjects")
            .and_then(Value::as_array)
            .and_then(|objs| {
                objs.iter()
                    .find(|o| o.get("type").and_then(Value::as_str) == Some("dataSet"))
            })
            .and_then(|o| o.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        CatalogBatch {
            id: id.to_string(),
            status: str_of("status"),
            created: v.get("created").and_then(Value::as_i64).unwrap_or(0),
            created_client: str_of("createdClient"),
            dataset_id,
            records: metric("outputRecordCount"),
            bytes: metric("outputByteSize"),
            files: metric("outputFileCount"),
            replaces: strings(v.get("replay").and_then(|r| r.get("predecessors"))),
            replaced_by: strings(v.get("tags").and_then(|t| t.get("acp_successor")))
                .into_iter()
                .next(),
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self.status.as_str(), "success" | "active")
    }
}

/// Which batches of a dataset to land.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchSelection {
    /// The newest successful batch from the client (Catalog's batches, newest first).
    Newest,
    /// Exactly this batch.
    Batch { id: String },
    /// Every successful batch created after `after` (oldest first), without the ones a later
    /// batch replaced. With no `after`, the newest batch alone.
    CatchUp { after: Option<String> },
}

/// The Profile union schema: what profile export jobs write.
pub const PROFILE_UNION_SCHEMA: &str = "https://ns.adobe.com/xdm/context/profile__union";

/// Catalog answers are objects keyed by batch id; order by creation, then id, ourselves.
fn parse_keyed(map: BTreeMap<String, Value>) -> Vec<CatalogBatch> {
    let mut batches: Vec<CatalogBatch> = map
        .iter()
        .map(|(id, v)| CatalogBatch::from_json(id, v))
        .collect();
    batches.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
    batches
}

impl AepClient {
    /// The id of the dataset named `name` on `schema`, made if there is none (with the
    /// `fileDescription` of a profile export's target: persisted parquet). Returns whether it was made now. A
    /// dataset of that name on another schema is an error naming both.
    pub async fn ensure_dataset(
        &self,
        name: &str,
        schema: &str,
    ) -> Result<(String, bool), IngestError> {
        let mut url = self.url("/data/foundation/catalog/dataSets")?;
        url.query_pairs_mut()
            .append_pair("name", name)
            .append_pair("properties", "name,schemaRef")
            .append_pair("limit", "100");
        let found: BTreeMap<String, Value> = self.get_json(&url).await?;
        if let Some((id, v)) = found.iter().find(|(_, v)| v["name"] == name) {
            let has = v
                .pointer("/schemaRef/id")
                .and_then(Value::as_str)
                .unwrap_or("");
            if has != schema {
                return Err(IngestError::Config {
                    field: "dataset",
                    message: format!(
                        "dataset {id} is named {name:?} but is on schema {has}, not {schema}; choose another name"
                    ),
                });
            }
            return Ok((id.clone(), false));
        }
        let create = self.url("/data/foundation/catalog/dataSets")?;
        let body = serde_json::json!({
            "name": name,
            "schemaRef": {"id": schema, "contentType": "application/vnd.adobe.xed+json;version=1"},
            "fileDescription": {"persisted": true, "containerFormat": "parquet", "format": "parquet"},
        });
        // Not repeated: a create whose answer was lost would make a second dataset.
        let made: Vec<String> = self
            .call_json(reqwest::Method::POST, &create, Some(&body), &[])
            .await?;
        let id = made
            .first()
            .and_then(|r| r.rsplit('/').next())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| IngestError::Unexpected {
                url: create.to_string(),
                what: format!("no \"@/dataSets/ID\" in the answer {made:?}"),
            })?;
        Ok((id.to_string(), true))
    }

    /// The XDM schema of dataset `id`, fully expanded (the Schema Registry's `xed-full` form,
    /// every field group and data type inlined): the dataset's `schemaRef`, then that schema.
    pub async fn dataset_schema(&self, id: &str) -> Result<Value, IngestError> {
        let url = self.url_with_segments("/data/foundation/catalog/dataSets/", &[id])?;
        let found: BTreeMap<String, Value> = self.get_json(&url).await?;
        let schema = found
            .get(id)
            .and_then(|d| d.pointer("/schemaRef/id"))
            .and_then(Value::as_str)
            .ok_or_else(|| IngestError::Unexpected {
                url: url.to_string(),
                what: format!("dataset {id} has no schemaRef.id"),
            })?;
        // The schema id is a URI: one path segment, percent-encoded.
        let url =
            self.url_with_segments("/data/foundation/schemaregistry/tenant/schemas/", &[schema])?;
        let accept = [("accept", "application/vnd.adobe.xed-full+json; version=1")];
        self.with_retry(url.as_str(), |_| {
            self.call_json(reqwest::Method::GET, &url, None, &accept)
        })
        .await
    }

    /// The primary identity of the schema `schema_id` (its `$id`), as a dotted path
    /// (`_tenant.loyalty.memberId`), from its identity descriptors (`GET
    /// /schemaregistry/tenant/descriptors?property=xdm:sourceSchema==ID`); `None` when it has
    /// no primary identity descriptor.
    pub async fn primary_identity(&self, schema_id: &str) -> Result<Option<String>, IngestError> {
        let mut url = self.url("/data/foundation/schemaregistry/tenant/descriptors")?;
        url.query_pairs_mut()
            .append_pair("property", &format!("xdm:sourceSchema=={schema_id}"));
        let accept = [("accept", "application/vnd.adobe.xdm+json")];
        let found: Value = self
            .with_retry(url.as_str(), |_| {
                self.call_json(reqwest::Method::GET, &url, None, &accept)
            })
            .await?;
        Ok(primary_identity_of(&found))
    }

    /// The Platform URL of `path` with `segments` appended, each one percent-encoded path
    /// segment.
    pub(crate) fn url_with_segments(
        &self,
        path: &str,
        segments: &[&str],
    ) -> Result<url::Url, IngestError> {
        let mut url = self.url(path)?;
        url.path_segments_mut()
            .map_err(|()| IngestError::Config {
                field: "platform_url",
                message: "cannot be a base URL".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// One batch by id.
    pub async fn batch(&self, id: &str) -> Result<CatalogBatch, IngestError> {
        let url = self.url(&format!("/data/foundation/catalog/batches/{id}"))?;
        let map: BTreeMap<String, Value> = match self.get_json(&url).await {
            Err(IngestError::Status { status: 404, .. }) => {
                return Err(IngestError::BatchNotFound { batch: id.into() });
            }
            other => other?,
        };
        let v = map
            .get(id)
            .ok_or_else(|| IngestError::BatchNotFound { batch: id.into() })?;
        Ok(CatalogBatch::from_json(id, v))
    }

    /// Batches of a dataset, newest first; `filters` are extra Catalog query parameters.
    pub async fn list_batches(
        &self,
        dataset: &str,
        filters: &[(&str, &str)],
        limit: usize,
    ) -> Result<Vec<CatalogBatch>, IngestError> {
        let page = limit.clamp(1, 100);
        paging::collect(
            paging::Cursors::Counted,
            0usize,
            limit,
            |b: &CatalogBatch| b.id.clone(),
            |start| {
                let url = self.url("/data/foundation/catalog/batches");
                async move {
                    let mut url = url?;
                    {
                        let mut q = url.query_pairs_mut();
                        q.append_pair("dataSet", dataset);
                        for (k, v) in filters {
                            q.append_pair(k, v);
                        }
                        q.append_pair("orderBy", "desc:created")
                            .append_pair("limit", &page.to_string())
                            .append_pair("start", &start.to_string());
                    }
                    let mut batches = self.catalog_page(url, start, page).await?;
                    batches.items.reverse();
                    Ok(batches)
                }
            },
        )
        .await
    }

    /// A page of Catalog batches from `start`, at most `page` of them, oldest first: the next
    /// page starts after it when it is full.
    async fn catalog_page(
        &self,
        url: url::Url,
        start: usize,
        page: usize,
    ) -> Result<paging::Page<CatalogBatch, usize>, IngestError> {
        let map: BTreeMap<String, Value> = self.get_json(&url).await?;
        let n = map.len();
        Ok(paging::Page {
            url,
            items: parse_keyed(map),
            next: (n >= page).then_some(start + n),
        })
    }

    /// The batches `selection` names, oldest first, each checked to be a successful batch of
    /// `dataset`.
    pub async fn select_batches(
        &self,
        dataset: &str,
        client: &str,
        selection: &BatchSelection,
    ) -> Result<Vec<CatalogBatch>, IngestError> {
        match selection {
            BatchSelection::Newest | BatchSelection::CatchUp { after: None } => {
                // Exactly the query of Adobe's "Download scores" guide.
                let filters: Vec<(&str, &str)> = client_filter(client)
                    .into_iter()
                    .chain([("status", "success")])
                    .collect();
                let found = self.list_batches(dataset, &filters, 1).await?;
                match found.into_iter().next() {
                    Some(b) => Ok(vec![b]),
                    None => Err(IngestError::NoSuccessfulBatch {
                        dataset: dataset.into(),
                        client: client.into(),
                    }),
                }
            }
            BatchSelection::Batch { id } => {
                let b = self.batch(id).await?;
                check_batch(&b, dataset)?;
                Ok(vec![b])
            }
            BatchSelection::CatchUp { after: Some(after) } => {
                let after = self.batch(after).await?;
                self.batches_after(dataset, client, &after.id, after.created)
                    .await
            }
        }
    }

    /// Successful batches created after batch `after_id` (created at `after_created`, epoch
    /// ms), oldest first, less those replaced by a later batch (replay), since landing a
    /// replaced batch would double-count its rows. The caller keeps `after_created`, so a
    /// batch that Catalog no longer returns (expired, deleted) does not stop the catch-up.
    pub async fn batches_after(
        &self,
        dataset: &str,
        client: &str,
        after_id: &str,
        after_created: i64,
    ) -> Result<Vec<CatalogBatch>, IngestError> {
        let all = paging::collect(
            paging::Cursors::Counted,
            0usize,
            usize::MAX,
            |b: &CatalogBatch| b.id.clone(),
            |start| {
                let url = self.url("/data/foundation/catalog/batches");
                async move {
                    let mut url = url?;
                    {
                        let mut q = url.query_pairs_mut();
                        q.append_pair("dataSet", dataset);
                        if let Some((k, v)) = client_filter(client) {
                            q.append_pair(k, v);
                        }
                        q.append_pair("status", "success")
                            .append_pair("createdAfter", &after_created.to_string())
                            .append_pair("orderBy", "asc:created")
                            .append_pair("limit", "100")
                            .append_pair("start", &start.to_string());
                    }
                    self.catalog_page(url, start, 100).await
                }
            },
        )
        .await?;
        Ok(without_replaced(all, after_id))
    }
}

/// The primary identity descriptor's path in a descriptors answer, dotted: the first
/// `xdm:descriptorIdentity` whose `xdm:isPrimary` is `true`, whose `xdm:sourceProperty` is a
/// path of plain names (`/a/b`). Anything else (no primary, an empty or odd path) is none.
fn primary_identity_of(found: &Value) -> Option<String> {
    let path = found
        .get("xdm:descriptorIdentity")?
        .as_array()?
        .iter()
        .find(|d| d.get("xdm:isPrimary").and_then(Value::as_bool) == Some(true))?
        .get("xdm:sourceProperty")?
        .as_str()?
        .strip_prefix('/')?;
    let plain = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    path.split('/').all(plain).then(|| path.replace('/', "."))
}

/// The batches of `all` (successful, from the scoring client, newer than `after_id`) worth
/// landing, oldest first. A batch is skipped as replaced only when what replaces it is landed
/// with it (it is in `all`) or already landed (`after_id`): a successor outside the query
/// (another client, not successful) must not make the batch's rows disappear.
fn without_replaced(all: Vec<CatalogBatch>, after_id: &str) -> Vec<CatalogBatch> {
    let landable: HashSet<String> = all.iter().map(|b| b.id.clone()).collect();
    let replaced: HashSet<String> = all.iter().flat_map(|b| b.replaces.clone()).collect();
    let superseded = |b: &CatalogBatch| {
        replaced.contains(&b.id)
            || b.replaced_by
                .as_ref()
                .is_some_and(|s| landable.contains(s) || s == after_id)
    };
    let mut kept: Vec<CatalogBatch> = all
        .into_iter()
        .filter(|b| !superseded(b) && b.id != after_id)
        .collect();
    kept.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
    kept
}

fn check_batch(b: &CatalogBatch, dataset: &str) -> Result<(), IngestError> {
    if !b.is_success() {
        return Err(IngestError::BatchNotUsable {
            batch: b.id.clone(),
            status: b.status.clone(),
        });
    }
    match &b.dataset_id {
        Some(d) if d != dataset => Err(IngestError::BatchDatasetMismatch {
            batch: b.id.clone(),
            expected: dataset.into(),
            actual: d.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptors come from the platform: only a primary identity with a plain path is one.
    #[test]
    fn only_a_primary_identity_with_a_plain_path_is_taken() {
        let of = |v: serde_json::Value| primary_identity_of(&v);
        let desc = |path: serde_json::Value, primary: serde_json::Value| {
            serde_json::json!({"xdm:descriptorIdentity": [
                {"xdm:sourceProperty": "/other/id", "xdm:isPrimary": false},
                {"xdm:sourceProperty": path, "xdm:isPrimary": primary},
            ]})
        };
        assert_eq!(
            of(desc("/_acme/loyalty/memberId".into(), true.into())).as_deref(),
            Some("_acme.loyalty.memberId")
        );
        for (path, primary) in [
            (serde_json::json!("/_acme/id"), serde_json::json!("true")),
            (serde_json::json!("/"), serde_json::json!(true)),
            (serde_json::json!("_acme/id"), serde_json::json!(true)),
            (serde_json::json!("/a/../b"), serde_json::json!(true)),
            (serde_json::json!("/a//b"), serde_json::json!(true)),
            (serde_json::json!("/a.b/c"), serde_json::json!(true)),
            (serde_json::json!(7), serde_json::json!(true)),
        ] {
            assert_eq!(
                of(desc(path.clone(), primary.clone())),
                None,
                "{path} {primary}"
            );
        }
        assert_eq!(of(serde_json::json!({})), None);
        assert_eq!(
            of(serde_json::json!({"xdm:descriptorIdentity": {"a": 1}})),
            None
        );
        assert_eq!(of(serde_json::json!([])), None);
    }

    fn batch(id: &str, created: i64, replaced_by: Option<&str>, replaces: &[&str]) -> CatalogBatch {
        CatalogBatch {
            id: id.into(),
            status: "success".into(),
            created,
            created_client: SCORING_CLIENT.into(),
            dataset_id: None,
            records: None,
            bytes: None,
            files: None,
            replaces: replaces.iter().map(|s| s.to_string()).collect(),
            replaced_by: replaced_by.map(str::to_string),
        }
    }

    fn ids(v: Vec<CatalogBatch>) -> Vec<String> {
        v.into_iter().map(|b| b.id).collect()
    }

    #[test]
    fn a_batch_is_skipped_only_for_a_successor_that_lands() {
        // b2 names a successor outside the query (another client, or failed): b2 stays.
        let all = vec![
            batch("b2", 2, Some("elsewhere"), &[]),
            batch("b3", 3, None, &[]),
        ];
        assert_eq!(ids(without_replaced(all, "b1")), ["b2", "b3"]);
        // b2 is replaced by b3, which lands with it: only b3.
        let all = vec![
            batch("b2", 2, Some("b3"), &[]),
            batch("b3", 3, None, &["b2"]),
        ];
        assert_eq!(ids(without_replaced(all, "b1")), ["b3"]);
        // Replaced by the batch already landed: nothing to add.
        let all = vec![batch("b2", 2, Some("b1"), &[])];
        assert!(without_replaced(all, "b1").is_empty());
    }
}
