//! The staged parts copied to a bucket the cluster's executors read (`[transform] engine = {
//! cluster = "…", staging = "s3://bucket/prefix" }`), for a cluster that does not mount this
//! machine's staging directory. Each run copies its parts under `<staging>/<run>/` before the
//! job is planned, names them there in the plan, and removes them when the job is over,
//! whatever its outcome. The store is opened from this process's environment, as the
//! executors open it from theirs (`scoreland_runtime::stores`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::TransformError;

/// Copies at once (each a multipart upload of its own).
const COPIES: usize = 4;

/// A staging URL as `[transform] engine` gives it: a bucket or container, checked without
/// touching it. Credentials in it are refused (the URL is logged), and not repeated.
pub(crate) fn staging_url(raw: &str) -> Result<Url, TransformError> {
    let bad = |shown: &str, why: &str| {
        TransformError::Config(format!(
            "engine.staging = {shown:?} {why}; give an s3://, gs:// or az:// URL the cluster's \
             executors can read (a directory every executor mounts needs no copy: stage there)"
        ))
    };
    let mut url = Url::parse(raw.trim()).map_err(|e| bad(raw, &format!("is not a URL ({e})")))?;
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
        return Err(bad(
            url.as_str(),
            "holds a secret: this machine and the executors take the store's credentials from \
             their environment (AWS_*, GOOGLE_*, AZURE_*)",
        ));
    }
    if !scoreland_runtime::stores::is_remote(&url) || url.host_str().is_none_or(str::is_empty) {
        return Err(bad(raw, "names no bucket"));
    }
    Ok(url)
}

/// This run's copies of the staged parts on the shared store.
pub(crate) struct SharedParts {
    store: Arc<dyn ObjectStore>,
    /// `<staging>/<run>/`.
    prefix: ObjectPath,
    /// The store's root URL, which every copy's URL starts with.
    root: Url,
    /// Each local file's copy, as a URL.
    copies: HashMap<PathBuf, String>,
}

impl SharedParts {
    /// Copies `files` under `<staging>/<run>/` and lets `ctx` read them there.
    pub(crate) async fn copy(
        staging: &Url,
        run: &str,
        files: &[PathBuf],
        ctx: &SessionContext,
    ) -> Result<SharedParts, TransformError> {
        let store = scoreland_runtime::stores::remote(staging, &Default::default())
            .ok_or_else(|| {
                TransformError::Config(format!(
                    "engine.staging = {staging}: the scheme {} names no object store",
                    staging.scheme()
                ))
            })?
            .map_err(|e| store_err(staging.as_str(), e))?;
        let mut root = staging.clone();
        root.set_path("/");
        let prefix: ObjectPath = staging
            .path_segments()
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .chain([run])
            .collect();
        ctx.register_object_store(&root, store.clone());
        let mut shared = SharedParts {
            store,
            prefix,
            root,
            copies: HashMap::new(),
        };
        let started = std::time::Instant::now();
        let copies = futures::stream::iter(files.iter().enumerate())
            .map(|(i, file)| shared.copy_one(i, file))
            .buffer_unordered(COPIES)
            .try_collect::<Vec<_>>()
            .await;
        let copies = match copies {
            Ok(c) => c,
            Err(e) => {
                shared.remove().await;
                return Err(e);
            }
        };
        let bytes: u64 = copies.iter().map(|(_, _, b)| b).sum();
        tracing::info!(
            files = copies.len(),
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "copied the staged parts to {} for the cluster",
            shared.url(&shared.prefix)
        );
        shared.copies = copies.into_iter().map(|(f, u, _)| (f, u)).collect();
        Ok(shared)
    }

    /// Copies `file` as the `i`th part: its local path, its copy's URL, its size.
    async fn copy_one(
        &self,
        i: usize,
        file: &Path,
    ) -> Result<(PathBuf, String, u64), TransformError> {
        // Named by position only: a staged file's name (the platform's) never becomes a key.
        let to = self.prefix.clone().join(format!("{i:05}.parquet"));
        let bytes = upload(&self.store, file, &to, &self.url(&to)).await?;
        Ok((file.to_path_buf(), self.url(&to), bytes))
    }

