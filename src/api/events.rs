//! `GET /v1/jobs/{id}/events`: the SSE stream of one job.
//!
//! Order of operations, which is what makes the stream gap-free: subscribe to the bus
//! first, then replay the job's stored events after `Last-Event-ID` (the snapshot), then
//! forward live events with a larger `seq`. A gap in the live `seq`s, a lagged channel or
//! a lost bus all fall back to reading the store, which holds every event. The stream
//! closes after the terminal event.
//!
//! Previews are live-only: they come from the bus (and, for a late subscriber, the job
//! row's latest one right after the snapshot), go out without an `id:` line so a
//! browser's `Last-Event-ID` keeps naming the last stored event, and never move the
//! stream's position. A resume is therefore exact for every stored event; previews
//! missed while disconnected are not replayed (the next one, or the latest, follows).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use uuid::Uuid;

use super::auth::Caller;
use super::jobs::owned_job;
use super::{ApiError, AppState};
use crate::queue::{BusMessage, Event, EventKind, Queue, Scope};

/// How often the store is re-read while live events flow (a safety net), and while the
/// bus is unavailable (the only source).
const SAFETY_POLL: Duration = Duration::from_secs(2);
const FALLBACK_POLL: Duration = Duration::from_secs(1);

pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = owned_job(&state, &caller, &id).await?.id;
    let last_seen = match headers.get("last-event-id") {
        None => 0,
        Some(v) => parse_last_event_id(v.as_bytes())?,
    };
    let stream = forward(state.queue.clone(), id, caller.scope(), last_seen).map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Parses a `Last-Event-ID` header: the `seq` of the last event the client saw.
pub fn parse_last_event_id(raw: &[u8]) -> Result<i64, ApiError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                "Last-Event-ID",
                "Last-Event-ID must be a non-negative integer",
            )
        })
}

fn to_sse(event: &Event) -> SseEvent {
    let sse = SseEvent::default()
        .event(event.kind.name())
        .data(serde_json::to_string(event).unwrap_or_default());
    if event.kind.is_live_only() {
        sse
    } else {
        sse.id(event.seq.to_string())
    }
}

/// Where the stream stands.
enum Next {
    Continue,
    /// The terminal event is queued for the client (or the job was already over).
    Done,
}

struct Forwarder {
    queue: Queue,
    id: Uuid,
    scope: Scope,
    last: i64,
    /// The step of the last preview sent in this attempt: the snapshot's preview may
    /// also arrive live, and must not go out twice.
    preview_step: i64,
    /// Frames ready for the client; the stream hands them out before doing more work.
    out: VecDeque<SseEvent>,
}

impl Forwarder {
    async fn send(&mut self, event: &Event) -> Next {
        if event.seq <= self.last {
            return Next::Continue;
        }
        self.out.push_back(to_sse(event));
        self.last = event.seq;
        if let EventKind::Started { .. } = event.kind {
            // A new attempt counts its steps from 1 again.
            self.preview_step = 0;
        }
        if event.kind.is_terminal() {
            Next::Done
        } else {
            Next::Continue
        }
    }

    /// Sends a live-only event (a preview) after any stored event it follows that this
    /// stream has not sent yet; `last` stays where the stored events put it.
    async fn send_live(&mut self, event: &Event) -> Next {
        if event.seq > self.last {
            if let Next::Done = self.catch_up().await {
                return Next::Done;
            }
        }
        if let EventKind::Preview(preview) = &event.kind {
            if preview.step <= self.preview_step {
                return Next::Continue;
            }
            self.preview_step = preview.step;
        }
        self.out.push_back(to_sse(event));
        Next::Continue
    }

    /// The running job's latest preview, for a subscriber that arrives mid-job.
    async fn send_latest_preview(&mut self) -> Next {
        match self.queue.store.latest_preview(self.id, &self.scope).await {
            Ok(Some(preview)) => {
                let event = Event {
                    job_id: self.id,
                    seq: self.last,
                    kind: EventKind::Preview(preview),
                };
                self.send_live(&event).await
            }
            Ok(None) => Next::Continue,
            Err(e) => {
                tracing::debug!(job_id = %self.id, error = %e, "latest preview not read");
                Next::Continue
            }
        }
    }

