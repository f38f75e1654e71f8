//! Refusing cross-site requests before any handler runs.
//!
//! A browser sends "simple" requests (a form post, `text/plain`, multipart, or a bodyless
//! POST) from any page without asking first, and a page can rebind its own DNS name to
//! 127.0.0.1. So:
//! - a request that carries a body must say it is JSON (or multipart on the routes that
//!   read multipart): a simple `text/plain` or form post is 415;
//! - with auth off (where nothing else would stop it), a state-changing request whose
//!   `Origin` is not the server's own (or an allowed CORS origin) is 403, and any request
//!   whose `Host` is not a loopback name or a configured public host is 403.
//!
//! With auth on, the `Authorization` header already protects every route: a browser cannot
//! attach it to a cross-site request without a CORS preflight that we answer only for the
//! configured origins.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::AuthMode;
use super::{ApiError, AppState};

/// Routes whose POST body may be `multipart/form-data` besides JSON.
const MULTIPART_ROUTES: &[&str] = &["/v1/jobs", "/v1/png-info", "/v1/images/edits"];

/// The cross-site checks, as an axum middleware over the whole router.
pub async fn cross_site(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check(
        &state,
        request.method(),
        request.uri().path(),
        request.headers(),
    ) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes_state && has_body(headers) {
        check_media_type(path, headers)?;
    }
    if state.auth.mode == AuthMode::Off {
        let host = request_host(headers)
            .ok_or_else(|| ApiError::Forbidden("the request has no Host header".into()))?;
        if !host_allowed(&host, &state.settings.public_hosts) {
            return Err(ApiError::Forbidden(format!(
                "Host '{host}' is not served while auth is off (a DNS-rebinding guard); use a \
                 loopback address, name it with --public-host, or turn auth on"
            )));
        }
        if changes_state {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or("");
                if !origin_allowed(origin, &host, &state.settings.cors_origins) {
                    return Err(ApiError::Forbidden(format!(
                        "cross-site request from origin '{origin}' refused while auth is off; \
                         allow it with --cors-origin or turn auth on"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn check_media_type(path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let json = media == "application/json" || media.ends_with("+json");
    let multipart = media == "multipart/form-data" && MULTIPART_ROUTES.contains(&path);
    if json || multipart {
        return Ok(());
    }
    let accepted = if MULTIPART_ROUTES.contains(&path) {
        "application/json or multipart/form-data"
    } else {
        "application/json"
    };
    let got = if media.is_empty() {
        "no Content-Type".to_string()
    } else {
        format!("Content-Type '{media}'")
    };
    Err(ApiError::UnsupportedMediaType(format!(
        "this route reads {accepted}, got {got}"
    )))
}

/// The `Host` the client addressed, lower-cased, with its port.
fn request_host(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
}

/// `host` without its port (`[::1]:7860` → `::1`).
fn hostname(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn host_allowed(host: &str, public_hosts: &[String]) -> bool {
    let name = hostname(host);
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if name
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    public_hosts
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name) || p.eq_ignore_ascii_case(host))
}

fn origin_allowed(origin: &str, host: &str, cors: &[String]) -> bool {
    if cors
        .iter()
        .any(|c| c == "*" || c.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // Same origin: the Origin's authority is the Host the request was sent to.
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_public_hosts_are_allowed() {
        let public = vec!["sdq.example.org".to_string()];
        for ok in [
            "127.0.0.1:7860",
            "localhost",
            "localhost:7860",
            "[::1]:7860",
            "app.localhost:80",
            "127.0.0.2",
            "sdq.example.org",
            "SDQ.example.org:443",
        ] {
            assert!(host_allowed(&ok.to_ascii_lowercase(), &public), "{ok}");
        }
        for bad in [
            "evil.com",
            "evil.com:7860",
            "127.0.0.1.evil.com",
            "10.0.0.1:7860",
            "",
        ] {
            assert!(!host_allowed(bad, &public), "{bad}");
        }
    }

    #[test]
    fn only_the_same_origin_or_allowed_ones_pass() {
        let host = "127.0.0.1:7860";
        assert!(origin_allowed("http://127.0.0.1:7860", host, &[]));
        assert!(!origin_allowed("http://evil.com", host, &[]));
        assert!(!origin_allowed("null", host, &[]));
        assert!(!origin_allowed("http://127.0.0.1:9999", host, &[]));
        assert!(origin_allowed(
            "http://app.test",
            host,
            &["http://app.test".to_string()]
        ));
        assert!(origin_allowed("http://any.test", host, &["*".to_string()]));
    }

    #[test]
    fn bodies_must_be_json_or_multipart_where_read() {
        let mut h = HeaderMap::new();
        assert!(check_media_type("/v1/jobs", &h).is_err());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(check_media_type("/v1/jobs", &h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(check_media_type("/v1/jobs", &h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=x".parse().unwrap(),
        );
        assert!(check_media_type("/v1/jobs", &h).is_ok());
        assert!(check_media_type("/v1/jobs/1/cancel", &h).is_err());
    }
}
