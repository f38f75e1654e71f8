//! The Redis event bus of the distributed deployment: one pub/sub channel per job, one
//! for cancel signals and one for new-job wake-ups.
//!
//! Redis is a fast path, never a dependency for correctness: a failed publish is logged
//! and the event is still in the job store; a subscriber whose connection drops sees its
//! stream end and falls back to polling the store; the worker-side streams (cancels,
//! wake-ups) reconnect by themselves with backoff.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::{BusError, BusMessage, Event, EventBus};

/// How long any single Redis operation may take before we treat Redis as down.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
const CANCEL_CHANNEL: &str = "sdq:cancel";
const WAKE_CHANNEL: &str = "sdq:wake";

fn job_channel(id: Uuid) -> String {
    format!("sdq:events:{id}")
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

pub struct RedisBus {
    client: redis::Client,
    /// Created on first use and rebuilt after failures, so that sdq starts (and keeps
    /// serving) while Redis is down.
    publisher: Mutex<Option<ConnectionManager>>,
}

impl RedisBus {
    /// Parses the URL; does not connect (Redis may come up later).
    pub fn new(url: &str) -> Result<Self, BusError> {
        Ok(Self {
            client: redis::Client::open(url).map_err(unavailable)?,
            publisher: Mutex::new(None),
        })
    }

    async fn with_publisher<T>(
        &self,
        op: impl for<'a> FnOnce(
            &'a mut ConnectionManager,
        ) -> futures::future::BoxFuture<'a, redis::RedisResult<T>>,
    ) -> Result<T, BusError> {
        let mut guard = self.publisher.lock().await;
        if guard.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(OP_TIMEOUT))
                .set_response_timeout(Some(OP_TIMEOUT))
                .set_number_of_retries(1);
            let manager = tokio::time::timeout(
                OP_TIMEOUT,
                self.client.get_connection_manager_with_config(config),
            )
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
            *guard = Some(manager);
        }
        let conn = guard.as_mut().expect("set above");
        match tokio::time::timeout(OP_TIMEOUT, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *guard = None;
                Err(unavailable(e))
            }
            Err(e) => {
                *guard = None;
                Err(unavailable(e))
            }
        }
    }

    async fn publish_raw(&self, channel: String, payload: String) -> Result<(), BusError> {
        self.with_publisher(move |c| {
            Box::pin(async move { c.publish::<_, _, ()>(channel, payload).await })
        })
        .await
    }

    async fn subscribe_raw(&self, channel: &str) -> Result<BoxStream<'static, String>, BusError> {
        let mut pubsub = tokio::time::timeout(OP_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        tokio::time::timeout(OP_TIMEOUT, pubsub.subscribe(channel))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        Ok(pubsub
            .into_on_message()
            .filter_map(|msg| async move { msg.get_payload::<String>().ok() })
            .boxed())
    }

    /// A subscription that survives outages: it resubscribes with backoff and yields
    /// `on_reconnect` (if any) after each reconnection, since messages may have been lost.
    fn resilient(
        &self,
        channel: &'static str,
        on_reconnect: Option<String>,
    ) -> BoxStream<'static, String> {
        let (tx, rx) = mpsc::channel(64);
        let bus = Self {
            client: self.client.clone(),
            publisher: Mutex::new(None),
        };
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            let mut first = true;
            while !tx.is_closed() {
                match bus.subscribe_raw(channel).await {
                    Ok(mut stream) => {
                        delay = Duration::from_millis(200);
                        if !first {
                            tracing::info!(channel, "redis subscription restored");
                            if let Some(msg) = &on_reconnect {
                                let _ = tx.send(msg.clone()).await;
                            }
                        }
                        first = false;
                        loop {
                            tokio::select! {
                                msg = stream.next() => match msg {
                                    Some(m) => if tx.send(m).await.is_err() { return },
                                    None => break,
                                },
                                _ = tx.closed() => return,
                            }
                        }
                        tracing::warn!(channel, "redis subscription lost; reconnecting");
                    }
                    Err(e) => {
                        if first {
                            tracing::warn!(channel, error = %e, "redis unavailable; will keep trying");
                            first = false;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        ReceiverStream::new(rx).boxed()
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let payload = serde_json::to_string(event).map_err(unavailable)?;
        self.publish_raw(job_channel(event.job_id), payload).await
    }

    async fn subscribe(&self, job_id: Uuid) -> Result<BoxStream<'static, BusMessage>, BusError> {
        let stream = self.subscribe_raw(&job_channel(job_id)).await?;
        Ok(stream
            .filter_map(|payload| async move {
                serde_json::from_str::<Event>(&payload)
                    .ok()
                    .map(BusMessage::Event)
            })
            .boxed())
    }

    async fn send_cancel(&self, job_id: Uuid) -> Result<(), BusError> {
        self.publish_raw(CANCEL_CHANNEL.into(), job_id.to_string())
            .await
    }

    async fn cancels(&self) -> Result<BoxStream<'static, Uuid>, BusError> {
        Ok(self
            .resilient(CANCEL_CHANNEL, None)
            .filter_map(|p| async move { Uuid::parse_str(&p).ok() })
            .boxed())
    }

    async fn notify_new_job(&self) -> Result<(), BusError> {
        self.publish_raw(WAKE_CHANNEL.into(), "1".into()).await
    }

    async fn new_jobs(&self) -> Result<BoxStream<'static, ()>, BusError> {
        Ok(self
            .resilient(WAKE_CHANNEL, Some("reconnected".into()))
            .map(|_| ())
            .boxed())
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.with_publisher(|c| {
            Box::pin(async move { redis::cmd("PING").query_async::<String>(c).await })
        })
        .await
        .map(|_| ())
    }
}
