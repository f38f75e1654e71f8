//! Conformance checks for what the store keeps over time: retention of finished jobs
//! (globally and per key), compaction of progress, the image keys still referenced,
//! and backups.

use super::*;

/// Claims the next job and completes it with one image; returns its object key.
pub async fn run_to_success(store: &Store, id: Uuid) -> String {
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

pub async fn retention_purges_only_old_finished_jobs(store: Store) {
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

pub async fn retention_follows_each_keys_own_limit(store: Store) {
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

pub async fn compaction_drops_progress_of_finished_jobs(store: Store) {
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

pub async fn referenced_keys_are_image_rows_and_inputs(store: Store) {
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

pub async fn backup_copies_the_database_or_names_the_tool(store: Store) {
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
