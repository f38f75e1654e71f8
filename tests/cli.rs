//! `sdq tiny-model` and `sdq generate`: the offline model and one-shot generation.

mod common;

use common::{decode_png, run_sdq};

#[test]
fn tiny_model_writes_a_diffusers_folder_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_sdq(&["tiny-model", "--out", a.to_str().unwrap(), "--seed", "3"]);
    run_sdq(&["tiny-model", "--out", b.to_str().unwrap(), "--seed", "3"]);
    for file in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ] {
        let (fa, fb) = (
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
        );
        assert_eq!(fa, fb, "{file} differs between two runs with the same seed");
    }
    let c = dir.path().join("c");
    run_sdq(&["tiny-model", "--out", c.to_str().unwrap(), "--seed", "4"]);
    let unet = "unet/diffusion_pytorch_model.safetensors";
    assert_ne!(
        std::fs::read(a.join(unet)).unwrap(),
        std::fs::read(c.join(unet)).unwrap()
    );
    // Refuses to overwrite.
    let out = std::process::Command::new(common::sdq_bin())
        .args(["tiny-model", "--out", a.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

fn generate(dir: &std::path::Path, model: &str, seed: &str, out: &str, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(out);
    let data = dir.join("data");
    let mut args = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "--model",
        model,
        "generate",
        "--prompt",
        "a red house by a lake",
        "--negative-prompt",
        "blurry",
        "--steps",
        "3",
        "--width",
        "64",
        "--height",
        "48",
        "--seed",
        seed,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_sdq(&args);
    std::fs::read(&out).unwrap_or_default()
}

#[test]
fn generate_writes_png_with_metadata_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate(dir.path(), "tiny", "11", "one.png", &[]);
    let (w, h, chunks) = decode_png(&first);
    assert_eq!((w, h), (64, 48));
    let params = &chunks
        .iter()
        .find(|(k, _)| k == "parameters")
        .expect("parameters chunk")
        .1;
    assert!(
        params.starts_with("a red house by a lake\nNegative prompt: blurry\n"),
        "{params}"
    );
    assert!(
        params.contains(
            "Steps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: 11, Size: 64x48, Model: tiny"
        ),
        "{params}"
    );
    let spec: serde_json::Value = serde_json::from_str(
        &chunks
            .iter()
            .find(|(k, _)| k == "sdq")
            .expect("sdq chunk")
            .1,
    )
    .unwrap();
    assert_eq!(spec["seed"], 11);
    assert_eq!(spec["prompt"], "a red house by a lake");

    let again = generate(dir.path(), "tiny", "11", "two.png", &[]);
    assert_eq!(
        first, again,
        "same seed and inputs must give byte-identical PNGs"
    );
    let other = generate(dir.path(), "tiny", "12", "three.png", &[]);
    assert_ne!(first, other, "a different seed must give a different image");
}

#[test]
fn generate_several_images_numbers_the_files_and_uses_seed_plus_index() {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        "tiny",
        "20",
        "batch.png",
        &["--num-images", "2", "--scheduler", "ddim"],
    );
    let b0 = std::fs::read(dir.path().join("batch-0.png")).unwrap();
    let b1 = std::fs::read(dir.path().join("batch-1.png")).unwrap();
    assert_ne!(b0, b1);
    // Image 1 of a batch seeded 20 is the single image seeded 21.
    let single = generate(
        dir.path(),
        "tiny",
        "21",
        "single.png",
        &["--scheduler", "ddim"],
    );
    let pixels = |bytes: &[u8]| {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        buf
    };
    // Same starting noise, so the same image; but candle's CPU products over a batch of
    // four UNet rows round differently from those over two (about 2e-6 in the UNet's
    // output, for candle's UNet and ours alike), which can move a pixel by one level.
    let (batch, alone) = (pixels(&b1), pixels(&single));
    assert_eq!(batch.len(), alone.len());
    let worst = batch
        .iter()
        .zip(&alone)
        .map(|(&a, &b)| (a as i16 - b as i16).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "image 1 of the batch differs by {worst} levels");
}

#[test]
fn generate_loads_a_model_folder_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("my-model");
    run_sdq(&[
        "tiny-model",
        "--out",
        folder.to_str().unwrap(),
        "--seed",
        "0",
    ]);
    let by_path = generate(
        dir.path(),
        folder.to_str().unwrap(),
        "5",
        "path.png",
        &["--scheduler", "euler"],
    );
    let (w, h, _) = decode_png(&by_path);
    assert_eq!((w, h), (64, 48));
}

#[test]
fn offline_hub_model_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::sdq_bin())
        .env("HF_HOME", dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["--model", "v1-5", "generate", "--prompt", "x", "-o"])
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("v1-5") && err.contains("--model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn half_precision_runs_close_to_f32_and_bf16_on_cpu_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pixels = |bytes: &[u8]| {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        buf
    };
    let full = pixels(&generate(
        dir.path(),
        "tiny",
        "3",
        "f32.png",
        &["--scheduler", "ddim"],
    ));
    let half = pixels(&generate(
        dir.path(),
        "tiny",
        "3",
        "f16.png",
        &["--scheduler", "ddim", "--dtype", "f16"],
    ));
    let mean_diff = full
        .iter()
        .zip(&half)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / full.len() as f64;
    assert!(
        mean_diff < 8.0,
        "f16 drifts {mean_diff} levels on average from f32"
    );
    let out = std::process::Command::new(common::sdq_bin())
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--model",
            "tiny",
            "generate",
            "--prompt",
            "x",
            "--dtype",
            "bf16",
            "-o",
        ])
        .arg(dir.path().join("bf16.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bf16"));
}
