//! OpenAI's streamed partial images, made from sdq's step previews.
//!
//! A streamed request with `partial_images` N asks its job for previews spaced so that
//! about N fall before the last step (`openai.rs`); this forwards the first N of them as
//! `{prefix}.partial_image` events while the job runs. OpenAI's partial images have the
//! requested size, so each preview (latent-sized) is scaled up to it and encoded in the
//! requested format. OpenAI may send fewer partials than asked, and so may sdq: a job
//! that ends quickly, or a subscriber that joins late, sees fewer previews.

use std::io::Cursor;
use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use futures::StreamExt;
use image::imageops::FilterType;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::image_ops::{b64, encode_as, unb64};
use super::openai::{self, Delivery};
use crate::queue::{BusMessage, EventKind, Queue, Scope};

/// How often the job row is re-read when the bus is quiet.
const POLL: Duration = Duration::from_secs(1);

/// Forwards up to `delivery.partial_images` previews of job `id` to `tx` until the job
/// ends, all are sent, or the client goes away. Returns when the caller should wait for
/// the end as usual.
pub async fn forward(
    queue: &Queue,
    id: Uuid,
    scope: &Scope,
    (width, height): (u32, u32),
    delivery: &Delivery,
    prefix: &str,
    tx: &mpsc::Sender<Result<SseEvent, std::convert::Infallible>>,
) {
    let wanted = delivery.partial_images;
    let Ok(mut live) = queue.bus.subscribe(id).await else {
        return;
    };
    let mut sent = 0;
    while sent < wanted {
        match queue.store.get(id, scope).await {
            Ok(Some(job)) if !job.status.is_terminal() => {}
            _ => return,
        }
        let message = match tokio::time::timeout(POLL, live.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(_) => continue,
        };
        let preview = match message {
            BusMessage::Event(event) => match event.kind {
                EventKind::Preview(preview) => preview,
                kind if kind.is_terminal() => return,
                _ => continue,
            },
            BusMessage::Lagged => continue,
        };
        let encoded = match scaled(&preview.image, width, height, delivery) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "preview not turned into a partial image");
                continue;
            }
        };
        let created = chrono::Utc::now().timestamp();
        let event_type = format!("{prefix}.partial_image");
        let data = openai::stream_event(
            &event_type,
            created,
            b64(&encoded),
            (width, height),
            delivery,
            Some(sent),
        );
        let event = SseEvent::default().event(event_type).data(data.to_string());
        if tx.send(Ok(event)).await.is_err() {
            return;
        }
        sent += 1;
    }
}

/// A preview's `data:` URL as an image of the requested size and format.
fn scaled(data_url: &str, width: u32, height: u32, delivery: &Delivery) -> Result<Vec<u8>, String> {
    let bytes = unb64(data_url)?;
    let small = image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
    let big = small
        .resize_exact(width, height, FilterType::Triangle)
        .to_rgb8();
    let mut png = Cursor::new(Vec::new());
    big.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    encode_as(&png.into_inner(), delivery.format)
}
