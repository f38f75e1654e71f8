//! One conformance suite for every `JobStore` backend: a backend passes it or is not done.
//!
//! Each check takes a fresh, empty store. The `backend!` macro at the bottom runs every
//! check against each implementation.

mod common;
#[path = "jobstore_conformance/webhooks.rs"]
mod webhook_checks;
use webhook_checks::*;
#[path = "jobstore_conformance/batch.rs"]
mod batch_checks;
use batch_checks::*;
#[path = "jobstore_conformance/complete_many.rs"]
mod complete_many_checks;
use complete_many_checks::*;

use std::sync::Arc;
use std::time::Duration;

use sdq::queue::{
    CancelOutcome, Cursor, Enqueued, EventKind, Idempotency, ImageQuery, JobSpec, JobStatus,
    JobStore, ListQuery, NewApiKey, NewImage, NewJob, PreviewImage, Scope, StoreError,
};
use serde_json::json;
use uuid::Uuid;

type Store = Arc<dyn JobStore>;

fn spec(model: &str, prompt: &str) -> JobSpec {
    JobSpec {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        model: model.into(),
        width: 64,
        height: 64,
        steps: 4,
        guidance_scale: 7.5,
        seed: 1,
        scheduler: "euler-a".into(),
        num_images: 1,
        long_prompt: "chunk".into(),
        ..Default::default()
    }
}

async fn enqueue(
    store: &Store,
    model: &str,
    prompt: &str,
    priority: i32,
    max_attempts: i32,
) -> Uuid {
    let Enqueued::New(job, event) = store
        .enqueue(NewJob::local(spec(model, prompt), priority, max_attempts))
        .await
        .unwrap()
    else {
        panic!("a job without an idempotency key is always new")
    };
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(event.seq, 1);
    assert!(matches!(event.kind, EventKind::Queued { .. }));
    job.id
}

const LEASE: Duration = Duration::from_secs(30);

async fn claim_order_is_priority_then_age(store: Store) {
    let low = enqueue(&store, "m", "low", 0, 3).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    let high = enqueue(&store, "m", "high", 5, 3).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    let low2 = enqueue(&store, "m", "low2", 0, 3).await;
    assert_eq!(store.queue_position(high).await.unwrap(), Some(1));
    assert_eq!(store.queue_position(low).await.unwrap(), Some(2));
    assert_eq!(store.queue_position(low2).await.unwrap(), Some(3));
    let order: Vec<Uuid> = [
        store
            .claim("w", None, LEASE)
            .await
            .unwrap()
            .unwrap()
            .0
            .job
            .id,
        store
            .claim("w", None, LEASE)
            .await
            .unwrap()
            .unwrap()
            .0
            .job
            .id,
        store
            .claim("w", None, LEASE)
            .await
            .unwrap()
            .unwrap()
            .0
            .job
            .id,
    ]
    .to_vec();
    assert_eq!(order, vec![high, low, low2]);
    assert!(store.claim("w", None, LEASE).await.unwrap().is_none());
    assert_eq!(store.queue_position(low).await.unwrap(), None);
}

