//! Dynamic batching: several txt2img requests of one geometry denoised as one UNet batch.
//!
//! Each request ("member") keeps everything that makes it its own: prompt and negative
//! prompt (its own conditioning rows), seed (its own generators, so its starting latents
//! and later draws are exactly those it gets alone), scheduler state, previews, progress
//! and outcome. Only the UNet evaluation is shared: per step, the members' inputs
//! (unconditional and conditional rows of each, under guidance) are stacked into one
//! batch, and the output is split back. A member can leave at any step (canceled) and the
//! rest go on without it; since every member has its own scheduler, nothing else changes.
//!
//! Members whose conditioning has a different length (a prompt over 77 tokens spans more
//! windows) cannot share a cross-attention batch: they form a group of their own, one
//! UNet evaluation per group per step.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use super::conditioning::Conditioning;
use super::decode::FloatImage;
use super::denoise::draws;
use super::draws::Draws;
use super::pipeline::StableDiffusion;
use super::preview::preview_due;
use super::request::{GenerateRequest, StepProgress};
use super::schedulers::Scheduler;
use super::unet::AddedConditions;
use super::InferenceError;

/// What a batched generation tells its caller, per member (by index in the request list).
pub trait BatchObserver {
    /// After each step of a member still in the batch; `Break` takes it out (it finishes
    /// with [`InferenceError::Canceled`] at once; the others carry on).
    fn step(&mut self, member: usize, progress: StepProgress) -> ControlFlow<()>;
    /// A member's outcome: called exactly once per member, as soon as it is known (a
    /// refused or canceled member at once, the others after their own decode).
    fn finished(&mut self, member: usize, result: Result<Vec<FloatImage>, InferenceError>);
}

/// One request's part of the batch.
struct Member<'a> {
    index: usize,
    req: &'a GenerateRequest,
    conditioning: Conditioning,
    scheduler: Box<dyn Scheduler>,
    noise: Draws,
    latents: Tensor,
    /// Under classifier-free guidance: unconditional and conditional rows per image.
    guided: bool,
}

impl Member<'_> {
    /// UNet rows of this member: one per image, twice under guidance.
    fn rows(&self) -> usize {
        self.req.num_images * if self.guided { 2 } else { 1 }
    }

    fn sequence(&self) -> usize {
        self.conditioning.tokens.dim(1).unwrap_or(0)
    }
}

