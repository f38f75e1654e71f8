//! The models directory over REST: `GET /v1/models` lists checkpoints, LoRAs,
//! embeddings and VAEs with family, size and SHA-256; jobs name them (`loras`,
//! `<lora:…>`, `vae`, `clip_skip`, a single-file checkpoint as `model`) and the worker
//! applies them; bad names, wrong families, pickles and corrupt files are 422s;
//! `POST /v1/models/refresh` sees new files.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Server;
use sdq::inference::single_file::{export, ExportOptions};
use sdq::inference::tiny::{write_kind, TinyKind};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

/// A models directory with one of everything, and two files that cannot be used.
fn fill(models: &Path) {
    for folder in ["checkpoints", "loras", "embeddings", "vae"] {
        std::fs::create_dir_all(models.join(folder)).unwrap();
    }
    std::fs::copy(
        fixture("lora-kohya.safetensors"),
        models.join("loras/film.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixture("lora-sdxl-kohya.safetensors"),
        models.join("loras/xl-style.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixture("tinyemb.safetensors"),
        models.join("embeddings/tinyemb.safetensors"),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let tiny = scratch.path().join("tiny");
    write_kind(&tiny, 0, TinyKind::Sd15).unwrap();
    export(
        &tiny,
        &models.join("checkpoints/mine.safetensors"),
        ExportOptions::default(),
    )
    .unwrap();
    let other = scratch.path().join("other");
    write_kind(&other, 1, TinyKind::Sd15).unwrap();
    let vae = ExportOptions {
        vae_only: true,
        ..Default::default()
    };
    export(&other, &models.join("vae/other.safetensors"), vae).unwrap();
    std::fs::write(models.join("checkpoints/old.ckpt"), b"PK\x03\x04 a pickle").unwrap();
    std::fs::write(
        models.join("checkpoints/broken.safetensors"),
        b"\x08\x00\x00",
    )
    .unwrap();
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

async fn pixels(server: &Server, job: &Value) -> Vec<u8> {
    let url = job["images"][0]["url"].as_str().unwrap();
    let bytes = server
        .client
        .get(server.url(url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    image::load_from_memory(&bytes)
        .unwrap()
        .to_rgb8()
        .into_raw()
}

async fn run(server: &Server, body: Value) -> Value {
    let id = server.submit_ok(body).await;
    let job = server.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

fn job(extra: Value) -> Value {
    let mut body =
        json!({"prompt": "a photo of a cat", "steps": 3, "seed": 7, "scheduler": "euler"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_directory_is_listed_and_used_by_jobs() {
    let dir = tempfile::tempdir().unwrap();
    fill(&dir.path().join("models"));
    let mut server = Server::start_in(dir.path(), &[]).await;

    let (status, listing) = server.get_json("/v1/models").await;
    assert_eq!(status, 200);
    let checkpoints: Vec<&Value> = listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["source"] == "models_dir")
        .collect();
    let mine = checkpoints.iter().find(|m| m["id"] == "mine").unwrap();
    assert_eq!(mine["family"], "sd1");
    assert_eq!(mine["available"], true);
    assert_eq!(mine["sha256"].as_str().unwrap().len(), 64);
    assert!(mine["size"].as_u64().unwrap() > 1000);
    let old = checkpoints.iter().find(|m| m["id"] == "old").unwrap();
    assert_eq!(old["available"], false);
    assert!(old["error"].as_str().unwrap().contains("pickle"), "{old}");
    assert_eq!(names(&listing["loras"]), ["film", "xl-style"]);
    assert_eq!(listing["loras"][1]["family"], "sdxl");
    assert_eq!(names(&listing["embeddings"]), ["tinyemb"]);
    assert_eq!(listing["embeddings"][0]["vectors"], 2);
    assert_eq!(names(&listing["vae"]), ["other"]);

    // A LoRA changes the image; the body's list and the prompt's tag are the same thing.
    let plain = pixels(&server, &run(&server, job(json!({}))).await).await;
    let by_field = run(
        &server,
        job(json!({"loras": [{"name": "film", "weight": 0.8}]})),
    )
    .await;
    assert_eq!(
        by_field["request"]["loras"],
        json!([{"name": "film", "weight": 0.8}])
    );
    let by_field = pixels(&server, &by_field).await;
    assert_ne!(plain, by_field, "the LoRA is applied");
    let by_tag = run(
        &server,
        job(json!({"prompt": "a photo of a cat <lora:film:0.8>"})),
    )
    .await;
    assert_eq!(pixels(&server, &by_tag).await, by_field);
    // And the base model is untouched for the next job.
    assert_eq!(
        pixels(&server, &run(&server, job(json!({}))).await).await,
        plain
    );

    // VAE override, clip skip, an embedding and a single-file checkpoint by name.
    run(
        &server,
        job(json!({"prompt": "a photo of tinyemb", "negative_prompt": "tinyemb"})),
    )
    .await;
    for extra in [json!({"vae": "other"}), json!({"clip_skip": 2})] {
        let changed = pixels(&server, &run(&server, job(extra.clone())).await).await;
        assert_ne!(changed, plain, "{extra}");
    }
    // A single-file checkpoint by name gives the pixels of the folder it was exported
    // from, at the same size (its defaults are its family's, e.g. 512², not the tiny
    // model's, so the size is given).
    let size = json!({"width": 64, "height": 64});
    let folder = pixels(&server, &run(&server, job(size.clone())).await).await;
    let single = run(
        &server,
        job(json!({"model": "mine", "width": 64, "height": 64})),
    )
    .await;
    assert_eq!(single["request"]["model"], "mine");
    assert_eq!(pixels(&server, &single).await, folder);

    // Bad names and families are 422s naming the field.
    for (body, field, words) in [
        (
            json!({"loras": [{"name": "nope"}]}),
            "loras",
            "no LoRA named 'nope'",
        ),
        (
            json!({"loras": [{"name": "xl-style"}]}),
            "loras",
            "is for sdxl",
        ),
        (
            json!({"prompt": "a <lora:film:heavy>"}),
            "prompt",
            "bad LoRA tag",
        ),
        (
            json!({"prompt": "<lora:film>", "loras": [{"name": "film"}]}),
            "loras",
            "given twice",
        ),
        (
            json!({"loras": [{"name": "film", "weight": 99}]}),
            "loras",
            "between -10 and 10",
        ),
        (json!({"vae": "nope"}), "vae", "no VAE named"),
        (json!({"clip_skip": 0}), "clip_skip", "between 1"),
        (json!({"model": "old"}), "model", "pickle"),
        (json!({"model": "broken"}), "model", "cannot be used"),
    ] {
        let (status, reply) = server.submit(job(body.clone())).await;
        assert_eq!(status, 422, "{body}: {reply}");
        assert_eq!(reply["error"]["field"], field, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
    }

    // A file added later appears after a refresh.
    std::fs::copy(
        fixture("lora-peft.safetensors"),
        dir.path().join("models/loras/peft.safetensors"),
    )
    .unwrap();
    let client = &server.client;
    let refreshed: Value = client
        .post(server.url("/v1/models/refresh"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(&refreshed["loras"]), ["film", "peft", "xl-style"]);
    let (_, listing) = server.get_json("/v1/models").await;
    assert_eq!(names(&listing["loras"]), ["film", "peft", "xl-style"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_a1111_dialect_lists_the_models_directory() {
    let dir = tempfile::tempdir().unwrap();
    fill(&dir.path().join("models"));
    let server = Server::start_in(dir.path(), &[]).await;

    let (status, models) = server.get_json("/sdapi/v1/sd-models").await;
    assert_eq!(status, 200);
    let mine = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_name"] == "mine")
        .unwrap_or_else(|| panic!("no 'mine' in {models}"));
    let hash = mine["hash"].as_str().unwrap();
    assert_eq!(hash.len(), 10);
    assert_eq!(mine["title"], format!("mine.safetensors [{hash}]"));
    assert_eq!(mine["filename"], "checkpoints/mine.safetensors");
    assert!(
        !models
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["model_name"] == "old"),
        "an unusable checkpoint is not offered: {models}"
    );

    let (_, loras) = server.get_json("/sdapi/v1/loras").await;
    let lora_names: Vec<&str> = loras
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(lora_names, ["film", "xl-style"]);
    assert_eq!(loras[0]["path"], "loras/film.safetensors");
    let (_, embeddings) = server.get_json("/sdapi/v1/embeddings").await;
    assert_eq!(
        embeddings["loaded"]["tinyemb"]["vectors"], 2,
        "{embeddings}"
    );
    let (_, vae) = server.get_json("/sdapi/v1/sd-vae").await;
    assert_eq!(
        vae,
        json!([{"model_name": "other", "filename": "vae/other.safetensors"}])
    );

    // Clients select a checkpoint by the title they were given.
    let response = server
        .client
        .post(server.url("/sdapi/v1/options"))
        .json(&json!({"sd_model_checkpoint": mine["title"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, options) = server.get_json("/sdapi/v1/options").await;
    assert_eq!(options["sd_model_checkpoint"], "mine");
    let response = server
        .client
        .post(server.url("/sdapi/v1/options"))
        .json(&json!({"sd_model_checkpoint": "old.ckpt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422, "an unusable checkpoint is refused");

    // A job's override_settings pick the VAE and clip skip; an unknown VAE names A1111's field.
    let txt2img = |settings: Value| {
        json!({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5,
               "override_settings": settings})
    };
    let response = server
        .client
        .post(server.url("/sdapi/v1/txt2img"))
        .json(&txt2img(
            json!({"sd_vae": "other.safetensors", "CLIP_stop_at_last_layers": 2}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, jobs) = server.get_json("/v1/jobs?limit=1").await;
    let request = &jobs["jobs"][0]["request"];
    assert_eq!(
        (&request["model"], &request["vae"], &request["clip_skip"]),
        (&json!("mine"), &json!("other"), &json!(2)),
        "{jobs}"
    );
    let response = server
        .client
        .post(server.url("/sdapi/v1/txt2img"))
        .json(&txt2img(json!({"sd_vae": "nope"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(
        body.to_string().contains("override_settings.sd_vae"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vae_named_like_a_checkpoint_goes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    fill(&models);
    std::fs::copy(
        models.join("vae/other.safetensors"),
        models.join("vae/mine.safetensors"),
    )
    .unwrap();
    let server = Server::start_in(dir.path(), &[]).await;
    let at = |extra: Value| {
        let mut body = job(json!({"model": "mine", "width": 64, "height": 64}));
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let paired = run(&server, at(json!({}))).await;
    assert_eq!(paired["request"]["vae"], "mine", "{paired}");
    let own = run(&server, at(json!({"vae": "none"}))).await;
    assert!(own["request"]["vae"].is_null(), "{own}");
    let other = run(&server, at(json!({"vae": "other"}))).await;
    let (paired, own, other) = (
        pixels(&server, &paired).await,
        pixels(&server, &own).await,
        pixels(&server, &other).await,
    );
    assert_ne!(paired, own, "the paired VAE decodes");
    assert_eq!(paired, other, "it is the same file as 'other'");
    // The tiny folder model is not a checkpoint of the directory: nothing is paired.
    let plain = run(&server, job(json!({}))).await;
    assert!(plain["request"]["vae"].is_null(), "{plain}");

    // `sdq generate` pairs the same way.
    let generate = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--model",
            "mine",
            "generate",
            "--prompt",
            "a red house",
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        common::run_sdq(&args);
        image::open(&out).unwrap().to_rgb8().into_raw()
    };
    let (paired, own, other) = (
        generate("paired.png", &[]),
        generate("own.png", &["--vae", "none"]),
        generate("other.png", &["--vae", "other"]),
    );
    assert_ne!(paired, own, "the CLI decodes with the paired VAE");
    assert_eq!(
        paired, other,
        "the CLI's paired VAE is the file named like the checkpoint"
    );
}
