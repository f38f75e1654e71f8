//! `EventBus`: how events, cancel signals and new-job wake-ups travel between processes.
//!
//! The bus is a fast path, never the source of truth: every event is committed to the job
//! store first, so a subscriber that misses messages (lag, outage) re-reads the store.

use async_trait::async_trait;
use futures::stream::BoxStream;
use uuid::Uuid;

use super::Event;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// What a job subscription yields.
#[derive(Debug, Clone)]
pub enum BusMessage {
    Event(Event),
    /// Messages were dropped; the subscriber must catch up from the store.
    Lagged,
}

#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, event: &Event) -> Result<(), BusError>;
    /// Live events of one job, from the moment of subscribing.
    async fn subscribe(&self, job_id: Uuid) -> Result<BoxStream<'static, BusMessage>, BusError>;
    /// Asks whichever worker runs `job_id` to stop.
    async fn send_cancel(&self, job_id: Uuid) -> Result<(), BusError>;
    async fn cancels(&self) -> Result<BoxStream<'static, Uuid>, BusError>;
    /// Wakes idle workers after an enqueue.
    async fn notify_new_job(&self) -> Result<(), BusError>;
    async fn new_jobs(&self) -> Result<BoxStream<'static, ()>, BusError>;
    /// A round trip for readiness checks.
    async fn ping(&self) -> Result<(), BusError>;
}
