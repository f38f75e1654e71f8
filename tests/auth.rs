//! Keys and tenants: every route of the router × every kind of caller gets the status it
//! should; revoked keys stop working; cross-site requests are refused while auth is off;
//! CORS preflights are answered for the configured origins only.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{create_key, small_job, Server, TestKey};
use reqwest::Method;
use serde_json::{json, Value};

/// A 1×1 PNG, base64.
const TINY_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgZGIGAAAOAAfXb+R4AAAAAElFTkSuQmCC";

/// Who calls, in the order of the expectation rows.
const CALLERS: [&str; 6] = ["none", "bad", "revoked", "other", "admin", "owner"];

struct Keys {
    owner: TestKey,
    other: TestKey,
    admin: TestKey,
    revoked: TestKey,
}

fn token<'a>(keys: &'a Keys, caller: &str) -> Option<&'a str> {
    match caller {
        "none" => None,
        "bad" => Some("sdq_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        "revoked" => Some(&keys.revoked.token),
        "other" => Some(&keys.other.token),
        "admin" => Some(&keys.admin.token),
        "owner" => Some(&keys.owner.token),
        _ => unreachable!(),
    }
}

/// Statuses per caller (none, bad, revoked, other, admin, owner) for each route.
fn expectations() -> HashMap<(Method, &'static str), [u16; 6]> {
    let public = [200; 6];
    let unauth = [401, 401, 401];
    let row =
        |other: u16, admin: u16, owner: u16| [unauth[0], unauth[1], unauth[2], other, admin, owner];
    let admin_only = |ok: u16| row(403, ok, 403);
    HashMap::from([
        ((Method::GET, "/health"), public),
        ((Method::GET, "/ready"), public),
        ((Method::GET, "/v1/health"), public),
        ((Method::GET, "/v1/ready"), public),
        ((Method::POST, "/v1/jobs"), row(202, 202, 202)),
        ((Method::GET, "/v1/jobs"), row(200, 200, 200)),
        ((Method::GET, "/v1/jobs/{id}"), row(404, 200, 200)),
        ((Method::DELETE, "/v1/jobs/{id}"), row(404, 204, 204)),
        // The job has finished, so a cancel by someone who can see it is a conflict.
        ((Method::POST, "/v1/jobs/{id}/cancel"), row(404, 409, 409)),
        ((Method::GET, "/v1/jobs/{id}/events"), row(404, 200, 200)),
        ((Method::GET, "/v1/jobs/{id}/images"), row(404, 200, 200)),
        ((Method::GET, "/v1/images"), row(200, 200, 200)),
        ((Method::GET, "/v1/images/{id}"), row(404, 200, 200)),
        // Deletes are idempotent: an image the caller cannot see is "already gone".
        ((Method::DELETE, "/v1/images/{id}"), row(204, 204, 204)),
        (
            (Method::GET, "/v1/images/{id}/thumbnail"),
            row(404, 200, 200),
        ),
        (
            (Method::GET, "/v1/images/{id}/metadata"),
            row(404, 200, 200),
        ),
        ((Method::POST, "/v1/png-info"), row(200, 200, 200)),
        ((Method::GET, "/v1/models"), row(200, 200, 200)),
        ((Method::POST, "/v1/models/refresh"), admin_only(200)),
        ((Method::GET, "/v1/me"), row(200, 200, 200)),
        ((Method::GET, "/v1/workers"), admin_only(200)),
        ((Method::GET, "/v1/keys"), admin_only(200)),
        ((Method::POST, "/v1/keys"), admin_only(201)),
        ((Method::DELETE, "/v1/keys/{id}"), admin_only(200)),
        // The dialects, with the matrix's `{}` bodies: no prompt (or start image) is a 422.
        ((Method::POST, "/sdapi/v1/txt2img"), row(422, 422, 422)),
        ((Method::POST, "/sdapi/v1/img2img"), row(422, 422, 422)),
        ((Method::GET, "/sdapi/v1/progress"), row(200, 200, 200)),
        ((Method::POST, "/sdapi/v1/interrupt"), row(200, 200, 200)),
        ((Method::POST, "/sdapi/v1/skip"), row(200, 200, 200)),
        ((Method::GET, "/sdapi/v1/options"), row(200, 200, 200)),
        ((Method::POST, "/sdapi/v1/options"), row(200, 200, 200)),
        ((Method::GET, "/sdapi/v1/sd-models"), row(200, 200, 200)),
        ((Method::GET, "/sdapi/v1/samplers"), row(200, 200, 200)),
        ((Method::GET, "/sdapi/v1/schedulers"), row(200, 200, 200)),
        ((Method::GET, "/sdapi/v1/scripts"), row(200, 200, 200)),
        ((Method::GET, "/sdapi/v1/loras"), row(200, 200, 200)),
        ((Method::GET, "/sdapi/v1/embeddings"), row(200, 200, 200)),
        (
            (Method::POST, "/sdapi/v1/refresh-checkpoints"),
            row(200, 200, 200),
        ),
        ((Method::POST, "/sdapi/v1/png-info"), row(422, 422, 422)),
        ((Method::GET, "/sdapi/v1/upscalers"), row(200, 200, 200)),
        (
            (Method::GET, "/sdapi/v1/latent-upscale-modes"),
            row(200, 200, 200),
        ),
        ((Method::GET, "/sdapi/v1/sd-vae"), row(200, 200, 200)),
        ((Method::GET, "/sdapi/v1/hypernetworks"), row(200, 200, 200)),
        (
            (Method::GET, "/sdapi/v1/face-restorers"),
            row(200, 200, 200),
        ),
        (
            (Method::GET, "/sdapi/v1/realesrgan-models"),
            row(200, 200, 200),
        ),
        ((Method::GET, "/sdapi/v1/prompt-styles"), row(200, 200, 200)),
        ((Method::POST, "/v1/images/generations"), row(422, 422, 422)),
        // A JSON body where multipart is expected.
        ((Method::POST, "/v1/images/edits"), row(400, 400, 400)),
    ])
}

