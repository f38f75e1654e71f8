//! Conformance checks for dynamic batching: `claim_batch` takes the queued jobs that share
//! the lead's batch key, best priority first, each under its own lease, and never a job
//! another worker holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sdq::queue::{Enqueued, EventKind, JobSpec, JobStatus, JobStore, Lease, NewJob, Scope};
use uuid::Uuid;

type Store = Arc<dyn JobStore>;

const LEASE: Duration = Duration::from_secs(30);

fn txt2img(prompt: &str) -> JobSpec {
    JobSpec {
        prompt: prompt.into(),
        model: "m".into(),
        width: 64,
        height: 64,
        steps: 4,
        guidance_scale: 7.5,
        seed: 1,
        scheduler: "euler".into(),
        num_images: 1,
        long_prompt: "chunk".into(),
        ..Default::default()
    }
}

async fn put(store: &Store, spec: JobSpec, priority: i32) -> Uuid {
    let Enqueued::New(job, _) = store
        .enqueue(NewJob::local(spec, priority, 3))
        .await
        .unwrap()
    else {
        panic!("new job")
    };
    // Distinct creation times, so "oldest first" is well defined.
    tokio::time::sleep(Duration::from_millis(3)).await;
    job.id
}

async fn status(store: &Store, id: Uuid) -> JobStatus {
    store.get(id, &Scope::All).await.unwrap().unwrap().status
}

fn ids(leases: &[(Lease, sdq::queue::Event)]) -> Vec<Uuid> {
    leases.iter().map(|(l, _)| l.job.id).collect()
}

