use super::*;

fn settings() -> ApiSettings {
    ApiSettings::new("tiny")
}

fn field_of(body: &str) -> (String, Option<String>) {
    let err = parse_body(body.as_bytes())
        .and_then(|r| {
            r.into_submission(&settings(), InputFiles::default())
                .map(|_| ())
        })
        .unwrap_err();
    match err {
        ApiError::Invalid { field, .. } => ("invalid".into(), field),
        ApiError::MalformedJson(_) => ("malformed".into(), None),
        other => (format!("{other:?}"), None),
    }
}

#[test]
fn defaults_fill_a_minimal_request() {
    let submission = parse_body(br#"{"prompt":"a cat"}"#)
        .unwrap()
        .into_submission(&settings(), InputFiles::default())
        .unwrap();
    let (spec, priority) = (submission.spec, submission.priority);
    assert_eq!(
        (spec.width, spec.height, spec.steps, spec.num_images),
        (64, 64, 4, 1)
    );
    assert_eq!(spec.model, "tiny");
    assert_eq!(priority, 0);
}

#[test]
fn bad_fields_are_named() {
    assert_eq!(
        field_of(r#"{"prompt":"a","steps":0}"#).1.as_deref(),
        Some("steps")
    );
    assert_eq!(
        field_of(r#"{"prompt":"a","width":513}"#).1.as_deref(),
        Some("width")
    );
    assert_eq!(
        field_of(r#"{"prompt":"a","scheduler":"nope"}"#)
            .1
            .as_deref(),
        Some("scheduler")
    );
    assert_eq!(field_of(r#"{"prompt":"  "}"#).1.as_deref(), Some("prompt"));
    assert_eq!(field_of(r#"{"steps":4}"#).1.as_deref(), Some("prompt"));
    for bad in [
        r#"{"prompt":"a","steps":4,"previews":true,"preview_every":0}"#,
        r#"{"prompt":"a","steps":4,"previews":true,"preview_every":5}"#,
        r#"{"prompt":"a","steps":4,"preview_every":2}"#,
        r#"{"prompt":"a","previews":true,"preview_every":-1}"#,
    ] {
        assert_eq!(field_of(bad).1.as_deref(), Some("preview_every"), "{bad}");
    }
    for bad in [
        r#"{"prompt":"a","vae_tiling":"yes"}"#,
        r#"{"prompt":"a","vae_tiling":true}"#,
    ] {
        assert_eq!(field_of(bad).1.as_deref(), Some("vae_tiling"), "{bad}");
    }
    assert_eq!(
        field_of(r#"{"prompt":"a","previews":"yes"}"#).1.as_deref(),
        Some("previews")
    );
    assert_eq!(
        field_of(r#"{"prompt":"a","steps":"four"}"#).1.as_deref(),
        Some("steps")
    );
    assert_eq!(
        field_of(r#"{"prompt":"a","seed":-1}"#).1.as_deref(),
        Some("seed")
    );
    assert_eq!(
        field_of(r#"{"prompt":"a","colour":1}"#).1.as_deref(),
        Some("colour")
    );
    assert_eq!(
        field_of(r#"{"prompt":"a","model":"other"}"#).1.as_deref(),
        Some("model")
    );
    assert_eq!(
        field_of(r#"{"prompt":"a","num_images":100}"#).1.as_deref(),
        Some("num_images")
    );
    assert_eq!(field_of(r#"{"prompt": "a""#).0, "malformed");
    assert_eq!(field_of(r#"[1,2]"#).0, "invalid");
    assert_eq!(field_of(r#"{"prompt":"a"} trailing"#).0, "malformed");
}