    fn url(&self, path: &ObjectPath) -> String {
        format!("{}{}", self.root, path)
    }

    /// Where the executors write the rows they keep in the job's `attempt`:
    /// `<staging>/<run>/kept-<attempt>/`, removed with the copies.
    pub(crate) fn kept_url(&self, attempt: &str) -> String {
        format!("{}/", self.url(&self.kept(attempt)))
    }

    fn kept(&self, attempt: &str) -> ObjectPath {
        self.prefix.clone().join(format!("kept-{attempt}"))
    }

    /// Brings the kept files `relative` (paths under [`SharedParts::kept_url`]) into `dir`.
    pub(crate) async fn fetch_kept(
        &self,
        attempt: &str,
        relative: &[String],
        dir: &Path,
    ) -> Result<u64, TransformError> {
        let kept = self.kept(attempt);
        let fetched = futures::stream::iter(relative)
            .map(|r| {
                let from =
                    ObjectPath::from_iter(kept.parts().chain(ObjectPath::from(r.as_str()).parts()));
                let to = dir.join(r);
                async move { download(&self.store, &from, &self.url(&from), &to).await }
            })
            .buffer_unordered(COPIES)
            .try_collect::<Vec<u64>>()
            .await?;
        Ok(fetched.iter().sum())
    }

    /// Where the executors read `file`: its copy, or `file` itself if it was not copied.
    pub(crate) fn location(&self, file: &Path) -> String {
        match self.copies.get(file) {
            Some(url) => url.clone(),
            None => file.display().to_string(),
        }
    }

    /// Removes this run's copies; a failure is logged (they are this run's alone, and a
    /// lifecycle rule on the staging prefix can sweep what is left).
    pub(crate) async fn remove(&self) {
        let listed = self
            .store
            .list(Some(&self.prefix))
            .map_ok(|m| m.location)
            .boxed();
        let removed: Vec<_> = self.store.delete_stream(listed).collect().await;
        if let Some(Err(e)) = removed.into_iter().find(Result::is_err) {
            tracing::warn!(
                "could not remove the staged parts' copies under {}: {e}",
                self.url(&self.prefix)
            );
        }
    }
}

/// Copies the local file `from` to `to` on `store` (`url`, for errors) with
/// [`scoreland_runtime::stores::upload`]; its size.
pub(crate) async fn upload(
    store: &Arc<dyn ObjectStore>,
    from: &Path,
    to: &ObjectPath,
    url: &str,
) -> Result<u64, TransformError> {
    use scoreland_runtime::stores::UploadError;
    scoreland_runtime::stores::upload(store.as_ref(), from, to)
        .await
        .map_err(|e| match e {
            UploadError::Local(source) => TransformError::Io {
                path: from.to_path_buf(),
                source,
            },
            UploadError::Store(e) => store_err(url, e),
        })
}

/// Copies `from` on `store` (`url`, for errors) to the local file `to`; its size.
async fn download(
    store: &Arc<dyn ObjectStore>,
    from: &ObjectPath,
    url: &str,
    to: &Path,
) -> Result<u64, TransformError> {
    let io = |source| TransformError::Io {
        path: to.to_path_buf(),
        source,
    };
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let mut stream = store
        .get(from)
        .await
        .map_err(|e| store_err(url, e))?
        .into_stream();
    let mut file = tokio::fs::File::create(to).await.map_err(io)?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| store_err(url, e))?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    Ok(bytes)
}

fn store_err(url: &str, e: object_store::Error) -> TransformError {
    TransformError::Io {
        path: PathBuf::from(url),
        source: std::io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_url_names_a_bucket() {
        assert!(staging_url("s3://bucket/stage").is_ok());
        assert!(staging_url("az://container").is_ok());
        for bad in [
            "/shared/stage",
            "file:///shared/stage",
            "s3:///no-bucket",
            "stage",
            "http://host/stage",
        ] {
            let err = staging_url(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        let err = staging_url("s3://AKIAEXAMPLE:s3cr3t-value@bucket/stage")
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds a secret"), "{err}");
        assert!(!err.contains("s3cr3t-value"), "{err}");
    }
}
