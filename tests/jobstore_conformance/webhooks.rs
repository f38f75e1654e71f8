//! Conformance checks for webhook deliveries: rows made with the events they report, one
//! per event, progress coalesced, claims exclusive and leased, outcomes fenced by attempt.

use std::sync::Arc;
use std::time::Duration;

use sdq::queue::webhooks::{AttemptOutcome, DeliveryStatus, WebhookEvent};
use sdq::queue::{Enqueued, EventKind, JobSpec, JobStore, NewApiKey, NewJob, Scope};
use serde_json::json;
use uuid::Uuid;

type Store = Arc<dyn JobStore>;

const LEASE: Duration = Duration::from_secs(30);

fn progress(step: i64) -> EventKind {
    EventKind::Progress {
        step,
        total: 10,
        elapsed_ms: 1,
        eta_ms: 1,
    }
}

/// A key in the store and a job of its owner that reports `events` to a webhook.
async fn hooked_job(store: &Store, events: &[WebhookEvent]) -> (Uuid, String) {
    let issued = sdq::queue::keys::issue(
        NewApiKey {
            name: "hooks".into(),
            ..Default::default()
        },
        1_000,
    );
    store.insert_key(&issued.key).await.unwrap();
    let spec = JobSpec {
        prompt: "hooked".into(),
        model: "m".into(),
        width: 64,
        height: 64,
        steps: 4,
        num_images: 1,
        scheduler: "euler-a".into(),
        long_prompt: "chunk".into(),
        webhook_url: Some("https://hooks.example.com/sdq".into()),
        webhook_events: events.to_vec(),
        ..Default::default()
    };
    let job = NewJob {
        owner: issued.key.owner(),
        ..NewJob::local(spec, 0, 3)
    };
    let Enqueued::New(job, _) = store.enqueue(job).await.unwrap() else {
        panic!("new job")
    };
    (job.id, issued.key.webhook_secret)
}

fn events_of(deliveries: &[sdq::queue::Delivery]) -> Vec<(WebhookEvent, i64)> {
    deliveries.iter().map(|d| (d.event, d.seq)).collect()
}

pub async fn webhook_deliveries_are_made_with_their_events(store: Store) {
    let plain = store
        .enqueue(NewJob::local(
            JobSpec {
                prompt: "plain".into(),
                model: "m".into(),
                ..Default::default()
            },
            -1,
            3,
        ))
        .await
        .unwrap()
        .job()
        .id;
    let (id, secret) = hooked_job(&store, &[WebhookEvent::Started, WebhookEvent::Completed]).await;
    let owner = store.get(id, &Scope::All).await.unwrap().unwrap().owner;
    assert_eq!(store.webhook_secret(&owner).await.unwrap(), Some(secret));
    assert_eq!(store.webhook_secret("local").await.unwrap(), None);
    assert!(
        store.job_deliveries(id).await.unwrap().is_empty(),
        "queued is not reported"
    );

    let (lease, started) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.id, id);
    let deliveries = store.job_deliveries(id).await.unwrap();
    assert_eq!(
        events_of(&deliveries),
        [(WebhookEvent::Started, started.seq)]
    );
    let d = &deliveries[0];
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Pending, 0));
    assert_eq!(d.url, "https://hooks.example.com/sdq");
    assert_eq!(d.owner, owner);
    assert!(d.message_id().starts_with("msg_"));

    store.record(id, lease.token, progress(1)).await.unwrap();
    let events = store
        .complete(id, lease.token, Vec::new(), json!({}))
        .await
        .unwrap();
    let succeeded = events.last().unwrap().seq;
    let deliveries = store.job_deliveries(id).await.unwrap();
    assert_eq!(
        events_of(&deliveries),
        [
            (WebhookEvent::Started, started.seq),
            (WebhookEvent::Completed, succeeded)
        ],
        "progress was not asked for"
    );
    // The plain job ran too: nothing was made for it.
    let (plain_lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(plain_lease.job.id, plain);
    store
        .complete(plain, plain_lease.token, Vec::new(), json!({}))
        .await
        .unwrap();
    assert!(store.job_deliveries(plain).await.unwrap().is_empty());
}

pub async fn completed_means_every_end_but_a_retried_failure(store: Store) {
    // A failure that is retried is not the end; the last one is.
    let (id, _) = hooked_job(&store, &[WebhookEvent::Completed]).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    store
        .fail(id, lease.token, "transient", Some(Duration::ZERO))
        .await
        .unwrap();
    assert!(store.job_deliveries(id).await.unwrap().is_empty());
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    let failed = store
        .fail(id, lease.token, "bad input", None)
        .await
        .unwrap();
    let deliveries = store.job_deliveries(id).await.unwrap();
    assert_eq!(
        events_of(&deliveries),
        [(WebhookEvent::Completed, failed.seq)]
    );

    // Canceled while queued.
    let (queued, _) = hooked_job(&store, &[WebhookEvent::Completed]).await;
    let sdq::queue::CancelOutcome::Canceled(canceled) =
        store.request_cancel(queued, &Scope::All).await.unwrap()
    else {
        panic!("a queued job cancels at once")
    };
    assert_eq!(
        events_of(&store.job_deliveries(queued).await.unwrap()),
        [(WebhookEvent::Completed, canceled.seq)]
    );
}

