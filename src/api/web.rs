//! The browser UI at `/`: the assets Vite built into `web/dist`, embedded in the binary
//! at compile time so that running (and building) the server never needs Node.
//!
//! Hashed files under `/assets/` never change and are cached for a year; `index.html` is
//! revalidated on every load (by its ETag) so a new binary's UI shows at once. Any other
//! GET of a path without a file extension is one of the UI's own routes (`/gallery`,
//! `/queue`, …) and gets `index.html`; the API's prefixes are never shadowed.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

/// The built UI (`npm run build` in the repository root writes it).
#[derive(Embed)]
#[folder = "web/dist/"]
struct Assets;

/// Paths that belong to the API, its dialects and operations; the UI never answers them.
const RESERVED: &[&str] = &[
    "/v1",
    "/sdapi",
    "/docs",
    "/openapi.json",
    "/metrics",
    "/health",
    "/ready",
];

/// The page may load and connect to nothing but this server.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

fn reserved(path: &str) -> bool {
    RESERVED.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The router's fallback: a UI asset or route, else the API's JSON 404.
pub async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if (method != Method::GET && method != Method::HEAD) || reserved(path) {
        return super::error::not_found().await.into_response();
    }
    let name = path.trim_start_matches('/');
    if !name.is_empty() {
        if let Some(file) = Assets::get(name) {
            return asset(name, file, &headers);
        }
    }
    let last = name.rsplit('/').next().unwrap_or_default();
    if last.contains('.') {
        // A missing file, not a page: say so instead of answering with HTML.
        return super::error::not_found().await.into_response();
    }
    match Assets::get("index.html") {
        Some(file) => asset("index.html", file, &headers),
        None => super::error::not_found().await.into_response(),
    }
}

fn asset(name: &str, file: rust_embed::EmbeddedFile, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(file.data.into_owned()));
        if let Ok(v) = HeaderValue::from_str(file.metadata.mimetype()) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if name == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_prefixes_are_reserved_but_not_their_lookalikes() {
        for p in [
            "/v1",
            "/v1/jobs",
            "/sdapi/v1/txt2img",
            "/docs",
            "/openapi.json",
            "/metrics",
            "/health",
            "/ready",
        ] {
            assert!(reserved(p), "{p}");
        }
        for p in ["/", "/gallery", "/v1x", "/readyz", "/assets/index.js"] {
            assert!(!reserved(p), "{p}");
        }
    }

    #[test]
    fn the_ui_is_embedded() {
        let index = Assets::get("index.html").expect("web/dist/index.html is embedded");
        assert_eq!(index.metadata.mimetype(), "text/html");
        let text = String::from_utf8_lossy(&index.data);
        assert!(
            text.contains("/assets/"),
            "index.html loads the built assets"
        );
    }
}
