//! Model weights on the CPU are the files' own pages (`inference::mapped`): a loaded
//! model's tensors live in the mapping, the image is what copied weights give, and every
//! mapping is gone once the model is dropped. One test in its own binary, because the
//! mapping counts are process-wide.

use std::ops::ControlFlow;

use candle_core::{DType, Device};
use sdq::inference::mapped::usage;
use sdq::inference::{GenerateRequest, SchedulerKind, StableDiffusion};

#[test]
fn a_loaded_model_runs_on_its_files_pages_and_gives_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    sdq::inference::tiny::ensure(&folder, 0).unwrap();
    assert_eq!(usage(), (0, 0), "nothing mapped before loading");

    let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
    let (tensors, files) = usage();
    // The UNet, VAE and text encoder files stay mapped, by the tensors taken from them.
    assert_eq!(files, 3, "{tensors} tensors in {files} mapped files");
    assert!(tensors > 100, "only {tensors} tensors are the files' pages");

    let req = GenerateRequest {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 64,
        steps: 3,
        guidance_scale: 7.5,
        seed: 1,
        scheduler: SchedulerKind::Euler,
        num_images: 1,
        long_prompt: Default::default(),
        clip_skip: None,
        vae_tiling: Default::default(),
        latents: None,
        noise: Vec::new(),
        init_image: None,
        preview_every: None,
    };
    let mapped = sd
        .generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    drop(sd);
    assert_eq!(usage(), (0, 0), "the mappings outlived the model");

    // A load in another dtype converts the tensors, which are then copies: only the VAE,
    // which this model keeps in f32 (`force_upcast`), stays mapped.
    let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F16).unwrap();
    assert_eq!(usage().1, 1, "converted tensors are copies");
    drop(sd);

    // A second load reuses the released address space and gives the same pixels.
    let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(usage().1, 3);
    let again = sd
        .generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    drop(sd);
    assert_eq!(
        mapped[0].rgb, again[0].rgb,
        "same seed, same pixels on a reused mapping"
    );
    assert_eq!(usage(), (0, 0));
}
