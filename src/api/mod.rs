//! The HTTP API: axum routes, auth, errors, validation, SSE, and the embedded web UI.
//!
//! Handlers are thin: parse, authorise (a [`auth::Caller`] argument), call the queue, map
//! the result. Every route is declared once in [`routes`], with who may call it; the router
//! and the route table that tests (the auth matrix) and the OpenAPI check read both come
//! from there, so a route cannot exist without an entry. [`serve`] binds it to a socket.

pub mod auth;
mod compat;
mod error;
mod events;
mod guard;
mod health;
mod images;
pub(crate) mod jobs;
mod keys;
mod metrics;
mod multipart;
pub mod openapi;
mod png_info;
mod server;
pub mod submit;
pub(crate) mod validate;
mod web;

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use auth::{Auth, AuthMode, Caller};
pub use error::ApiError;
pub use events::parse_last_event_id;
pub use keys::check_new_key;
pub use server::{serve, Timeouts};
pub use validate::{parse_body, InputFiles, Limits, SubmitRequest};

use crate::queue::Queue;
use crate::storage::ImageStore;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
    pub images: ImageStore,
    pub settings: Arc<ApiSettings>,
    pub auth: Arc<Auth>,
}

/// Server-side choices that shape requests.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The model a request without `model` gets.
    pub default_model: String,
    /// Model ids a request may name (the default model is always allowed).
    pub models: Vec<String>,
    pub limits: Limits,
    /// Attempts a job gets before it fails for good.
    pub max_attempts: i32,
    /// Host names (besides loopback ones) requests may address while auth is off.
    pub public_hosts: Vec<String>,
    /// Origins browsers may call the API from (`*` for any).
    pub cors_origins: Vec<String>,
    /// Inward webhook targets the operator allowed (`--webhook-allow`).
    pub webhook_allow: Arc<crate::net_guard::Allowlist>,
    /// The models directory and what its last scan found (checkpoints, LoRAs,
    /// embeddings, VAEs); `POST /v1/models/refresh` scans again.
    pub models_dir: ModelsDir,
}

/// The models directory as the API sees it: requests name its files, and the listing
/// routes (ours and the dialects') read [`ModelsDir::catalogue`].
#[derive(Debug, Clone, Default)]
pub struct ModelsDir {
    /// `None`: no models directory on this host (nothing can be named from one).
    pub path: Option<std::path::PathBuf>,
    pub catalogue: Arc<std::sync::RwLock<crate::inference::catalogue::Catalogue>>,
}

impl ModelsDir {
    /// Scans `path` now (blocking) and keeps the result.
    pub fn scan(path: std::path::PathBuf) -> Self {
        let catalogue = crate::inference::catalogue::scan(&path);
        Self {
            path: Some(path),
            catalogue: Arc::new(std::sync::RwLock::new(catalogue)),
        }
    }

    /// The last scan's result.
    pub fn catalogue(&self) -> crate::inference::catalogue::Catalogue {
        self.read().clone()
    }

    /// The last scan's result without a copy, for a check that runs on every request.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, crate::inference::catalogue::Catalogue> {
        self.catalogue.read().expect("catalogue lock")
    }

    /// Scans again on a blocking thread and keeps the result.
    pub async fn refresh(&self) -> crate::inference::catalogue::Catalogue {
        let Some(path) = self.path.clone() else {
            return Default::default();
        };
        let fresh = tokio::task::spawn_blocking(move || crate::inference::catalogue::scan(&path))
            .await
            .unwrap_or_default();
        *self.catalogue.write().expect("catalogue lock") = fresh.clone();
        fresh
    }
}