impl StableDiffusion {
    /// Runs txt2img `requests` as one UNet batch. They must share width, height, steps,
    /// scheduler and whether guidance applies (`guidance_scale > 1`); prompts, seeds,
    /// image counts, guidance scales, clip skip and previews are each request's own.
    ///
    /// Every request's images equal what [`generate_float`](Self::generate_float) makes
    /// of it alone, up to the rounding of batched matrix products. `observer` hears each
    /// member's steps and, exactly once, its outcome; a failure of the shared UNet
    /// evaluation ends every member still running with that error.
    pub fn generate_batch(&self, requests: &[GenerateRequest], observer: &mut dyn BatchObserver) {
        let started = Instant::now();
        let Some(lead) = requests.first() else {
            return;
        };
        let use_cfg = lead.guidance_scale > 1.0;
        let mut members = Vec::with_capacity(requests.len());
        for (index, req) in requests.iter().enumerate() {
            match self.member(index, req, lead, use_cfg) {
                Ok(member) => members.push(member),
                Err(e) => observer.finished(index, Err(e)),
            }
        }
        let Some(first) = members.first() else {
            return;
        };
        let timesteps = first.scheduler.timesteps().to_vec();
        let total = timesteps.len();
        for (index, &t) in timesteps.iter().enumerate() {
            if let Err(e) = self.batch_step(&mut members, index, t) {
                for member in members.drain(..) {
                    observer.finished(member.index, Err(duplicate(&e)));
                }
                return;
            }
            let step = index + 1;
            let mut leaving = Vec::new();
            for (at, member) in members.iter().enumerate() {
                let preview = match member.req.preview_every {
                    Some(every) if preview_due(step, total, every) => {
                        match self.preview_family().preview(&member.latents) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::debug!(error = %e, "preview skipped");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                let progress = StepProgress {
                    step,
                    total,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    preview,
                };
                if observer.step(member.index, progress).is_break() {
                    leaving.push(at);
                }
            }
            for at in leaving.into_iter().rev() {
                let member = members.remove(at);
                observer.finished(member.index, Err(InferenceError::Canceled));
            }
            if members.is_empty() {
                return;
            }
        }
        for member in members {
            observer.finished(member.index, self.decode(&member.latents, member.req));
        }
    }

    /// Checks a request against the batch's lead and prepares its part: conditioning,
    /// scheduler, generators and starting latents (drawn exactly as alone).
    fn member<'a>(
        &self,
        index: usize,
        req: &'a GenerateRequest,
        lead: &GenerateRequest,
        use_cfg: bool,
    ) -> Result<Member<'a>, InferenceError> {
        self.check_request(req)?;
        if req.init_image.is_some() {
            return Err(InferenceError::InvalidRequest(
                "img2img and inpainting run alone, not in a batch".into(),
            ));
        }
        let same = req.width == lead.width
            && req.height == lead.height
            && req.steps == lead.steps
            && req.scheduler == lead.scheduler
            && (req.guidance_scale > 1.0) == use_cfg;
        if !same {
            return Err(InferenceError::InvalidRequest(format!(
                "a batch shares one size, step count, scheduler and guidance: this job has \
                 {}x{}, {} steps, {}, guidance {} against {}x{}, {} steps, {}, guidance {}",
                req.width,
                req.height,
                req.steps,
                req.scheduler,
                req.guidance_scale,
                lead.width,
                lead.height,
                lead.steps,
                lead.scheduler,
                lead.guidance_scale
            )));
        }
        let conditioning = self.conditioning(req, use_cfg)?;
        let scheduler = self.scheduler(req)?;
        let shape = self.latent_shape(req);
        let like = Tensor::zeros(&shape, self.dtype, &self.device)?;
        let mut noise = draws(req, &shape, &like)?;
        let latents = self.txt2img_latents(req, &like, &mut noise, scheduler.as_ref())?;
        Ok(Member {
            index,
            req,
            conditioning,
            scheduler,
            noise,
            latents,
            guided: use_cfg,
        })
    }

