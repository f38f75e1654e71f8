//! One job alone: the way every img2img and inpainting job runs, and every job of a
//! worker with `--batch-size 1`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::lease::{heartbeat_loop, spawn_reporter, StopFlags};
use super::render::{render, Outcome};
use super::spec::generate_request;
use super::Worker;
use crate::inference;
use crate::queue::{JobSpec, Lease};

impl Worker {
    /// Runs one claimed job to an outcome, which it returns for the metrics.
    pub(super) async fn process(
        &self,
        lease: Lease,
        mut shutdown: watch::Receiver<bool>,
    ) -> &'static str {
        let started = Instant::now();
        let job = lease.job.clone();
        tracing::info!(model = %job.spec.model, steps = job.spec.steps, "job claimed");
        let request = match generate_request(&job.spec) {
            Ok(r) => r,
            Err(e) => return self.finish_failed(&lease, &e.to_string(), None).await,
        };
        let inputs = match self.fetch_inputs(&job.spec).await {
            Ok(inputs) => inputs,
            Err((error, retry)) => {
                let retry = retry
                    .then(|| crate::queue::retry::backoff(job.attempt, self.config.retry_base));
                return self.finish_failed(&lease, &error, retry).await;
            }
        };
        let flags = Arc::new(StopFlags::default());
        if job.cancel_requested {
            StopFlags::raise(&flags.cancel);
        }
        self.set_current(vec![(job.id, flags.clone())]);

        // Spawned tasks and the blocking thread do not inherit the job's span by
        // themselves; each is given it, so every line of the job's work carries its id.
        let heartbeat = tokio::spawn(
            heartbeat_loop(
                self.queue.clone(),
                lease.clone(),
                self.config.lease,
                flags.clone(),
            )
            .in_current_span(),
        );
        let (steps_tx, steps_rx) = mpsc::unbounded_channel::<inference::StepProgress>();
        let reporter = spawn_reporter(
            self.queue.clone(),
            lease.clone(),
            flags.clone(),
            steps_rx,
            true,
        );

        let blocking = {
            let engine = self.engine.clone();
            let flags = flags.clone();
            let spec = job.spec.clone();
            let span = tracing::Span::current();
            super::priority::spawn_inference(self.config.inference_nice, move || {
                span.in_scope(|| render(&engine, &spec, request, inputs, &flags, steps_tx))
            })
        };
        let flags_list = [flags.clone()];
        let outcome = self.with_grace(blocking, &flags_list, &mut shutdown).await;
        let _ = reporter.await;
        heartbeat.abort();
        self.set_current(Vec::new());
        let outcome = match outcome {
            Ok(result) => Outcome::from(result),
            Err(join) => Outcome::Failed {
                error: format!("inference crashed: {join}"),
                permanent: false,
            },
        };
        self.settle(&lease, &flags, outcome, started, None).await
    }

    /// Awaits `work`; after a shutdown signal, lets it run for the grace period, then
    /// raises `release` on every flag so the generation stops at its next step.
    pub(super) async fn with_grace<T>(
        &self,
        work: impl std::future::Future<Output = T>,
        flags: &[Arc<StopFlags>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> T {
        tokio::pin!(work);
        let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        // A finished `Sleep` stays ready: the branch fires once, not in a loop.
        let mut released = false;
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = shutdown.changed(), if grace.is_none() => {
                    if *shutdown.borrow() {
                        tracing::info!(grace_s = self.config.grace.as_secs(), "shutting down; finishing the current job");
                        grace = Some(Box::pin(tokio::time::sleep(self.config.grace)));
                    }
                }
                _ = async { grace.as_mut().expect("guarded").await }, if grace.is_some() && !released => {
                    released = true;
                    for f in flags {
                        StopFlags::raise(&f.release);
                    }
                }
            }
        }
    }

    /// Reads the img2img start image and mask of a job from the object store. Errors say
    /// whether a retry could help (a store outage) or not (the object is gone).
    pub(super) async fn fetch_inputs(
        &self,
        spec: &JobSpec,
    ) -> Result<Option<(Bytes, Option<Bytes>)>, (String, bool)> {
        let Some(init_key) = &spec.init_image else {
            return Ok(None);
        };
        let fetch = |key: String| async move {
            self.images.get(&key).await.map_err(|e| {
                let retry = !matches!(e, crate::storage::StorageError::NotFound(_));
                (format!("reading input image {key} failed: {e}"), retry)
            })
        };
        let image = fetch(init_key.clone()).await?;
        let mask = match &spec.mask_image {
            Some(key) => Some(fetch(key.clone()).await?),
            None => None,
        };
        Ok(Some((image, mask)))
    }
}
