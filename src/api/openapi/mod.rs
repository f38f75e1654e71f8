//! The OpenAPI 3.1 document (`GET /openapi.json`) and the docs page that renders it
//! (`GET /docs`).
//!
//! Schemas come from the types themselves (`utoipa::ToSchema` on the request types the
//! handlers deserialize into, and on the schema-only response types of [`schemas`]).
//! Operations are built from the router's own route table ([`super::route_table`]) and
//! the description of each route in [`operations`]: a route without a description is
//! left out of the document, which the tests catch, so no route ships undocumented.

mod operations;
pub mod schemas;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;

use super::route_table;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sdq",
        description = "A Stable Diffusion job service: submit jobs, follow them over SSE, \
                       fetch and manage their images. Also speaks AUTOMATIC1111's \
                       `/sdapi/v1` and OpenAI's Images API.",
        license(name = "Apache-2.0")
    ),
    components(schemas(
        schemas::ErrorBody,
        schemas::ErrorDetail,
        crate::api::SubmitRequest,
        crate::api::validate::LoraRequest,
        schemas::JobMultipart,
        schemas::JobCreated,
        schemas::JobLinks,
        schemas::JobView,
        schemas::Progress,
        schemas::JobList,
        schemas::JobImages,
        crate::view::ImageView,
        schemas::DeliveryView,
        schemas::ImageList,
        crate::queue::JobSpec,
        crate::queue::LoraRef,
        crate::queue::WebhookEvent,
        crate::queue::JobStatus,
        schemas::SseMessage,
        crate::queue::Event,
        crate::queue::EventKind,
        crate::queue::ImageSummary,
        schemas::Health,
        schemas::Readiness,
        schemas::Checks,
        schemas::Check,
        schemas::ModelList,
        schemas::ModelEntry,
        schemas::ModelDefaults,
        schemas::FileEntry,
        schemas::OpenAiModel,
        schemas::WorkerList,
        schemas::WorkerView,
        crate::api::keys::CreateKey,
        schemas::KeyView,
        schemas::KeyList,
        schemas::Me,
        schemas::PngInfoBody,
        schemas::PngRecipe,
        crate::api::compat::A1111Request,
        schemas::A1111Error,
        schemas::A1111Images,
        schemas::A1111Progress,
        schemas::A1111State,
        schemas::A1111PngInfo,
        crate::api::compat::GenerateParams,
        schemas::OpenAiEdit,
        schemas::OpenAiImages,
        schemas::OpenAiImage,
        schemas::OpenAiError,
        schemas::OpenAiErrorDetail,
    )),
    tags(
        (name = "jobs", description = "Submit, follow, cancel and delete generation jobs"),
        (name = "images", description = "The gallery: images, thumbnails, recipes"),
        (name = "models", description = "Models, the models directory and workers"),
        (name = "keys", description = "API keys (admin) and the calling key"),
        (name = "health", description = "Liveness and readiness"),
        (name = "meta", description = "This document, its docs page and metrics"),
        (name = "a1111", description = "AUTOMATIC1111's web UI API, translated to sdq jobs"),
        (name = "openai", description = "OpenAI's Images API, translated to sdq jobs"),
    )
)]
struct ApiDoc;

/// The whole document: components from the derives, one operation per route-table entry.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            utoipa::openapi::security::HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("sdq_…")
                .description(Some(
                    "An API key from `sdq keys create` or `POST /v1/keys`. Needed on every \
                     route but health, readiness and this document when the server runs \
                     with `--auth required`.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "basic",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
    );
    for route in route_table() {
        if let Some(op) = operations::describe(&route) {
            doc.paths
                .add_path_operation(route.path, vec![http_method(&route.method)], op);
        }
    }
    doc
}

fn http_method(m: &axum::http::Method) -> HttpMethod {
    match *m {
        axum::http::Method::POST => HttpMethod::Post,
        axum::http::Method::DELETE => HttpMethod::Delete,
        axum::http::Method::PUT => HttpMethod::Put,
        axum::http::Method::PATCH => HttpMethod::Patch,
        _ => HttpMethod::Get,
    }
}

/// The document as JSON, as `GET /openapi.json` serves it.
pub fn spec_json() -> serde_json::Value {
    let mut doc = serde_json::to_value(spec()).expect("the document serialises");
    fix_link_field_names(&mut doc);
    doc
}

/// utoipa 5.5 writes a Link object's fields in snake case (`operation_id`); OpenAPI spells
/// them in camel case, and tools ignore links spelled otherwise.
fn fix_link_field_names(doc: &mut serde_json::Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else {
            continue;
        };
        for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(v) = link.remove(snake) {
                    link.insert(camel.to_string(), v);
                }
            }
        }
    }
}

/// `GET /openapi.json`
pub async fn serve_spec() -> impl IntoResponse {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = JSON.get_or_init(|| spec_json().to_string());
    ([(header::CONTENT_TYPE, "application/json")], body.as_str())
}

/// The docs page: one self-contained file (no CDN, no build step) that fetches
/// `/openapi.json` and renders it.
const DOCS_HTML: &str = include_str!("docs.html");

/// `GET /docs`
pub async fn docs_page() -> impl IntoResponse {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src 'self' data: blob:",
        )],
        Html(DOCS_HTML),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_table_is_documented_with_its_method() {
        let doc = spec_json();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut missing = Vec::new();
        for route in route_table() {
            let method = route.method.as_str().to_ascii_lowercase();
            let op = &doc["paths"][route.path][&method];
            if !op.is_object() {
                missing.push(format!("{} {}", route.method, route.path));
                continue;
            }
            assert!(op["responses"].is_object(), "{method} {}", route.path);
        }
        assert!(missing.is_empty(), "undocumented routes: {missing:?}");
    }

    #[test]
    fn links_name_operations_that_exist() {
        let doc = spec_json();
        let text = doc.to_string();
        assert!(!text.contains("\"operation_id\""), "snake-case link fields");
        let ids: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str().map(str::to_string))
            .collect();
        let mut links = 0;
        for piece in text.split("\"operationId\":\"").skip(1) {
            let id = &piece[..piece.find('"').unwrap()];
            assert!(
                ids.iter().any(|i| i == id),
                "link to unknown operation {id}"
            );
            links += 1;
        }
        assert!(links > ids.len(), "links are there");
    }

    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(spec()).unwrap();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
    }

    #[test]
    fn the_docs_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "unpkg", "jsdelivr"] {
            assert!(!DOCS_HTML.contains(needle), "docs.html mentions {needle}");
        }
    }
}
