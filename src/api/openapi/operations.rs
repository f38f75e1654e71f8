//! What each route of the route table takes and answers, for the OpenAPI document.
//!
//! One entry per `(method, path)`; [`describe`] turns it into an OpenAPI operation with
//! its parameters, bodies, the error responses of its dialect and its security.

use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, Ref, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{Content, Header, KnownFormat, RefOr, Required, ResponseBuilder};

use crate::api::{Access, RouteInfo};
use crate::queue::JobStatus;

/// A request body.
enum Body {
    None,
    /// JSON of the named schema.
    JsonOf(&'static str),
    /// JSON of the first schema, or multipart of the second.
    JsonOrMultipart(&'static str, &'static str),
    /// Multipart of the named schema.
    Multipart(&'static str),
    /// Any JSON object (A1111's options).
    AnyObject,
    /// Whatever the client sends; it is ignored.
    Ignored,
}

/// A successful response body.
#[derive(Clone, Copy)]
enum Out {
    Json(&'static str),
    /// A JSON array of the named schema (or of anything, for `""`).
    Array(&'static str),
    Object,
    Null,
    Png,
    Jpeg,
    Sse,
    Prometheus,
    Html,
    OpenApi,
    Empty,
    Redirect,
}

/// A query parameter: name, type, description.
type Query = (&'static str, Type, &'static str);

struct Op {
    id: &'static str,
    summary: &'static str,
    body: Body,
    ok: Vec<(u16, &'static str, Out)>,
    query: &'static [Query],
}

fn op(
    id: &'static str,
    summary: &'static str,
    body: Body,
    ok: Vec<(u16, &'static str, Out)>,
) -> Op {
    Op {
        id,
        summary,
        body,
        ok,
        query: &[],
    }
}

const JOBS_QUERY: &[Query] = &[
    ("status", Type::String, "Only jobs in this status"),
    (
        "cursor",
        Type::String,
        "The `next_cursor` of the previous page",
    ),
    ("limit", Type::Integer, "1 to 100 (default 20)"),
];
const IMAGES_QUERY: &[Query] = &[
    (
        "cursor",
        Type::String,
        "The `next_cursor` of the previous page",
    ),
    ("limit", Type::Integer, "1 to 200 (default 50)"),
    ("job_id", Type::String, "Only this job's images"),
    ("model", Type::String, "Only images of this model"),
    ("since", Type::String, "RFC 3339 time or epoch milliseconds"),
];
const IMAGE_QUERY: &[Query] = &[(
    "redirect",
    Type::String,
    "`1`: answer 302 to a presigned URL when the store is S3",
)];
const PROGRESS_QUERY: &[Query] = &[(
    "skip_current_image",
    Type::Boolean,
    "Accepted for compatibility",
)];

/// The description of one route, or `None` for a route nobody described (a test fails).
fn lookup(method: &str, path: &str) -> Option<Op> {
    use Body::*;
    use Out::*;
    let job = || vec![(200, "The job", Json("JobView"))];
    let a1111_list = |what: &'static str| {
        op(
            "",
            what,
            None,
            vec![(200, "The list (sdq has none of these)", Array(""))],
        )
    };
    let found = match (method, path) {
        ("GET", "/health" | "/v1/health") => op(
            "",
            "Liveness: the process is up",
            None,
            vec![(200, "Up", Json("Health"))],
        ),
        ("GET", "/ready" | "/v1/ready") => op(
            "",
            "Readiness: the database and object store answer",
            None,
            vec![
                (200, "Ready", Json("Readiness")),
                (503, "A dependency is down", Json("Readiness")),
            ],
        ),
        ("POST", "/v1/jobs") => op(
            "submitJob",
            "Queue a generation job (txt2img, img2img, inpaint, or a re-run with `from_image`)",
            JsonOrMultipart("SubmitRequest", "JobMultipart"),
            vec![
                (202, "Queued", Json("JobCreated")),
                (200, "The job an earlier request with this Idempotency-Key made", Json("JobCreated")),
            ],
        ),
        ("GET", "/v1/jobs") => Op {
            query: JOBS_QUERY,
            ..op("listJobs", "The caller's jobs, newest first", None, vec![(200, "A page", Json("JobList"))])
        },
        ("GET", "/v1/jobs/{id}") => op("getJob", "One job", None, job()),
        ("DELETE", "/v1/jobs/{id}") => op(
            "deleteJob",
            "Delete a finished job and everything it stored (409 while it runs)",
            None,
            vec![(204, "Deleted", Empty)],
        ),
        ("POST", "/v1/jobs/{id}/cancel") => op(
            "cancelJob",
            "Cancel a job: 200 when a queued job is canceled, 202 when a running one is asked to stop",
            Ignored,
            vec![
                (200, "Canceled", Json("JobView")),
                (202, "Asked to stop", Json("JobView")),
            ],
        ),
        ("GET", "/v1/jobs/{id}/events") => op(
            "jobEvents",
            "Server-sent events of a job; `Last-Event-ID` resumes after that `seq`",
            None,
            vec![(200, "An event stream: `event:` is the type, `id:` the seq, `data:` an Event", Sse)],
        ),
        ("GET", "/v1/jobs/{id}/images") => op(
            "jobImages",
            "A job's images",
            None,
            vec![(200, "The images", Json("JobImages"))],
        ),
        ("GET", "/v1/images") => Op {
            query: IMAGES_QUERY,
            ..op("listImages", "The gallery, newest first", None, vec![(200, "A page", Json("ImageList"))])
        },
        ("GET", "/v1/images/{id}") => Op {
            query: IMAGE_QUERY,
            ..op(
                "getImage",
                "An image's PNG (ETag / If-None-Match honoured)",
                None,
                vec![
                    (200, "The PNG", Png),
                    (302, "A presigned URL (with `redirect=1` on S3)", Redirect),
                    (304, "Not modified", Empty),
                ],
            )
        },
        ("DELETE", "/v1/images/{id}") => op(
            "deleteImage",
            "Delete an image and its thumbnail (idempotent)",
            None,
            vec![(204, "Deleted (or already gone)", Empty)],
        ),
        ("GET", "/v1/images/{id}/thumbnail") => op(
            "getThumbnail",
            "A JPEG of at most 256 pixels a side",
            None,
            vec![(200, "The JPEG", Jpeg), (304, "Not modified", Empty)],
        ),
        ("GET", "/v1/images/{id}/metadata") => op(
            "getImageMetadata",
            "The recipe stored in an image, as job-request fields",
            None,
            vec![(200, "The recipe", Json("PngRecipe"))],
        ),
        ("POST", "/v1/png-info") => op(
            "pngInfo",
            "Read the recipe of an uploaded PNG (sdq's or A1111's)",
            JsonOrMultipart("PngInfoBody", "PngInfoBody"),
            vec![(200, "The recipe", Json("PngRecipe"))],
        ),
        ("GET", "/v1/models") => op(
            "listModels",
            "Models this server knows and accepts, and the models directory",
            None,
            vec![(200, "The models", Json("ModelList"))],
        ),
        ("POST", "/v1/models/refresh") => op(
            "refreshModels",
            "Scan the models directory again (admin)",
            Ignored,
            vec![(200, "The models", Json("ModelList"))],
        ),
        ("GET", "/v1/workers") => op(
            "listWorkers",
            "Workers seen in the last 30 seconds (admin)",
            None,
            vec![(200, "The workers", Json("WorkerList"))],
        ),
        ("GET", "/v1/me") => op(
            "me",
            "The auth mode and the calling key",
            None,
            vec![(200, "The caller", Json("Me"))],
        ),
        ("GET", "/v1/keys") => op(
            "listKeys",
            "Every API key (admin)",
            None,
            vec![(200, "The keys", Json("KeyList"))],
        ),
        ("POST", "/v1/keys") => op(
            "createKey",
            "Issue a key (admin); its token is in this response only",
            JsonOf("CreateKey"),
            vec![(201, "The key, with `token` and `webhook_secret`", Json("KeyView"))],
        ),
        ("DELETE", "/v1/keys/{id}") => op(
            "revokeKey",
            "Revoke a key (admin); its jobs and images stay",
            None,
            vec![(200, "The revoked key", Json("KeyView"))],
        ),
        ("GET", "/metrics") => op(
            "metrics",
            "Prometheus metrics (admin when auth is required)",
            None,
            vec![(200, "Prometheus text format 0.0.4", Prometheus)],
        ),
        ("GET", "/openapi.json") => op(
            "openapi",
            "This document",
            None,
            vec![(200, "OpenAPI 3.1", OpenApi)],
        ),
        ("GET", "/docs") => op(
            "docs",
            "A page that renders this document, with a form to try each operation",
            None,
            vec![(200, "HTML", Html)],
        ),
        ("POST", "/sdapi/v1/txt2img") => op(
            "a1111Txt2img",
            "A1111 txt2img: queues a job and answers when it has finished",
            JsonOf("A1111Request"),
            vec![(200, "The images", Json("A1111Images"))],
        ),
        ("POST", "/sdapi/v1/img2img") => op(
            "a1111Img2img",
            "A1111 img2img / inpaint: queues a job and answers when it has finished",
            JsonOf("A1111Request"),
            vec![(200, "The images", Json("A1111Images"))],
        ),
        ("GET", "/sdapi/v1/progress") => Op {
            query: PROGRESS_QUERY,
            ..op(
                "a1111Progress",
                "The caller's running job and how many wait",
                None,
                vec![(200, "Progress", Json("A1111Progress"))],
            )
        },
        ("POST", "/sdapi/v1/interrupt" | "/sdapi/v1/skip") => op(
            "",
            "Cancel the caller's running jobs",
            Ignored,
            vec![(200, "Done", Object)],
        ),
        ("GET", "/sdapi/v1/options") => op(
            "a1111GetOptions",
            "The settings sdq reports",
            None,
            vec![(200, "Settings", Object)],
        ),
        ("POST", "/sdapi/v1/options") => op(
            "a1111SetOptions",
            "`sd_model_checkpoint` sets the caller's default model; other settings only at sdq's values",
            AnyObject,
            vec![(200, "Accepted", Null)],
        ),
        ("GET", "/sdapi/v1/sd-models") => op(
            "a1111Models",
            "The models this server accepts",
            None,
            vec![(200, "Models", Array(""))],
        ),
        ("GET", "/sdapi/v1/samplers") => op(
            "a1111Samplers",
            "A1111 sampler names sdq runs",
            None,
            vec![(200, "Samplers", Array(""))],
        ),
        ("GET", "/sdapi/v1/schedulers") => op(
            "a1111Schedulers",
            "A1111 schedule types sdq runs",
            None,
            vec![(200, "Schedules", Array(""))],
        ),
        ("GET", "/sdapi/v1/scripts") => op(
            "a1111Scripts",
            "Scripts (none)",
            None,
            vec![(200, "Empty lists", Object)],
        ),
        ("GET", "/sdapi/v1/embeddings") => op(
            "a1111Embeddings",
            "Embeddings as A1111 lists them",
            None,
            vec![(200, "Embeddings", Object)],
        ),
        ("POST", "/sdapi/v1/refresh-checkpoints") => op(
            "a1111RefreshCheckpoints",
            "Accepted; sdq rescans with `POST /v1/models/refresh`",
            Ignored,
            vec![(200, "Done", Null)],
        ),
        ("POST", "/sdapi/v1/png-info") => op(
            "a1111PngInfo",
            "The `parameters` text of a PNG, parsed as A1111 does",
            JsonOf("PngInfoBody"),
            vec![(200, "The info", Json("A1111PngInfo"))],
        ),
        ("GET", "/sdapi/v1/loras") => a1111_list("LoRAs as A1111 lists them"),
        (
            "GET",
            "/sdapi/v1/upscalers"
            | "/sdapi/v1/latent-upscale-modes"
            | "/sdapi/v1/sd-vae"
            | "/sdapi/v1/hypernetworks"
            | "/sdapi/v1/face-restorers"
            | "/sdapi/v1/realesrgan-models"
            | "/sdapi/v1/prompt-styles",
        ) => a1111_list("An A1111 list"),
        ("POST", "/v1/images/generations") => op(
            "openaiGenerations",
            "OpenAI image generation: queues a job and answers when it has finished (`stream: true`: SSE)",
            JsonOf("GenerateParams"),
            vec![(200, "The images (or an event stream with `stream: true`)", Json("OpenAiImages"))],
        ),
        ("POST", "/v1/images/edits") => op(
            "openaiEdits",
            "OpenAI image edit (img2img / inpaint): multipart",
            Multipart("OpenAiEdit"),
            vec![(200, "The images", Json("OpenAiImages"))],
        ),
        _ => return Option::None,
    };
    Some(found)
}

fn schema_ref(name: &str) -> RefOr<Schema> {
    Ref::from_schema_name(name).into()
}

fn json_content(out: Out) -> Option<(&'static str, Content)> {
    let object = || ObjectBuilder::new().schema_type(Type::Object).build();
    let binary = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .build()
    };
    let text = || ObjectBuilder::new().schema_type(Type::String).build();
    Some(match out {
        Out::Json(name) => ("application/json", Content::new(Some(schema_ref(name)))),
        Out::Array("") => (
            "application/json",
            Content::new(Some(
                ArrayBuilder::new().items(ObjectBuilder::new()).build(),
            )),
        ),
        Out::Array(name) => (
            "application/json",
            Content::new(Some(ArrayBuilder::new().items(schema_ref(name)).build())),
        ),
        Out::Object | Out::OpenApi => ("application/json", Content::new(Some(object()))),
        Out::Null => (
            "application/json",
            Content::new(Some(ObjectBuilder::new().schema_type(Type::Null).build())),
        ),
        Out::Png => ("image/png", Content::new(Some(binary()))),
        Out::Jpeg => ("image/jpeg", Content::new(Some(binary()))),
        Out::Sse => (
            "text/event-stream",
            Content::new(Some(schema_ref("SseMessage"))),
        ),
        Out::Prometheus => ("text/plain", Content::new(Some(text()))),
        Out::Html => ("text/html", Content::new(Some(text()))),
        Out::Empty | Out::Redirect => return None,
    })
}

/// Where a response's ids lead: `(link name, operation id, JSON pointer to the id)`. They
/// let clients (and schemathesis' stateful phase) follow a new job to its other routes.
/// The event stream is left out: a queued job's stream stays open until the job ends.
fn links(op: &str, status: u16) -> Vec<(&'static str, &'static str, &'static str)> {
    let job = |pointer| {
        vec![
            ("get", "getJob", pointer),
            ("cancel", "cancelJob", pointer),
            ("images", "jobImages", pointer),
            ("delete", "deleteJob", pointer),
        ]
    };
    match (op, status) {
        ("submitJob", 200 | 202) => job("/id"),
        ("cancelJob", 200 | 202) | ("getJob", 200) => job("/id"),
        ("listJobs", 200) => job("/jobs/0/id"),
        ("listImages", 200) => vec![
            ("image", "getImage", "/images/0/id"),
            ("thumbnail", "getThumbnail", "/images/0/id"),
            ("metadata", "getImageMetadata", "/images/0/id"),
        ],
        _ => Vec::new(),
    }
}

/// The error responses a route may give, in its dialect's shape.
fn errors(path: &str, access: Access) -> Vec<(u16, &'static str)> {
    if access == Access::Public {
        return Vec::new();
    }
    let mut codes = vec![
        (400, "Malformed JSON or multipart body"),
        (401, "No key, or an unknown or revoked one"),
        (
            403,
            "A key that may not do this, or a refused cross-site request",
        ),
        (404, "Not found (also: owned by another key)"),
        (
            409,
            "Conflict: the job's state, or an Idempotency-Key reused with another body",
        ),
        (413, "Body too large"),
        (415, "Unsupported media type"),
        (422, "A field is invalid; `field` names it"),
        (429, "Rate or job quota used up; see Retry-After"),
        (503, "A dependency is down; retry later"),
        (507, "The job database's disk is full"),
    ];
    if path.starts_with("/v1/images/generations") || path.starts_with("/v1/images/edits") {
        codes.push((500, "The job failed"));
    }
    codes
}

/// The error body of a route's dialect. The dialects' routes answer in their own shape,
/// except for what the cross-site guard refuses before any handler runs (403, 415), which
/// is in sdq's.
fn error_schema(path: &str) -> RefOr<Schema> {
    let dialect = if path.starts_with("/sdapi/") {
        "A1111Error"
    } else if path == "/v1/images/generations" || path == "/v1/images/edits" {
        "OpenAiError"
    } else {
        return schema_ref("ErrorBody");
    };
    AnyOfBuilder::new()
        .item(schema_ref(dialect))
        .item(schema_ref("ErrorBody"))
        .into()
}

/// The OpenAPI operation for a route of the table.
pub fn describe(route: &RouteInfo) -> Option<Operation> {
    let doc = lookup(route.method.as_str(), route.path)?;
    let tag = tag(route.path);
    let id = if doc.id.is_empty() {
        generated_id(route.method.as_str(), route.path)
    } else {
        doc.id.to_string()
    };
    let mut b = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some(id))
        .summary(Some(doc.summary));
    if route.path.contains("{id}") {
        b = b.parameter(
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("A job, image or key id (a UUID)"))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
        );
    }
    for (name, ty, description) in doc.query {
        let mut schema = ObjectBuilder::new().schema_type(ty.clone());
        if *name == "status" {
            schema = schema.enum_values(Some(JobStatus::ALL.map(JobStatus::as_str)));
        }
        b = b.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(*description))
                .schema(Some(schema)),
        );
    }
    let header = |name: &str, description: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
    };
    match (route.method.as_str(), route.path) {
        ("POST", "/v1/jobs") => {
            b = b.parameter(header(
                "Idempotency-Key",
                "The same key and body within 24 h returns the same job",
            ))
        }
        ("GET", "/v1/jobs/{id}/events") => {
            b = b.parameter(header("Last-Event-ID", "Resume after this event `seq`"))
        }
        _ => {}
    }
    b = b.request_body(request_body(&doc.body));
    for (status, description, out) in &doc.ok {
        let mut response = ResponseBuilder::new().description(*description);
        if let Some((media, content)) = json_content(*out) {
            response = response.content(media, content);
        }
        for (name, target, pointer) in links(doc.id, *status) {
            response = response.link(
                name,
                LinkBuilder::new()
                    .operation_id(target)
                    .parameter("id", format!("$response.body#{pointer}"))
                    .build(),
            );
        }
        if *status == 302 {
            response = response.header(
                "Location",
                Header::new(ObjectBuilder::new().schema_type(Type::String)),
            );
        }
        b = b.response(status.to_string(), response.build());
    }
    for (status, description) in errors(route.path, route.access) {
        b = b.response(
            status.to_string(),
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(error_schema(route.path))),
                )
                .build(),
        );
    }
    if route.access != Access::Public {
        b = b.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        if route.path.starts_with("/sdapi/") {
            b = b.security(SecurityRequirement::new("basic", Vec::<String>::new()));
        }
    }
    Some(b.build())
}

