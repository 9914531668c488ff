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
/// appears whole or not at all (a multipart upload becomes visible when it completes, and is
/// aborted when the file or the store fails; on local disk it is renamed into place). Its size.
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
    let failed = loop {
        let n = match file.read(&mut buf).await {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) => break Some(UploadError::Local(e)),
        };
        if let Err(e) = writer.wait_for_capacity(4).await {
            break Some(UploadError::Store(e));
        }
        writer.write(&buf[..n]);
        size += n as u64;
    };
    match failed {
        None => {
            writer.finish().await.map_err(UploadError::Store)?;
            Ok(size)
        }
        // The parts sent so far are not left on the store.
        Some(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_is_uploaded_whole_or_not_at_all() {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        use object_store::memory::InMemory;
        let dir = tempfile::tempdir().unwrap();
        let store = InMemory::new();
        // Three parts of 16 MiB and a last one.
        let body: Vec<u8> = (0..(50u32 << 20) / 4).flat_map(u32::to_le_bytes).collect();
        let local = dir.path().join("part.parquet");
        std::fs::write(&local, &body).unwrap();
        let to = ObjectPath::from("t/part.parquet");
        assert_eq!(
            upload(&store, &local, &to).await.unwrap(),
            body.len() as u64
        );
        let got = store.get(&to).await.unwrap().bytes().await.unwrap();
        assert!(got.as_ref() == body.as_slice());
        // A file that cannot be read (a directory, a missing file): nothing is left.
        for bad in [dir.path().to_path_buf(), dir.path().join("missing")] {
            let to = ObjectPath::from("t/bad.parquet");
            let e = upload(&store, &bad, &to).await.unwrap_err();
            assert!(matches!(e, UploadError::Local(_)), "{e:?}");
        }
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
    }

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
