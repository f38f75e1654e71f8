//! Dynamic batching: a lead job and the compatible jobs claimed with it, run as one UNet
//! batch (`StableDiffusion::generate_batch`).
//!
//! Every job keeps its own lease (and heartbeat), progress events, previews, cancel and
//! outcome: each ends on its own as soon as its result is known, except that the jobs
//! that succeed together commit together (`commit.rs`). A job canceled mid-run
//! is dropped from the batch after the step in which its cancel arrived and ends
//! `canceled` at once; the others carry on without it. A failure of the whole batch
//! (the model does not load, the UNet fails) ends each job with that error, retried or
//! not as it would be alone.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use uuid::Uuid;

use super::commit::{CommitGroup, CommitTicket};
use super::lease::{heartbeat_loop, spawn_reporter, StopFlags};
use super::render::{encode_images, Outcome, Rendered};
use super::spec::generate_request;
use super::Worker;
use crate::inference::{
    BatchObserver, FloatImage, GenerateRequest, InferenceError, SchedulerKind, StepProgress,
};
use crate::queue::{JobSpec, Lease};

/// One job's end of the batch, on the blocking thread.
struct Member {
    spec: JobSpec,
    scheduler: SchedulerKind,
    flags: Arc<StopFlags>,
    /// Dropped when the job finishes, which ends its reporter.
    steps: Option<mpsc::UnboundedSender<StepProgress>>,
    done: Option<oneshot::Sender<Outcome>>,
}

/// Hands each job's steps and outcome to its own async half.
struct Report {
    members: Vec<Member>,
    load_ms: u64,
    started: Instant,
    size: usize,
}

impl Report {
    fn send(&mut self, member: usize, outcome: Outcome) {
        let m = &mut self.members[member];
        m.steps = None;
        if let Some(done) = m.done.take() {
            let _ = done.send(outcome);
        }
    }
}

impl BatchObserver for Report {
    fn step(&mut self, member: usize, progress: StepProgress) -> ControlFlow<()> {
        let m = &self.members[member];
        if let Some(steps) = &m.steps {
            let _ = steps.send(progress);
        }
        if m.flags.any() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn finished(&mut self, member: usize, result: Result<Vec<FloatImage>, InferenceError>) {
        let inference_ms = self.started.elapsed().as_millis() as u64;
        let m = &self.members[member];
        let encoded = result.and_then(|images| {
            let t = Instant::now();
            let images: Vec<_> = images.iter().map(FloatImage::to_u8).collect();
            let encoded = encode_images(&m.spec, m.scheduler, &images)?;
            Ok(Rendered {
                images: encoded,
                load_ms: self.load_ms,
                inference_ms,
                encode_ms: t.elapsed().as_millis() as u64,
                batch_size: self.size,
            })
        });
        self.send(member, Outcome::from(encoded));
    }
}

/// A claimed job of the batch, on the async side.
struct Job {
    lease: Lease,
    flags: Arc<StopFlags>,
    span: tracing::Span,
}

impl Worker {
    /// Claims up to `batch_size - 1` more jobs that can share `lead`'s UNet batch; none
    /// when batching is off, the lead cannot batch, or the claim fails (the lead then
    /// runs alone).
    pub(super) async fn claim_batch(&self, lead: &Lease) -> Vec<Lease> {
        if self.config.batch_size <= 1 || lead.job.spec.batch_key().is_none() {
            return Vec::new();
        }
        let max = self.config.batch_size - 1;
        match self
            .queue
            .claim_batch(lead, &self.config.name, max, self.config.lease)
            .await
        {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(job_id = %lead.job.id, error = %e, "batch claim failed; running the job alone");
                Vec::new()
            }
        }
    }