fn request_body(body: &Body) -> Option<utoipa::openapi::request_body::RequestBody> {
    let json = |name: &str| Content::new(Some(schema_ref(name)));
    let b = RequestBodyBuilder::new();
    let b = match body {
        Body::None | Body::Ignored => return None,
        Body::JsonOf(name) => b.content("application/json", json(name)),
        Body::JsonOrMultipart(name, multipart) => b
            .content("application/json", json(name))
            .content("multipart/form-data", json(multipart)),
        Body::Multipart(name) => b.content("multipart/form-data", json(name)),
        Body::AnyObject => b.content(
            "application/json",
            Content::new(Some(ObjectBuilder::new().schema_type(Type::Object))),
        ),
    };
    Some(b.required(Some(Required::True)).build())
}

fn tag(path: &str) -> &'static str {
    match path {
        p if p.starts_with("/sdapi/") => "a1111",
        "/v1/images/generations" | "/v1/images/edits" => "openai",
        p if p.starts_with("/v1/jobs") => "jobs",
        p if p.starts_with("/v1/images") || p == "/v1/png-info" => "images",
        p if p.starts_with("/v1/keys") || p == "/v1/me" => "keys",
        p if p.starts_with("/v1/models") || p == "/v1/workers" => "models",
        "/health" | "/ready" | "/v1/health" | "/v1/ready" => "health",
        _ => "meta",
    }
}

/// `GET /sdapi/v1/sd-vae` → `getSdapiV1SdVae`: unique, for routes that share a description.
fn generated_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    let mut upper = true;
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            if upper {
                id.push(c.to_ascii_uppercase());
            } else {
                id.push(c);
            }
            upper = false;
        } else {
            upper = true;
        }
    }
    id
}
