//! The browser UI is served by the binary: the page at `/` and at the UI's own paths,
//! hashed assets with their types and a year of caching, revalidation by ETag, and the
//! API's prefixes never shadowed. (What the page does is tested in Chromium by
//! `web/tests/`, run from `scripts/test.sh`.)

mod common;

use common::Server;

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_types_and_caching() {
    let server = Server::start(&[]).await;
    let c = &server.client;

    let page = c.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let html = page.text().await.unwrap();
    assert!(html.contains("<div id=\"root\">"), "{html}");

    // Revalidation: the same ETag is a 304 with no body.
    let again = c
        .get(server.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());

    // Every asset the page names is there, with its type and a year of caching.
    let assets: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    assert!(
        assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css")),
        "{assets:?}"
    );
    for asset in assets {
        let r = c.get(server.url(asset)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        let want = if asset.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert_eq!(r.headers()["content-type"], want, "{asset}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    let icon = c.get(server.url("/favicon.svg")).send().await.unwrap();
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
}

#[tokio::test]
async fn ui_paths_get_the_page_and_api_paths_stay_json() {
    let server = Server::start(&[]).await;
    let c = &server.client;
    for path in ["/gallery", "/queue", "/img2img", "/inpaint"] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "text/html", "{path}");
    }
    for path in [
        "/v1",
        "/v1/nothing-here",
        "/sdapi/v1/txt2img",
        "/docs",
        "/openapi.json",
        "/metrics",
        "/assets/missing.js",
        "/favicon.ico",
    ] {
        let r = c.get(server.url(path)).send().await.unwrap();
        // Routes that exist answer for themselves; none of these may be the page.
        assert_ne!(
            r.headers().get("content-type").map(|v| v.to_str().unwrap()),
            Some("text/html"),
            "{path}"
        );
        if r.status() == 404 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found", "{path}");
        }
    }
    for path in ["/health", "/ready", "/v1/models"] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
    }
    // Only GET and HEAD reach the UI.
    let post = c.post(server.url("/gallery")).send().await.unwrap();
    assert_eq!(post.status(), 404);
}
