//! The durable job queue: job model and states, the `JobStore` seam (one implementation
//! per database), the `EventBus` seam (in-process or Redis), and the maintenance services.
//!
//! Nothing here knows about HTTP or Candle.

pub mod bus;
pub mod events;
mod facade;
pub mod job;
pub mod keys;
pub mod local_bus;
pub mod postgres;
pub mod redis_bus;
pub mod rescuer;
pub mod retry;
mod scope;
pub mod sqlite;
pub mod state;
pub mod store;
pub mod webhooks;

pub use bus::{BusError, BusMessage, EventBus};
pub use events::{Event, EventKind, ImageSummary, PreviewImage};
pub use facade::Queue;
pub use job::{
    adapters_key, default_preview_every, Completion, Cursor, Enqueued, Idempotency, ImageQuery,
    ImageRecord, Job, JobSpec, Lease, ListQuery, LoraRef, NewImage, NewJob, WorkerInfo,
};
pub use keys::{ApiKey, NewApiKey};
pub use scope::Scope;
pub use state::JobStatus;
pub use store::{CancelOutcome, JobStore, PurgedJob, StoreError};
pub use webhooks::{Delivery, DeliveryStatus, WebhookEvent};
