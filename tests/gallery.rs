//! The gallery: listing newest first across pages, thumbnails, downloads with caching
//! headers, presigned redirects on S3, deletion of images and jobs with their objects, and
//! re-running a recipe from an image.

mod common;

use std::time::Duration;

use common::services::S3Server;
use common::{decode_png, ServeProcess, Server};
use serde_json::{json, Value};

fn job(prompt: &str, seed: u64, num_images: u32) -> Value {
    json!({"prompt": prompt, "width": 64, "height": 64, "steps": 2, "seed": seed,
           "num_images": num_images})
}

/// Every file under the server's image directory.
fn stored_files(server: &Server) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&server.data.join("images"), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gallery_pages_thumbnails_downloads_and_deletes() {
    let mut server = Server::start(&[]).await;
    let api = server.with(None);
    let mut jobs = Vec::new();
    for i in 0..3 {
        let done = api
            .run_job(job(&format!("a red fox, take {i}!"), 100 + i, 2))
            .await;
        assert_eq!(done["status"], "succeeded", "{done}");
        jobs.push(done);
    }
    // Newest first, four to a page.
    let (status, page1) = api.get_json("/v1/images?limit=4").await;
    assert_eq!(status, 200, "{page1}");
    let images = page1["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    let newest_job = jobs[2]["id"].as_str().unwrap();
    assert_eq!(images[0]["job_id"], newest_job);
    assert_eq!(images[0]["model"], "tiny");
    assert_eq!(images[0]["prompt"], "a red fox, take 2!");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = api
        .get_json(&format!("/v1/images?limit=4&cursor={cursor}"))
        .await;
    let rest = page2["images"].as_array().unwrap();
    assert_eq!(rest.len(), 2);
    assert!(page2["next_cursor"].is_null());
    let mut ids: Vec<&str> = images
        .iter()
        .chain(rest)
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    // Filters.
    let (_, by_job) = api
        .get_json(&format!("/v1/images?job_id={newest_job}"))
        .await;
    assert_eq!(by_job["images"].as_array().unwrap().len(), 2);
    let (_, by_model) = api.get_json("/v1/images?model=other").await;
    assert!(by_model["images"].as_array().unwrap().is_empty());
    let (_, future) = api.get_json("/v1/images?since=2100-01-01T00:00:00Z").await;
    assert!(future["images"].as_array().unwrap().is_empty());
    for bad in ["limit=0", "cursor=nonsense", "job_id=x", "since=yesterday"] {
        let (status, err) = api.get_json(&format!("/v1/images?{bad}")).await;
        assert_eq!(status, 422, "{bad}: {err}");
        assert_eq!(err["error"]["field"], bad.split('=').next().unwrap());
    }

    // Download: PNG with a filename, an ETag, and 304 when the client has it.
    let image = &images[0];
    let url = server.url(image["url"].as_str().unwrap());
    let resp = server.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    let seed = image["seed"].as_i64().unwrap();
    assert_eq!(
        disposition,
        format!("inline; filename=\"{seed}-a-red-fox-take-2.png\"")
    );
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let png = resp.bytes().await.unwrap();
    assert_eq!(decode_png(&png).0, 64);
    let again = server
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    // Without S3 there is nothing to presign: the bytes are streamed.
    let streamed = server
        .client
        .get(format!("{url}?redirect=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);

    // A thumbnail per image, a JPEG no larger than 256 a side.
    let thumb = server
        .client
        .get(server.url(image["thumbnail_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    let decoded = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 64));
    let wide = api
        .run_job(json!({"prompt": "a wide one", "width": 384, "height": 128, "steps": 1}))
        .await;
    let wide_thumb = server
        .client
        .get(server.url(wide["images"][0]["thumbnail_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let decoded = image::load_from_memory(&wide_thumb).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (256, 85));

    // Deleting an image removes its row, its PNG and its thumbnail; twice is fine.
    let files_before = stored_files(&server).len();
    let id = image["id"].as_str().unwrap();
    assert_eq!(api.delete(&format!("/v1/images/{id}")).await, 204);
    assert_eq!(api.delete(&format!("/v1/images/{id}")).await, 204);
    assert_eq!(server.client.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(stored_files(&server).len(), files_before - 2);
    let (_, left) = api
        .get_json(&format!("/v1/images?job_id={newest_job}"))
        .await;
    assert_eq!(left["images"].as_array().unwrap().len(), 1);

    // Deleting a finished job removes it and all it stored.
    let first_job = jobs[0]["id"].as_str().unwrap();
    let files_before = stored_files(&server).len();
    assert_eq!(api.delete(&format!("/v1/jobs/{first_job}")).await, 204);
    assert_eq!(api.get_json(&format!("/v1/jobs/{first_job}")).await.0, 404);
    assert_eq!(stored_files(&server).len(), files_before - 4);
    assert!(stored_files(&server).iter().all(|f| !f.contains(first_job)));
    assert_eq!(api.delete(&format!("/v1/jobs/{first_job}")).await, 404);
    // A running job cannot be deleted.
    let (_, running) = api
        .post_json(
            "/v1/jobs",
            &json!({"prompt": "slow", "width": 64, "height": 64, "steps": 150}),
        )
        .await;
    let running = running["id"].as_str().unwrap();
    let mut sse = server.events(running, None).await;
    sse.wait_for_step(1, Duration::from_secs(60)).await;
    assert_eq!(api.delete(&format!("/v1/jobs/{running}")).await, 409);
    api.post_json(&format!("/v1/jobs/{running}/cancel"), &json!({}))
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_rerun_from_an_image_and_gallery_images_start_img2img() {
    let mut server = Server::start(&[]).await;
    let api = server.with(None);
    let original = api.run_job(job("a lighthouse at dusk", 42, 2)).await;
    let second = &original["images"][1];
    let image_id = second["id"].as_str().unwrap();
    // The recipe of image 1 (seed 43) re-run alone gives the same picture.
    let rerun = api.run_job(json!({"from_image": image_id})).await;
    assert_eq!(rerun["status"], "succeeded", "{rerun}");
    assert_eq!(rerun["request"]["seed"], 43);
    assert_eq!(rerun["request"]["prompt"], "a lighthouse at dusk");
    assert_eq!(rerun["request"]["num_images"], 1);
    let pixels = |url: &str| {
        let server = &server;
        let url = server.url(url);
        async move {
            let bytes = server
                .client
                .get(url)
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
    };
    let a = pixels(second["url"].as_str().unwrap()).await;
    let b = pixels(rerun["images"][0]["url"].as_str().unwrap()).await;
    // Batched and single runs round differently by at most one level.
    let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    assert!(worst <= 1, "re-run differs by {worst}");
    // Fields given override the recipe.
    let varied = api
        .run_job(json!({"from_image": image_id, "steps": 3, "seed": 5}))
        .await;
    assert_eq!(
        (
            varied["request"]["steps"].as_u64(),
            varied["request"]["seed"].as_u64()
        ),
        (Some(3), Some(5))
    );

    // img2img from a gallery image, and a mask from the gallery that must match its size.
    let img2img = api
        .run_job(
            json!({"prompt": "at night", "init_image_id": image_id, "strength": 0.5, "steps": 4}),
        )
        .await;
    assert_eq!(img2img["status"], "succeeded", "{img2img}");
    assert_eq!(img2img["request"]["width"], 64);
    let inpaint = api
        .run_job(json!({"prompt": "a boat", "init_image_id": image_id,
                        "mask_image_id": original["images"][0]["id"], "steps": 4}))
        .await;
    assert_eq!(inpaint["status"], "succeeded", "{inpaint}");
    // A re-run of an img2img image brings its start image along.
    let again = api
        .run_job(json!({"from_image": img2img["images"][0]["id"]}))
        .await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["request"]["strength"], 0.5);
    let big = api
        .run_job(json!({"prompt": "big", "width": 128, "height": 64, "steps": 1}))
        .await;
    let (status, err) = api
        .post_json(
            "/v1/jobs",
            &json!({"prompt": "x", "init_image_id": image_id, "mask_image_id": big["images"][0]["id"]}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "mask_image");
    for (field, value) in [
        ("init_image_id", json!(uuid::Uuid::new_v4().to_string())),
        ("init_image_id", json!("not-an-id")),
        ("from_image", json!(uuid::Uuid::new_v4().to_string())),
    ] {
        let mut body = json!({"prompt": "x"});
        body[field] = value;
        let (status, err) = api.post_json("/v1/jobs", &body).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["field"], field);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_in_s3_redirect_to_a_presigned_url() {
    let s3 = S3Server::start();
    let bucket = s3.bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("s3://{bucket}/gallery");
    let global = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--model",
        "tiny",
        "--object-store",
        &store,
    ];
    let server = ServeProcess::spawn_role("serve", &global, &[], &s3.env());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    server.wait_healthy(&client).await;
    let api = common::As {
        client: &client,
        base: &server.base,
        token: None,
    };
    let done = api.run_job(job("stored in a bucket", 1, 1)).await;
    let url = format!(
        "{}{}",
        server.base,
        done["images"][0]["url"].as_str().unwrap()
    );
    let direct = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let resp = client
        .get(format!("{url}?redirect=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&s3.endpoint()), "{location}");
    assert!(location.contains("X-Amz-Signature"), "{location}");
    let fetched = client.get(&location).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap(), direct);
    // The thumbnail sits beside the image in the bucket.
    let listing = client
        .get(format!("{}/{bucket}?list-type=2", s3.endpoint()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let id = done["images"][0]["id"].as_str().unwrap();
    assert!(listing.contains(&format!("{id}.png")), "{listing}");
    assert!(listing.contains(&format!("{id}.thumb.jpg")), "{listing}");
}
