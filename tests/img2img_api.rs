//! img2img and inpainting over REST: base64 start images and masks, validated, stored,
//! and run by the worker.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{decode_png, Server};
use serde_json::json;

fn png(width: u32, height: u32, white_left: bool) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        if white_left {
            let v = if x < width / 2 { 255 } else { 0 };
            image::Rgb([v, v, v])
        } else {
            image::Rgb([(x * 3) as u8, (y * 5) as u8, 90])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn img2img_and_inpaint_run_from_rest() {
    let mut server = Server::start(&[]).await;
    let init = b64(&png(75, 100, false));

    // img2img: the size comes from the image (rounded down to 8), the strength is recorded.
    let id = server
        .submit_ok(json!({"prompt": "a painting", "init_image": init, "strength": 0.5, "steps": 6, "seed": 4, "scheduler": "ddim"}))
        .await;
    let job = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        (
            job["request"]["width"].as_u64(),
            job["request"]["height"].as_u64()
        ),
        (Some(72), Some(96))
    );
    assert_eq!(job["request"]["strength"], 0.5);
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
    let (w, h, chunks) = decode_png(&bytes);
    assert_eq!((w, h), (72, 96));
    let params = &chunks.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(params.contains("Denoising strength: 0.5"), "{params}");
    // The start image was stored for the worker.
    let key = job["request"]["init_image"].as_str().unwrap();
    assert!(server.data.join("images").join(key).exists(), "{key}");

    // Inpainting with a data URL, at a requested size.
    let data_url = format!("data:image/png;base64,{}", b64(&png(64, 64, false)));
    let id = server
        .submit_ok(json!({"prompt": "a door", "init_image": data_url, "mask_image": b64(&png(64, 64, true)), "width": 64, "height": 64, "steps": 4, "seed": 1}))
        .await;
    let job = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["request"]["strength"], 1.0,
        "inpainting repaints fully by default"
    );
    assert!(job["request"]["mask_image"].as_str().is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_start_images_are_422_naming_the_field() {
    let mut server = Server::start(&["--workers", "0"]).await;
    let good = b64(&png(64, 64, false));
    let mut bomb = png(1, 1, false);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let cases = [
        (
            json!({"prompt": "a", "init_image": "not base64!!"}),
            "init_image",
        ),
        (
            json!({"prompt": "a", "init_image": b64(b"plain text, not an image")}),
            "init_image",
        ),
        (
            json!({"prompt": "a", "init_image": b64(&bomb)}),
            "init_image",
        ),
        (
            json!({"prompt": "a", "init_image": b64(&png(20, 20, false))}),
            "width",
        ),
        (json!({"prompt": "a", "mask_image": good}), "mask_image"),
        (
            json!({"prompt": "a", "init_image": good, "mask_image": "%%%"}),
            "mask_image",
        ),
        (
            json!({"prompt": "a", "init_image": good, "strength": 0}),
            "strength",
        ),
        (
            json!({"prompt": "a", "init_image": good, "strength": 1.5}),
            "strength",
        ),
        (json!({"prompt": "a", "strength": 0.5}), "strength"),
    ];
    for (body, field) in cases {
        let (status, err) = server.submit(body).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    // Nothing was queued, nothing was stored.
    let (_, jobs) = server.get_json("/v1/jobs").await;
    assert!(jobs["jobs"].as_array().unwrap().is_empty());
    assert!(!server.data.join("images/inputs").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_runs_through_the_api() {
    let mut server = Server::start(&[
        "--allow-model",
        "tiny-sd2,tiny-inpaint,tiny-sdxl,tiny-sdxl-inpaint",
    ])
    .await;
    let (_, models) = server.get_json("/v1/models").await;
    let enabled: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["available"] == true)
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        enabled,
        [
            "tiny",
            "tiny-sd2",
            "tiny-inpaint",
            "tiny-sdxl",
            "tiny-sdxl-inpaint"
        ]
    );
    // Every SD family sdq knows is listed, enabled here or not.
    for name in [
        "v1-5",
        "v1-5-inpaint",
        "v2-1",
        "v2-inpaint",
        "xl",
        "xl-inpaint",
        "sd-turbo",
        "xl-turbo",
    ] {
        let entry = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == name)
            .expect(name);
        assert_eq!(entry["available"], false);
        assert!(entry["defaults"]["steps"].as_u64().is_some());
    }
    let image = b64(&png(64, 64, false));
    let mask = b64(&png(64, 64, true));
    let jobs = [
        json!({"model": "tiny-sd2", "prompt": "v-prediction", "steps": 3, "scheduler": "dpmpp-2m-karras"}),
        json!({"model": "tiny-sdxl", "prompt": "two encoders", "negative_prompt": "blurry", "steps": 3, "scheduler": "euler"}),
        json!({"model": "tiny-sdxl", "prompt": "sdxl img2img", "init_image": image, "strength": 0.7, "steps": 4}),
        json!({"model": "tiny-inpaint", "prompt": "nine channels", "init_image": image, "mask_image": mask, "steps": 3}),
        json!({"model": "tiny-sdxl-inpaint", "prompt": "sdxl inpaint", "init_image": image, "mask_image": mask, "steps": 3, "scheduler": "ddim"}),
    ];
    let mut ids = Vec::new();
    for body in jobs {
        ids.push(server.submit_ok(body).await);
    }
    for id in ids {
        let job = server.wait_terminal(&id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
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
        let (w, h, _) = decode_png(&bytes);
        assert_eq!((w, h), (64, 64));
    }
    server.stop().await;
}
