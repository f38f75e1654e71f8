//! The blocking half of a job: load the model, denoise, encode the images; and what it
//! hands back to the async half.

use std::ops::ControlFlow;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::engine::Engine;
use super::lease::StopFlags;
use super::spec::png_metadata;
use crate::inference::{self, GenerateRequest, GeneratedImage, InferenceError, SchedulerKind};
use crate::queue::JobSpec;
use crate::storage::png::encode;
use crate::storage::thumbnail::thumbnail_jpeg;

/// One finished image: its seed, the PNG and its gallery thumbnail (JPEG).
pub(super) struct EncodedImage {
    pub(super) seed: u64,
    pub(super) png: Vec<u8>,
    pub(super) thumbnail: Vec<u8>,
}

/// What the blocking half of a job hands back.
pub(super) struct Rendered {
    pub(super) images: Vec<EncodedImage>,
    pub(super) load_ms: u64,
    pub(super) inference_ms: u64,
    pub(super) encode_ms: u64,
    /// How many jobs shared the UNet batch (1: it ran alone).
    pub(super) batch_size: usize,
}

/// How a job's generation ended.
pub(super) enum Outcome {
    Rendered(Rendered),
    /// Stopped between steps because a stop flag was raised (cancel, release, lost lease).
    Stopped,
    Failed {
        error: String,
        /// A retry cannot help (bad input, missing model).
        permanent: bool,
    },
}

impl From<Result<Rendered, InferenceError>> for Outcome {
    fn from(result: Result<Rendered, InferenceError>) -> Self {
        match result {
            Ok(rendered) => Outcome::Rendered(rendered),
            Err(InferenceError::Canceled) => Outcome::Stopped,
            Err(e) => Outcome::Failed {
                error: e.to_string(),
                permanent: e.is_permanent(),
            },
        }
    }
}

/// One job alone: load, denoise, encode.
pub(super) fn render(
    engine: &Engine,
    spec: &JobSpec,
    mut request: GenerateRequest,
    inputs: Option<(Bytes, Option<Bytes>)>,
    flags: &StopFlags,
    steps: mpsc::UnboundedSender<inference::StepProgress>,
) -> Result<Rendered, InferenceError> {
    if let Some((image, mask)) = inputs {
        request.init_image = Some(crate::inference::init_image::init_image(
            &image,
            mask.as_deref(),
            Some(request.width),
            Some(request.height),
            spec.strength,
        )?);
    }
    let t0 = Instant::now();
    let sd = engine.get(spec)?;
    let load_ms = t0.elapsed().as_millis() as u64;
    let t1 = Instant::now();
    let images = sd.generate(&request, &mut |p| {
        let _ = steps.send(p);
        if flags.any() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    let inference_ms = t1.elapsed().as_millis() as u64;
    let t2 = Instant::now();
    let images = encode_images(spec, request.scheduler, &images)?;
    Ok(Rendered {
        images,
        load_ms,
        inference_ms,
        encode_ms: t2.elapsed().as_millis() as u64,
        batch_size: 1,
    })
}

/// PNGs (with the job's recipe) and thumbnails of a job's images.
pub(super) fn encode_images(
    spec: &JobSpec,
    scheduler: SchedulerKind,
    images: &[GeneratedImage],
) -> Result<Vec<EncodedImage>, InferenceError> {
    images
        .iter()
        .map(|img| {
            let (w, h) = (img.width as u32, img.height as u32);
            let meta = png_metadata(spec, scheduler, img.seed);
            let png = encode(w, h, &img.rgb, &meta)
                .map_err(|e| InferenceError::InvalidRequest(format!("PNG encoding failed: {e}")))?;
            let thumbnail = thumbnail_jpeg(w, h, &img.rgb).map_err(|e| {
                InferenceError::InvalidRequest(format!("thumbnail encoding failed: {e}"))
            })?;
            Ok(EncodedImage {
                seed: img.seed,
                png,
                thumbnail,
            })
        })
        .collect()
}