async fn claim_prefers_the_loaded_model_then_its_loras(store: Store) {
    use sdq::queue::LoraRef;
    let with = |loras: &[(&str, f64)]| JobSpec {
        loras: loras
            .iter()
            .map(|(n, w)| LoraRef {
                name: n.to_string(),
                weight: *w,
            })
            .collect(),
        ..spec("model-a", "x")
    };
    let mut ids = Vec::new();
    for (model, loras) in [
        ("model-a", vec![]),
        ("model-b", vec![("film", 0.8)]),
        ("model-a", vec![("film", 0.5)]),
        ("model-a", vec![("pixel", 1.0), ("film", 0.8)]),
    ] {
        let spec = JobSpec {
            model: model.into(),
            ..with(&loras)
        };
        let Enqueued::New(job, _) = store.enqueue(NewJob::local(spec, 0, 3)).await.unwrap() else {
            panic!("new job")
        };
        ids.push(job.id);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // The key does not depend on the order the LoRAs were listed in.
    let held = sdq::queue::adapters_key(
        &[
            LoraRef {
                name: "film".into(),
                weight: 0.8,
            },
            LoraRef {
                name: "pixel".into(),
                weight: 1.0,
            },
        ],
        None,
    );
    let claim = |adapters: Option<String>| {
        let store = store.clone();
        async move {
            store
                .claim_preferring("w", Some("model-a"), adapters.as_deref(), LEASE)
                .await
                .unwrap()
                .unwrap()
                .0
                .job
                .id
        }
    };
    assert_eq!(
        claim(Some(held)).await,
        ids[3],
        "same model and LoRA set first"
    );
    assert_eq!(
        claim(Some(String::new())).await,
        ids[0],
        "then same model, no LoRAs"
    );
    assert_eq!(
        claim(None).await,
        ids[2],
        "then the loaded model, oldest first"
    );
    assert_eq!(claim(None).await, ids[1]);
}

/// Every tier of the claim (model and adapters, model, adapters, any; within the top
/// priority that is claimable now) against the order the claim promises, worked out
/// here from its definition, for a shuffled queue and a worker whose loaded model and
/// adapters change between claims.
async fn claim_follows_the_full_preference_order(store: Store) {
    use sdq::queue::{Job, LoraRef};
    // A job in backoff at the highest priority must not make that priority the top.
    let delayed = enqueue(&store, "model-a", "delayed", 9, 3).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.id, delayed);
    store
        .fail(
            delayed,
            lease.token,
            "later",
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();

    let mut combos = Vec::new();
    for priority in [0, 1] {
        for model in ["model-a", "model-b", "model-c"] {
            for loras in [vec![], vec![("film", 0.8)]] {
                combos.push((priority, model, loras.clone()));
                combos.push((priority, model, loras));
            }
        }
    }
    // A fixed shuffle (an LCG), so a failure is reproducible.
    let mut state = 0x2545_f491_u64;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    for i in (1..combos.len()).rev() {
        combos.swap(i, next(i + 1));
    }
    let mut queued: Vec<Job> = Vec::new();
    for (priority, model, loras) in combos {
        let spec = JobSpec {
            loras: loras
                .iter()
                .map(|(n, w)| LoraRef {
                    name: n.to_string(),
                    weight: *w,
                })
                .collect(),
            ..spec(model, "x")
        };
        let Enqueued::New(job, _) = store
            .enqueue(NewJob::local(spec, priority, 3))
            .await
            .unwrap()
        else {
            panic!("new job")
        };
        queued.push(job);
    }
    // Place in line ignores what workers prefer: priority, then age; a job in backoff
    // still holds its place.
    let waiting = store.get(delayed, &Scope::All).await.unwrap().unwrap();
    assert_eq!(waiting.status, JobStatus::Queued);
    for job in &queued {
        let line = |j: &Job| (-j.priority, j.created_at, j.id);
        let ahead = queued
            .iter()
            .chain([&waiting])
            .filter(|o| line(o) < line(job))
            .count() as i64;
        assert_eq!(store.queue_position(job.id).await.unwrap(), Some(ahead + 1));
    }
    let film = sdq::queue::adapters_key(
        &[LoraRef {
            name: "film".into(),
            weight: 0.8,
        }],
        None,
    );
    let workers: [(Option<&str>, Option<&str>); 6] = [
        (Some("model-b"), Some(&film)),
        (Some("model-c"), Some("")),
        (None, Some(&film)),
        (Some("model-a"), None),
        (None, None),
        (Some("model-z"), Some("")),
    ];
    let mut turn = 0;
    while !queued.is_empty() {
        let (model, adapters) = workers[turn % workers.len()];
        turn += 1;
        let rank = |j: &Job| {
            (
                -j.priority,
                model != Some(j.spec.model.as_str()),
                adapters != Some(j.spec.adapters_key().as_str()),
                j.created_at,
                j.id,
            )
        };
        let best = queued.iter().min_by_key(|j| rank(j)).unwrap().id;
        let (lease, _) = store
            .claim_preferring("w", model, adapters, LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            lease.job.id, best,
            "claim {turn} with model {model:?} and adapters {adapters:?}"
        );
        queued.retain(|j| j.id != best);
    }
    assert!(store.claim("w", None, LEASE).await.unwrap().is_none());
}

async fn claim_prefers_the_loaded_model_within_a_priority(store: Store) {
    let a = enqueue(&store, "model-a", "a", 0, 3).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    let b = enqueue(&store, "model-b", "b", 0, 3).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    let urgent = enqueue(&store, "model-a", "urgent", 1, 3).await;
    let first = store
        .claim("w", Some("model-b"), LEASE)
        .await
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(first.job.id, urgent, "priority beats model affinity");
    let second = store
        .claim("w", Some("model-b"), LEASE)
        .await
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(second.job.id, b, "the loaded model wins over an older job");
    let third = store
        .claim("w", Some("model-b"), LEASE)
        .await
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(third.job.id, a);
}

async fn claim_sets_lease_attempt_and_started_event(store: Store) {
    let id = enqueue(&store, "m", "x", 0, 3).await;
    let (lease, event) = store.claim("worker-1", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.id, id);
    assert_eq!(lease.job.status, JobStatus::Running);
    assert_eq!(lease.job.attempt, 1);
    assert_eq!(lease.job.worker.as_deref(), Some("worker-1"));
    assert_eq!(event.seq, 2);
    assert_eq!(
        event.kind,
        EventKind::Started {
            attempt: 1,
            worker: "worker-1".into()
        }
    );
    assert!(!store.heartbeat(id, lease.token, LEASE).await.unwrap());
}

async fn concurrent_claims_never_share_a_job(store: Store) {
    for i in 0..20 {
        enqueue(&store, "m", &format!("job {i}"), 0, 3).await;
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some((lease, _)) = store.claim(&format!("w{w}"), None, LEASE).await.unwrap() {
                got.push(lease.job.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!((count, all.len()), (20, 20));
}

async fn writes_are_fenced_by_the_lease_token(store: Store) {
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

async fn completion_records_images_and_gap_free_events(store: Store) {
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

async fn transient_failures_retry_with_backoff_then_fail(store: Store) {
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

async fn permanent_failures_fail_at_once(store: Store) {
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

async fn expired_leases_are_rescued(store: Store) {
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

async fn cancel_semantics(store: Store) {
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

async fn release_returns_a_job_without_counting_the_attempt(store: Store) {
    let id = enqueue(&store, "m", "x", 0, 1).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    store.release(id, lease.token).await.unwrap();
    let job = store.get(id, &Scope::All).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0));
    let (again, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(again.job.attempt, 1);
}

/// What `/metrics` reports as `sdq_jobs{status}`.
async fn counts_by_status_follow_the_jobs(store: Store) {
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

async fn listing_is_newest_first_with_a_cursor(store: Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(enqueue(&store, "m", &format!("{i}"), 0, 3).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let page1 = store.list(&ListQuery::newest(Scope::All, 2)).await.unwrap();
    assert_eq!(
        page1.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let cursor = Cursor {
        created_at: page1[1].created_at,
        id: page1[1].id,
    };
    assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    let page2 = store
        .list(&ListQuery {
            before: Some(cursor),
            ..ListQuery::newest(Scope::All, 10)
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
    store.request_cancel(ids[0], &Scope::All).await.unwrap();
    let canceled = store
        .list(&ListQuery {
            status: Some(JobStatus::Canceled),
            ..ListQuery::newest(Scope::All, 10)
        })
        .await
        .unwrap();
    assert_eq!(canceled.len(), 1);
    store.ping().await.unwrap();
}

async fn owner_default_models_are_per_owner(store: Store) {
    assert_eq!(store.owner_default_model("a").await.unwrap(), None);
    store
        .set_owner_default_model("a", Some("tiny"))
        .await
        .unwrap();
    store
        .set_owner_default_model("b", Some("sd-turbo"))
        .await
        .unwrap();
    assert_eq!(
        store.owner_default_model("a").await.unwrap().as_deref(),
        Some("tiny")
    );
    store
        .set_owner_default_model("a", Some("tiny-sd2"))
        .await
        .unwrap();
    assert_eq!(
        store.owner_default_model("a").await.unwrap().as_deref(),
        Some("tiny-sd2")
    );
    assert_eq!(
        store.owner_default_model("b").await.unwrap().as_deref(),
        Some("sd-turbo")
    );
    store.set_owner_default_model("a", None).await.unwrap();
    assert_eq!(store.owner_default_model("a").await.unwrap(), None);
    assert_eq!(store.owner_default_model("nobody").await.unwrap(), None);
}

/// Claims the next job and completes it with one image; returns its object key.
async fn run_to_success(store: &Store, id: Uuid) -> String {
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.id, id);
    for step in 1..=3 {
        let progress = EventKind::Progress {
            step,
            total: 3,
            elapsed_ms: 1,
            eta_ms: 1,
        };
        store.record(id, lease.token, progress).await.unwrap();
    }
    let image = Uuid::new_v4();
    let key = format!("{id}/{image}.png");
    let new = NewImage {
        id: image,
        index: 0,
        object_key: key.clone(),
        url: format!("/v1/images/{image}"),
        seed: 1,
        width: 64,
        height: 64,
        bytes: 100,
    };
    store
        .complete(id, lease.token, vec![new], json!({}))
        .await
        .unwrap();
    key
}

async fn retention_purges_only_old_finished_jobs(store: Store) {
    let done = enqueue(&store, "m", "done", 0, 3).await;
    run_to_success(&store, done).await;
    let failed = enqueue(&store, "m", "failed", 0, 3).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    store.fail(failed, lease.token, "bad", None).await.unwrap();
    let spec_with_inputs = JobSpec {
        init_image: Some("inputs/u1/init".into()),
        mask_image: Some("inputs/u1/mask".into()),
        ..spec("m", "img2img")
    };
    let Enqueued::New(with_input, _) = store
        .enqueue(NewJob::local(spec_with_inputs, 0, 3))
        .await
        .unwrap()
    else {
        panic!("new job")
    };
    store
        .request_cancel(with_input.id, &Scope::All)
        .await
        .unwrap();
    let running = enqueue(&store, "m", "running", 0, 3).await;
    store.claim("w", None, LEASE).await.unwrap().unwrap();
    let queued = enqueue(&store, "m", "queued", 0, 3).await;

    // Nothing is old enough yet.
    let hour = Duration::from_secs(3600);
    assert!(store
        .purge_finished(Some(hour), 100)
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let first = store
        .purge_finished(Some(Duration::from_millis(1)), 2)
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "at most `limit` per call");
    let rest = store
        .purge_finished(Some(Duration::from_millis(1)), 100)
        .await
        .unwrap();
    let mut purged: Vec<Uuid> = first.iter().chain(&rest).map(|p| p.id).collect();
    purged.sort();
    let mut want = vec![done, failed, with_input.id];
    want.sort();
    assert_eq!(purged, want);
    let inputs = first
        .iter()
        .chain(&rest)
        .find(|p| p.id == with_input.id)
        .unwrap();
    assert_eq!(inputs.input_keys, vec!["inputs/u1/init", "inputs/u1/mask"]);
    for id in want {
        assert!(store.get(id, &Scope::All).await.unwrap().is_none());
        assert!(store
            .events_after(id, 0, &Scope::All)
            .await
            .unwrap()
            .is_empty());
        assert!(store.job_images(id, &Scope::All).await.unwrap().is_empty());
    }
    for id in [running, queued] {
        assert!(
            store.get(id, &Scope::All).await.unwrap().is_some(),
            "unfinished jobs stay"
        );
    }
}

async fn retention_follows_each_keys_own_limit(store: Store) {
    use sdq::queue::keys::issue;
    let key = |name: &str, days: f64| {
        issue(
            NewApiKey {
                name: name.into(),
                retain_days: Some(days),
                ..Default::default()
            },
            0,
        )
        .key
    };
    let (short, long) = (key("short", 1e-9), key("long", 30.0));
    store.insert_key(&short).await.unwrap();
    store.insert_key(&long).await.unwrap();
    let mut ids = Vec::new();
    for owner in [short.owner(), long.owner(), "local".to_string()] {
        let Enqueued::New(job, _) = store.enqueue(owned(&owner, "kept?")).await.unwrap() else {
            panic!("new job")
        };
        run_to_success(&store, job.id).await;
        ids.push(job.id);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ids_of =
        |purged: Vec<sdq::queue::PurgedJob>| -> Vec<Uuid> { purged.iter().map(|p| p.id).collect() };
    // No server-wide limit: only the key with a limit of its own loses its job.
    let purged = ids_of(store.purge_finished(None, 100).await.unwrap());
    assert_eq!(purged, [ids[0]]);
    // A server-wide limit takes the rest, except the key that keeps its jobs longer.
    let purged = ids_of(
        store
            .purge_finished(Some(Duration::from_millis(1)), 100)
            .await
            .unwrap(),
    );
    assert_eq!(purged, [ids[2]]);
    assert!(store.get(ids[1], &Scope::All).await.unwrap().is_some());
}

async fn compaction_drops_progress_of_finished_jobs(store: Store) {
    let done = enqueue(&store, "m", "done", 0, 3).await;
    run_to_success(&store, done).await;
    let running = enqueue(&store, "m", "running", 0, 3).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    let progress = EventKind::Progress {
        step: 1,
        total: 3,
        elapsed_ms: 1,
        eta_ms: 1,
    };
    store.record(running, lease.token, progress).await.unwrap();

    assert_eq!(
        store
            .compact_events(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ms = Duration::from_millis(1);
    assert_eq!(store.compact_events(ms, 100).await.unwrap(), 1);
    let kinds: Vec<&str> = store
        .events_after(done, 0, &Scope::All)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind.name())
        .collect();
    assert_eq!(kinds, ["queued", "started", "image", "succeeded"]);
    assert_eq!(
        store
            .get(done, &Scope::All)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        7
    );
    assert_eq!(
        store.compact_events(ms, 100).await.unwrap(),
        0,
        "once per job"
    );
    let running_kinds: Vec<&str> = store
        .events_after(running, 0, &Scope::All)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind.name())
        .collect();
    assert_eq!(running_kinds, ["queued", "started", "progress"]);
}

async fn referenced_keys_are_image_rows_and_inputs(store: Store) {
    let done = enqueue(&store, "m", "done", 0, 3).await;
    let image_key = run_to_success(&store, done).await;
    let spec_with_input = JobSpec {
        init_image: Some("inputs/u2/init".into()),
        ..spec("m", "img2img")
    };
    store
        .enqueue(NewJob::local(spec_with_input, 0, 3))
        .await
        .unwrap();
    let keys: Vec<String> = vec![
        image_key.clone(),
        "inputs/u2/init".into(),
        "inputs/u2/mask".into(),
        format!("{done}/{}.png", Uuid::new_v4()),
    ];
    let found = store.referenced_keys(&keys).await.unwrap();
    let want: std::collections::HashSet<String> = [image_key, "inputs/u2/init".to_string()]
        .into_iter()
        .collect();
    assert_eq!(found, want);
    assert!(store.referenced_keys(&[]).await.unwrap().is_empty());
}

async fn backup_copies_the_database_or_names_the_tool(store: Store) {
    enqueue(&store, "m", "backed up", 0, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.db");
    match store.backup(&path).await {
        Ok(()) => {
            let copy = sdq::queue::sqlite::SqliteStore::open(&path.display().to_string())
                .await
                .unwrap();
            assert_eq!(copy.integrity_check().await.unwrap(), vec!["ok"]);
            let jobs = copy.list(&ListQuery::newest(Scope::All, 10)).await.unwrap();
            assert_eq!(jobs.len(), 1);
            assert!(store.backup(&path).await.is_err(), "never overwrites");
        }
        Err(StoreError::Unsupported(message)) => assert!(message.contains("pg_dump"), "{message}"),
        Err(other) => panic!("backup failed: {other}"),
    }
}

fn owned(owner: &str, prompt: &str) -> NewJob {
    NewJob {
        owner: owner.into(),
        ..NewJob::local(spec("m", prompt), 0, 3)
    }
}

/// Runs the job `id` to success with `n` images; returns the image ids.
async fn succeed_with_images(store: &Store, n: i64) -> (Uuid, Vec<Uuid>) {
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    let id = lease.job.id;
    let images: Vec<NewImage> = (0..n)
        .map(|i| {
            let image = Uuid::now_v7();
            NewImage {
                id: image,
                index: i,
                object_key: format!("{id}/{image}.png"),
                url: format!("/v1/images/{image}"),
                seed: i,
                width: 64,
                height: 64,
                bytes: 10,
            }
        })
        .collect();
    let ids = images.iter().map(|i| i.id).collect();
    store
        .complete(id, lease.token, images, json!({}))
        .await
        .unwrap();
    (id, ids)
}

async fn owners_see_only_their_own(store: Store) {
    let alice = Scope::Owner("alice".into());
    let bob = Scope::Owner("bob".into());
    let a = store
        .enqueue(owned("alice", "a"))
        .await
        .unwrap()
        .job()
        .clone();
    let b = store
        .enqueue(owned("bob", "b"))
        .await
        .unwrap()
        .job()
        .clone();
    assert_eq!(a.owner, "alice");
    assert!(store.get(a.id, &alice).await.unwrap().is_some());
    assert!(store.get(a.id, &bob).await.unwrap().is_none());
    assert!(store.get(b.id, &Scope::All).await.unwrap().is_some());
    let listed = store
        .list(&ListQuery::newest(bob.clone(), 10))
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b.id]);
    assert_eq!(
        store
            .list(&ListQuery::newest(Scope::All, 10))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(store.events_after(a.id, 0, &bob).await.unwrap().is_empty());
    assert_eq!(store.events_after(a.id, 0, &alice).await.unwrap().len(), 1);
    assert!(matches!(
        store.request_cancel(a.id, &bob).await,
        Err(StoreError::NotFound(_))
    ));
    // Alice's job (claimed first: it is older) finishes with an image only she sees.
    let (job, images) = succeed_with_images(&store, 1).await;
    assert_eq!(job, a.id);
    assert!(store.image(images[0], &bob).await.unwrap().is_none());
    assert_eq!(
        store.image(images[0], &alice).await.unwrap().unwrap().owner,
        "alice"
    );
    assert!(store.job_images(a.id, &bob).await.unwrap().is_empty());
    assert!(store.delete_image(images[0], &bob).await.unwrap().is_none());
    assert!(store.delete_job(a.id, &bob).await.unwrap().is_none());
    assert!(store.image(images[0], &alice).await.unwrap().is_some());
}

async fn quotas_count_unfinished_jobs_per_owner_even_under_races(store: Store) {
    let limited = |prompt: &str| NewJob {
        max_active: Some(2),
        ..owned("q", prompt)
    };
    store.enqueue(limited("1")).await.unwrap();
    store.enqueue(limited("2")).await.unwrap();
    assert!(matches!(
        store.enqueue(limited("3")).await,
        Err(StoreError::TooManyJobs {
            active: 2,
            limit: 2
        })
    ));
    // Other owners are not affected; running jobs still count; finished ones do not.
    store.enqueue(owned("other", "x")).await.unwrap();
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert!(store.enqueue(limited("4")).await.is_err());
    store
        .complete(lease.job.id, lease.token, vec![], json!({}))
        .await
        .unwrap();
    store.enqueue(limited("5")).await.unwrap();
    // Twelve racing submissions for a fresh owner with room for three: exactly three pass.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enqueue(NewJob {
                    max_active: Some(3),
                    ..owned("racer", &i.to_string())
                })
                .await
                .is_ok()
        }));
    }
    let mut passed = 0;
    for t in tasks {
        passed += t.await.unwrap() as usize;
    }
    assert_eq!(passed, 3);
}

async fn idempotency_keys_return_the_first_job(store: Store) {
    let keyed = |key: &str, fingerprint: &str| NewJob {
        idempotency: Some(Idempotency {
            key: key.into(),
            fingerprint: fingerprint.into(),
        }),
        ..owned("i", "x")
    };
    let first = store.enqueue(keyed("k1", "f1")).await.unwrap();
    assert!(matches!(first, Enqueued::New(..)));
    let again = store.enqueue(keyed("k1", "f1")).await.unwrap();
    assert!(matches!(again, Enqueued::Existing(_)));
    assert_eq!(again.job().id, first.job().id);
    assert!(matches!(
        store.enqueue(keyed("k1", "f2")).await,
        Err(StoreError::IdempotencyMismatch)
    ));
    // The same key of another owner is another key.
    let other = store
        .enqueue(NewJob {
            owner: "someone-else".into(),
            ..keyed("k1", "f2")
        })
        .await
        .unwrap();
    assert_ne!(other.job().id, first.job().id);
    // Racing requests with one key make one job, and all of them get it.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.enqueue(keyed("race", "f")).await.unwrap().job().id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let jobs = store
        .list(&ListQuery::newest(Scope::Owner("i".into()), 100))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
}

async fn keys_are_stored_hashed_and_can_be_revoked(store: Store) {
    use sdq::queue::keys::{issue, lookup_of, verify};
    let issued = issue(
        NewApiKey {
            name: "ci".into(),
            admin: false,
            max_queued: Some(4),
            rate_per_min: Some(60),
            retain_days: Some(2.5),
        },
        1_000,
    );
    store.insert_key(&issued.key).await.unwrap();
    let lookup = lookup_of(&issued.token).unwrap();
    let found = store.key_by_lookup(lookup).await.unwrap().unwrap();
    assert_eq!(found.id, issued.key.id);
    assert_eq!((found.max_queued, found.rate_per_min), (Some(4), Some(60)));
    assert_eq!(found.retain_days, Some(2.5));
    assert!(verify(&issued.token, &found));
    assert_ne!(found.secret_hash, issued.token);
    assert!(store.key_by_lookup("nothing-here").await.unwrap().is_none());
    let second = issue(
        NewApiKey {
            name: "admin".into(),
            admin: true,
            ..Default::default()
        },
        2_000,
    );
    store.insert_key(&second.key).await.unwrap();
    let names: Vec<String> = store
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["ci", "admin"]);
    store.touch_key(found.id).await.unwrap();
    assert!(store
        .key_by_lookup(lookup)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_some());
    let revoked = store.revoke_key(found.id).await.unwrap().unwrap();
    assert!(revoked.is_revoked());
    assert!(store
        .key_by_lookup(lookup)
        .await
        .unwrap()
        .unwrap()
        .is_revoked());
    assert!(store.revoke_key(Uuid::new_v4()).await.unwrap().is_none());
}

async fn rate_buckets_hold_across_concurrent_takers(store: Store) {
    for _ in 0..3 {
        assert_eq!(store.take_rate_token("r", 3).await.unwrap(), None);
    }
    let wait = store.take_rate_token("r", 3).await.unwrap().unwrap();
    // Three per minute refill one token every 20 s.
    assert!(
        wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    assert_eq!(store.take_rate_token("other", 3).await.unwrap(), None);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.take_rate_token("burst", 5).await.unwrap().is_none()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap() as usize;
    }
    assert_eq!(allowed, 5);
}

async fn gallery_pages_stay_correct_across_deletes(store: Store) {
    // Seven jobs with two images each: fourteen images, newest first.
    let mut all = Vec::new();
    for i in 0..7 {
        store.enqueue(owned("g", &format!("p{i}"))).await.unwrap();
        let (_, ids) = succeed_with_images(&store, 2).await;
        all.extend(ids);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let scope = Scope::Owner("g".into());
    let page = |before| ImageQuery {
        scope: scope.clone(),
        job_id: None,
        model: None,
        since: None,
        before,
        limit: 4,
    };
    // Walk the pages, deleting the last image of each page and an unseen one as we go.
    let mut seen = Vec::new();
    let mut order = Vec::new();
    let mut deleted = Vec::new();
    let mut cursor = None;
    loop {
        let images = store.list_images(&page(cursor)).await.unwrap();
        if images.is_empty() {
            break;
        }
        seen.extend(images.iter().map(|i| i.id));
        order.extend(images.iter().map(|i| (i.created_at, i.id)));
        let last = images.last().unwrap();
        cursor = Some(Cursor {
            created_at: last.created_at,
            id: last.id,
        });
        store.delete_image(last.id, &scope).await.unwrap().unwrap();
        deleted.push(last.id);
        if let Some(unseen) = all
            .iter()
            .find(|id| !seen.contains(id) && !deleted.contains(id))
        {
            store.delete_image(*unseen, &scope).await.unwrap().unwrap();
            deleted.push(*unseen);
        }
    }
    // Every image was either seen exactly once or deleted before its page came.
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    for id in &all {
        assert!(seen.contains(id) || deleted.contains(id), "gap at {id}");
    }
    // Newest first across pages.
    assert!(order.windows(2).all(|w| w[0] > w[1]), "{order:?}");
    // Deleting again finds nothing; filters narrow the list.
    assert!(store
        .delete_image(deleted[0], &scope)
        .await
        .unwrap()
        .is_none());
    let some_job = store.image(seen[0], &scope).await.unwrap().unwrap().job_id;
    let by_job = store
        .list_images(&ImageQuery {
            job_id: Some(some_job),
            limit: 50,
            ..page(None)
        })
        .await
        .unwrap();
    assert!(!by_job.is_empty() && by_job.iter().all(|i| i.job_id == some_job));
    let by_model = store
        .list_images(&ImageQuery {
            model: Some("nope".into()),
            ..page(None)
        })
        .await
        .unwrap();
    assert!(by_model.is_empty());
    let future = store
        .list_images(&ImageQuery {
            since: Some(i64::MAX / 2),
            ..page(None)
        })
        .await
        .unwrap();
    assert!(future.is_empty());
    // A finished job goes with its images; an unfinished one cannot be deleted.
    let (deleted_job, images) = store.delete_job(some_job, &scope).await.unwrap().unwrap();
    assert_eq!(deleted_job.id, some_job);
    assert!(images.iter().all(|i| i.job_id == some_job));
    assert!(store.get(some_job, &scope).await.unwrap().is_none());
    assert!(store
        .events_after(some_job, 0, &scope)
        .await
        .unwrap()
        .is_empty());
    let queued = store.enqueue(owned("g", "later")).await.unwrap().job().id;
    assert!(matches!(
        store.delete_job(queued, &scope).await,
        Err(StoreError::Conflict { .. })
    ));
}

fn preview(step: i64) -> PreviewImage {
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
async fn previews_keep_only_the_latest_and_stay_out_of_the_log(store: Store) {
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

macro_rules! backend {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;
            macro_rules! check {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        let (store, _guard) = $open;
                        super::$check(store).await;
                    }
                };
            }
            check!(claim_order_is_priority_then_age);
            check!(claim_prefers_the_loaded_model_within_a_priority);
            check!(claim_prefers_the_loaded_model_then_its_loras);
            check!(claim_follows_the_full_preference_order);
            check!(claim_sets_lease_attempt_and_started_event);
            check!(concurrent_claims_never_share_a_job);
            check!(writes_are_fenced_by_the_lease_token);
            check!(completion_records_images_and_gap_free_events);
            check!(transient_failures_retry_with_backoff_then_fail);
            check!(permanent_failures_fail_at_once);
            check!(expired_leases_are_rescued);
            check!(cancel_semantics);
            check!(release_returns_a_job_without_counting_the_attempt);
            check!(listing_is_newest_first_with_a_cursor);
            check!(counts_by_status_follow_the_jobs);
            check!(owner_default_models_are_per_owner);
            check!(retention_purges_only_old_finished_jobs);
            check!(retention_follows_each_keys_own_limit);
            check!(compaction_drops_progress_of_finished_jobs);
            check!(referenced_keys_are_image_rows_and_inputs);
            check!(backup_copies_the_database_or_names_the_tool);
            check!(owners_see_only_their_own);
            check!(quotas_count_unfinished_jobs_per_owner_even_under_races);
            check!(idempotency_keys_return_the_first_job);
            check!(keys_are_stored_hashed_and_can_be_revoked);
            check!(rate_buckets_hold_across_concurrent_takers);
            check!(gallery_pages_stay_correct_across_deletes);
            check!(webhook_deliveries_are_made_with_their_events);
            check!(completed_means_every_end_but_a_retried_failure);
            check!(progress_deliveries_are_coalesced);
            check!(deliveries_are_claimed_once_and_finished_by_their_attempt);
            check!(previews_keep_only_the_latest_and_stay_out_of_the_log);
            check!(batch_claims_take_compatible_jobs_in_priority_order);
            check!(batch_claims_need_a_held_batchable_lead);
            check!(batch_claims_never_share_a_job_with_other_workers);
            check!(batched_completion_matches_one_by_one);
            check!(batched_completion_fences_each_job);
            check!(batched_completion_is_all_or_nothing_on_error);
        }
    };
}

async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = sdq::queue::sqlite::SqliteStore::open(&url).await.unwrap();
    (Arc::new(store), dir)
}

async fn postgres_store() -> (Store, common::services::PgDatabase) {
    let db = common::services::PgDatabase::create().await;
    let store = sdq::queue::postgres::PgStore::open(&db.url).await.unwrap();
    (Arc::new(store), db)
}

backend!(sqlite, sqlite_store().await);
backend!(postgres, postgres_store().await);
