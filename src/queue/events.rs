//! Job events: what SSE subscribers see. Each stored event has a per-job, gap-free `seq`.
//!
//! `preview` is the exception: it is live-only (published on the bus, never appended
//! to the event log; the job row keeps the latest one), and its `seq` is that of the
//! last stored event before it, so it never takes a number a stored event needs.

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

/// A preview of a running job: the step it shows (of `total`, as progress counts them)
/// and a `data:` URL of a small JPEG of `width` × `height` (the latents' size, 1/8 of
/// the image's per side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PreviewImage {
    pub step: i64,
    pub total: i64,
    pub width: i64,
    pub height: i64,
    pub image: String,
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
    /// A small look at the latents while the job runs (live-only, see the module docs).
    Preview(PreviewImage),
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
            Self::Preview(_) => "preview",
            Self::Image(_) => "image",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Live-only events are published but never stored, and carry no SSE `id`.
    pub fn is_live_only(&self) -> bool {
        matches!(self, Self::Preview(_))
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
        let p = EventKind::Preview(PreviewImage {
            step: 2,
            total: 4,
            width: 8,
            height: 8,
            image: "data:image/jpeg;base64,AA==".into(),
        });
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"type": "preview", "step": 2, "total": 4, "width": 8,
                "height": 8, "image": "data:image/jpeg;base64,AA=="})
        );
        assert!(p.is_live_only() && !p.is_terminal());
        assert!(!EventKind::Failed {
            error: "x".into(),
            retrying: true
        }
        .is_terminal());
    }
}
