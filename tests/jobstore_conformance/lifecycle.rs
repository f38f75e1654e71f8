//! Conformance checks for a claimed job's life: fenced writes, completion, retries and
//! permanent failures, rescue of expired leases, cancel, release, counts by status and
//! live-only previews.

use super::*;

pub async fn writes_are_fenced_by_the_lease_token(store: Store) {
    let id = enqueue(&store, "m", "x", 0, 3).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    let wrong = Uuid::new_v4();
    let progress = EventKind::Progress {
        step: 1,
        total: 4,
        elapsed_ms: 5,
        eta_ms: 15,
    };
    assert!(matches!(
        store.heartbeat(id, wrong, LEASE).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.record(id, wrong, progress.clone()).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.complete(id, wrong, vec![], json!({})).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.fail(id, wrong, "x", None).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.cancel_running(id, wrong).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.release(id, wrong).await,
        Err(StoreError::LeaseLost(_))
    ));
    // The real holder still can.
    let e = store.record(id, lease.token, progress).await.unwrap();
    assert_eq!(e.seq, 3);
    let job = store.get(id, &Scope::All).await.unwrap().unwrap();
    assert_eq!((job.progress_step, job.progress_total), (1, 4));
}

pub async fn completion_records_images_and_gap_free_events(store: Store) {
    let id = enqueue(&store, "m", "x", 0, 3).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    for step in 1..=2 {
        store
            .record(
                id,
                lease.token,
                EventKind::Progress {
                    step,
                    total: 2,
                    elapsed_ms: 1,
                    eta_ms: 1,
                },
            )
            .await
            .unwrap();
    }
    let images: Vec<NewImage> = (0..2)
        .map(|i| {
            let image = Uuid::new_v4();
            NewImage {
                id: image,
                index: i,
                object_key: format!("{id}/{image}.png"),
                url: format!("/v1/images/{image}"),
                seed: 10 + i,
                width: 64,
                height: 64,
                bytes: 100,
            }
        })
        .collect();
    let events = store
        .complete(id, lease.token, images.clone(), json!({"total_ms": 5}))
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["image", "image", "succeeded"]);
    let all = store.events_after(id, 0, &Scope::All).await.unwrap();
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(
        store.events_after(id, 5, &Scope::All).await.unwrap().len(),
        2
    );
    let job = store.get(id, &Scope::All).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.last_seq, 7);
    assert_eq!(job.timings, Some(json!({"total_ms": 5})));
    let rows = store.job_images(id, &Scope::All).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].seed, 11);
    let first = store
        .image(images[0].id, &Scope::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.job_id, id);
    // The gallery copy of the job's owner, model and prompt.
    assert_eq!(
        (
            first.owner.as_str(),
            first.model.as_str(),
            first.prompt.as_str()
        ),
        ("local", "m", "x")
    );
    assert!(store
        .image(Uuid::new_v4(), &Scope::All)
        .await
        .unwrap()
        .is_none());
    // A finished job cannot be completed twice.
    assert!(matches!(
        store.complete(id, lease.token, vec![], json!({})).await,
        Err(StoreError::LeaseLost(_))
    ));
}

