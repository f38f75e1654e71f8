//! Every parser of outside input, under proptest: arbitrary input never panics (it is
//! accepted or refused with an error), and valid input round-trips. The parsers: the
//! submit body, PNG metadata, `Last-Event-ID`, model names, `.npy` files, the config JSON
//! of model folders, and prompts through the tokenizer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use sdq::api::{parse_body, parse_last_event_id, ApiError, ApiSettings, InputFiles, Limits};
use serde_json::{json, Value};

fn settings() -> ApiSettings {
    ApiSettings {
        limits: Limits::default(),
        ..ApiSettings::new("tiny")
    }
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A submit body with every field present, wrong or right.
fn submit_field() -> impl Strategy<Value = (String, Value)> {
    let names = prop::sample::select(vec![
        "prompt",
        "negative_prompt",
        "model",
        "width",
        "height",
        "steps",
        "guidance_scale",
        "seed",
        "scheduler",
        "num_images",
        "priority",
        "long_prompt",
        "init_image",
        "mask_image",
        "strength",
        "unknown",
    ]);
    (names, any_json()).prop_map(|(n, v)| (n.to_string(), v))
}

fn is_client_error(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::MalformedJson(_) | ApiError::Invalid { .. } | ApiError::PayloadTooLarge(_)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn submit_body_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(req) = parse_body(&bytes) {
            let _ = req.into_submission(&settings(), InputFiles::default());
        }
    }

    #[test]
    fn submit_bodies_of_any_shape_are_accepted_or_named(fields in prop::collection::vec(submit_field(), 0..8)) {
        let body = Value::Object(fields.into_iter().collect());
        let bytes = serde_json::to_vec(&body).unwrap();
        match parse_body(&bytes) {
            Ok(req) => match req.into_submission(&settings(), InputFiles::default()) {
                Ok(s) => prop_assert!(!s.spec.prompt.trim().is_empty()),
                Err(e) => prop_assert!(is_client_error(&e), "{e:?}"),
            },
            Err(e) => prop_assert!(is_client_error(&e), "{e:?}"),
        }
    }

    #[test]
    fn valid_submit_bodies_round_trip(
        prompt in "[a-zA-Z0-9 ,.]{1,200}".prop_filter("not blank", |p| !p.trim().is_empty()),
        negative in "[a-z ]{0,50}",
        w in 8u32..=32, h in 8u32..=32,
        steps in 1u32..=150,
        guidance in 0.0f64..=30.0,
        seed in any::<u64>(),
        scheduler in prop::sample::select(vec!["ddim", "euler", "euler-a", "dpmpp-2m", "lcm"]),
        num_images in 1u32..=2,
        priority in -100i32..=100,
    ) {
        let body = json!({"prompt": prompt, "negative_prompt": negative, "model": "tiny",
            "width": w * 8, "height": h * 8, "steps": steps, "guidance_scale": guidance,
            "seed": seed, "scheduler": scheduler, "num_images": num_images, "priority": priority});
        let req = parse_body(&serde_json::to_vec(&body).unwrap()).unwrap();
        let s = req.into_submission(&settings(), InputFiles::default()).unwrap();
        prop_assert_eq!(&s.spec.prompt, &prompt);
        prop_assert_eq!(&s.spec.negative_prompt, &negative);
        prop_assert_eq!((s.spec.width, s.spec.height), (w * 8, h * 8));
        prop_assert_eq!(s.spec.steps, steps);
        // serde_json's default float parser is not always correctly rounded: a decimal
        // may come back one ulp away (its `float_roundtrip` feature fixes that).
        prop_assert!(
            (s.spec.guidance_scale.to_bits() as i64 - guidance.to_bits() as i64).abs() <= 1,
            "{} != {}", s.spec.guidance_scale, guidance
        );
        prop_assert_eq!(s.spec.seed, seed);
        prop_assert_eq!(&s.spec.scheduler, scheduler);
        prop_assert_eq!(s.spec.num_images, num_images);
        prop_assert_eq!(s.priority, priority);
    }

    #[test]
    fn model_names_outside_the_allowed_list_are_refused(name in ".{0,64}") {
        let body = json!({"prompt": "x", "model": name});
        let req = parse_body(&serde_json::to_vec(&body).unwrap()).unwrap();
        match req.into_submission(&settings(), InputFiles::default()) {
            Ok(s) => prop_assert_eq!(s.spec.model.as_str(), "tiny"),
            Err(ApiError::Invalid { field, .. }) => prop_assert_eq!(field.as_deref(), Some("model")),
            Err(e) => prop_assert!(false, "{e:?}"),
        }
        let _ = sdq::inference::hub::known(&name);
    }

    #[test]
    fn last_event_id_parses_or_is_refused(raw in prop::collection::vec(any::<u8>(), 0..40)) {
        match parse_last_event_id(&raw) {
            Ok(n) => prop_assert!(n >= 0),
            Err(e) => prop_assert!(is_client_error(&e)),
        }
    }

    #[test]
    fn last_event_ids_round_trip(n in 0i64..=i64::MAX, pad in " {0,3}") {
        let raw = format!("{pad}{n}{pad}");
        prop_assert_eq!(parse_last_event_id(raw.as_bytes()).unwrap(), n);
    }

    #[test]
    fn png_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..2048), signed in any::<bool>()) {
        if signed {
            let mut png = b"\\x89PNG\\r\\n\\x1a\\n".to_vec();
            png.append(&mut bytes);
            bytes = png;
        }
        let _ = sdq::storage::png::read_text_chunks(&bytes);
    }

    #[test]
    fn png_metadata_round_trips(
        prompt in "\\PC{0,120}",
        negative in "\\PC{0,40}",
        seed in any::<u64>(),
        steps in 1u32..150,
    ) {
        let spec = json!({"prompt": prompt, "seed": seed});
        let meta = sdq::storage::png::PngMetadata {
            prompt: prompt.clone(), negative_prompt: negative.clone(), steps,
            sampler: "Euler a".into(), guidance_scale: 7.5, seed, width: 2, height: 1,
            model: "tiny".into(), strength: None, spec: spec.clone(),
        };
        let png = sdq::storage::png::encode(2, 1, &[0, 1, 2, 3, 4, 5], &meta).unwrap();
        let chunks = sdq::storage::png::read_text_chunks(&png).unwrap();
        let parameters = &chunks.iter().find(|(k, _)| k == "parameters").unwrap().1;
        prop_assert!(parameters.starts_with(&prompt), "{parameters:?}");
        let seed_text = format!("Seed: {seed}");
        prop_assert!(parameters.contains(&seed_text));
        let stored: Value = serde_json::from_str(&chunks.iter().find(|(k, _)| k == "sdq").unwrap().1).unwrap();
        prop_assert_eq!(stored, spec);
    }

    #[test]
    fn npy_files_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..512), header in any::<bool>()) {
        if header {
            let mut npy = b"\\x93NUMPY\\x01\\x00".to_vec();
            npy.append(&mut bytes);
            bytes = npy;
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        let _ = sdq::inference::NoiseArray::read_npy(file.path());
    }

    #[test]
    fn npy_files_round_trip(values in prop::collection::vec(-1e6f32..1e6, 1..64)) {
        let n = values.len();
        let tensor = candle_core::Tensor::from_vec(values.clone(), (1, n), &candle_core::Device::Cpu).unwrap();
        let file = tempfile::NamedTempFile::with_suffix(".npy").unwrap();
        tensor.write_npy(file.path()).unwrap();
        let read = sdq::inference::NoiseArray::read_npy(file.path()).unwrap();
        prop_assert_eq!(read.shape, vec![1, n]);
        prop_assert_eq!(read.values, values);
    }
}