    /// One denoising step of every member: one UNet evaluation per group of members
    /// whose conditioning has the same length, then each member's own guidance and
    /// scheduler step.
    fn batch_step(
        &self,
        members: &mut [Member<'_>],
        index: usize,
        t: f64,
    ) -> Result<(), InferenceError> {
        let mut lengths: Vec<usize> = members.iter().map(Member::sequence).collect();
        lengths.sort_unstable();
        lengths.dedup();
        for length in lengths {
            let group: Vec<usize> = (0..members.len())
                .filter(|&i| members[i].sequence() == length)
                .collect();
            let mut inputs = Vec::with_capacity(group.len());
            for &i in &group {
                let m = &members[i];
                let input = if m.guided {
                    Tensor::cat(&[&m.latents, &m.latents], 0)?
                } else {
                    m.latents.clone()
                };
                inputs.push(m.scheduler.scale_model_input(input, index)?);
            }
            let input = Tensor::cat(&inputs, 0)?;
            let tokens: Vec<&Tensor> = group
                .iter()
                .map(|&i| &members[i].conditioning.tokens)
                .collect();
            let tokens = Tensor::cat(&tokens, 0)?;
            let added = match members[group[0]].conditioning.added {
                Some(_) => {
                    let part = |pick: fn(&(Tensor, Tensor)) -> &Tensor| {
                        let parts: Vec<&Tensor> = group
                            .iter()
                            .filter_map(|&i| members[i].conditioning.added.as_ref().map(pick))
                            .collect();
                        Tensor::cat(&parts, 0)
                    };
                    Some((part(|a| &a.0)?, part(|a| &a.1)?))
                }
                None => None,
            };
            let added_ref = added
                .as_ref()
                .map(|(text_embeds, time_ids)| AddedConditions {
                    text_embeds,
                    time_ids,
                });
            let predicted = self.unet.forward(&input, t, &tokens, added_ref.as_ref())?;
            let mut offset = 0;
            for &i in &group {
                let m = &mut members[i];
                let rows = m.rows();
                let own = predicted.narrow(0, offset, rows)?;
                offset += rows;
                let guided = if m.guided {
                    let parts = own.chunk(2, 0)?;
                    let (uncond, cond) = (&parts[0], &parts[1]);
                    (uncond + ((cond - uncond)? * m.req.guidance_scale)?)?
                } else {
                    own
                };
                m.latents = m.scheduler.step(&guided, index, &m.latents, &mut m.noise)?;
            }
        }
        Ok(())
    }
}

/// The same error again, for each member a shared failure ends (the error type is not
/// `Clone`: candle's and I/O errors carry sources). Whether a retry could help is kept.
fn duplicate(e: &InferenceError) -> InferenceError {
    match e {
        InferenceError::UnknownModel(m) => InferenceError::UnknownModel(m.clone()),
        InferenceError::ModelUnavailable { model, reason } => InferenceError::ModelUnavailable {
            model: model.clone(),
            reason: reason.clone(),
        },
        InferenceError::InvalidModel { path, reason } => InferenceError::InvalidModel {
            path: path.clone(),
            reason: reason.clone(),
        },
        InferenceError::InvalidRequest(m) => InferenceError::InvalidRequest(m.clone()),
        InferenceError::Canceled => InferenceError::Canceled,
        InferenceError::Candle(c) => InferenceError::Candle(candle_core::Error::Msg(c.to_string())),
        InferenceError::Io { path, source } => InferenceError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::inference::rng::TorchRng;
    use crate::inference::SchedulerKind;

    /// Records what a batch reported, member by member.
    #[derive(Default)]
    struct Recorder {
        steps: Vec<Vec<usize>>,
        results: Vec<Option<Result<Vec<FloatImage>, InferenceError>>>,
        /// Members to take out after this step.
        cancel_after: Vec<(usize, usize)>,
        /// (member, how many steps had been reported in all when it finished).
        finished_at: Vec<(usize, usize)>,
    }

    impl Recorder {
        fn new(members: usize) -> Self {
            Self {
                steps: vec![Vec::new(); members],
                results: (0..members).map(|_| None).collect(),
                ..Default::default()
            }
        }
    }

    impl BatchObserver for Recorder {
        fn step(&mut self, member: usize, progress: StepProgress) -> ControlFlow<()> {
            self.steps[member].push(progress.step);
            if self.cancel_after.contains(&(member, progress.step)) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }

        fn finished(&mut self, member: usize, result: Result<Vec<FloatImage>, InferenceError>) {
            assert!(
                self.results[member].is_none(),
                "member {member} finished twice"
            );
            self.results[member] = Some(result);
            let reported = self.steps.iter().map(Vec::len).sum();
            self.finished_at.push((member, reported));
        }
    }

    fn tiny() -> (tempfile::TempDir, StableDiffusion) {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 0).unwrap();
        let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        (dir, sd)
    }

    fn requests(scheduler: SchedulerKind) -> Vec<GenerateRequest> {
        let base = GenerateRequest::example(scheduler);
        vec![
            GenerateRequest {
                prompt: "a photo of a cat".into(),
                seed: 1,
                ..base.clone()
            },
            GenerateRequest {
                prompt: "a red house by the sea".into(),
                negative_prompt: String::new(),
                seed: 77,
                num_images: 2,
                ..base.clone()
            },
            GenerateRequest {
                // Two 77-token windows: a group of its own in every step.
                prompt: "a very long prompt about a garden, ".repeat(12),
                seed: 5,
                guidance_scale: 4.0,
                preview_every: Some(2),
                ..base.clone()
            },
            GenerateRequest {
                prompt: "a (blue:1.3) bird".into(),
                seed: 1,
                clip_skip: Some(2),
                ..base
            },
        ]
    }

    fn max_gap(a: &[FloatImage], b: &[FloatImage]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| {
                assert_eq!(x.seed, y.seed);
                x.rgb.iter().zip(&y.rgb).map(|(p, q)| (p - q).abs())
            })
            .fold(0.0, f32::max)
    }

