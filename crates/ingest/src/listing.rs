//! Data Access listings: every dataSetFile of a batch and every part of each, every page.

use std::collections::HashSet;

use serde::Deserialize;
use url::Url;

use crate::client::AepClient;
use crate::error::IngestError;
use crate::paging;

/// One downloadable part of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePart {
    pub dataset_file_id: String,
    pub name: String,
    pub length: u64,
    pub href: Url,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    data: Vec<Entry>,
    #[serde(default, rename = "_links")]
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Links {
    next: Option<Href>,
}

#[derive(Deserialize)]
struct Href {
    href: String,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "dataSetFileId")]
    dataset_file_id: Option<String>,
    name: Option<String>,
    /// A string of bytes in AEP's answers; a number is accepted too.
    length: Option<serde_json::Value>,
    #[serde(rename = "_links")]
    links: Option<SelfLinks>,
    /// The page this entry was listed on: relative hrefs are resolved against it.
    #[serde(skip)]
    page: Option<Url>,
}

#[derive(Deserialize)]
struct SelfLinks {
    #[serde(rename = "self")]
    this: Option<Href>,
}

/// Marker files that writers such as Spark leave beside the data (`_SUCCESS`, `_started_*`,
/// `_committed_*`) and hidden files: not parts of the batch.
fn is_marker(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('.')
}

/// A file or directory name from a listing that is safe to use as one path component.
pub(crate) fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\', ':'])
        && !name.chars().any(char::is_control)
}

impl AepClient {
    /// Every entry of a listing, following `_links.next` from `first` (see
    /// [`paging::collect`]); each entry knows the page that listed it.
    async fn pages(&self, first: Url) -> Result<Vec<Entry>, IngestError> {
        paging::collect(
            paging::Cursors::Served,
            first,
            usize::MAX,
            |e: &Entry| (e.dataset_file_id.clone(), e.name.clone()),
            |url: Url| async move {
                let page: Page = self.get_json(&url).await?;
                let next = match page.links.and_then(|l| l.next) {
                    None => None,
                    Some(next) => {
                        let next = url.join(&next.href).map_err(|e| IngestError::Verify {
                            batch: String::new(),
                            name: next.href.clone(),
                            reason: format!("next link is not a URL: {e}"),
                        })?;
                        self.check_origin(&next)?;
                        Some(next)
                    }
                };
                let items = page
                    .data
                    .into_iter()
                    .map(|mut e| {
                        e.page = Some(url.clone());
                        e
                    })
                    .collect();
                Ok(paging::Page { url, items, next })
            },
        )
        .await
    }

    /// An entry's `_links.self.href` (or `fallback` when it has none), checked to be on the
    /// platform origin before anything is sent to it.
    fn entry_href(
        &self,
        batch: &str,
        name: &str,
        entry: (Option<SelfLinks>, Option<Url>),
        fallback: Url,
    ) -> Result<Url, IngestError> {
        let (links, page) = entry;
        let base = page.unwrap_or_else(|| fallback.clone());
        let href = match links.and_then(|l| l.this) {
            // Relative hrefs are resolved against the page that listed them.
            Some(h) => base.join(&h.href).map_err(|err| IngestError::Verify {
                batch: batch.into(),
                name: name.into(),
                reason: format!("self link is not a URL: {err}"),
            })?,
            None => fallback,
        };
        self.check_origin(&href)?;
        Ok(href)
    }

    /// Every part of every dataSetFile of `batch`, in listing order. Names are checked here,
    /// before anything is written.
    pub async fn list_parts(&self, batch: &str) -> Result<Vec<RemotePart>, IngestError> {
        let first = self.url(&format!("/data/foundation/export/batches/{batch}/files"))?;
        let mut parts = Vec::new();
        let mut pending: Vec<(String, Url)> = Vec::new();
        for e in self.pages(first).await? {
            let Some(id) = e.dataset_file_id else {
                continue;
            };
            let fallback = self.url(&format!("/data/foundation/export/files/{id}"))?;
            let href = self.entry_href(batch, &id, (e.links, e.page), fallback)?;
            pending.push((id, href));
        }
        let mut visited = HashSet::new();
        while let Some((dsf, url)) = pending.pop() {
            if !visited.insert(dsf.clone()) {
                continue;
            }
            if !is_safe_name(&dsf) {
                return Err(IngestError::UnsafeName {
                    batch: batch.into(),
                    name: dsf,
                });
            }
            for e in self.pages(url).await? {
                // Older directory listings nest further dataSetFiles; newer ones list leaves.
                if let (Some(nested), None) = (&e.dataset_file_id, &e.name) {
                    let fallback = self.url(&format!("/data/foundation/export/files/{nested}"))?;
                    let href = self.entry_href(batch, nested, (e.links, e.page), fallback)?;
                    pending.push((nested.clone(), href));
                    continue;
                }
                let Some(name) = e.name else { continue };
                if is_marker(&name) {
                    tracing::debug!(batch, file = %dsf, name, "skipping a marker file");
                    continue;
                }
                if !is_safe_name(&name) {
                    return Err(IngestError::UnsafeName {
                        batch: batch.into(),
                        name,
                    });
                }
                let length = match &e.length {
                    Some(serde_json::Value::String(s)) => s.parse::<u64>().ok(),
                    Some(serde_json::Value::Number(n)) => n.as_u64(),
                    _ => None,
                }
                .ok_or_else(|| IngestError::Verify {
                    batch: batch.into(),
                    name: name.clone(),
                    reason: "the listing gives no usable length".into(),
                })?;
                let mut fallback = self.url(&format!("/data/foundation/export/files/{dsf}"))?;
                fallback.query_pairs_mut().append_pair("path", &name);
                let href = self.entry_href(batch, &name, (e.links, e.page), fallback)?;
                parts.push(RemotePart {
                    dataset_file_id: dsf.clone(),
                    name,
                    length,
                    href,
                });
            }
        }
        parts.sort_by(|a, b| {
            (a.dataset_file_id.as_str(), a.name.as_str())
                .cmp(&(b.dataset_file_id.as_str(), b.name.as_str()))
        });
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        for m in ["_SUCCESS", "_started_123", "_committed_123", ".crc"] {
            assert!(is_marker(m), "{m}");
        }
        assert!(!is_marker("part-00000.parquet"));
    }

    #[test]
    fn unsafe_names() {
        assert!(is_safe_name("part-00000-tid-1-c000.snappy.parquet"));
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            ".hidden",
            "c:x",
            "a\nb",
        ] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }
}
