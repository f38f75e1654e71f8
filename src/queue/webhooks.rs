//! Webhook deliveries as the store keeps them.
//!
//! A delivery row is written in the same transaction as the event it reports (both
//! backends call [`WebhookEvent::of`] from their `insert_event`), so no event is lost
//! across a crash and each reported event gets exactly one delivery id (`UNIQUE (job_id,
//! seq)`). The deliverer (`maintenance/webhooks.rs`) claims due rows, sends them and
//! records the outcome here; retries keep the id, so receivers can deduplicate.
//!
//! Progress is coalesced: a job has at most one progress delivery that has not been sent
//! yet, and a new one is not due before [`PROGRESS_EVERY`] after the previous one. The
//! body is built when a delivery is first sent, so a coalesced delivery reports the latest
//! progress, and the receiver is not flooded with one request per denoising step.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::EventKind;

/// The least time between two progress deliveries of one job.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a job may ask to be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A worker started an attempt.
    Started,
    /// Denoising steps went by (coalesced, see the module docs).
    Progress,
    /// The job ended: succeeded, failed for good, or canceled.
    Completed,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 3] = [Self::Started, Self::Progress, Self::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Progress => "progress",
            Self::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The bit of this event in the jobs table's `webhook_events` mask.
    pub fn bit(self) -> i64 {
        match self {
            Self::Started => 1,
            Self::Progress => 2,
            Self::Completed => 4,
        }
    }

    /// The webhook event a job event is reported as, if any. A failure that will be
    /// retried is not the end of the job: the next attempt's `started` follows.
    pub fn of(kind: &EventKind) -> Option<Self> {
        match kind {
            EventKind::Started { .. } => Some(Self::Started),
            EventKind::Progress { .. } => Some(Self::Progress),
            EventKind::Succeeded { .. } | EventKind::Canceled => Some(Self::Completed),
            EventKind::Failed { retrying, .. } => (!retrying).then_some(Self::Completed),
            _ => None,
        }
    }
}

/// The events a job gets when it names a `webhook_url` without `webhook_events`.
pub const DEFAULT_EVENTS: [WebhookEvent; 1] = [WebhookEvent::Completed];

/// The mask stored in `jobs.webhook_events`.
pub fn events_mask(events: &[WebhookEvent]) -> i64 {
    events.iter().fold(0, |mask, e| mask | e.bit())
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not sent yet, or waiting for its next attempt.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up: retries ran out, or the target is refused.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// A delivery row.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: Uuid,
    pub job_id: Uuid,
    pub owner: String,
    pub event: WebhookEvent,
    /// The `seq` of the job event that made it.
    pub seq: i64,
    pub url: String,
    pub status: DeliveryStatus,
    /// Attempts started so far (a claim counts one).
    pub attempts: i64,
    pub last_error: Option<String>,
    /// The HTTP status of the last answer, if one came.
    pub response_status: Option<i64>,
    /// The body, fixed at the first attempt so that every retry sends the same bytes.
    pub payload: Option<String>,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

impl Delivery {
    /// The `webhook-id` header: stable across retries.
    pub fn message_id(&self) -> String {
        format!("msg_{}", self.id.simple())
    }
}

/// How an attempt ended, as the deliverer reports it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Try again after `after` (measured on the database's clock).
    Retry {
        error: String,
        status: Option<u16>,
        after: Duration,
    },
    /// Give up.
    Failed { error: String, status: Option<u16> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_covers_every_end_and_only_the_end() {
        assert_eq!(
            WebhookEvent::of(&EventKind::Canceled),
            Some(WebhookEvent::Completed)
        );
        let failed = |retrying| EventKind::Failed {
            error: "x".into(),
            retrying,
        };
        assert_eq!(
            WebhookEvent::of(&failed(false)),
            Some(WebhookEvent::Completed)
        );
        assert_eq!(WebhookEvent::of(&failed(true)), None);
        assert_eq!(WebhookEvent::of(&EventKind::Queued { position: 1 }), None);
        assert_eq!(events_mask(&WebhookEvent::ALL), 7);
        for e in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(e.as_str()), Some(e));
        }
    }
}
