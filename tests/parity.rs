//! Our images are diffusers' images: every case in `tests/fixtures/parity/manifest.json`
//! (written by `scripts/parity/generate_fixtures.py` with diffusers on CPU) is run through
//! our pipeline on the same tiny model and must match diffusers' float output within
//! 2/255 per pixel. Run with `-- --nocapture` to see max and mean differences per case.
//!
//! The cases replay diffusers' random draws from the recorded `.npy` files; cases marked
//! `seed_path` are run a second time from the seed alone, which checks that our
//! torch-compatible RNG draws what diffusers' `torch.Generator("cpu")` list drew.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use sdq::inference::tiny::TinyKind;
use sdq::inference::tokenizer::LongPrompt;
use sdq::inference::{
    GenerateRequest, InitImage, NoiseArray, SchedulerKind, StableDiffusion, VaeTiling,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Manifest {
    tiny_models: BTreeMap<String, TinyModel>,
    tolerance: f32,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct TinyModel {
    kind: TinyKind,
    seed: u64,
    fingerprint: BTreeMap<String, Fingerprint>,
}

#[derive(Debug, Deserialize)]
struct Fingerprint {
    tensors: usize,
    abs_sum: f64,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    scheduler: String,
    prompt: String,
    negative_prompt: String,
    width: usize,
    height: usize,
    steps: usize,
    guidance_scale: f64,
    num_images: usize,
    seed: u64,
    long_prompt: LongPrompt,
    seed_path: bool,
    model: String,
    latents: Option<String>,
    init_image: Option<String>,
    strength: Option<f64>,
    mask: Option<String>,
    /// Keys written over the model's scheduler_config.json for this case.
    scheduler_config: serde_json::Map<String, serde_json::Value>,
    noise: Option<String>,
    image: String,
    /// A1111's clip skip (diffusers got `clip_skip - 1`).
    #[serde(default)]
    clip_skip: Option<usize>,
    /// Load sdq's single-file export of the tiny folder instead of the folder.
    #[serde(default)]
    single_file: Option<SingleFile>,
    #[serde(default)]
    loras: Vec<LoraCase>,
    /// Embedding files; each is called by its file name.
    #[serde(default)]
    embeddings: Vec<String>,
    /// Decode with the VAE of a tiny model of this seed.
    #[serde(default)]
    vae: Option<VaeCase>,
    /// diffusers ran with `vae.enable_tiling()` (`on`); absent: untiled.
    #[serde(default)]
    vae_tiling: Option<VaeTiling>,
}

#[derive(Debug, Deserialize)]
struct SingleFile {
    half: bool,
    ema: bool,
}

#[derive(Debug, Deserialize)]
struct LoraCase {
    file: String,
    weight: f64,
}

#[derive(Debug, Deserialize)]
struct VaeCase {
    seed: u64,
    single_file: bool,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn manifest() -> &'static Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

/// The tiny models the fixtures were made from, written once per test binary.
fn model_dir(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        for (name, model) in &manifest().tiny_models {
            sdq::inference::tiny::write_kind(&dir.path().join(name), model.seed, model.kind)
                .unwrap();
        }
        dir
    });
    root.path().join(name)
}

/// A copy of `model` under `dir` whose scheduler_config.json has `keys` written over it,
/// as diffusers' `from_config(config, **keys)` sees them.
fn with_scheduler_keys(
    model: &Path,
    dir: &Path,
    keys: &serde_json::Map<String, serde_json::Value>,
) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let folder = dir.join("model");
    copy(model, &folder);
    let path = folder.join("scheduler/scheduler_config.json");
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config.extend(keys.clone());
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    folder
}

fn npy(file: &str) -> Tensor {
    Tensor::read_npy(fixtures().join(file)).unwrap()
}

/// Largest and mean absolute difference between two equally shaped tensors.
fn differences(ours: &Tensor, theirs: &Tensor) -> (f32, f32) {
    let diff = (ours - theirs).unwrap().abs().unwrap();
    let max = diff.flatten_all().unwrap().max(0).unwrap();
    let mean = diff.flatten_all().unwrap().mean(0).unwrap();
    (max.to_scalar().unwrap(), mean.to_scalar().unwrap())
}