pub async fn batch_claims_take_compatible_jobs_in_priority_order(store: Store) {
    let old_low = put(&store, txt2img("old low"), 0).await;
    let lead = put(&store, txt2img("lead"), 5).await;
    let mid = put(&store, txt2img("mid"), 1).await;
    let new_low = put(&store, txt2img("new low"), 0).await;
    // Each differs from the lead in one thing a batch must share.
    let others = [
        JobSpec {
            width: 128,
            ..txt2img("wider")
        },
        JobSpec {
            height: 32,
            ..txt2img("shorter")
        },
        JobSpec {
            steps: 5,
            ..txt2img("longer")
        },
        JobSpec {
            model: "other".into(),
            ..txt2img("other model")
        },
        JobSpec {
            scheduler: "ddim".into(),
            ..txt2img("other scheduler")
        },
        JobSpec {
            guidance_scale: 3.0,
            ..txt2img("other guidance")
        },
        JobSpec {
            init_image: Some("inputs/x/init".into()),
            strength: Some(0.5),
            ..txt2img("img2img")
        },
    ];
    let mut incompatible = Vec::new();
    for spec in others {
        incompatible.push(put(&store, spec, 9).await);
    }
    // Prompts, seeds, image counts and previews are each job's own.
    let own = put(
        &store,
        JobSpec {
            negative_prompt: "blurry".into(),
            seed: 42,
            num_images: 2,
            previews: true,
            ..txt2img("own settings")
        },
        0,
    )
    .await;

    // The incompatible jobs outrank the lead, so a plain claim takes one of them first.
    let (first, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert!(incompatible.contains(&first.job.id));
    let none = store.claim_batch(&first, "w", 4, LEASE).await.unwrap();
    let taken: Vec<Uuid> = ids(&none);
    assert!(
        taken.iter().all(|id| !incompatible.contains(id)) && taken.len() <= 4,
        "only jobs with the same key as {:?}: {taken:?}",
        first.job.spec
    );
    // Each of the seven has a key of its own (the img2img job none), so nothing joins.
    assert!(taken.is_empty(), "{taken:?}");
    for _ in 1..incompatible.len() {
        let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
        assert!(incompatible.contains(&lease.job.id));
        assert!(store
            .claim_batch(&lease, "w", 4, LEASE)
            .await
            .unwrap()
            .is_empty());
    }

    let (lead_lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lead_lease.job.id, lead);
    let batch = store
        .claim_batch(&lead_lease, "w2", 2, LEASE)
        .await
        .unwrap();
    assert_eq!(
        ids(&batch),
        [mid, old_low],
        "best priority, then the oldest"
    );
    let mut tokens = HashSet::from([lead_lease.token]);
    for (lease, event) in &batch {
        assert!(tokens.insert(lease.token), "each job has its own token");
        assert_eq!(lease.job.status, JobStatus::Running);
        assert_eq!(lease.job.attempt, 1);
        assert_eq!(lease.job.worker.as_deref(), Some("w2"));
        assert_eq!(event.job_id, lease.job.id);
        assert_eq!(event.seq, 2);
        assert_eq!(
            event.kind,
            EventKind::Started {
                attempt: 1,
                worker: "w2".into()
            }
        );
        let log = store
            .events_after(lease.job.id, 0, &Scope::All)
            .await
            .unwrap();
        assert_eq!(log.last().unwrap().kind, event.kind);
        // The lease is a real one: it heartbeats, and no other token does.
        assert!(!store
            .heartbeat(lease.job.id, lease.token, LEASE)
            .await
            .unwrap());
        assert!(store
            .heartbeat(lease.job.id, lead_lease.token, LEASE)
            .await
            .is_err());
        assert_eq!(status(&store, lease.job.id).await, JobStatus::Running);
    }
    let rest = store
        .claim_batch(&lead_lease, "w2", 10, LEASE)
        .await
        .unwrap();
    assert_eq!(ids(&rest), [new_low, own]);
    assert!(store
        .claim_batch(&lead_lease, "w2", 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert!(store.claim("w", None, LEASE).await.unwrap().is_none());
}

pub async fn batch_claims_need_a_held_batchable_lead(store: Store) {
    let lead = put(&store, txt2img("lead"), 1).await;
    let waiting = put(&store, txt2img("waiting"), 0).await;
    let (lease, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease.job.id, lead);
    assert!(store
        .claim_batch(&lease, "w", 0, LEASE)
        .await
        .unwrap()
        .is_empty());
    // A token that is not the lead's claims nothing.
    let forged = Lease {
        token: Uuid::new_v4(),
        ..lease.clone()
    };
    assert!(store
        .claim_batch(&forged, "w", 4, LEASE)
        .await
        .unwrap()
        .is_empty());
    // Neither does a lead that has finished.
    store.cancel_running(lead, lease.token).await.unwrap();
    assert!(store
        .claim_batch(&lease, "w", 4, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(status(&store, waiting).await, JobStatus::Queued);

    // A job waiting out a retry backoff is not claimable yet, in a batch or not.
    let (second, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(second.job.id, waiting);
    store
        .fail(
            waiting,
            second.token,
            "transient",
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let lead2 = put(&store, txt2img("lead 2"), 0).await;
    let (lease2, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease2.job.id, lead2);
    assert!(store
        .claim_batch(&lease2, "w", 4, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(status(&store, waiting).await, JobStatus::Queued);
    // Nor is a canceled one.
    let canceled = put(&store, txt2img("canceled"), 0).await;
    store.request_cancel(canceled, &Scope::All).await.unwrap();
    assert!(store
        .claim_batch(&lease2, "w", 4, LEASE)
        .await
        .unwrap()
        .is_empty());

    // img2img never batches, not even with an identical img2img job.
    let img2img = || JobSpec {
        init_image: Some("inputs/x/init".into()),
        strength: Some(0.5),
        ..txt2img("img2img")
    };
    let a = put(&store, img2img(), 5).await;
    let b = put(&store, img2img(), 5).await;
    let (lease_a, _) = store.claim("w", None, LEASE).await.unwrap().unwrap();
    assert_eq!(lease_a.job.id, a);
    assert!(store
        .claim_batch(&lease_a, "w", 4, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(status(&store, b).await, JobStatus::Queued);
}

pub async fn batch_claims_never_share_a_job_with_other_workers(store: Store) {
    let mut all = HashSet::new();
    for i in 0..40 {
        all.insert(put(&store, txt2img(&format!("job {i}")), 0).await);
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut got = Vec::new();
            // Half the workers batch, half claim one at a time.
            while let Some((lead, _)) = store.claim(&worker, None, LEASE).await.unwrap() {
                got.push((lead.job.id, lead.token));
                if w % 2 == 0 {
                    for (lease, _) in store.claim_batch(&lead, &worker, 3, LEASE).await.unwrap() {
                        got.push((lease.job.id, lease.token));
                    }
                }
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let distinct: HashSet<Uuid> = claimed.iter().map(|(id, _)| *id).collect();
    assert_eq!(claimed.len(), 40, "no job claimed twice");
    assert_eq!(distinct, all);
    // Every claim holds: each token still fences its own job.
    for (id, token) in claimed {
        assert!(!store.heartbeat(id, token, LEASE).await.unwrap());
    }
}
