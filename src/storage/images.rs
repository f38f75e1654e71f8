//! `ImageStore`: where image bytes live, behind `object_store`.

use std::sync::Arc;

use bytes::Bytes;
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

/// Stores and fetches images by key; the keys are recorded in the job store.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
}

impl ImageStore {
    /// Opens a store from a location: `file:///path`, or a plain directory path.
    pub fn open(location: &str) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadLocation {
            url: location.to_string(),
            reason,
        };
        let dir = match location.strip_prefix("file://") {
            Some(path) => path.to_string(),
            None if location.contains("://") => {
                return Err(bad(
                    "only file:// and plain paths are supported in this build".into(),
                ))
            }
            None => location.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
        let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(fs),
            description: format!("file://{dir}"),
        })
    }

    /// Wraps any `object_store` backend.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            inner,
            description: description.into(),
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