fn run(sd: &StableDiffusion, req: &GenerateRequest) -> Tensor {
    let images = sd
        .generate_float(req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let per_image: Vec<Tensor> = images
        .iter()
        .map(|im| Tensor::from_slice(&im.rgb, (im.height, im.width, 3), &Device::Cpu).unwrap())
        .collect();
    Tensor::stack(&per_image, 0).unwrap()
}

/// The case's model: the tiny folder or its single-file export, with the case's LoRAs,
/// embeddings and VAE.
fn load_case(case: &Case, folder: &Path, scratch: &Path) -> StableDiffusion {
    use sdq::inference::embeddings::{Embedding, EmbeddingLibrary};
    use sdq::inference::lora::Lora;
    use sdq::inference::single_file::{export, ExportOptions};
    let sd = match &case.single_file {
        None => StableDiffusion::load(folder, &Device::Cpu, DType::F32).unwrap(),
        Some(opts) => {
            let file = scratch.join(format!("{}.safetensors", case.name));
            let options = ExportOptions {
                half: opts.half,
                ema: opts.ema,
                vae_only: false,
            };
            export(folder, &file, options).unwrap();
            StableDiffusion::load(&file, &Device::Cpu, DType::F32).unwrap()
        }
    };
    let loras: Vec<(Lora, f64)> = case
        .loras
        .iter()
        .map(|l| {
            (
                Lora::read(&fixtures().join(&l.file), &l.file).unwrap(),
                l.weight,
            )
        })
        .collect();
    let refs: Vec<(&Lora, f64)> = loras.iter().map(|(l, w)| (l, *w)).collect();
    let mut sd = sd.with_loras(&refs).unwrap();
    if !case.embeddings.is_empty() {
        let library = EmbeddingLibrary::new(case.embeddings.iter().map(|file| {
            let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
            Embedding::read(&fixtures().join(file), stem).unwrap()
        }));
        sd = sd.with_embeddings(std::sync::Arc::new(library));
    }
    if let Some(vae) = &case.vae {
        let kind = manifest().tiny_models[&case.model].kind;
        let other = scratch.join(format!("vae-seed-{}", vae.seed));
        sdq::inference::tiny::write_kind(&other, vae.seed, kind).unwrap();
        let path = if vae.single_file {
            let file = scratch.join("vae.safetensors");
            let options = ExportOptions {
                vae_only: true,
                ..Default::default()
            };
            export(&other, &file, options).unwrap();
            file
        } else {
            other.join("vae")
        };
        sd = sd.with_vae(&path).unwrap();
    }
    sd
}

fn check(name: &str) {
    let m = manifest();
    let case = m
        .cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case '{name}' in the manifest"));
    let patched = tempfile::tempdir().unwrap();
    let folder = if case.scheduler_config.is_empty() {
        model_dir(&case.model)
    } else {
        with_scheduler_keys(
            &model_dir(&case.model),
            patched.path(),
            &case.scheduler_config,
        )
    };
    let sd = load_case(case, &folder, patched.path());
    let scheduler = SchedulerKind::parse(&case.scheduler)
        .unwrap_or_else(|| panic!("unknown scheduler '{}'", case.scheduler));
    let noise = match &case.noise {
        Some(file) => {
            let stack = npy(file);
            (0..stack.dim(0).unwrap())
                .map(|i| NoiseArray::from_tensor(&stack.get(i).unwrap()).unwrap())
                .collect()
        }
        None => Vec::new(),
    };
    let mut req = GenerateRequest {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative_prompt.clone(),
        width: case.width,
        height: case.height,
        steps: case.steps,
        guidance_scale: case.guidance_scale,
        seed: case.seed,
        scheduler,
        num_images: case.num_images,
        long_prompt: case.long_prompt,
        clip_skip: case.clip_skip,
        vae_tiling: case.vae_tiling.unwrap_or(VaeTiling::Off),
        latents: case
            .latents
            .as_deref()
            .map(|file| NoiseArray::from_tensor(&npy(file)).unwrap()),
        noise,
        init_image: case.init_image.as_deref().map(|file| {
            let image = image::open(fixtures().join(file)).unwrap().to_rgb8();
            InitImage {
                width: image.width() as usize,
                height: image.height() as usize,
                rgb: image.into_raw(),
                strength: case.strength.unwrap(),
                mask: case.mask.as_deref().map(|file| {
                    image::open(fixtures().join(file))
                        .unwrap()
                        .to_luma8()
                        .into_raw()
                }),
            }
        }),
        preview_every: None,
    };
    let expected = npy(&case.image);
    let mut runs = vec![("recorded draws", run(&sd, &req))];
    if case.seed_path {
        req.latents = None;
        req.noise.clear();
        runs.push(("seed only", run(&sd, &req)));
    }
    for (how, ours) in runs {
        assert_eq!(ours.dims(), expected.dims(), "{name}: image shape");
        let (max, mean) = differences(&ours, &expected);
        eprintln!(
            "parity {name:<22} {how:<15} max {max:.6} ({:.2}/255) mean {mean:.6}",
            max * 255.0
        );
        assert!(
            max <= m.tolerance,
            "{name} ({how}): max difference {max} ({:.2}/255) exceeds {}/255",
            max * 255.0,
            m.tolerance * 255.0
        );
    }
}

/// One test per fixture case, so failures name the case and cases run in parallel.
macro_rules! cases {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $test() { check($name) })*
        const CHECKED: &[&str] = &[$($name),*];
    };
}