pub async fn transient_failures_retry_with_backoff_then_fail(store: Store) {
    let id = enqueue(&store, "m", "poison", 0, 2).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    let event = store
        .fail(id, lease.token, "boom", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(
        event.kind,
        EventKind::Failed {
            error: "boom".into(),
            retrying: true
        }
    );
    let job = store.get(id, &Scope::All).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert!(
        store.claim("w", None, LEASE).await.unwrap().is_none(),
        "not before run_at"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.attempt, 2);
    let event = store
        .fail(
            id,
            lease.token,
            "boom again",
            Some(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    assert_eq!(
        event.kind,
        EventKind::Failed {
            error: "boom again".into(),
            retrying: false
        }
    );
    let job = store.get(id, &Scope::All).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_deref(), Some("boom again"));
}

pub async fn permanent_failures_fail_at_once(store: Store) {
    let id = enqueue(&store, "m", "bad", 0, 5).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    let event = store
        .fail(id, lease.token, "model missing", None)
        .await
        .unwrap();
    assert!(event.kind.is_terminal());
    assert_eq!(
        store.get(id, &Scope::All).await.unwrap().unwrap().status,
        JobStatus::Failed
    );
}

pub async fn expired_leases_are_rescued(store: Store) {
    let retry = enqueue(&store, "m", "retry", 0, 2).await;
    let (lease, _) = store
        .claim("w", None, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.job.id, retry);
    assert!(
        store.rescue_expired().await.unwrap().is_empty(),
        "lease still valid"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let events = store.rescue_expired().await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(matches!(
        &events[0].kind,
        EventKind::Failed { retrying: true, .. }
    ));
    assert_eq!(
        store.get(retry, &Scope::All).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    // Second attempt also dies: max_attempts reached, so it fails for good.
    let (lease2, _) = store
        .claim("w", None, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease2.job.attempt, 2);
    // The first holder, whose lease expired and was re-claimed, can no longer write.
    let progress = EventKind::Progress {
        step: 1,
        total: 4,
        elapsed_ms: 1,
        eta_ms: 1,
    };
    assert!(matches!(
        store.record(retry, lease.token, progress).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.complete(retry, lease.token, vec![], json!({})).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.fail(retry, lease.token, "late", None).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(
        store
            .get(retry, &Scope::All)
            .await
            .unwrap()
            .unwrap()
            .attempt,
        2
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let events = store.rescue_expired().await.unwrap();
    assert!(events[0].kind.is_terminal());
    let job = store.get(retry, &Scope::All).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.error.unwrap().contains("lease"));
    // The old holders are fenced out.
    assert!(matches!(
        store.heartbeat(retry, lease.token, LEASE).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.heartbeat(retry, lease2.token, LEASE).await,
        Err(StoreError::LeaseLost(_))
    ));
}

pub async fn cancel_semantics(store: Store) {
    let queued = enqueue(&store, "m", "q", 0, 3).await;
    match store.request_cancel(queued, &Scope::All).await.unwrap() {
        CancelOutcome::Canceled(e) => assert_eq!(e.kind, EventKind::Canceled),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .get(queued, &Scope::All)
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Canceled
    );
    assert!(matches!(
        store.request_cancel(queued, &Scope::All).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.request_cancel(Uuid::new_v4(), &Scope::All).await,
        Err(StoreError::NotFound(_))
    ));

    let running = enqueue(&store, "m", "r", 0, 3).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert!(matches!(
        store.request_cancel(running, &Scope::All).await.unwrap(),
        CancelOutcome::Requested
    ));
    assert!(
        store.heartbeat(running, lease.token, LEASE).await.unwrap(),
        "heartbeat carries the request"
    );
    let e = store.cancel_running(running, lease.token).await.unwrap();
    assert_eq!(e.kind, EventKind::Canceled);
    assert_eq!(
        store
            .get(running, &Scope::All)
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Canceled
    );

    // A cancel requested while the worker died ends as canceled, not retried.
    let orphan = enqueue(&store, "m", "o", 0, 3).await;
    store
        .claim("w", None, Duration::from_millis(30))
        .await
        .unwrap()
        .unwrap();
    store.request_cancel(orphan, &Scope::All).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let events = store.rescue_expired().await.unwrap();
    assert_eq!(events[0].kind, EventKind::Canceled);
}

pub async fn release_returns_a_job_without_counting_the_attempt(store: Store) {
    let id = enqueue(&store, "m", "x", 0, 1).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    store.release(id, lease.token).await.unwrap();
    let job = store.get(id, &Scope::All).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0));
    let (again, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(again.job.attempt, 1);
}

/// What `/metrics` reports as `sdq_jobs{status}`.
pub async fn counts_by_status_follow_the_jobs(store: Store) {
    assert!(store.count_by_status().await.unwrap().is_empty());
    let a = enqueue(&store, "m", "a", 0, 3).await;
    enqueue(&store, "m", "b", 0, 3).await;
    let c = enqueue(&store, "m", "c", 0, 3).await;
    store.request_cancel(c, &Scope::All).await.unwrap();
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.id, a);
    let mut counts = store.count_by_status().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        vec![
            (JobStatus::Canceled, 1),
            (JobStatus::Queued, 1),
            (JobStatus::Running, 1)
        ]
    );
}

pub fn preview(step: i64) -> PreviewImage {
    PreviewImage {
        step,
        total: 4,
        width: 8,
        height: 8,
        image: format!("data:image/jpeg;base64,step{step}"),
    }
}

/// Previews are live-only: the row keeps the latest, fenced like every write of a running
/// job, the event log never holds one, and a new attempt or the completion clears it.
pub async fn previews_keep_only_the_latest_and_stay_out_of_the_log(store: Store) {
    let job = store.enqueue(owned("alice", "p")).await.unwrap();
    let Enqueued::New(job, _) = job else {
        panic!("new job")
    };
    let id = job.id;
    let alice = Scope::Owner("alice".into());
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(store.latest_preview(id, &alice).await.unwrap(), None);
    store
        .record(
            id,
            lease.token,
            EventKind::Progress {
                step: 1,
                total: 4,
                elapsed_ms: 1,
                eta_ms: 3,
            },
        )
        .await
        .unwrap();
    // The seq handed back is the last stored event's: queued, started, progress.
    assert_eq!(
        store
            .set_preview(id, lease.token, &preview(1))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .set_preview(id, lease.token, &preview(2))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store.latest_preview(id, &alice).await.unwrap(),
        Some(preview(2))
    );
    assert_eq!(
        store.latest_preview(id, &Scope::All).await.unwrap(),
        Some(preview(2))
    );
    // Another owner sees nothing, as for every other lookup.
    let bob = Scope::Owner("bob".into());
    assert_eq!(store.latest_preview(id, &bob).await.unwrap(), None);
    // Fenced: a stale token cannot write one.
    assert!(matches!(
        store.set_preview(id, Uuid::new_v4(), &preview(3)).await,
        Err(StoreError::LeaseLost(_))
    ));
    // The event log refuses previews and holds none.
    assert!(store
        .record(id, lease.token, EventKind::Preview(preview(3)))
        .await
        .is_err());
    let log = store.events_after(id, 0, &Scope::All).await.unwrap();
    assert!(log.iter().all(|e| !e.kind.is_live_only()), "{log:?}");
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    // A retried attempt starts without the old attempt's preview.
    store
        .fail(id, lease.token, "transient", Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(store.latest_preview(id, &Scope::All).await.unwrap(), None);
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.id, id);
    assert_eq!(store.latest_preview(id, &Scope::All).await.unwrap(), None);
    store
        .set_preview(id, lease.token, &preview(1))
        .await
        .unwrap();
    assert!(store
        .latest_preview(id, &Scope::All)
        .await
        .unwrap()
        .is_some());
    // The completion clears it; a finished job can take no more.
    store
        .complete(id, lease.token, vec![], json!({}))
        .await
        .unwrap();
    assert_eq!(store.latest_preview(id, &Scope::All).await.unwrap(), None);
    assert!(matches!(
        store.set_preview(id, lease.token, &preview(4)).await,
        Err(StoreError::LeaseLost(_))
    ));
    let log = store.events_after(id, 0, &Scope::All).await.unwrap();
    assert!(log.iter().all(|e| !e.kind.is_live_only()));
}