    /// Runs claimed jobs as one batch; returns each job's outcome and time for the metrics.
    pub(super) async fn process_batch(
        &self,
        leases: Vec<Lease>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Vec<(&'static str, Duration)> {
        let started = Instant::now();
        let ids: Vec<String> = leases.iter().map(|l| l.job.id.to_string()).collect();
        let batch_span = tracing::info_span!("batch", jobs = %ids.join(","));
        tracing::info!(parent: &batch_span, size = leases.len(), model = %leases[0].job.spec.model, "batch claimed");

        let mut outcomes = Vec::with_capacity(leases.len());
        let mut jobs = Vec::with_capacity(leases.len());
        let mut requests: Vec<GenerateRequest> = Vec::with_capacity(leases.len());
        for lease in leases {
            let span = tracing::info_span!(parent: &batch_span, "job", job_id = %lease.job.id, attempt = lease.job.attempt);
            match generate_request(&lease.job.spec) {
                Ok(request) => {
                    requests.push(request);
                    let flags = Arc::new(StopFlags::default());
                    if lease.job.cancel_requested {
                        StopFlags::raise(&flags.cancel);
                    }
                    jobs.push(Job { lease, flags, span });
                }
                Err(e) => {
                    let outcome = self
                        .finish_failed(&lease, &e.to_string(), None)
                        .instrument(span)
                        .await;
                    outcomes.push((outcome, started.elapsed()));
                }
            }
        }
        if jobs.is_empty() {
            return outcomes;
        }
        self.set_current(
            jobs.iter()
                .map(|j| (j.lease.job.id, j.flags.clone()))
                .collect(),
        );

        let mut members = Vec::with_capacity(jobs.len());
        let mut drivers = Vec::with_capacity(jobs.len());
        let mut tickets = CommitGroup::tickets(self.queue.clone(), jobs.len());
        for (i, (job, request)) in jobs.iter().zip(&requests).enumerate() {
            let heartbeat = tokio::spawn(
                heartbeat_loop(
                    self.queue.clone(),
                    job.lease.clone(),
                    self.config.lease,
                    job.flags.clone(),
                )
                .instrument(job.span.clone()),
            );
            let (steps_tx, steps_rx) = mpsc::unbounded_channel();
            // One UNet evaluation serves every job: only the first feeds the step metric.
            let reporter = job.span.in_scope(|| {
                spawn_reporter(
                    self.queue.clone(),
                    job.lease.clone(),
                    job.flags.clone(),
                    steps_rx,
                    i == 0,
                )
            });
            let (done_tx, done_rx) = oneshot::channel();
            members.push(Member {
                spec: job.lease.job.spec.clone(),
                scheduler: request.scheduler,
                flags: job.flags.clone(),
                steps: Some(steps_tx),
                done: Some(done_tx),
            });
            drivers.push(
                self.drive(job, done_rx, reporter, heartbeat, started, tickets.pop())
                    .instrument(job.span.clone()),
            );
        }

        let blocking = {
            let engine = self.engine.clone();
            let lead = jobs[0].lease.job.spec.clone();
            let span = batch_span.clone();
            super::priority::spawn_inference(self.config.inference_nice, move || {
                span.in_scope(|| {
                    let size = members.len();
                    let t0 = Instant::now();
                    // Same model and adapters for every job: the batch key says so.
                    let sd = engine.get(&lead);
                    let mut report = Report {
                        members,
                        load_ms: t0.elapsed().as_millis() as u64,
                        started: Instant::now(),
                        size,
                    };
                    match sd {
                        Ok(sd) => sd.generate_batch(&requests, &mut report),
                        Err(e) => {
                            for i in 0..size {
                                let failed = Outcome::Failed {
                                    error: e.to_string(),
                                    permanent: e.is_permanent(),
                                };
                                report.send(i, failed);
                            }
                        }
                    }
                })
            })
        };
        let flags: Vec<Arc<StopFlags>> = jobs.iter().map(|j| j.flags.clone()).collect();
        let ended = self
            .with_grace(futures::future::join_all(drivers), &flags, &mut shutdown)
            .await;
        if let Err(e) = blocking.await {
            tracing::error!(parent: &batch_span, error = %e, "the batch's inference thread failed");
        }
        self.set_current(Vec::new());
        outcomes.extend(ended);
        outcomes
    }

    /// One job of the batch, from its outcome to its end in the store.
    async fn drive(
        &self,
        job: &Job,
        done: oneshot::Receiver<Outcome>,
        reporter: tokio::task::JoinHandle<()>,
        heartbeat: tokio::task::JoinHandle<()>,
        started: Instant,
        ticket: Option<CommitTicket>,
    ) -> (&'static str, Duration) {
        // No outcome means the inference thread died (a panic): a retry may help.
        let outcome = done.await.unwrap_or_else(|_| Outcome::Failed {
            error: "inference crashed: the batch's inference thread stopped".into(),
            permanent: false,
        });
        let _ = reporter.await;
        heartbeat.abort();
        let id: Uuid = job.lease.job.id;
        self.current
            .lock()
            .expect("current lock")
            .retain(|(running, _)| *running != id);
        let outcome = self
            .settle(&job.lease, &job.flags, outcome, started, ticket)
            .await;
        (outcome, started.elapsed())
    }
}