cases! {
    single_file_sd15 => "single-file-sd15",
    single_file_sd15_half_with_ema_keys => "single-file-sd15-fp16-ema",
    single_file_sd2 => "single-file-sd2",
    single_file_inpaint => "single-file-inpaint",
    single_file_sdxl => "single-file-sdxl",
    single_file_sdxl_inpaint => "single-file-sdxl-inpaint",
    lora_kohya_with_locon_and_alpha => "lora-kohya",
    lora_kohya_negative_weight => "lora-kohya-negative-weight",
    lora_peft => "lora-peft",
    two_loras_at_once => "lora-two-at-once",
    lora_sdxl_kohya_two_encoders => "lora-sdxl-kohya",
    lora_sdxl_kohya_other_weight => "lora-sdxl-kohya-half",
    textual_inversion => "embedding",
    textual_inversion_in_negative_prompt => "embedding-negative",
    sdxl_textual_inversion => "sdxl-embedding",
    clip_skip_2 => "clip-skip-2",
    sdxl_clip_skip_2 => "sdxl-clip-skip-2",
    vae_override_folder => "vae-folder",
    vae_override_single_file => "vae-single-file",
    inpaint_unet_with_given_latents => "inpaint-latents",
    inpaint_blending_with_given_latents => "inpaint-blend-latents",
    vae_tiling_decode_in_overlapping_tiles => "vae-tiling",
    vae_tiling_img2img_encodes_in_tiles_too => "vae-tiling-img2img",
    vae_tiling_sdxl_not_square => "vae-tiling-sdxl",
    ddim => "ddim",
    euler => "euler",
    euler_ancestral => "euler-a",
    negative_prompt => "negative-prompt",
    guidance_one_skips_the_unconditional_pass => "guidance-1",
    batch_of_two => "batch-2",
    long_prompt_truncated => "long-prompt",
    sd2_v_prediction_ddim => "sd2-ddim",
    sd2_v_prediction_euler_ancestral => "sd2-euler-a",
    sd2_v_prediction_dpmpp_2m_karras => "sd2-dpmpp-2m-karras",
    sd2_v_prediction_heun => "sd2-heun",
    img2img_ddim => "img2img-ddim",
    img2img_euler_ancestral => "img2img-euler-a",
    img2img_heun => "img2img-heun",
    img2img_dpmpp_2m_sde_karras => "img2img-dpmpp-2m-sde-karras",
    inpaint_blending_ddim => "inpaint-blend-ddim",
    inpaint_blending_euler_ancestral => "inpaint-blend-euler-a",
    inpaint_unet_ddim => "inpaint-ddim",
    inpaint_unet_euler_ancestral => "inpaint-euler-a",
    inpaint_unet_dpmpp_2m_karras => "inpaint-dpmpp-2m-karras",
    trailing_spacing => "trailing-euler",
    karras_sigmas_ending_at_sigma_min => "karras-euler-sigma-min",
    pndm_with_runge_kutta_warm_up => "pndm-prk",
    cosine_betas => "cosine-ddim",
    unipc_third_order => "unipc-order-3",
    zero_terminal_snr_v_prediction => "sd2-zero-snr-ddim",
    pndm => "pndm",
    heun => "heun",
    dpmpp_2m => "dpmpp-2m",
    dpmpp_2m_karras => "dpmpp-2m-karras",
    dpmpp_2m_sde_karras => "dpmpp-2m-sde-karras",
    unipc => "unipc",
    lcm => "lcm",
    sdxl_euler_zeroes_an_empty_negative_prompt => "sdxl-euler",
    sdxl_euler_ancestral => "sdxl-euler-a",
    sdxl_dpmpp_2m_karras => "sdxl-dpmpp-2m-karras",
    sdxl_negative_prompt => "sdxl-negative-prompt",
    sdxl_guidance_one_not_square => "sdxl-guidance-1",
    sdxl_long_prompt_truncated => "sdxl-long-prompt",
    sdxl_batch_of_two => "sdxl-batch-2",
    sdxl_img2img_euler_ancestral => "sdxl-img2img-euler-a",
    sdxl_inpaint_blending_euler_ancestral => "sdxl-inpaint-blend-euler-a",
    sdxl_inpaint_unet_ddim => "sdxl-inpaint-ddim",
    sdxl_inpaint_unet_euler_ancestral => "sdxl-inpaint-euler-a",
    sdxl_inpaint_unet_dpmpp_2m_karras => "sdxl-inpaint-dpmpp-2m-karras",
}

