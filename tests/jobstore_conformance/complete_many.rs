//! Conformance checks for batched completion: `complete_many` leaves every job exactly as
//! `complete` one by one would (row, images, events and their seqs, webhook deliveries),
//! fences each job by its own token, and writes nothing when it fails as a whole.

use std::sync::Arc;
use std::time::Duration;

use sdq::queue::webhooks::WebhookEvent;
use sdq::queue::{
    Completion, Enqueued, Event, JobSpec, JobStatus, JobStore, Lease, NewApiKey, NewImage, NewJob,
    Scope, StoreError,
};
use serde_json::{json, Value};
use uuid::Uuid;

type Store = Arc<dyn JobStore>;

const LEASE: Duration = Duration::from_secs(30);

fn spec(webhook: bool) -> JobSpec {
    JobSpec {
        prompt: "same prompt".into(),
        model: "m".into(),
        width: 64,
        height: 64,
        steps: 4,
        num_images: 2,
        scheduler: "euler".into(),
        long_prompt: "chunk".into(),
        webhook_url: webhook.then(|| "https://hooks.example.com/sdq".to_string()),
        webhook_events: if webhook {
            vec![WebhookEvent::Started, WebhookEvent::Completed]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// Queues a job (with a webhook: owned by a fresh key, as webhooks need) and claims it.
async fn claimed(store: &Store, webhook: bool) -> Lease {
    let mut job = NewJob::local(spec(webhook), 0, 3);
    if webhook {
        let issued = sdq::queue::keys::issue(
            NewApiKey {
                name: "hooks".into(),
                ..Default::default()
            },
            1_000,
        );
        store.insert_key(&issued.key).await.unwrap();
        job.owner = issued.key.owner();
    }
    let Enqueued::New(job, _) = store.enqueue(job).await.unwrap() else {
        panic!("new job")
    };
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.id, job.id, "the only queued job");
    lease
}

fn images(job: Uuid, n: i64) -> Vec<NewImage> {
    (0..n)
        .map(|i| {
            let id = Uuid::now_v7();
            NewImage {
                id,
                index: i,
                object_key: format!("{job}/{id}.png"),
                url: format!("/v1/images/{id}"),
                seed: 40 + i,
                width: 64,
                height: 64,
                bytes: 100 + i,
            }
        })
        .collect()
}

fn completion(lease: &Lease, n: i64) -> Completion {
    Completion {
        id: lease.job.id,
        token: lease.token,
        images: images(lease.job.id, n),
        timings: json!({"total_ms": 10 + n, "batch_size": 3}),
    }
}

/// A value with what must differ between two jobs taken out: ids, urls (they name the
/// image ids) and the place in line.
fn without_ids(mut v: Value) -> Value {
    match &mut v {
        Value::Object(map) => {
            for key in ["id", "url", "position", "job_id"] {
                map.remove(key);
            }
            for value in map.values_mut() {
                *value = without_ids(value.take());
            }
        }
        Value::Array(items) => {
            for value in items.iter_mut() {
                *value = without_ids(value.take());
            }
        }
        _ => {}
    }
    v
}

fn events_shape(events: &[Event]) -> Vec<(i64, Value)> {
    events
        .iter()
        .map(|e| (e.seq, without_ids(serde_json::to_value(&e.kind).unwrap())))
        .collect()
}

/// Everything the store keeps about a finished job, with the ids taken out.
async fn outcome(store: &Store, id: Uuid) -> Value {
    let job = store.get(id, &Scope::All).await.unwrap().unwrap();
    let images: Vec<Value> = store
        .job_images(id, &Scope::All)
        .await
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i.owner, job.owner);
            json!([
                i.index,
                i.seed,
                i.width,
                i.height,
                i.bytes,
                i.model,
                i.prompt,
                i.object_key.starts_with(&id.to_string())
            ])
        })
        .collect();
    let events = store.events_after(id, 0, &Scope::All).await.unwrap();
    let deliveries: Vec<Value> = store
        .job_deliveries(id)
        .await
        .unwrap()
        .iter()
        .map(|d| json!([d.event, d.seq, d.url, d.status, d.attempts]))
        .collect();
    json!({
        "status": job.status,
        "last_seq": job.last_seq,
        "attempt": job.attempt,
        "progress": [job.progress_step, job.progress_total],
        "error": job.error,
        "timings": job.timings,
        "finished": job.finished_at.is_some(),
        "images": images,
        "events": events_shape(&events),
        "deliveries": deliveries,
    })
}

