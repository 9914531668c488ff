//! The object stores of a cluster's processes: local paths, and the buckets and containers of
//! the warehouses plans read (`s3://`, `gs://`, `az://`…), each built once from the process's
//! own environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`). The executors read through them; the
//! scheduler only needs them to decode a plan (it reads nothing). No credential travels with a
//! plan: the scheduler has no authentication, so each process holds its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use url::Url;

/// A process's stores, by `scheme://[user@]host` of the URL a scan names.
#[derive(Debug)]
pub(crate) struct ClusterStores {
    local: Arc<dyn ObjectStore>,
    built: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl ClusterStores {
    pub(crate) fn new() -> Self {
        ClusterStores {
            local: Arc::new(LocalFileSystem::new()),
            built: Mutex::default(),
        }
    }
}

/// A store's key: the URL up to its path (a container of an `abfss://` URL is its user).
fn key(url: &Url) -> String {
    url[..url::Position::BeforePath].to_string()
}

impl ObjectStoreRegistry for ClusterStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        built.insert(key(url), store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if url.scheme() == "file" {
            return Ok(self.local.clone());
        }
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = built.get(&key(url)) {
            return Ok(store.clone());
        }
        let no_store = |why: String| {
            DataFusionError::Execution(format!("the cluster cannot open the store of {url}: {why}"))
        };
        let store = scoreland_runtime::stores::remote(url, &Default::default())
            .ok_or_else(|| no_store("it reads local paths and s3://, gs:// and az:// URLs".into()))?
            .map_err(|e| {
                no_store(format!(
                    "{e}; the cluster's processes configure it from their own environment (AWS_*, GOOGLE_*, \
                     AZURE_*)"
                ))
            })?;
        built.insert(key(url), store.clone());
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_store_is_built_once_and_an_unknown_scheme_is_named() {
        let stores = ClusterStores::new();
        let file = Url::parse("file:///").unwrap();
        assert!(Arc::ptr_eq(
            &stores.get_store(&file).unwrap(),
            &stores.get_store(&file).unwrap()
        ));
        let a = stores
            .get_store(&Url::parse("s3://bucket-a/").unwrap())
            .unwrap();
        let again = stores
            .get_store(&Url::parse("s3://bucket-a/").unwrap())
            .unwrap();
        let b = stores
            .get_store(&Url::parse("s3://bucket-b/").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &b));
        let err = stores
            .get_store(&Url::parse("hdfs://namenode:8020/").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("hdfs://namenode:8020/"), "{err}");
    }
}
