//! Conformance checks for claiming: the preference order (priority, age, the worker's
//! loaded model and adapters), the lease a claim sets, and no job claimed twice.

use super::*;

pub async fn claim_order_is_priority_then_age(store: Store) {
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

pub async fn claim_prefers_the_loaded_model_then_its_loras(store: Store) {
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
pub async fn claim_follows_the_full_preference_order(store: Store) {
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

pub async fn claim_prefers_the_loaded_model_within_a_priority(store: Store) {
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

pub async fn claim_sets_lease_attempt_and_started_event(store: Store) {
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

pub async fn concurrent_claims_never_share_a_job(store: Store) {
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
