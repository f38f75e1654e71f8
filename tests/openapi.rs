//! `/openapi.json` describes every route of the router, `/docs` renders it from the binary
//! alone, and schemathesis (from the test venv) fuzzes a live `sdq serve --auth required`
//! from the document with a fixed seed: no request may get a 5xx, and every response must
//! match the schema the document gives for it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{create_key, ServeProcess};
use serde_json::Value;

/// Operations left out of the fuzzing run, and why:
/// - the four that wait for their job to finish before answering: the fuzzing server runs
///   no worker (generated jobs up to the limits would take minutes each on a CPU), so they
///   would never answer; their validation is covered by tests/compat_dialects.rs and
///   tests/robust_parsing.rs, and their answers by tests/compat_clients.rs;
/// - revoking a key: schemathesis' stateful phase follows `GET /v1/keys` to
///   `DELETE /v1/keys/{id}` and revokes the very key it fuzzes with, after which every
///   request is a 401 (tests/auth.rs covers the route).
const LEFT_OUT: [&str; 5] = [
    "a1111Txt2img",
    "a1111Img2img",
    "openaiGenerations",
    "openaiEdits",
    "revokeKey",
];

/// The TypeScript client is checked against a copy of the document
/// (`clients/typescript/openapi.json`, from which `openapi.gen.ts` is generated); the copy
/// must be what the server serves today.
#[test]
fn the_typescript_clients_copy_of_the_document_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript/openapi.json");
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        committed == sdq::api::openapi::spec_json(),
        "{} is stale: run `target/debug/sdq openapi > clients/typescript/openapi.json && \
         npm run gen:openapi` and commit both files",
        path.display()
    );
}

async fn fetch(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let resp = client.get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ctype, resp.text().await.unwrap_or_default())
}

fn start(dir: &Path) -> (ServeProcess, common::TestKey) {
    let global = ["--data-dir", dir.to_str().unwrap()];
    let admin = create_key(&global, "fuzzer", &["--admin"]);
    let server = ServeProcess::spawn(dir, &["--auth", "required", "--workers", "0"]);
    (server, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route_and_the_docs_page_is_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _admin) = start(dir.path());
    let client = reqwest::Client::new();
    server.wait_healthy(&client).await;

    // Public even with auth required: no key sent.
    let (status, ctype, body) = fetch(&client, &format!("{}/openapi.json", server.base)).await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let doc: Value = serde_json::from_str(&body).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // `sdq openapi` prints the same document without a server.
    let printed: Value = serde_json::from_str(&common::run_sdq(&["openapi"])).unwrap();
    assert_eq!(printed, doc, "sdq openapi differs from /openapi.json");
    let mut missing = Vec::new();
    for route in sdq::api::route_table() {
        let method = route.method.as_str().to_ascii_lowercase();
        let op = &doc["paths"][route.path][&method];
        if !op.is_object() {
            missing.push(format!("{} {}", route.method, route.path));
            continue;
        }
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {} has no responses",
            route.path
        );
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(
            secured,
            route.access != sdq::api::Access::Public,
            "{method} {}: security does not match the route's access",
            route.path
        );
    }
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids repeat: {ids:?}");

    let schemas = &doc["components"]["schemas"];
    for name in [
        "ErrorBody",
        "SubmitRequest",
        "JobView",
        "Event",
        "EventKind",
        "A1111Request",
        "GenerateParams",
    ] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    // The error body, as src/api/error.rs writes it.
    let detail = &schemas["ErrorDetail"];
    for field in ["code", "message", "field"] {
        assert!(
            detail["properties"][field].is_object(),
            "ErrorDetail.{field}"
        );
    }
    // Every event type of the SSE stream is a variant of EventKind.
    let kinds = schemas["EventKind"].to_string();
    for kind in [
        "queued",
        "started",
        "progress",
        "image",
        "preview",
        "succeeded",
        "failed",
        "canceled",
    ] {
        assert!(
            kinds.contains(&format!("\"{kind}\"")),
            "event {kind} missing"
        );
    }
    let events = &doc["paths"]["/v1/jobs/{id}/events"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        events["text/event-stream"]["schema"]["$ref"], "#/components/schemas/SseMessage",
        "{events}"
    );
    for field in ["event", "id", "data"] {
        assert!(schemas["SseMessage"]["properties"][field].is_object());
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Unknown fields are refused, and the document says so.
    assert_eq!(schemas["SubmitRequest"]["additionalProperties"], false);

    let (status, ctype, page) = fetch(&client, &format!("{}/docs", server.base)).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(
        page.contains("/openapi.json"),
        "the page reads the document"
    );
    for external in ["http://", "https://", "//cdn", "unpkg", "jsdelivr"] {
        assert!(!page.contains(external), "/docs refers to {external}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let python = common::services::test_python();
    let schemathesis = python.with_file_name("schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run ./scripts/install-test-deps.sh",
        schemathesis.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path());
    let client = reqwest::Client::new();
    server.wait_healthy(&client).await;

    let report = dir.path().join("schemathesis.xml");
    let mut args: Vec<String> = vec![
        "run".into(),
        format!("{}/openapi.json", server.base),
        "--checks".into(),
        "not_a_server_error,response_schema_conformance".into(),
        "--seed".into(),
        "20261202".into(),
        "--max-examples".into(),
        "40".into(),
        // One worker: Python 3.11's compiler is not safe to call from several threads at
        // once, and schemathesis compiles code while it generates.
        "--workers".into(),
        "1".into(),
        "--request-timeout".into(),
        "20".into(),
        "--suppress-health-check".into(),
        "all".into(),
        "--header".into(),
        format!("Authorization: Bearer {}", admin.token),
        "--report".into(),
        "junit".into(),
        "--report-junit-path".into(),
        report.display().to_string(),
    ];
    for id in LEFT_OUT {
        args.extend(["--exclude-operation-id".into(), id.into()]);
    }
    let started = std::time::Instant::now();
    // Run in the temp dir: schemathesis keeps a cache folder where it runs.
    let out = Command::new(&schemathesis)
        .current_dir(dir.path())
        .args(&args)
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}\n(took {:?})", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    let generated = generated_cases(&stdout);
    assert!(
        generated >= 1000,
        "schemathesis sent only {generated} generated requests"
    );
    // The server is still healthy after the run.
    let (status, _, _) = fetch(&client, &format!("{}/health", server.base)).await;
    assert_eq!(status, 200);
    drop(server);
    std::thread::sleep(Duration::from_millis(100));
}

/// The number in schemathesis' summary: `Test cases:` then `N generated, N passed`.
fn generated_cases(stdout: &str) -> usize {
    let mut lines = stdout.lines().skip_while(|l| l.trim() != "Test cases:");
    lines
        .find_map(|line| {
            let (n, rest) = line.trim().split_once(' ')?;
            rest.starts_with("generated").then(|| n.parse().ok())?
        })
        .unwrap_or_else(|| {
            panic!("no `Test cases: N generated` in schemathesis' output:\n{stdout}")
        })
}
