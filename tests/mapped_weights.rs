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

    half_precision_files_run_from_their_f32_copies(&folder, &req);
    kernel_layouts_are_kept_and_mapped_by_later_loads(&folder, &req);
}

/// The kernels' transposed and Winograd weights, made on a model's first image, are
/// written to the weight cache; a later load maps them instead of making them again and
/// gives the same pixels; a damaged layout file is remade, never trusted.
fn kernel_layouts_are_kept_and_mapped_by_later_loads(
    folder: &std::path::Path,
    req: &GenerateRequest,
) {
    use sdq::inference::mapped::f32_copy::{prune, set_cache_dir};
    use sdq::inference::mapped::kernel_layouts::{counts, wait};
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let layout_files = || files_ending(&cache, ".kernels.safetensors");
    let run = || {
        let sd = StableDiffusion::load(folder, &Device::Cpu, DType::F32).unwrap();
        let rgb = sd
            .generate(req, &mut |_| ControlFlow::Continue(()))
            .unwrap()
            .remove(0)
            .rgb;
        wait();
        drop(sd);
        rgb
    };
    set_cache_dir(Some(cache.clone()));

    let (taken0, made0) = counts();
    let first = run();
    let (taken1, made1) = counts();
    assert_eq!(taken1, taken0, "layouts were found before any was written");
    let made = made1 - made0;
    assert!(made > 50, "only {made} layouts were made");
    let files = layout_files();
    // The UNet's and the VAE's (the text encoder runs on candle's ops).
    assert_eq!(files.len(), 2, "{files:?}");

    let second = run();
    let (taken2, made2) = counts();
    assert_eq!(second, first, "mapped layouts changed the pixels");
    assert_eq!(made2, made1, "a later load made layouts again");
    assert_eq!(
        taken2 - taken1,
        made,
        "not every layout came from the files"
    );
    assert_eq!(usage(), (0, 0), "the layout files stayed mapped");
    assert_eq!(
        layout_files(),
        files,
        "a load without new layouts rewrote them"
    );

    // A damaged file is not trusted: the layouts are made again and the file rewritten.
    std::fs::write(&files[0], b"not a safetensors file").unwrap();
    let third = run();
    let (_, made3) = counts();
    assert_eq!(third, first);
    assert!(made3 > made2, "the damaged file was used");
    assert!(
        std::fs::metadata(&files[0]).unwrap().len() > 1000,
        "not rewritten"
    );

    // `sdq gc` keeps current layouts and deletes those whose source is gone.
    set_cache_dir(None);
    assert!(prune(&cache, false).is_empty(), "current layouts are stale");
    let copy = dir.path().join("tiny");
    copy_dir(folder, &copy);
    set_cache_dir(Some(cache.clone()));
    let sd = StableDiffusion::load(&copy, &Device::Cpu, DType::F32).unwrap();
    sd.generate(req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    wait();
    drop(sd);
    set_cache_dir(None);
    assert_eq!(
        layout_files().len(),
        4,
        "the copy's layouts were not written"
    );
    std::fs::remove_dir_all(&copy).unwrap();
    let mut pruned = prune(&cache, false);
    pruned.sort();
    assert_eq!(pruned.len(), 2, "{pruned:?}");
    assert_eq!(layout_files(), files, "the wrong layouts were pruned");
}

/// The files in `dir` whose names end with `suffix`, sorted.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.to_string_lossy().ends_with(suffix));
    found.sort();
    found
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// An f16 checkpoint loaded for f32 on the CPU is converted once into an f32 file in the
/// cache folder, which later loads map: the same pixels as converting in memory, the
/// copy's pages instead of private memory, one copy per version of the source.
fn half_precision_files_run_from_their_f32_copies(folder: &std::path::Path, req: &GenerateRequest) {
    use sdq::inference::mapped::f32_copy::set_cache_dir;
    use sdq::inference::single_file::{export, ExportOptions};
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("tiny-fp16.safetensors");
    let options = ExportOptions {
        half: true,
        ema: true,
        ..Default::default()
    };
    export(folder, &half, options).unwrap();
    let cache = dir.path().join("cache");
    let copies = || files_ending(&cache, ".f32.safetensors");
    let generate = |sd: &StableDiffusion| {
        let rgb = sd
            .generate(req, &mut |_| ControlFlow::Continue(()))
            .unwrap()
            .remove(0)
            .rgb;
        sdq::inference::mapped::kernel_layouts::wait();
        rgb
    };

    set_cache_dir(None);
    let sd = StableDiffusion::load(&half, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        usage().1,
        0,
        "without a cache, f16 tensors are converted copies"
    );
    let converted = generate(&sd);
    drop(sd);
    assert!(copies().is_empty());

    set_cache_dir(Some(cache.clone()));
    let sd = StableDiffusion::load(&half, &Device::Cpu, DType::F32).unwrap();
    let made = copies();
    assert_eq!(made.len(), 1, "one copy of the checkpoint: {made:?}");
    assert_eq!(usage().1, 1, "the model runs from its f32 copy's pages");
    // The kernels take another route through mapped weights (transposed copies rather
    // than strided reads), so the sums run in another order: not bit-identical.
    let from_copy = generate(&sd);
    drop(sd);
    let worst = from_copy
        .iter()
        .zip(&converted)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 2, "the copy's pixels are up to {worst}/255 off");
    let header = sdq::inference::weights::open_safetensors(&made[0]).unwrap();
    let tensors = header.tensors();
    assert!(tensors
        .iter()
        .all(|(_, t)| t.dtype != safetensors::Dtype::F16));
    assert!(
        !tensors.iter().any(|(n, _)| n.starts_with("model_ema.")),
        "the unused EMA weights were copied"
    );
    // Every tensor the model reads is exactly the f16 value, widened.
    let source = sdq::inference::weights::open_safetensors(&half).unwrap();
    for (name, _) in &tensors {
        let want = source.load(name, &Device::Cpu).unwrap();
        let got = header.load(name, &Device::Cpu).unwrap();
        if want.dtype().is_float() {
            assert_eq!(got.dtype(), DType::F32, "{name}");
        } else {
            assert_eq!(got.dtype(), want.dtype(), "{name}");
        }
        let values = |t: candle_core::Tensor| {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        assert_eq!(values(got), values(want), "{name}");
    }
    drop((header, source));
    assert_eq!(usage(), (0, 0));

    let written = std::fs::metadata(&made[0]).unwrap().modified().unwrap();
    let sd = StableDiffusion::load(&half, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(generate(&sd), from_copy);
    drop(sd);
    assert_eq!(copies(), made, "a second load made another copy");
    assert_eq!(
        std::fs::metadata(&made[0]).unwrap().modified().unwrap(),
        written
    );

    // A new version of the source replaces its copy.
    std::thread::sleep(std::time::Duration::from_millis(20));
    export(folder, &half, options).unwrap();
    let sd = StableDiffusion::load(&half, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(generate(&sd), from_copy);
    drop(sd);
    let replaced = copies();
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(
        replaced, made,
        "the edited checkpoint still loads the old copy"
    );
    set_cache_dir(None);

    // `sdq gc` prunes copies whose source is gone.
    use sdq::inference::mapped::f32_copy::prune;
    let copies_in = |mut found: Vec<std::path::PathBuf>| {
        found.retain(|p| p.to_string_lossy().ends_with(".f32.safetensors"));
        found
    };
    // The kernel layouts of the replaced copy go (their source is gone), the copy stays.
    assert!(
        copies_in(prune(&cache, false)).is_empty(),
        "a current copy is stale"
    );
    std::fs::remove_file(&half).unwrap();
    let would = prune(&cache, true);
    assert_eq!(copies_in(would.clone()), replaced);
    assert_eq!(would.len(), 2, "the copy's layouts would stay: {would:?}");
    assert_eq!(copies(), replaced, "a dry run deleted");
    assert_eq!(prune(&cache, false), would);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    assert_eq!(usage(), (0, 0));
}