pub async fn batched_completion_matches_one_by_one(store: Store) {
    // Pairs of the same kind of job: with a webhook, plain, and without images.
    let kinds = [(true, 2), (false, 1), (false, 0)];
    let mut alone = Vec::new();
    let mut together = Vec::new();
    for (webhook, n) in kinds {
        alone.push((claimed(&store, webhook).await, n));
        together.push((claimed(&store, webhook).await, n));
    }
    let mut returned_alone = Vec::new();
    for (lease, n) in &alone {
        let c = completion(lease, *n);
        returned_alone.push(
            store
                .complete(c.id, c.token, c.images, c.timings)
                .await
                .unwrap(),
        );
    }
    let results = store
        .complete_many(together.iter().map(|(l, n)| completion(l, *n)).collect())
        .await
        .unwrap();
    assert_eq!(results.len(), together.len());
    for (i, result) in results.into_iter().enumerate() {
        let returned = result.unwrap();
        let (a, b) = (alone[i].0.job.id, together[i].0.job.id);
        assert!(returned.iter().all(|e| e.job_id == b));
        // The events it returns are the ones `complete` returns, and the ones stored.
        assert_eq!(events_shape(&returned), events_shape(&returned_alone[i]));
        let first = returned[0].seq;
        let stored = store.events_after(b, first - 1, &Scope::All).await.unwrap();
        assert_eq!(events_shape(&stored), events_shape(&returned));
        let names: Vec<&str> = returned.iter().map(|e| e.kind.name()).collect();
        let mut expected = vec!["image"; kinds[i].1 as usize];
        expected.push("succeeded");
        assert_eq!(names, expected);
        assert_eq!(
            outcome(&store, b).await,
            outcome(&store, a).await,
            "job {i}"
        );
    }
    let hooked = outcome(&store, together[0].0.job.id).await;
    assert_eq!(
        hooked["deliveries"].as_array().unwrap().len(),
        2,
        "started and completed: {hooked}"
    );
    let job = store
        .get(together[0].0.job.id, &Scope::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    // Gap-free: queued, started, two images, succeeded.
    let seqs: Vec<i64> = store
        .events_after(job.id, 0, &Scope::All)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(store.complete_many(Vec::new()).await.unwrap().is_empty());
}

pub async fn batched_completion_fences_each_job(store: Store) {
    let first = claimed(&store, false).await;
    let stale = claimed(&store, true).await;
    let third = claimed(&store, false).await;
    // The middle job went back to the queue and another worker holds it now.
    store.release(stale.job.id, stale.token).await.unwrap();
    let (current, _) = store.claim("other", None, LEASE).await.unwrap().unwrap();
    assert_eq!(current.job.id, stale.job.id);
    let before = store.get(stale.job.id, &Scope::All).await.unwrap().unwrap();
    let deliveries_before = store.job_deliveries(stale.job.id).await.unwrap().len();

    let results = store
        .complete_many(vec![
            completion(&first, 1),
            completion(&stale, 1),
            completion(&third, 1),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(
        matches!(&results[1], Err(StoreError::LeaseLost(id)) if *id == stale.job.id),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok());
    for id in [first.job.id, third.job.id] {
        let job = store.get(id, &Scope::All).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(store.job_images(id, &Scope::All).await.unwrap().len(), 1);
    }
    // Nothing of the refused completion was written.
    let after = store.get(stale.job.id, &Scope::All).await.unwrap().unwrap();
    assert_eq!(after.status, JobStatus::Running);
    assert_eq!(after.last_seq, before.last_seq);
    assert!(after.timings.is_none());
    assert!(store
        .job_images(stale.job.id, &Scope::All)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.job_deliveries(stale.job.id).await.unwrap().len(),
        deliveries_before
    );
    // A finished job cannot be completed again, alone or in a batch.
    let again = store
        .complete_many(vec![completion(&first, 0), completion(&stale, 0)])
        .await
        .unwrap();
    assert!(again
        .iter()
        .all(|r| matches!(r, Err(StoreError::LeaseLost(_)))));
    // The worker that holds it now completes it, its seqs following on.
    let events = store
        .complete_many(vec![completion(&current, 1)])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [after.last_seq + 1, after.last_seq + 2]);
    let deliveries = store.job_deliveries(stale.job.id).await.unwrap();
    assert_eq!(
        deliveries.last().map(|d| (d.event, d.seq)),
        Some((WebhookEvent::Completed, after.last_seq + 2))
    );
}

pub async fn batched_completion_is_all_or_nothing_on_error(store: Store) {
    let a = claimed(&store, false).await;
    let b = claimed(&store, false).await;
    // Naming a job twice is refused as a whole: nothing is written.
    let refused = store
        .complete_many(vec![
            completion(&a, 1),
            completion(&b, 1),
            completion(&a, 0),
        ])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    for lease in [&a, &b] {
        let job = store.get(lease.job.id, &Scope::All).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.last_seq, lease.job.last_seq);
    }
    // Two image rows with one id: the second job's insert fails, so the first's rolls
    // back with it.
    let mut first = completion(&a, 1);
    let mut second = completion(&b, 1);
    second.images[0].id = first.images[0].id;
    first.images[0].object_key = format!("{}/dup.png", a.job.id);
    assert!(store.complete_many(vec![first, second]).await.is_err());
    for lease in [&a, &b] {
        let job = store.get(lease.job.id, &Scope::All).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Running, "rolled back");
        assert!(store
            .job_images(lease.job.id, &Scope::All)
            .await
            .unwrap()
            .is_empty());
    }
    let ok = store
        .complete_many(vec![completion(&a, 1), completion(&b, 1)])
        .await
        .unwrap();
    assert!(ok.iter().all(Result::is_ok));
}
