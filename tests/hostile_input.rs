//! Hostile input: malformed JSON, wrong types, huge numbers, invalid UTF-8, over-long
//! prompts, images of the wrong format, decompression bombs and multipart oddities all get
//! a 4xx naming what is wrong, and the server's memory stays bounded while it refuses them.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{ServeProcess, Server};
use futures::future::join_all;
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([10, 20, 30]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A valid 1×1 PNG whose header claims `width` × `height` (its CRC no longer matches).
fn bomb(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    bytes
}

const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_body_is_a_4xx_naming_its_field() {
    let mut server = Server::start(&[]).await;
    let good = b64(&png(64, 64));
    let long = "a ".repeat(2100);
    // (body, status, field)
    let json_cases: Vec<(Value, u16, Option<&str>)> = vec![
        (json!({"prompt": long}), 422, Some("prompt")),
        (
            json!({"prompt": "a", "negative_prompt": long}),
            422,
            Some("negative_prompt"),
        ),
        (json!({"prompt": 5}), 422, Some("prompt")),
        (
            json!({"prompt": "a", "width": 4_294_967_296u64}),
            422,
            Some("width"),
        ),
        (json!({"prompt": "a", "steps": -1}), 422, Some("steps")),
        (
            json!({"prompt": "a", "guidance_scale": 1e308}),
            422,
            Some("guidance_scale"),
        ),
        (
            json!({"prompt": "a", "priority": 1000}),
            422,
            Some("priority"),
        ),
        (
            json!({"prompt": "a", "long_prompt": "shout"}),
            422,
            Some("long_prompt"),
        ),
        (json!({"prompt": "a", "init_image": b64(GIF)}), 415, None),
        (
            json!({"prompt": "a", "init_image": b64(b"BM\x1e\x00\x00\x00\x00\x00\x00\x00\x1a\x00\x00\x00")}),
            415,
            None,
        ),
        (
            json!({"prompt": "a", "init_image": b64(b"definitely not an image")}),
            422,
            Some("init_image"),
        ),
        (
            json!({"prompt": "a", "init_image": b64(&bomb(30_000, 30_000))}),
            422,
            Some("init_image"),
        ),
        (
            json!({"prompt": "a", "init_image": b64(&bomb(4096, 100_000))}),
            422,
            Some("init_image"),
        ),
        (
            json!({"prompt": "a", "init_image": &good, "mask_image": b64(&png(32, 64))}),
            422,
            Some("mask_image"),
        ),
        (
            json!({"prompt": "a", "init_image": &good, "mask_image": b64(&bomb(50_000, 2))}),
            422,
            Some("mask_image"),
        ),
        (
            json!({"prompt": "a", "init_image": &good, "init_image_id": uuid::Uuid::new_v4().to_string()}),
            422,
            Some("init_image_id"),
        ),
        (json!({"prompt": ["a"]}), 422, Some("prompt")),
        (json!({"prompt": "a", "seed": 1.5}), 422, Some("seed")),
        (json!(null), 422, None),
    ];
    for (body, status, field) in json_cases {
        let (got, err) = server.submit(body.clone()).await;
        let shown = body.to_string();
        let shown = &shown[..shown.len().min(120)];
        assert_eq!(got, status, "{shown} -> {err}");
        assert!(err["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        if let Some(field) = field {
            assert_eq!(err["error"]["field"], field, "{shown} -> {err}");
        }
        if got == 415 {
            assert_eq!(err["error"]["code"], "unsupported_media_type", "{err}");
            assert!(err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("init_image"));
        }
    }
    // Bodies that are not JSON at all.
    let raw: Vec<(&[u8], u16)> = vec![
        (b"{\"prompt\": \"a\", \"guidance_scale\": NaN}", 400),
        (b"{\"prompt\": \"a\", \"steps\": 1e400}", 400),
        (b"{\"prompt\": \"\xff\xfe\"}", 400),
        (b"{\"prompt\": \"a\"} {\"prompt\": \"b\"}", 400),
        (b"\x00\x00\x00", 400),
    ];
    for (body, status) in raw {
        let resp = server
            .client
            .post(server.url("/v1/jobs"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().as_u16() == status || resp.status() == 422,
            "{:?} -> {}",
            String::from_utf8_lossy(body),
            resp.status()
        );
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"]["code"].is_string());
    }
    // Multipart: files in the wrong format, unknown fields, text that is not UTF-8.
    let form = || {
        reqwest::multipart::Form::new()
            .text("prompt", "a")
            .text("width", "64")
            .text("height", "64")
    };
    let send = |form: reqwest::multipart::Form| {
        server
            .client
            .post(server.url("/v1/jobs"))
            .multipart(form)
            .send()
    };
    let gif = form().part(
        "image",
        reqwest::multipart::Part::bytes(GIF.to_vec()).file_name("a.gif"),
    );
    assert_eq!(send(gif).await.unwrap().status(), 415);
    let bombed = form().part(
        "image",
        reqwest::multipart::Part::bytes(bomb(40_000, 40_000)),
    );
    let resp = send(bombed).await.unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["field"],
        "init_image"
    );
    let unknown = form().text("colour", "red");
    let resp = send(unknown).await.unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["field"],
        "colour"
    );
    let latin1 = form().part(
        "negative_prompt",
        reqwest::multipart::Part::bytes(vec![0xff, 0xfe]),
    );
    let resp = send(latin1).await.unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["field"],
        "negative_prompt"
    );
    let broken = server
        .client
        .post(server.url("/v1/jobs"))
        .header("content-type", "multipart/form-data; boundary=zzz")
        .body("--zzz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);
    // A good multipart job with the start image and mask as files runs.
    let good_form = form()
        .text("steps", "3")
        .text("strength", "0.6")
        .part(
            "image",
            reqwest::multipart::Part::bytes(png(64, 64)).file_name("start.png"),
        )
        .part(
            "mask",
            reqwest::multipart::Part::bytes(png(64, 64)).file_name("mask.png"),
        );
    let resp = send(good_form).await.unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["request"]["strength"], 0.6);
    // Nothing refused was queued or stored.
    let (_, jobs) = server.get_json("/v1/jobs?limit=100").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);
    server.stop().await;
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_leave_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // API only: accepted jobs stay queued, so only validation touches the images.
    let server = ServeProcess::spawn(dir.path(), &["--workers", "0"]);
    let client = reqwest::Client::new();
    server.wait_healthy(&client).await;
    let before = peak_rss_mib(server.child.id());
    let largest = b64(&png(4096, 4096));
    let bombs: Vec<Value> = (0..24)
        .map(|i| match i % 3 {
            0 => json!({"prompt": "b", "init_image": b64(&bomb(65_000, 65_000))}),
            1 => json!({"prompt": "b", "init_image": b64(&bomb(20_000, 20_000)), "width": 64, "height": 64}),
            _ => json!({"prompt": "b", "init_image": &largest, "width": 64, "height": 64}),
        })
        .collect();
    let responses = join_all(bombs.iter().map(|body| {
        client
            .post(format!("{}/v1/jobs", server.base))
            .json(body)
            .send()
    }))
    .await;
    let mut refused = 0;
    let mut accepted = 0;
    for resp in responses {
        match resp.unwrap().status().as_u16() {
            422 => refused += 1,
            202 => accepted += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((refused, accepted), (16, 8));
    let after = peak_rss_mib(server.child.id());
    println!("sdq serve peak RSS: {before} MiB before, {after} MiB after 24 bombs and big images");
    // Eight 4096² images decoded two at a time (~50 MiB each), bombs never allocated.
    assert!(
        after < before + 400,
        "peak RSS grew from {before} to {after} MiB"
    );
    let health = client
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