    /// Sends every stored event after `last`; finishes if the job is over.
    async fn catch_up(&mut self) -> Next {
        let events = match self
            .queue
            .store
            .events_after(self.id, self.last, &self.scope)
            .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(job_id = %self.id, error = %e, "cannot read events; will retry");
                return Next::Continue;
            }
        };
        for event in &events {
            if let Next::Done = self.send(event).await {
                return Next::Done;
            }
        }
        if events.is_empty() {
            // A client that resumes after the terminal event has nothing left to receive.
            if let Ok(Some(job)) = self.queue.store.get(self.id, &self.scope).await {
                if job.status.is_terminal() && job.last_seq <= self.last {
                    return Next::Done;
                }
            }
        }
        Next::Continue
    }
}

/// The stream of one subscriber, polled by its connection: there is no task or channel
/// between the bus and the socket, so an event costs each subscriber one wake-up. It
/// ends after the terminal event; a client that goes away drops it.
fn forward(
    queue: Queue,
    id: Uuid,
    scope: Scope,
    last: i64,
) -> impl Stream<Item = SseEvent> + Send + 'static {
    let f = Forwarder {
        queue,
        id,
        scope,
        last,
        preview_step: 0,
        out: VecDeque::new(),
    };
    futures::stream::unfold(Stage::Start(f), |mut stage| async move {
        loop {
            match stage {
                Stage::Start(f) => stage = start(f).await,
                Stage::Live(ref mut live) => {
                    if let Some(frame) = live.f.out.pop_front() {
                        return Some((frame, stage));
                    }
                    if live.done {
                        return None;
                    }
                    live.step().await;
                }
            }
        }
    })
}

enum Stage {
    Start(Forwarder),
    Live(Box<Live>),
}

/// A subscriber past its snapshot.
struct Live {
    f: Forwarder,
    bus: Option<BoxStream<'static, BusMessage>>,
    poll: tokio::time::Interval,
    /// When the bus last brought something: the safety poll only reads the store after
    /// it has been quiet for `SAFETY_POLL`.
    heard: Instant,
    /// The terminal event is queued (or the job is over): end once `out` is drained.
    done: bool,
}

/// Subscribes first, then sends the snapshot (stored events after `last` and the latest
/// preview): nothing published in between is missed.
async fn start(mut f: Forwarder) -> Stage {
    let bus = match f.queue.bus.subscribe(f.id).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(job_id = %f.id, error = %e, "event bus unavailable; polling the job");
            None
        }
    };
    let mut done = matches!(f.catch_up().await, Next::Done);
    if !done {
        done = matches!(f.send_latest_preview().await, Next::Done);
    }
    let mut poll = tokio::time::interval(if bus.is_some() {
        SAFETY_POLL
    } else {
        FALLBACK_POLL
    });
    poll.tick().await;
    Stage::Live(Box::new(Live {
        f,
        bus,
        poll,
        heard: Instant::now(),
        done,
    }))
}

impl Live {
    /// Waits for the next thing to do and does it.
    async fn step(&mut self) {
        let next = tokio::select! {
            message = async { self.bus.as_mut().expect("guarded").next().await }, if self.bus.is_some() => {
                // The store is the safety net for a bus gone quiet; while live events
                // flow it is not needed. Re-reading it on a fixed beat anyway made every
                // subscriber of a popular job query the database at the same moment
                // (2,000 reads every 2 s), which delayed the live events behind them.
                self.heard = Instant::now();
                let f = &mut self.f;
                match message {
                    Some(BusMessage::Event(event)) if event.kind.is_live_only() => f.send_live(&event).await,
                    Some(BusMessage::Event(event)) if event.seq <= f.last + 1 => f.send(&event).await,
                    // A gap or a lag: the store has what we missed.
                    Some(BusMessage::Event(_)) | Some(BusMessage::Lagged) => f.catch_up().await,
                    None => {
                        self.bus = None;
                        self.poll = tokio::time::interval(FALLBACK_POLL);
                        f.catch_up().await
                    }
                }
            }
            _ = self.poll.tick() => {
                if self.bus.is_some() && self.heard.elapsed() < SAFETY_POLL {
                    Next::Continue
                } else {
                    self.f.catch_up().await
                }
            }
        };
        if let Next::Done = next {
            self.done = true;
        }
    }
}
