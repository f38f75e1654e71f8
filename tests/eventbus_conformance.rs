//! One conformance suite for every `EventBus`: in-process and Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sdq::queue::{
    local_bus::LocalBus, redis_bus::RedisBus, BusMessage, Event, EventBus, EventKind,
};
use uuid::Uuid;

type Bus = Arc<dyn EventBus>;

fn event(job: Uuid, seq: i64) -> Event {
    Event {
        job_id: job,
        seq,
        kind: EventKind::Progress {
            step: seq,
            total: 10,
            elapsed_ms: 1,
            eta_ms: 1,
        },
    }
}

async fn next<T>(s: &mut futures::stream::BoxStream<'static, T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("message in time")
        .expect("stream open")
}

async fn subscribers_get_their_jobs_events_in_order(bus: Bus) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut sub = bus.subscribe(a).await.unwrap();
    bus.publish(&event(b, 1)).await.unwrap();
    for seq in 1..=3 {
        bus.publish(&event(a, seq)).await.unwrap();
    }
    for seq in 1..=3 {
        match next(&mut sub).await {
            BusMessage::Event(e) => assert_eq!((e.job_id, e.seq), (a, seq)),
            other => panic!("{other:?}"),
        }
    }
}

async fn cancels_and_wakeups_reach_listeners(bus: Bus) {
    let mut cancels = bus.cancels().await.unwrap();
    let mut wakeups = bus.new_jobs().await.unwrap();
    // Resilient subscriptions connect in the background; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = Uuid::new_v4();
    bus.send_cancel(job).await.unwrap();
    assert_eq!(next(&mut cancels).await, job);
    bus.notify_new_job().await.unwrap();
    next(&mut wakeups).await;
    bus.ping().await.unwrap();
}

macro_rules! backend {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn subscribers_get_their_jobs_events_in_order() {
                let (bus, _guard) = $open;
                super::subscribers_get_their_jobs_events_in_order(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancels_and_wakeups_reach_listeners() {
                let (bus, _guard) = $open;
                super::cancels_and_wakeups_reach_listeners(bus).await;
            }
        }
    };
}

fn local() -> (Bus, ()) {
    (Arc::new(LocalBus::new()), ())
}

fn redis() -> (Bus, common::services::RedisServer) {
    let server = common::services::RedisServer::start();
    (Arc::new(RedisBus::new(&server.url()).unwrap()), server)
}

backend!(in_process, local());
backend!(redis, redis());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_survives_an_outage() {
    let mut server = common::services::RedisServer::start();
    let bus = RedisBus::new(&server.url()).unwrap();
    let mut wakeups = bus.new_jobs().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = Uuid::new_v4();
    let mut sub = bus.subscribe(job).await.unwrap();
    server.kill();
    // Publishing fails fast instead of hanging, and a job subscription ends.
    let t = std::time::Instant::now();
    assert!(bus.publish(&event(job, 1)).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("ends")
        .is_none());
    assert!(bus.subscribe(job).await.is_err());
    server.restart();
    // The wake-up stream reconnects by itself and says so.
    tokio::time::timeout(Duration::from_secs(15), wakeups.next())
        .await
        .expect("reconnected")
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        if bus.publish(&event(job, 2)).await.is_ok() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "publisher did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.notify_new_job().await.unwrap();
    next(&mut wakeups).await;
}
