//! Conformance checks for what keys and owners see and may do: listing with cursors,
//! per-owner defaults, isolation, quotas, idempotency, API keys, rate buckets and the
//! gallery.

use super::*;

pub async fn listing_is_newest_first_with_a_cursor(store: Store) {
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

pub async fn owner_default_models_are_per_owner(store: Store) {
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

pub fn owned(owner: &str, prompt: &str) -> NewJob {
    NewJob {
        owner: owner.into(),
        ..NewJob::local(spec("m", prompt), 0, 3)
    }
}

/// Runs the job `id` to success with `n` images; returns the image ids.
pub async fn succeed_with_images(store: &Store, n: i64) -> (Uuid, Vec<Uuid>) {
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

pub async fn owners_see_only_their_own(store: Store) {
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

pub async fn quotas_count_unfinished_jobs_per_owner_even_under_races(store: Store) {
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

pub async fn idempotency_keys_return_the_first_job(store: Store) {
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

pub async fn keys_are_stored_hashed_and_can_be_revoked(store: Store) {
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

pub async fn rate_buckets_hold_across_concurrent_takers(store: Store) {
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

pub async fn gallery_pages_stay_correct_across_deletes(store: Store) {
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
