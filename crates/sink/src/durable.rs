//! A local file system store whose writes are durable when they return.
//!
//! object_store's `LocalFileSystem` renames a finished file into place but never fsyncs it, so
//! after a power cut a Delta log entry could survive while the data files it names are empty.
//! Here every put and every completed multipart upload fsyncs the file and its directory before
//! it returns; delta-rs writes the data files before the log entry, so by the time a commit
//! exists, everything it points at is on disk.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// `LocalFileSystem` rooted at `/`, with durable writes.
#[derive(Debug)]
pub(crate) struct DurableLocal {
    inner: Arc<LocalFileSystem>,
}

impl DurableLocal {
    pub(crate) fn new() -> Self {
        DurableLocal {
            inner: Arc::new(LocalFileSystem::new()),
        }
    }
}

impl fmt::Display for DurableLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocal({})", self.inner)
    }
}

/// fsyncs the file at `location` (a path from the file system root) and its directory.
async fn sync(location: &Path) -> Result<()> {
    let file = PathBuf::from(format!("/{location}"));
    tokio::task::spawn_blocking(move || {
        let sync_one = |p: &std::path::Path| std::fs::File::open(p).and_then(|f| f.sync_all());
        sync_one(&file)?;
        match file.parent() {
            Some(dir) => sync_one(dir),
            None => Ok(()),
        }
    })
    .await
    .map_err(|e| object_store::Error::Generic {
        store: "DurableLocal",
        source: Box::new(e),
    })?
    .map_err(|e| object_store::Error::Generic {
        store: "DurableLocal",
        source: Box::new(e),
    })
}

#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let done = self.inner.complete().await?;
        sync(&self.location).await?;
        Ok(done)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for DurableLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let done = self.inner.put_opts(location, payload, opts).await?;
        sync(location).await?;
        Ok(done)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            location: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        sync(to).await
    }
}