/// What `{id}` means in a path: a fresh resource of the owner for every request, so that
/// deletes and cancels never change what the next request sees.
async fn fresh_id(server: &Server, keys: &Keys, path: &str, data: &std::path::Path) -> String {
    let owner = server.with(Some(&keys.owner.token));
    if path.starts_with("/v1/keys/") {
        return create_key(&["--data-dir", data.to_str().unwrap()], "victim", &[]).id;
    }
    let job = owner.run_job(small_job("matrix")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    if path.starts_with("/v1/images/") {
        job["images"][0]["id"].as_str().unwrap().to_string()
    } else {
        job["id"].as_str().unwrap().to_string()
    }
}

fn body_for(method: &Method, path: &str) -> Option<Value> {
    match (method, path) {
        (&Method::POST, "/v1/jobs") => Some(small_job("from the matrix")),
        (&Method::POST, "/v1/keys") => Some(json!({"name": "made by an admin"})),
        (&Method::POST, "/v1/png-info") => Some(json!({"image": TINY_PNG})),
        (&Method::POST, _) => Some(json!({})),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_as_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let global = ["--data-dir", dir.path().to_str().unwrap()];
    let keys = Keys {
        owner: create_key(&global, "owner", &[]),
        other: create_key(&global, "other", &[]),
        admin: create_key(&global, "admin", &["--admin"]),
        revoked: create_key(&global, "revoked", &[]),
    };
    common::run_sdq(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "keys",
        "revoke",
        &keys.revoked.id,
    ]);
    let listed = common::run_sdq(&["--data-dir", dir.path().to_str().unwrap(), "keys", "list"]);
    assert!(listed.contains("revoked") && listed.contains(&keys.admin.webhook_secret));
    assert!(
        !listed.contains(&keys.owner.token),
        "tokens are never shown again"
    );

    let mut server = Server::start_in(dir.path(), &["--auth", "required"]).await;
    let expected = expectations();
    let table = sdq::api::route_table();
    for route in &table {
        assert!(
            expected.contains_key(&(route.method.clone(), route.path)),
            "route {} {} has no row in the auth matrix",
            route.method,
            route.path
        );
    }
    let mut failures = Vec::new();
    for route in &table {
        let statuses = expected[&(route.method.clone(), route.path)];
        for (caller, want) in CALLERS.iter().zip(statuses) {
            let path = if route.path.contains("{id}") {
                route.path.replace(
                    "{id}",
                    &fresh_id(&server, &keys, route.path, dir.path()).await,
                )
            } else {
                route.path.to_string()
            };
            let mut req = server
                .with(token(&keys, caller))
                .request(route.method.clone(), &path);
            if let Some(body) = body_for(&route.method, route.path) {
                req = req.json(&body);
            }
            let resp = req.send().await.unwrap();
            let got = resp.status().as_u16();
            if got == 401 {
                assert!(
                    resp.headers().contains_key("www-authenticate"),
                    "401 without WWW-Authenticate"
                );
            }
            let body = resp.text().await.unwrap_or_default();
            if got != want {
                failures.push(format!(
                    "{} {path} as {caller}: got {got}, want {want}: {body}",
                    route.method
                ));
            }
            if got == 404 {
                // No existence leak: the body is the one a missing id gets.
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "not_found", "{body}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // An image of another owner is still there after their idempotent delete.
    let owner = server.with(Some(&keys.owner.token));
    let job = owner.run_job(small_job("kept")).await;
    let image = job["images"][0]["id"].as_str().unwrap();
    let other = server.with(Some(&keys.other.token));
    assert_eq!(other.delete(&format!("/v1/images/{image}")).await, 204);
    assert_eq!(
        owner
            .get_json(&format!("/v1/jobs/{}", job["id"].as_str().unwrap()))
            .await
            .0,
        200
    );
    let resp = owner
        .request(Method::GET, &format!("/v1/images/{image}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Listings show each owner only their own; admins see everyone's.
    let (_, mine) = other.get_json("/v1/jobs?limit=100").await;
    let mine = mine["jobs"].as_array().unwrap();
    assert!(!mine.is_empty(), "the other key submitted in the matrix");
    assert!(mine.iter().all(|j| j["owner"] == keys.other.id), "{mine:?}");
    let (_, images) = other.get_json("/v1/images?limit=200").await;
    let images = images["images"].as_array().unwrap();
    assert!(images
        .iter()
        .all(|i| mine.iter().any(|j| j["id"] == i["job_id"])));
    let (_, all) = server
        .with(Some(&keys.admin.token))
        .get_json("/v1/jobs?limit=100")
        .await;
    assert!(!all["jobs"].as_array().unwrap().is_empty());
    let (_, me) = owner.get_json("/v1/me").await;
    assert_eq!(me["key"]["id"], keys.owner.id);
    assert_eq!(me["key"]["webhook_secret"], keys.owner.webhook_secret);
    assert_eq!(me["auth"], "required");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_stop_working_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let global = ["--data-dir", dir.path().to_str().unwrap()];
    let admin = create_key(&global, "admin", &["--admin"]);
    let user = create_key(&global, "user", &[]);
    let mut server = Server::start_in(dir.path(), &["--auth", "required"]).await;
    let as_user = server.with(Some(&user.token));
    assert_eq!(as_user.get_json("/v1/jobs").await.0, 200);
    // Revoked by another process (the CLI) while the server caches the key.
    common::run_sdq(&[global[0], global[1], "keys", "revoke", &user.id]);
    let start = std::time::Instant::now();
    loop {
        if as_user.get_json("/v1/jobs").await.0 == 401 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "revocation not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The admin issues and revokes keys over the API too.
    let as_admin = server.with(Some(&admin.token));
    let (status, made) = as_admin
        .post_json("/v1/keys", &json!({"name": "api-made"}))
        .await;
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("sdq_") && token.len() >= 40);
    assert_eq!(server.with(Some(&token)).get_json("/v1/me").await.0, 200);
    let (_, listed) = as_admin.get_json("/v1/keys").await;
    assert!(
        !listed.to_string().contains(&token),
        "listings never show tokens"
    );
    let id = made["id"].as_str().unwrap();
    assert_eq!(as_admin.delete(&format!("/v1/keys/{id}")).await, 200);
    let start = std::time::Instant::now();
    while server.with(Some(&token)).get_json("/v1/me").await.0 != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "revocation not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, err) = as_admin.post_json("/v1/keys", &json!({"name": ""})).await;
    assert_eq!(status, 422, "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_bind_needs_auth_and_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::sdq_bin())
            .args(args)
            .output()
            .unwrap()
    };
    let port = common::free_port().to_string();
    let bind = format!("0.0.0.0:{port}");
    let off = run(&[
        "--data-dir",
        data,
        "--model",
        "tiny",
        "serve",
        "--bind",
        &bind,
        "--auth",
        "off",
    ]);
    assert!(!off.status.success());
    let err = String::from_utf8_lossy(&off.stderr);
    assert!(
        err.contains("--auth off") && err.contains("sdq keys create"),
        "{err}"
    );
    let nokey = run(&[
        "--data-dir",
        data,
        "--model",
        "tiny",
        "serve",
        "--bind",
        &bind,
    ]);
    assert!(!nokey.status.success());
    let err = String::from_utf8_lossy(&nokey.stderr);
    assert!(
        err.contains("no API key exists") && err.contains("sdq keys create"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused_while_auth_is_off() {
    let mut server = Server::start(&["--cors-origin", "http://app.test"]).await;
    let client = &server.client;
    let post = |content_type: Option<&str>, origin: Option<&str>, host: Option<&str>| {
        let mut req = client
            .post(server.url("/v1/jobs"))
            .body(small_job("cross-site").to_string());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(h) = host {
            req = req.header("host", h);
        }
        req
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    // "Simple" bodies a browser would send without a preflight: refused before parsing.
    for ct in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let resp = post(ct, None, None).send().await.unwrap();
        assert_eq!(resp.status(), 415, "{ct:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    // Multipart is read only where documented.
    let resp = client
        .post(server.url("/v1/keys"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x--")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    // JSON from another origin, or to a rebound DNS name, is refused.
    let evil = post(Some("application/json"), Some("http://evil.example"), None);
    assert_eq!(status(evil.send().await.unwrap()), 403);
    let rebound = post(Some("application/json"), None, Some("evil.example:7860"));
    assert_eq!(status(rebound.send().await.unwrap()), 403);
    let resp = client
        .get(server.url("/v1/jobs"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let cancel = client
        .post(server.url(&format!("/v1/jobs/{}/cancel", uuid::Uuid::new_v4())))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 403);
    // The same origin, an allowed one, and clients that send no Origin get through.
    let host = server.base.trim_start_matches("http://").to_string();
    let same = post(Some("application/json"), Some(&server.base), None);
    assert_eq!(status(same.send().await.unwrap()), 202);
    let allowed = post(Some("application/json"), Some("http://app.test"), None);
    assert_eq!(status(allowed.send().await.unwrap()), 202);
    let plain = post(Some("application/json"), None, Some(&host));
    assert_eq!(status(plain.send().await.unwrap()), 202);
    let localhost = post(
        Some("application/json"),
        None,
        Some(&host.replace("127.0.0.1", "localhost")),
    );
    assert_eq!(status(localhost.send().await.unwrap()), 202);

    // CORS: the allowed origin's preflight is answered, others get no allow header.
    let preflight = |origin: &str| {
        client
            .request(Method::OPTIONS, server.url("/v1/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let ok = preflight("http://app.test").await.unwrap();
    assert!(ok.status().is_success());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://app.test"
    );
    let allow_headers = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allow_headers.contains("authorization"), "{allow_headers}");
    let no = preflight("http://evil.example").await.unwrap();
    assert!(!no.headers().contains_key("access-control-allow-origin"));
    server.stop().await;
}
