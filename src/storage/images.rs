//! `ImageStore`: where image bytes live, behind `object_store`.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use object_store::signer::Signer;
use object_store::{local::LocalFileSystem, path::Path as ObjectPath, ObjectStore, PutPayload};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store error: {0}")]
    Store(#[from] object_store::Error),
    #[error("invalid object store location '{url}': {reason}")]
    BadLocation { url: String, reason: String },
}

/// Where an S3-compatible server is, beyond what the standard AWS variables say.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// e.g. `http://minio:9000`; path-style requests are used, so any S3 server works.
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// Stores and fetches images by key; the keys are recorded in the job store.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
    /// S3 stores can hand out presigned URLs; `prefix` is prepended to keys for them.
    signer: Option<(Arc<dyn Signer>, String)>,
}

impl ImageStore {
    /// Opens a store from a location: `s3://bucket[/prefix]`, `file:///path`, or a plain
    /// directory path. S3 credentials come from the standard `AWS_*` variables.
    pub fn open(location: &str, s3: &S3Options) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadLocation {
            url: location.to_string(),
            reason,
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(endpoint) = &s3.endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            // object_store retries transient S3 errors (5xx, timeouts) with backoff itself.
            let s3_store = Arc::new(builder.build().map_err(|e| bad(e.to_string()))?);
            let prefix = prefix.trim_matches('/');
            let whole: Arc<dyn ObjectStore> = s3_store.clone();
            let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                whole
            } else {
                Arc::new(PrefixStore::new(whole, prefix))
            };
            return Ok(Self {
                inner,
                description: location.to_string(),
                signer: Some((s3_store, prefix.to_string())),
            });
        }
        let dir = match location.strip_prefix("file://") {
            Some(path) => path.to_string(),
            None if location.contains("://") => {
                return Err(bad("use s3://bucket, file:///path or a folder".into()))
            }
            None => location.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
        let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(fs),
            description: format!("file://{dir}"),
            signer: None,
        })
    }

    /// Wraps any `object_store` backend.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            inner,
            description: description.into(),
            signer: None,
        }
    }

    /// Where this store keeps its objects, for logs and `/ready`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The key of image `index` of `job`: one folder per job keeps a job's images together.
    pub fn key_for(job: Uuid, image: Uuid) -> String {
        format!("{job}/{image}.png")
    }

    /// The key of an image's thumbnail, beside it: `{job}/{image}.thumb.jpg`.
    pub fn thumbnail_key(image_key: &str) -> String {
        let stem = image_key.strip_suffix(".png").unwrap_or(image_key);
        format!("{stem}.thumb.jpg")
    }

    /// A URL anyone can GET the object at for `expires_in`, when the store can sign one
    /// (S3); `None` for stores that cannot (local files), which are streamed instead.
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Result<Option<String>, StorageError> {
        let Some((signer, prefix)) = &self.signer else {
            return Ok(None);
        };
        let full = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}/{key}")
        };
        let url = signer
            .signed_url(http::Method::GET, &ObjectPath::from(full), expires_in)
            .await?;
        Ok(Some(url.to_string()))
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.inner
            .put(&ObjectPath::from(key), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        match self.inner.get(&ObjectPath::from(key)).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StorageError::NotFound(key.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object; deleting a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists the keys under a prefix (used by tests and orphan clean-up).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        use futures::TryStreamExt;
        let prefix = ObjectPath::from(prefix);
        let metas: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }
}
