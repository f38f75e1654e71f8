//! Job events: what SSE subscribers see. Each has a per-job, gap-free `seq`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An image as the events and the job view list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSummary {
    pub index: i64,
    pub id: Uuid,
    pub url: String,
    pub seed: i64,
}

/// What happened. The serde tag is the SSE event name: `event: progress` carries
/// `data: {"type": "progress", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Queued {
        position: i64,
    },
    Started {
        attempt: i64,
        worker: String,
    },
    Progress {
        step: i64,
        total: i64,
        elapsed_ms: i64,
        eta_ms: i64,
    },
    Image(ImageSummary),
    Succeeded {
        images: Vec<ImageSummary>,
        timings: serde_json::Value,
    },
    Failed {
        error: String,
        retrying: bool,
    },
    Canceled,
}

impl EventKind {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued { .. } => "queued",
            Self::Started { .. } => "started",
            Self::Progress { .. } => "progress",
            Self::Image(_) => "image",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// After a terminal event the job never changes and streams close.
    pub fn is_terminal(&self) -> bool {
        match self {
            Self::Succeeded { .. } | Self::Canceled => true,
            Self::Failed { retrying, .. } => !retrying,
            _ => false,
        }
    }
}

/// One event of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub job_id: Uuid,
    pub seq: i64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_a_type_tag() {
        let e = Event {
            job_id: Uuid::nil(),
            seq: 3,
            kind: EventKind::Progress {
                step: 1,
                total: 4,
                elapsed_ms: 10,
                eta_ms: 30,
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "progress");
        assert_eq!(v["seq"], 3);
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        let c = serde_json::to_value(EventKind::Canceled).unwrap();
        assert_eq!(c, serde_json::json!({"type": "canceled"}));
        assert!(EventKind::Failed {
            error: "x".into(),
            retrying: false
        }
        .is_terminal());
        assert!(!EventKind::Failed {
            error: "x".into(),
            retrying: true
        }
        .is_terminal());
    }
}