#[test]
fn every_fixture_case_has_a_test() {
    let missing: Vec<&str> = manifest()
        .cases
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| !CHECKED.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "fixture cases without a test: {missing:?}"
    );
}

/// The fixtures only mean something for the exact weights they were made from.
#[test]
fn tiny_models_are_the_ones_the_fixtures_were_made_from() {
    for (name, model) in &manifest().tiny_models {
        check_fingerprint(name, model);
    }
}

fn check_fingerprint(name: &str, model: &TinyModel) {
    let mut parts = vec!["text_encoder", "unet", "vae"];
    if matches!(model.kind, TinyKind::Sdxl | TinyKind::SdxlInpaint) {
        parts.push("text_encoder_2");
    }
    assert_eq!(
        model.fingerprint.len(),
        parts.len(),
        "{name}: fingerprinted parts"
    );
    for part in parts {
        let file = if part.starts_with("text_encoder") {
            "model.safetensors"
        } else {
            "diffusion_pytorch_model.safetensors"
        };
        let tensors =
            candle_core::safetensors::load(model_dir(name).join(part).join(file), &Device::Cpu)
                .unwrap();
        let abs_sum: f64 = tensors
            .values()
            .map(|t| {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            })
            .sum();
        let want = &model.fingerprint[part];
        assert_eq!(tensors.len(), want.tensors, "{name} {part}: tensor count");
        assert!(
            ((abs_sum - want.abs_sum) / want.abs_sum).abs() < 1e-9,
            "{name} {part}: weights differ from the fixtures' ({abs_sum} vs {}); \
             regenerate them with scripts/parity/generate_fixtures.py",
            want.abs_sum
        );
    }
}

#[derive(Debug, Deserialize)]
struct TokenizerFixture {
    cases: Vec<TokenizerCase>,
}

#[derive(Debug, Deserialize)]
struct TokenizerCase {
    prompt: String,
    ids: Vec<u32>,
    truncated: Vec<u32>,
}

/// Our tokenizer gives the ids diffusers' CLIPTokenizer gives, whether it is loaded
/// from `tokenizer.json` or built from `vocab.json` + `merges.txt`.
#[test]
fn tokenizer_ids_match_transformers() {
    for (name, model) in &manifest().tiny_models {
        check_tokenizer(name, "tokenizer", &format!("tokenizer-ids.{name}.json"));
        if matches!(model.kind, TinyKind::Sdxl | TinyKind::SdxlInpaint) {
            // SDXL's second tokenizer pads with "!" instead of the end marker.
            check_tokenizer(
                name,
                "tokenizer_2",
                &format!("tokenizer-ids.{name}.tokenizer_2.json"),
            );
        }
    }
}

fn check_tokenizer(model: &str, folder: &str, file: &str) {
    use sdq::inference::tokenizer::PromptTokenizer;
    let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
    let fixture: TokenizerFixture = serde_json::from_str(&text).unwrap();
    let plain = tempfile::tempdir().unwrap();
    let tokenizer_dir = model_dir(model).join(folder);
    for file in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(tokenizer_dir.join(file), plain.path().join(file)).unwrap();
    }
    for (source, dir) in [
        ("tokenizer.json", tokenizer_dir.clone()),
        ("vocab + merges", plain.path().to_path_buf()),
    ] {
        let tok = PromptTokenizer::load(&dir, 77).unwrap();
        for case in &fixture.cases {
            let window = tok
                .windows(&case.prompt, LongPrompt::Truncate, 1)
                .unwrap()
                .remove(0);
            assert_eq!(
                window, case.truncated,
                "{model} {folder} {source}: {:?} (77-token window)",
                case.prompt
            );
            let content = tok.content_ids(&case.prompt).unwrap();
            let framed: Vec<u32> = [case.ids[0]]
                .into_iter()
                .chain(content)
                .chain([case.ids[case.ids.len() - 1]])
                .collect();
            assert_eq!(
                framed, case.ids,
                "{model} {folder} {source}: {:?} (all ids)",
                case.prompt
            );
        }
    }
    eprintln!(
        "tokenizer {model} {folder}: {} prompts match",
        fixture.cases.len()
    );
}

