use super::*;

/// What webuiapi 0.9.17's `txt2img()` sends with its defaults.
fn webuiapi_txt2img() -> Value {
    serde_json::from_str(
        r#"{
        "enable_hr": false, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
        "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": null, "hr_sampler_name": null,
        "hr_scheduler": null, "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7,
        "firstphase_width": 0, "firstphase_height": 0, "prompt": "a fox", "styles": [],
        "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
        "seed_resize_from_w": 0, "batch_size": 2, "n_iter": 3, "steps": 20, "cfg_scale": 7.0,
        "width": 512, "height": 512, "restore_faces": false, "tiling": false,
        "do_not_save_samples": false, "do_not_save_grid": false, "negative_prompt": "",
        "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
        "override_settings": {}, "override_settings_restore_afterwards": true,
        "sampler_name": "Euler a", "scheduler": "automatic", "sampler_index": "Euler a",
        "script_name": null, "script_args": [], "send_images": true, "save_images": false,
        "alwayson_scripts": {}
    }"#,
    )
    .unwrap()
}

fn webuiapi_img2img() -> Value {
    let mut v = webuiapi_txt2img();
    let o = v.as_object_mut().unwrap();
    for k in ["enable_hr", "hr_scale", "hr_upscaler", "firstphase_width"] {
        o.remove(k);
    }
    let png = image_ops::b64(&{
        let img = image::RgbImage::from_fn(8, 8, |x, _| image::Rgb([x as u8 * 30, 0, 0]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    });
    o.insert(
        "init_images".into(),
        json!([format!("data:image/png;base64,{png}")]),
    );
    o.insert("resize_mode".into(), json!(0));
    o.insert("denoising_strength".into(), json!(0.75));
    o.insert("image_cfg_scale".into(), json!(1.5));
    o.insert("mask_blur".into(), json!(4));
    o.insert("inpainting_fill".into(), json!(0));
    o.insert("inpaint_full_res".into(), json!(true));
    o.insert("inpaint_full_res_padding".into(), json!(0));
    o.insert("inpainting_mask_invert".into(), json!(0));
    o.insert("initial_noise_multiplier".into(), json!(1));
    o.insert("include_init_images".into(), json!(false));
    v
}

fn translate(body: Value, mode: Mode) -> Result<Translated, ApiError> {
    let req: A1111Request = serde_json::from_value(body).expect("parses");
    to_submit(req, mode, Some("owner-default"))
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

#[test]
fn webuiapi_defaults_map_onto_a_job() {
    let t = translate(webuiapi_txt2img(), Mode::Txt2Img).unwrap();
    let r = &t.request;
    assert_eq!(r.prompt.as_deref(), Some("a fox"));
    assert_eq!(
        (r.width, r.height, r.steps),
        (Some(512), Some(512), Some(20))
    );
    assert_eq!(r.guidance_scale, Some(7.0));
    assert_eq!(r.seed, None, "-1 is a random seed");
    assert_eq!(r.num_images, Some(6), "batch_size × n_iter");
    assert_eq!(r.scheduler.as_deref(), Some("euler-a"));
    assert_eq!(r.model.as_deref(), Some("owner-default"));
    assert!(r.init_image.is_none() && t.send_images);
}

#[test]
fn fields_map_as_a_table() {
    // (field, value, what the submit request then holds)
    type Check = fn(&Translated) -> bool;
    let cases: Vec<(&str, Value, Check)> = vec![
        ("seed", json!(42), |t| t.request.seed == Some(42)),
        ("seed", json!(null), |t| t.request.seed.is_none()),
        ("sampler_name", json!("Heun"), |t| {
            t.request.scheduler.as_deref() == Some("heun")
        }),
        ("sampler_name", json!(null), |t| {
            t.request.scheduler.as_deref() == Some("euler-a")
        }),
        ("scheduler", json!("Uniform"), |t| {
            t.request.scheduler.as_deref() == Some("euler-a")
        }),
        ("n_iter", json!(null), |t| t.request.num_images == Some(2)),
        ("negative_prompt", json!("blurry"), |t| {
            t.request.negative_prompt.as_deref() == Some("blurry")
        }),
        (
            "override_settings",
            json!({"sd_model_checkpoint": "tiny-sd2.safetensors [abc123]"}),
            |t| t.request.model.as_deref() == Some("tiny-sd2"),
        ),
        (
            "override_settings",
            json!({"CLIP_stop_at_last_layers": 1, "samples_save": false}),
            |t| t.request.model.as_deref() == Some("owner-default"),
        ),
        ("send_images", json!(false), |t| !t.send_images),
        ("send_images", json!(0), |t| !t.send_images),
        ("eta", json!(null), |t| {
            t.scheduler == SchedulerKind::EulerAncestral
        }),
        ("styles", json!(null), |_| true),
        ("alwayson_scripts", json!(null), |_| true),
        ("seed_resize_from_w", json!(512), |_| true),
        ("hr_scale", json!(4), |_| true),
        ("some_future_field", json!({"x": 1}), |_| true),
        (
            "override_settings",
            json!({"CLIP_stop_at_last_layers": 2, "sd_vae": "vae-ft-mse.safetensors"}),
            |t| t.request.clip_skip == Some(2) && t.request.vae.as_deref() == Some("vae-ft-mse"),
        ),
        ("override_settings", json!({"sd_vae": "None"}), |t| {
            t.request.vae.as_deref() == Some("none")
        }),
    ];
    for (field, value, check) in cases {
        let body = with(webuiapi_txt2img(), field, value.clone());
        let t = translate(body, Mode::Txt2Img).unwrap_or_else(|e| panic!("{field}={value}: {e}"));
        assert!(check(&t), "{field}={value}: {:?}", t.request);
    }
    // Both sampler fields null: A1111's own default sampler.
    let mut body = with(webuiapi_txt2img(), "sampler_name", json!(null));
    body["sampler_index"] = json!(null);
    let t = translate(body, Mode::Txt2Img).unwrap();
    assert_eq!(t.request.scheduler.as_deref(), Some("euler"));
    // DDIM runs with eta 0; webuiapi's eta 1 would be another image in A1111.
    let ddim = with(webuiapi_txt2img(), "sampler_name", json!("DDIM"));
    assert!(translate(with(ddim.clone(), "eta", json!(0)), Mode::Txt2Img).is_ok());
    assert!(translate(ddim, Mode::Txt2Img).is_err());
}

#[test]
fn unsupported_values_are_refused_by_name() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("enable_hr", json!(true), "enable_hr"),
        ("restore_faces", json!(true), "restore_faces"),
        ("restore_faces", json!(1), "restore_faces"),
        ("tiling", json!(true), "tiling"),
        ("subseed_strength", json!(0.3), "subseed_strength"),
        ("seed_resize_from_h", json!(256), "seed_resize_from_h"),
        ("styles", json!(["cinematic"]), "styles"),
        ("script_name", json!("x/y/z plot"), "script_name"),
        (
            "alwayson_scripts",
            json!({"ControlNet": {"args": []}}),
            "alwayson_scripts.ControlNet",
        ),
        ("s_churn", json!(0.5), "s_churn"),
        ("s_noise", json!(0.9), "s_noise"),
        ("eta", json!(0.5), "eta"),
        ("sampler_name", json!("DPM adaptive"), "sampler_name"),
        ("scheduler", json!("karras"), "scheduler"),
        ("scheduler", json!("exponential"), "scheduler"),
        ("seed", json!(-5), "seed"),
        (
            "override_settings",
            json!({"CLIP_stop_at_last_layers": 13}),
            "override_settings.CLIP_stop_at_last_layers",
        ),
        (
            "override_settings",
            json!({"sd_vae": 5}),
            "override_settings.sd_vae",
        ),
        (
            "override_settings",
            json!({"img2img_color_correction": true}),
            "override_settings.img2img_color_correction",
        ),
        (
            "refiner_checkpoint",
            json!("xl-refiner"),
            "refiner_checkpoint",
        ),
        ("infotext", json!("a cat\nSteps: 2"), "infotext"),
        ("s_min_uncond", json!(1.0), "s_min_uncond"),
    ];
    for (field, value, named) in cases {
        let body = with(webuiapi_txt2img(), field, value.clone());
        match translate(body, Mode::Txt2Img) {
            Err(ApiError::Invalid { field: Some(f), .. }) => {
                assert_eq!(f, named, "{field}={value}")
            }
            other => panic!("{field}={value}: {other:?}"),
        }
    }
}

#[test]
fn img2img_maps_start_image_strength_and_mask() {
    let t = translate(webuiapi_img2img(), Mode::Img2Img).unwrap();
    assert!(t
        .request
        .init_image
        .as_deref()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    assert_eq!(t.request.strength, Some(0.75));
    assert!(t.files.mask.is_none());

    let mask = webuiapi_img2img()["init_images"][0].clone();
    let masked = with(
        with(
            with(webuiapi_img2img(), "mask", mask),
            "inpaint_full_res",
            json!(false),
        ),
        "inpainting_fill",
        json!(1),
    );
    let t = translate(masked.clone(), Mode::Img2Img).unwrap();
    assert!(t.files.mask.is_some());
    let inverted = with(masked.clone(), "inpainting_mask_invert", json!(1));
    let t2 = translate(inverted, Mode::Img2Img).unwrap();
    assert_ne!(t.files.mask, t2.files.mask);

    // "Only masked" is honoured when its crop is the whole picture (a mask reaching
    // across the image), refused for a small patch.
    let patch = |x0: u32, x1: u32| {
        let img = image::GrayImage::from_fn(64, 64, |x, y| {
            image::Luma([if (x0..x1).contains(&x) && (20..30).contains(&y) {
                255
            } else {
                0
            }])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        json!(image_ops::b64(&out.into_inner()))
    };
    let only_masked = with(
        with(masked.clone(), "inpaint_full_res", json!(true)),
        "mask_blur",
        json!(0),
    );
    assert!(translate(
        with(only_masked.clone(), "mask", patch(0, 64)),
        Mode::Img2Img
    )
    .is_ok());
    let cases: Vec<(Value, &str)> = vec![
        (
            with(only_masked.clone(), "mask", patch(20, 30)),
            "inpaint_full_res",
        ),
        (
            with(masked.clone(), "inpainting_fill", json!(2)),
            "inpainting_fill",
        ),
        (with(masked.clone(), "mask", json!("%%%")), "mask"),
        (with(masked.clone(), "mask_blur", json!(500)), "mask_blur"),
        (
            with(webuiapi_img2img(), "resize_mode", json!(1)),
            "resize_mode",
        ),
        (
            with(webuiapi_img2img(), "initial_noise_multiplier", json!(1.2)),
            "initial_noise_multiplier",
        ),
        (
            with(webuiapi_img2img(), "init_images", json!([])),
            "init_images",
        ),
        (
            with(webuiapi_img2img(), "init_images", json!(["a", "b"])),
            "init_images",
        ),
        (
            with(webuiapi_img2img(), "init_images", json!(null)),
            "init_images",
        ),
    ];
    for (body, named) in cases {
        match translate(body, Mode::Img2Img) {
            Err(ApiError::Invalid { field: Some(f), .. }) => assert_eq!(f, named),
            other => panic!("{named}: {other:?}"),
        }
    }
}

#[test]
fn png_info_answers_in_a1111_keys() {
    let info = crate::storage::png_info::PngInfo {
        parameters: Some("a cat\nNegative prompt: dog\nSteps: 4, Size: 64x48, Seed: 3".into()),
        spec: None,
        chunks: vec![
            ("parameters".into(), "...".into()),
            ("sdq".into(), "{}".into()),
        ],
    };
    let r = png_info_response(&info);
    assert_eq!(r["parameters"]["Prompt"], "a cat");
    assert_eq!(r["parameters"]["Negative prompt"], "dog");
    assert_eq!(r["parameters"]["Steps"], "4");
    assert_eq!(
        (
            r["parameters"]["Size-1"].as_str(),
            r["parameters"]["Size-2"].as_str()
        ),
        (Some("64"), Some("48"))
    );
    assert_eq!(r["items"], json!({"sdq": "{}"}));
    let none = png_info_response(&Default::default());
    assert_eq!(none, json!({"info": "", "items": {}, "parameters": {}}));
}

#[test]
fn checkpoint_titles_become_model_ids() {
    for (title, id) in [
        ("tiny", "tiny"),
        (
            "v1-5-pruned-emaonly.safetensors [6ce0161689]",
            "v1-5-pruned-emaonly",
        ),
        (" sd-turbo [abc] ", "sd-turbo"),
        ("model.ckpt", "model"),
        ("a [b] c", "a [b] c"),
    ] {
        assert_eq!(checkpoint_name(title), id);
    }
    assert_eq!(their_field("guidance_scale"), "cfg_scale");
    assert_eq!(their_field("width"), "width");
}

fn job(status: JobStatus, step: i64, total: i64) -> Job {
    Job {
        id: uuid::Uuid::nil(),
        owner: "local".into(),
        status,
        spec: crate::queue::JobSpec {
            prompt: "a fox".into(),
            model: "tiny".into(),
            width: 64,
            height: 48,
            steps: 4,
            guidance_scale: 7.5,
            seed: 9,
            scheduler: "euler-a".into(),
            num_images: 2,
            ..Default::default()
        },
        priority: 0,
        attempt: 1,
        max_attempts: 3,
        worker: None,
        cancel_requested: false,
        progress_step: step,
        progress_total: total,
        last_seq: 0,
        error: None,
        timings: None,
        run_at: 0,
        created_at: 1_000,
        started_at: Some(2_000),
        finished_at: None,
    }
}

#[test]
fn progress_reports_the_running_job() {
    let idle = progress(None, 0, 5_000, None);
    assert_eq!(
        (
            idle["progress"].as_f64(),
            idle["state"]["job_count"].as_u64()
        ),
        (Some(0.0), Some(0))
    );
    let running = job(JobStatus::Running, 2, 4);
    let p = progress(Some(&running), 1, 6_000, Some("abc".into()));
    assert_eq!(p["progress"], 0.5);
    assert_eq!(p["eta_relative"], 4.0, "2 steps in 4 s, 2 to go");
    assert_eq!(p["state"]["job_count"], 2);
    assert_eq!(
        (
            p["state"]["sampling_step"].as_i64(),
            p["state"]["sampling_steps"].as_i64()
        ),
        (Some(2), Some(4))
    );
    assert_eq!(p["current_image"], "abc");
}

#[test]
fn response_carries_images_info_and_the_request() {
    let done = job(JobStatus::Succeeded, 4, 4);
    let record = |seed| ImageRecord {
        id: uuid::Uuid::new_v4(),
        job_id: done.id,
        index: 0,
        object_key: String::new(),
        seed,
        width: 64,
        height: 48,
        bytes: 3,
        created_at: 0,
        owner: "local".into(),
        model: "tiny".into(),
        prompt: "a fox".into(),
    };
    let images = vec![(record(9), vec![1, 2, 3]), (record(10), vec![4, 5])];
    let echo = json!({"prompt": "a fox", "init_images": ["xyz"], "mask": "m"});
    let r = response(&done, &images, SchedulerKind::EulerAncestral, true, echo);
    assert_eq!(r["images"], json!(["AQID", "BAU="]));
    assert_eq!(r["parameters"]["init_images"], Value::Null);
    assert_eq!(r["parameters"]["prompt"], "a fox");
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([9, 10]));
    assert_eq!(info["seed"], 9);
    assert_eq!(info["all_prompts"], json!(["a fox", "a fox"]));
    assert_eq!(info["sampler_name"], "Euler a");
    assert_eq!(info["sd_model_name"], "tiny");
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(64), Some(48))
    );
    let r = response(
        &done,
        &images,
        SchedulerKind::EulerAncestral,
        false,
        json!({}),
    );
    assert_eq!(r["images"], json!([]));
}