    #[test]
    fn a_batch_makes_each_requests_own_images() {
        let (_dir, sd) = tiny();
        for scheduler in [
            SchedulerKind::EulerAncestral,
            SchedulerKind::DpmPp2mSdeKarras,
            SchedulerKind::Heun,
        ] {
            let reqs = requests(scheduler);
            let alone: Vec<Vec<FloatImage>> = reqs
                .iter()
                .map(|r| {
                    sd.generate_float(r, &mut |_| ControlFlow::Continue(()))
                        .unwrap()
                })
                .collect();
            let mut recorder = Recorder::new(reqs.len());
            sd.generate_batch(&reqs, &mut recorder);
            let total = recorder.steps[0].len();
            assert!(total >= 4, "{scheduler}: {total} evaluations");
            for (i, steps) in recorder.steps.iter().enumerate() {
                assert_eq!(*steps, (1..=total).collect::<Vec<_>>(), "{scheduler} {i}");
            }
            for (i, result) in recorder.results.into_iter().enumerate() {
                let images = result.expect("finished").expect("succeeded");
                let gap = max_gap(&images, &alone[i]);
                eprintln!("{scheduler} member {i}: max gap {:.6}/255", gap * 255.0);
                assert!(gap <= 1.0 / 255.0, "{scheduler} member {i}: {gap}");
            }
            // Different prompts and seeds give different images (the batch did not mix them up).
            assert!(max_gap(&alone[0], &alone[3]) > 0.02);
        }
    }

    #[test]
    fn members_start_from_their_own_seeds_noise() {
        let (_dir, sd) = tiny();
        let reqs = requests(SchedulerKind::EulerAncestral);
        for req in &reqs {
            let member = sd.member(0, req, &reqs[0], true).unwrap();
            let sigma = member.scheduler.init_noise_sigma();
            let [n, c, h, w] = sd.latent_shape(req);
            let expected: Vec<f32> = (0..n)
                .flat_map(|i| TorchRng::new(req.seed + i as u64).randn(c * h * w))
                .map(|v| (v as f64 * sigma) as f32)
                .collect();
            let got: Vec<f32> = member.latents.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got.len(), expected.len());
            let gap = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(gap < 1e-5, "seed {}: {gap}", req.seed);
        }
    }

    #[test]
    fn a_canceled_member_leaves_at_once_and_the_rest_finish_unchanged() {
        let (_dir, sd) = tiny();
        let reqs = requests(SchedulerKind::Euler);
        let alone0 = sd
            .generate_float(&reqs[0], &mut |_| ControlFlow::Continue(()))
            .unwrap();
        let mut recorder = Recorder::new(reqs.len());
        recorder.cancel_after = vec![(1, 2)];
        sd.generate_batch(&reqs, &mut recorder);
        assert_eq!(recorder.steps[1], [1, 2], "no step after the cancel");
        assert_eq!(recorder.steps[0], [1, 2, 3, 4]);
        // Canceled after the second step's reports, before anyone's third step.
        let (first, reported) = recorder.finished_at[0];
        assert_eq!((first, reported), (1, 2 * reqs.len()));
        let mut results = recorder.results.into_iter();
        let images0 = results.next().unwrap().unwrap().unwrap();
        assert!(max_gap(&images0, &alone0) <= 1.0 / 255.0);
        assert!(matches!(
            results.next().unwrap(),
            Some(Err(InferenceError::Canceled))
        ));
        assert!(results.all(|r| matches!(r, Some(Ok(_)))));
    }

    #[test]
    fn a_request_that_cannot_share_the_batch_is_refused_alone() {
        let (_dir, sd) = tiny();
        let mut reqs = requests(SchedulerKind::Euler);
        reqs.truncate(2);
        reqs.push(GenerateRequest {
            width: 128,
            ..reqs[0].clone()
        });
        reqs.push(GenerateRequest {
            prompt: "a cat <lora::0.5>".into(),
            ..reqs[0].clone()
        });
        let mut recorder = Recorder::new(reqs.len());
        sd.generate_batch(&reqs, &mut recorder);
        // Refused before the first step, and heard of no step.
        assert_eq!(recorder.finished_at[0], (2, 0));
        assert!(recorder.steps[2].is_empty() && recorder.steps[3].is_empty());
        let results: Vec<_> = recorder.results.into_iter().map(Option::unwrap).collect();
        assert!(
            matches!(&results[2], Err(InferenceError::InvalidRequest(m)) if m.contains("128x64"))
        );
        assert!(
            matches!(&results[3], Err(InferenceError::InvalidRequest(m)) if m.contains("LoRA"))
        );
        assert!(results[0].is_ok() && results[1].is_ok());
    }
}
