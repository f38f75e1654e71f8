//! Maintenance services: the cleaner (retention and event-log compaction) and the orphan
//! collector (objects that lost their rows) keep a long-running sdq from growing without
//! bound; the webhook deliverer posts what jobs asked to be told. Each is one file with its own interval, started by `app.rs`, and safe
//! to run in every process at once. They bind the job store to the object store, which is
//! why they live beside `queue` and `storage` rather than inside either.

pub mod cleaner;
pub mod gc;
pub mod signature;
pub mod webhooks;

use crate::queue::StoreError;
use crate::storage::StorageError;

/// Why a maintenance pass stopped early; the next pass starts over.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}
