//! SSE resume: `Last-Event-ID` mid-run, and subscribers that arrive after the end.

mod common;

use std::time::Duration;

use common::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_last_event_id_misses_nothing_and_repeats_nothing() {
    let mut server = Server::start(&[]).await;
    let id = server
        .submit_ok(json!({"prompt": "a long walk", "width": 192, "height": 192, "steps": 24, "seed": 9, "scheduler": "euler"}))
        .await;

    // First connection: read until step 3, then hang up.
    let mut first = server.events(&id, None).await;
    let mut seen = Vec::new();
    loop {
        let m = first
            .next(Duration::from_secs(60))
            .await
            .expect("stream open");
        let is_step3 = m.event == "progress" && m.data["step"] == 3;
        seen.push(m);
        if is_step3 {
            break;
        }
    }
    drop(first);
    let last_id = seen.last().unwrap().id.unwrap();
    // Let a few events happen while disconnected.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut second = server.events(&id, Some(last_id)).await;
    let rest = second.collect(Duration::from_secs(120)).await;
    assert!(!rest.is_empty());
    assert_eq!(
        rest[0].id,
        Some(last_id + 1),
        "resume starts right after Last-Event-ID"
    );
    assert_eq!(rest.last().unwrap().event, "succeeded");

    let all: Vec<i64> = seen.iter().chain(&rest).map(|m| m.id.unwrap()).collect();
    assert_eq!(
        all,
        (1..=all.len() as i64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let steps: Vec<i64> = seen
        .iter()
        .chain(&rest)
        .filter(|m| m.event == "progress")
        .map(|m| m.data["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, (1..=24).collect::<Vec<_>>());

    // A subscriber arriving after completion gets the whole log and the end.
    let mut late = server.events(&id, None).await;
    let replay = late.collect(Duration::from_secs(10)).await;
    let replay_ids: Vec<i64> = replay.iter().map(|m| m.id.unwrap()).collect();
    assert_eq!(replay_ids, all);
    assert_eq!(replay.last().unwrap().event, "succeeded");

    // Resuming after the terminal event closes at once with nothing to send.
    let mut after_end = server.events(&id, Some(*all.last().unwrap())).await;
    assert!(after_end.collect(Duration::from_secs(10)).await.is_empty());

    // Resuming from the middle of a finished job replays exactly the rest.
    let mut middle = server.events(&id, Some(5)).await;
    let tail: Vec<i64> = middle
        .collect(Duration::from_secs(10))
        .await
        .iter()
        .map(|m| m.id.unwrap())
        .collect();
    assert_eq!(tail, all[5..].to_vec());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_unknown_jobs_and_bad_last_event_ids_are_4xx() {
    let mut server = Server::start(&["--workers", "0"]).await;
    let (status, body) = server
        .get_json("/v1/jobs/00000000-0000-0000-0000-000000000000/events")
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let id = server.submit_ok(common::small_job("x")).await;
    let resp = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    server.stop().await;
}
