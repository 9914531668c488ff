//! The object store of a bucket or container URL, built one way for the warehouse (the sink)
//! and for the cluster's executors, which read the warehouse's files by URL; and a local
//! file's upload to a store, for the warehouse's files and the cluster's staging alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjectPath;
use url::Url;

/// The schemes of the stores [`remote`] builds.
const SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl"];

/// The store of `url`'s bucket or container (`s3://`, `gs://`, `az://`, `abfss://`…),
/// configured from this process's environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), then from
/// `options` (object_store's keys: `aws_endpoint`, `azure_storage_account_name`…). `None` for
/// a scheme that names no such store (a local path, say).
pub fn remote(
    url: &Url,
    options: &BTreeMap<String, String>,
) -> Option<Result<Arc<dyn ObjectStore>, object_store::Error>> {
    let build = || -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        Ok(match url.scheme() {
            "s3" | "s3a" => Arc::new(
                configured(AmazonS3Builder::from_env(), options, |b, k, v| {
                    Ok(b.with_config(k.parse()?, v))
                })?
                .with_url(url.as_str())
                .build()?,
            ),
            "gs" => Arc::new(
                configured(GoogleCloudStorageBuilder::from_env(), options, |b, k, v| {
                    Ok(b.with_config(k.parse()?, v))
                })?
                .with_url(url.as_str())
                .build()?,
            ),
            _ => Arc::new(
                configured(MicrosoftAzureBuilder::from_env(), options, |b, k, v| {
                    Ok(b.with_config(k.parse()?, v))
                })?
                .with_url(url.as_str())
                .build()?,
            ),
        })
    };
    is_remote(url).then(build)
}

/// Whether `url` names a bucket or container whose store [`remote`] builds.
pub fn is_remote(url: &Url) -> bool {
    SCHEMES.contains(&url.scheme())
}

/// `builder` with each of `options` set.
fn configured<B>(
    builder: B,
    options: &BTreeMap<String, String>,
    set: impl Fn(B, &str, &str) -> Result<B, object_store::Error>,
) -> Result<B, object_store::Error> {
    options.iter().try_fold(builder, |b, (k, v)| set(b, k, v))
}

/// What failed in an [`upload`]: reading the local file, or the store.
#[derive(Debug)]
pub enum UploadError {
    Local(std::io::Error),
    Store(object_store::Error),
}

/// Uploads the local file `local` to `to` in `store`, in parts (16 MiB, 4 in flight); the object
/// appears whole or not at all (a multipart upload becomes visible when it completes; on local
/// disk it is renamed into place). Its size.
pub async fn upload(
    store: &dyn ObjectStore,
    local: &std::path::Path,
    to: &ObjectPath,
) -> Result<u64, UploadError> {
    use object_store::{ObjectStoreExt, WriteMultipart};
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(UploadError::Local)?;
    let upload = store.put_multipart(to).await.map_err(UploadError::Store)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 16 << 20);
    let mut buf = vec![0u8; 4 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(UploadError::Local)?;
        if n == 0 {
            break;
        }
        writer
            .wait_for_capacity(4)
            .await
            .map_err(UploadError::Store)?;
        writer.write(&buf[..n]);
        size += n as u64;
    }
    writer.finish().await.map_err(UploadError::Store)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bucket_and_container_urls_name_a_remote_store() {
        let none = BTreeMap::new();
        for local in ["file:///tmp/wh/", "http://example.com/x", "ftp://host/x"] {
            assert!(
                remote(&Url::parse(local).unwrap(), &none).is_none(),
                "{local}"
            );
        }
        let endpoint = BTreeMap::from([
            ("aws_endpoint".to_string(), "http://127.0.0.1:1".to_string()),
            ("aws_region".to_string(), "us-east-1".to_string()),
        ]);
        let s3 = remote(&Url::parse("s3://bucket/wh").unwrap(), &endpoint).unwrap();
        assert!(s3.unwrap().to_string().contains("bucket"));
        // An option the store does not know is an error naming it, not ignored.
        let bad = BTreeMap::from([("aws_no_such_option".to_string(), "1".to_string())]);
        let err = remote(&Url::parse("s3://bucket/wh").unwrap(), &bad)
            .unwrap()
            .err()
            .unwrap();
        assert!(err.to_string().contains("aws_no_such_option"), "{err}");
    }
}