/// A tiny model written once for the tests below.
fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sdq-robust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        sdq::inference::tiny::write(&dir, 1).unwrap();
        dir
    })
}

/// The config files of a model folder that loading reads.
const CONFIGS: &[&str] = &[
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn model_folder_configs_never_panic(
        file in prop::sample::select(CONFIGS.to_vec()),
        key in "[a-z_]{1,24}",
        pick_existing in any::<usize>(),
        value in any_json(),
        garbage in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
    ) {
        // A copy of the folder per case (the files are small; the weights are linked).
        let model = tiny_model();
        let dir = tempfile::tempdir().unwrap();
        copy_model(model, dir.path());
        let path = dir.path().join(file);
        let bytes = match garbage {
            Some(bytes) => bytes,
            None => {
                let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let object = config.as_object_mut().unwrap();
                // Change an existing key half the time, add a new one otherwise.
                let name = if pick_existing % 2 == 0 && !object.is_empty() {
                    object.keys().nth(pick_existing / 2 % object.len()).unwrap().clone()
                } else {
                    key
                };
                object.insert(name, value);
                serde_json::to_vec(&config).unwrap()
            }
        };
        std::fs::write(&path, bytes).unwrap();
        let result = std::panic::catch_unwind(|| {
            sdq::inference::StableDiffusion::load(dir.path(), &candle_core::Device::Cpu, candle_core::DType::F32)
                .map(|_| ())
        });
        prop_assert!(result.is_ok(), "loading panicked with a changed {}", file);
    }

    #[test]
    fn prompts_tokenize_into_bounded_windows(prompt in "\\PC{0,400}") {
        let tokenizer = tokenizer();
        let windows = tokenizer
            .windows(&prompt, sdq::inference::tokenizer::LongPrompt::Chunk, 1)
            .unwrap();
        prop_assert!(!windows.is_empty());
        for w in &windows {
            prop_assert_eq!(w.len(), tokenizer.window());
        }
        let truncated = tokenizer
            .windows(&prompt, sdq::inference::tokenizer::LongPrompt::Truncate, 1)
            .unwrap();
        prop_assert_eq!(truncated.len(), 1);
    }
}

fn tokenizer() -> &'static sdq::inference::tokenizer::PromptTokenizer {
    static T: OnceLock<sdq::inference::tokenizer::PromptTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        sdq::inference::tokenizer::PromptTokenizer::load(&tiny_model().join("tokenizer"), 77)
            .unwrap()
    })
}

/// Copies a model folder: config files as copies, everything else as hard links.
fn copy_model(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_model(&entry.path(), &target);
        } else if entry
            .path()
            .extension()
            .is_some_and(|e| e == "json" || e == "txt")
        {
            std::fs::copy(entry.path(), &target).unwrap();
        } else {
            std::fs::hard_link(entry.path(), &target).unwrap();
        }
    }
}
