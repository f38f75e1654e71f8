//! The in-process event bus of the embedded deployment (tokio broadcast channels).

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use uuid::Uuid;

use super::{BusError, BusMessage, Event, EventBus};

/// Broadcast channels shared by the API and the worker of one process.
pub struct LocalBus {
    events: broadcast::Sender<Event>,
    cancels: broadcast::Sender<Uuid>,
    wakeups: broadcast::Sender<()>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBus {
    pub fn new() -> Self {
        // Bounded so a stalled subscriber cannot grow memory; it sees `Lagged` instead.
        Self {
            events: broadcast::channel(4096).0,
            cancels: broadcast::channel(256).0,
            wakeups: broadcast::channel(16).0,
        }
    }
}

#[async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        // No receivers is not an error: nobody is watching this job.
        let _ = self.events.send(event.clone());
        Ok(())
    }

    async fn subscribe(&self, job_id: Uuid) -> Result<BoxStream<'static, BusMessage>, BusError> {
        let stream =
            BroadcastStream::new(self.events.subscribe()).filter_map(move |msg| async move {
                match msg {
                    Ok(event) if event.job_id == job_id => Some(BusMessage::Event(event)),
                    Ok(_) => None,
                    Err(BroadcastStreamRecvError::Lagged(_)) => Some(BusMessage::Lagged),
                }
            });
        Ok(stream.boxed())
    }

    async fn send_cancel(&self, job_id: Uuid) -> Result<(), BusError> {
        let _ = self.cancels.send(job_id);
        Ok(())
    }

    async fn cancels(&self) -> Result<BoxStream<'static, Uuid>, BusError> {
        Ok(BroadcastStream::new(self.cancels.subscribe())
            .filter_map(|m| async move { m.ok() })
            .boxed())
    }

    async fn notify_new_job(&self) -> Result<(), BusError> {
        let _ = self.wakeups.send(());
        Ok(())
    }

    async fn new_jobs(&self) -> Result<BoxStream<'static, ()>, BusError> {
        // A lagged wake-up is still a wake-up.
        Ok(BroadcastStream::new(self.wakeups.subscribe())
            .map(|_| ())
            .boxed())
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}