pub async fn progress_deliveries_are_coalesced(store: Store) {
    let (id, _) = hooked_job(&store, &[WebhookEvent::Progress]).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    for step in 1..=5 {
        store.record(id, lease.token, progress(step)).await.unwrap();
    }
    let deliveries = store.job_deliveries(id).await.unwrap();
    assert_eq!(
        deliveries.len(),
        1,
        "one unsent progress delivery at a time"
    );
    let first = store.claim_deliveries(10, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempts, 1);
    // Once that one is under way, the next progress makes another, due a while later.
    store.record(id, lease.token, progress(6)).await.unwrap();
    store.record(id, lease.token, progress(7)).await.unwrap();
    let deliveries = store.job_deliveries(id).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    let next = &deliveries[1];
    assert_eq!(next.attempts, 0);
    assert!(
        next.next_attempt_at >= first[0].created_at + 1_900,
        "progress deliveries are spaced: {} vs {}",
        next.next_attempt_at,
        first[0].created_at
    );
    assert!(store.claim_deliveries(10, LEASE).await.unwrap().is_empty());
}

pub async fn deliveries_are_claimed_once_and_finished_by_their_attempt(store: Store) {
    let (id, _) = hooked_job(&store, &[WebhookEvent::Started]).await;
    store.claim("w", None, LEASE).await.unwrap().unwrap();
    // Two deliverers at once: only one gets the delivery.
    let (a, b) = tokio::join!(
        store.claim_deliveries(10, Duration::from_millis(300)),
        store.claim_deliveries(10, Duration::from_millis(300))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 1, "{a:?} {b:?}");
    let d = a.into_iter().chain(b).next().unwrap();
    assert_eq!((d.job_id, d.attempts, d.payload.clone()), (id, 1, None));

    // The body is fixed by the first attempt.
    assert_eq!(
        store.set_delivery_payload(d.id, "{\"a\":1}").await.unwrap(),
        "{\"a\":1}"
    );
    assert_eq!(
        store.set_delivery_payload(d.id, "{\"b\":2}").await.unwrap(),
        "{\"a\":1}"
    );

    // A deliverer that died: the claim runs out and the next attempt begins.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = store.claim_deliveries(10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].payload.as_deref(), Some("{\"a\":1}"));
    // The dead attempt's late outcome is not written.
    let stale = AttemptOutcome::Delivered { status: 200 };
    assert!(!store.finish_delivery(d.id, 1, &stale).await.unwrap());

    let retry = AttemptOutcome::Retry {
        error: "HTTP 500".into(),
        status: Some(500),
        after: Duration::from_millis(300),
    };
    assert!(store.finish_delivery(d.id, 2, &retry).await.unwrap());
    assert!(
        store.claim_deliveries(10, LEASE).await.unwrap().is_empty(),
        "not due yet"
    );
    let pending = &store.job_deliveries(id).await.unwrap()[0];
    assert_eq!(pending.status, DeliveryStatus::Pending);
    assert_eq!(pending.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(pending.response_status, Some(500));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = store.claim_deliveries(10, LEASE).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].attempts, 3);
    assert!(store
        .finish_delivery(d.id, 3, &AttemptOutcome::Delivered { status: 204 })
        .await
        .unwrap());
    let done = &store.job_deliveries(id).await.unwrap()[0];
    assert_eq!(done.status, DeliveryStatus::Delivered);
    assert_eq!(done.response_status, Some(204));
    assert!(done.delivered_at.is_some());
    assert_eq!(
        done.last_error.as_deref(),
        Some("HTTP 500"),
        "earlier failures stay visible"
    );
    assert!(
        !store
            .finish_delivery(d.id, 3, &AttemptOutcome::Delivered { status: 200 })
            .await
            .unwrap(),
        "a finished delivery is not finished twice"
    );

    // Giving up: failed, and never claimed again.
    let (other, _) = hooked_job(&store, &[WebhookEvent::Started]).await;
    store.claim("w", None, LEASE).await.unwrap().unwrap();
    let d = store.claim_deliveries(10, LEASE).await.unwrap().remove(0);
    assert_eq!(d.job_id, other);
    let give_up = AttemptOutcome::Failed {
        error: "refused".into(),
        status: None,
    };
    assert!(store.finish_delivery(d.id, 1, &give_up).await.unwrap());
    assert_eq!(
        store.job_deliveries(other).await.unwrap()[0].status,
        DeliveryStatus::Failed
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.claim_deliveries(10, LEASE).await.unwrap().is_empty());
}