#[derive(Debug, Deserialize)]
struct RngFixture {
    cases: Vec<RngCase>,
}

#[derive(Debug, Deserialize)]
struct RngCase {
    seed: u64,
    n: usize,
    file: String,
}

/// `TorchRng::new(seed).randn(n)`, twice in a row, gives what
/// `torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))` gives.
#[test]
fn torch_rng_matches_torch_randn() {
    use sdq::inference::rng::TorchRng;
    let text = std::fs::read_to_string(fixtures().join("rng.json")).unwrap();
    let fixture: RngFixture = serde_json::from_str(&text).unwrap();
    for case in &fixture.cases {
        let want: Vec<Vec<f32>> = npy(&case.file).to_vec2().unwrap();
        let mut rng = TorchRng::new(case.seed);
        for (draw, expected) in want.iter().enumerate() {
            let ours = rng.randn(case.n);
            let max = ours
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            eprintln!(
                "torch rng seed {} n {} draw {draw}: max diff {max:e}",
                case.seed, case.n
            );
            assert!(
                max <= 1e-6,
                "seed {} n {} draw {draw}: max diff {max}",
                case.seed,
                case.n
            );
        }
    }
}

/// `sdq generate --latents FILE --noise FILE...` replays a diffusers run from the command
/// line: the PNG it writes is diffusers' image rounded to 8 bits.
#[test]
fn cli_replays_diffusers_from_latents_and_noise_files() {
    cli_replay("euler-a");
}

/// The same for img2img: `--init-image` and `--strength`, with the posterior sample and
/// add_noise's noise as the first two `--noise` files.
#[test]
fn cli_replays_diffusers_img2img() {
    cli_replay("img2img-euler-a");
}

/// And for inpainting with an inpainting UNet: `--mask` as well.
#[test]
fn cli_replays_diffusers_inpainting() {
    cli_replay("inpaint-euler-a");
}

/// And for SDXL (two text encoders, pooled embeds, time ids, zeroed empty negative).
#[test]
fn cli_replays_diffusers_sdxl() {
    cli_replay("sdxl-euler-a");
}

fn path_arg(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

fn cli_replay(name: &str) {
    let case = manifest().cases.iter().find(|c| c.name == name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stack = npy(case.noise.as_deref().unwrap());
    let mut args: Vec<String> = [
        "--model",
        model_dir(&case.model).to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
        "generate",
        "--prompt",
        &case.prompt,
        "--scheduler",
        &case.scheduler,
        "--long-prompt",
        "truncate",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(latents) = &case.latents {
        args.extend(["--latents".into(), path_arg(&fixtures().join(latents))]);
    }
    if let Some(init) = &case.init_image {
        args.extend(["--init-image".into(), path_arg(&fixtures().join(init))]);
        args.extend(["--strength".into(), case.strength.unwrap().to_string()]);
    }
    if let Some(mask) = &case.mask {
        args.extend(["--mask".into(), path_arg(&fixtures().join(mask))]);
    }
    for i in 0..stack.dim(0).unwrap() {
        let path = dir.path().join(format!("noise-{i}.npy"));
        stack.get(i).unwrap().write_npy(&path).unwrap();
        args.extend(["--noise".into(), path.to_str().unwrap().into()]);
    }
    let out = dir.path().join("out.png");
    args.extend(
        [
            ("--steps", case.steps.to_string()),
            ("--guidance-scale", case.guidance_scale.to_string()),
            // A seed whose generator would draw other noise: the files must be used.
            ("--seed", (case.seed + 1000).to_string()),
            ("--width", case.width.to_string()),
            ("--height", case.height.to_string()),
            ("--output", out.to_str().unwrap().to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v]),
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sdq"))
        .args(&args)
        .status()
        .unwrap();
    assert!(status.success(), "sdq {args:?}");
    let png = image::open(&out).unwrap().to_rgb8();
    let expected: Vec<f32> = npy(&case.image).flatten_all().unwrap().to_vec1().unwrap();
    let worst = png
        .as_raw()
        .iter()
        .zip(&expected)
        .map(|(&ours, &theirs)| (ours as f32 - (theirs * 255.0).round()).abs())
        .fold(0.0f32, f32::max);
    eprintln!("cli {name}: max difference {worst} levels of 255");
    assert!(worst <= 2.0, "{worst} levels of 255");
}