impl ApiSettings {
    /// Settings for a server whose only model is `default_model`.
    pub fn new(default_model: impl Into<String>) -> Self {
        let default_model = default_model.into();
        Self {
            models: vec![default_model.clone()],
            default_model,
            limits: Limits::default(),
            max_attempts: 3,
            public_hosts: Vec::new(),
            cors_origins: Vec::new(),
            webhook_allow: Arc::default(),
            models_dir: ModelsDir::default(),
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness, readiness, the description of the API.
    Public,
    /// A valid key (or anyone, while auth is off).
    Key,
    /// An admin key (or anyone, while auth is off).
    Admin,
}

/// One entry of the route table.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub method: Method,
    /// As axum writes it, e.g. `/v1/jobs/{id}`.
    pub path: &'static str,
    pub access: Access,
}

/// The router under construction and the table of what it serves.
pub struct Routes {
    router: Router<AppState>,
    table: Vec<RouteInfo>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    /// Adds `method path`, served by `handler`, callable by `access`.
    pub fn add(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, handler);
        self.table.push(RouteInfo {
            method,
            path,
            access,
        });
        self
    }
}

/// Every route of the API, with who may call it: one method per entry.
pub fn routes() -> Routes {
    use Access::*;
    use Method as M;
    let native = Routes::new()
        .add(M::GET, "/health", Public, get(health::health))
        .add(M::GET, "/ready", Public, get(health::ready))
        .add(M::GET, "/v1/health", Public, get(health::health))
        .add(M::GET, "/v1/ready", Public, get(health::ready))
        .add(M::POST, "/v1/jobs", Key, post(jobs::submit))
        .add(M::GET, "/v1/jobs", Key, get(jobs::list))
        .add(M::GET, "/v1/jobs/{id}", Key, get(jobs::get))
        .add(M::DELETE, "/v1/jobs/{id}", Key, delete(jobs::delete))
        .add(M::POST, "/v1/jobs/{id}/cancel", Key, post(jobs::cancel))
        .add(M::GET, "/v1/jobs/{id}/events", Key, get(events::stream))
        .add(M::GET, "/v1/jobs/{id}/images", Key, get(jobs::images))
        .add(M::GET, "/v1/images", Key, get(images::list))
        .add(M::GET, "/v1/images/{id}", Key, get(images::get))
        .add(M::DELETE, "/v1/images/{id}", Key, delete(images::delete))
        .add(
            M::GET,
            "/v1/images/{id}/metadata",
            Key,
            get(png_info::metadata),
        )
        .add(M::POST, "/v1/png-info", Key, post(png_info::read))
        .add(
            M::GET,
            "/v1/images/{id}/thumbnail",
            Key,
            get(images::thumbnail),
        )
        .add(M::GET, "/v1/models", Key, get(health::models))
        .add(
            M::POST,
            "/v1/models/refresh",
            Admin,
            post(health::refresh_models),
        )
        .add(M::GET, "/v1/workers", Admin, get(health::workers))
        .add(M::GET, "/v1/me", Key, get(keys::me))
        .add(M::GET, "/v1/keys", Admin, get(keys::list))
        .add(M::POST, "/v1/keys", Admin, post(keys::create))
        .add(M::DELETE, "/v1/keys/{id}", Admin, delete(keys::revoke))
        .add(M::GET, "/metrics", Admin, get(metrics::scrape))
        .add(M::GET, "/openapi.json", Public, get(openapi::serve_spec))
        .add(M::GET, "/docs", Public, get(openapi::docs_page));
    compat::routes(native)
}

/// The table of every route, method by method.
pub fn route_table() -> Vec<RouteInfo> {
    routes().table
}

/// All routes, with their state and the layers every request goes through.
pub fn router(state: AppState) -> Router {
    let Routes { router, .. } = routes();
    router
        .fallback(web::fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::cross_site,
        ))
        .layer(cors(&state.settings.cors_origins))
        .layer(axum::extract::DefaultBodyLimit::max(
            validate::MAX_BODY_BYTES,
        ))
        // Last, so it wraps the layers above and counts their refusals too; `layer` (unlike
        // `route_layer`) also covers the fallback, and both run after routing, so the
        // matched path is known.
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// Answers preflights and adds CORS headers for the configured origins only.
fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::ETAG,
            header::CONTENT_DISPOSITION,
        ])
        .max_age(std::time::Duration::from_secs(3600))
}
