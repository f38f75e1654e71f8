//! `sdq generate`: one image from the command line, no queue or server.

use super::*;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// ddim, pndm, euler, euler-a, heun, dpmpp-2m, dpmpp-2m-karras, dpmpp-2m-sde-karras,
    /// unipc or lcm.
    #[arg(long, default_value = "euler-a")]
    pub scheduler: String,
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    #[arg(long, value_enum, default_value_t = LongPrompt::Chunk)]
    pub long_prompt: LongPrompt,
    /// Starting latents (.npy, float32 NCHW), exactly as diffusers' `latents=` argument.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// One later random draw (.npy shaped like the latents); repeat in diffusers' draw order.
    #[arg(long)]
    pub noise: Vec<PathBuf>,
    /// img2img: start from this image (resized to --width/--height if given, else to its
    /// own size rounded down to a multiple of 8).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// Inpainting: white repaints, black keeps (with --init-image; resized like it).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// img2img and inpainting: how much to repaint, 0 to 1 (default 0.8, inpainting 1).
    #[arg(long)]
    pub strength: Option<f64>,
    /// A LoRA at a weight, `NAME[:WEIGHT]` (a file of the models directory's loras/, or a
    /// path); repeatable. `<lora:NAME:WEIGHT>` in the prompt works too.
    #[arg(long = "lora")]
    pub loras: Vec<String>,
    /// Decode with this VAE (a name in the models directory's vae/, or a path); `none`
    /// keeps the checkpoint's own. By default a VAE named like the checkpoint goes with it.
    #[arg(long)]
    pub vae: Option<String>,
    /// A1111's clip skip: 1 = last layer (default), 2 = penultimate, ...
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// VAE tiling: off, on (whenever the image is larger than the VAE's sample_size), or
    /// auto (only when one full-resolution VAE feature map would exceed 1 GiB).
    #[arg(long, value_enum, default_value_t = VaeTiling::Auto)]
    pub vae_tiling: VaeTiling,
    /// Random numbers: torch-cpu reproduces torch.Generator("cpu").manual_seed(seed).
    #[arg(long, default_value = "torch-cpu")]
    pub rng: String,
    /// cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Output PNG; with several images, OUT-0.png, OUT-1.png, ...
    #[arg(short, long, default_value = "sdq.png")]
    pub output: PathBuf,
}

pub(super) fn output_path(base: &Path, index: usize, count: usize) -> PathBuf {
    if count == 1 {
        return base.to_path_buf();
    }
    let stem = base.file_stem().and_then(|s| s.to_str()).unwrap_or("sdq");
    let ext = base.extension().and_then(|s| s.to_str()).unwrap_or("png");
    base.with_file_name(format!("{stem}-{index}.{ext}"))
}

/// `NAME` or `NAME:WEIGHT` of `--lora`.
pub(super) fn parse_lora_arg(arg: &str) -> anyhow::Result<LoraRef> {
    let (name, weight) = match arg.rsplit_once(':') {
        Some((name, w)) if w.trim().parse::<f64>().is_ok() => (name, w.trim().parse::<f64>()?),
        _ => (arg, 1.0),
    };
    if name.is_empty() || !weight.is_finite() {
        bail!("--lora takes NAME or NAME:WEIGHT, got '{arg}'");
    }
    Ok(LoraRef {
        name: name.to_string(),
        weight,
    })
}

/// Reads an img2img start image (and inpainting mask) from files.
pub(super) fn load_init_image(
    path: &Path,
    mask: Option<&Path>,
    width: Option<usize>,
    height: Option<usize>,
    strength: Option<f64>,
) -> anyhow::Result<InitImage> {
    let image = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mask = mask
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    Ok(crate::inference::init_image::init_image(
        &image,
        mask.as_deref(),
        width,
        height,
        strength,
    )?)
}

pub(super) fn generate(config: &Config, args: GenerateArgs) -> anyhow::Result<()> {
    if args.rng != "torch-cpu" {
        bail!("unknown --rng '{}' (torch-cpu)", args.rng);
    }
    let scheduler = SchedulerKind::parse(&args.scheduler).with_context(|| {
        let names: Vec<_> = SchedulerKind::ALL.iter().map(|k| k.name()).collect();
        format!(
            "unknown scheduler '{}' ({})",
            args.scheduler,
            names.join(", ")
        )
    })?;
    if args.num_images == 0 {
        bail!("--num-images must be at least 1");
    }
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    check_device_dtype(&device, dtype)?;
    let defaults = hub::known(&config.model);
    let init_image = args
        .init_image
        .as_deref()
        .map(|p| {
            load_init_image(
                p,
                args.mask.as_deref(),
                args.width,
                args.height,
                args.strength,
            )
        })
        .transpose()?;
    if args.mask.is_some() && init_image.is_none() {
        bail!("--mask needs --init-image");
    }
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: init_image.as_ref().map_or(
            args.width
                .unwrap_or(defaults.map_or(512, |d| d.default_width)),
            |i| i.width,
        ),
        height: init_image.as_ref().map_or(
            args.height
                .unwrap_or(defaults.map_or(512, |d| d.default_height)),
            |i| i.height,
        ),
        steps: args
            .steps
            .unwrap_or(defaults.map_or(30, |d| d.default_steps)),
        guidance_scale: args
            .guidance_scale
            .unwrap_or(defaults.map_or(7.5, |d| d.default_guidance)),
        seed: args.seed,
        scheduler,
        num_images: args.num_images,
        long_prompt: args.long_prompt,
        clip_skip: args.clip_skip,
        vae_tiling: args.vae_tiling,
        latents: args
            .latents
            .as_deref()
            .map(NoiseArray::read_npy)
            .transpose()?,
        noise: args
            .noise
            .iter()
            .map(|p| NoiseArray::read_npy(p))
            .collect::<Result<_, _>>()?,
        init_image,
        preview_every: None,
    };

    if args.clip_skip == Some(0) {
        bail!("--clip-skip counts from 1 (the last layer)");
    }
    let (_, tags) = crate::inference::extra_networks::split_lora_tags(&args.prompt)?;
    let mut loras = args
        .loras
        .iter()
        .map(|arg| parse_lora_arg(arg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    loras.extend(tags.into_iter().map(|t| LoraRef {
        name: t.name,
        weight: t.weight,
    }));

    let t_load = Instant::now();
    let models_dir = config.models_dir();
    let folder = hub::resolve(&config.model, &models_dir)?;
    let base = StableDiffusion::load(&folder, &device, dtype)?;
    let load = t_load.elapsed();
    // A VAE named like a models-directory checkpoint goes with it, as over the API.
    let vae = crate::inference::catalogue::choose_vae(args.vae.clone(), || {
        crate::inference::catalogue::paired_vae(&models_dir, &config.model)
    });
    let extras = JobSpec {
        loras: loras.clone(),
        vae: vae.clone(),
        ..Default::default()
    };
    let sd = crate::worker::build_variant(&base, &extras, &models_dir)?;

    let bar = ProgressBar::new(request.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] step {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let t_gen = Instant::now();
    let images = sd.generate(&request, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.step as u64);
        ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();
    let gen = t_gen.elapsed();
    // The next `sdq generate` maps the layouts this one made instead of making them.
    crate::inference::mapped::kernel_layouts::wait();

    let spec = JobSpec {
        prompt: request.prompt.clone(),
        negative_prompt: request.negative_prompt.clone(),
        model: config.model.clone(),
        width: request.width as u32,
        height: request.height as u32,
        steps: request.steps as u32,
        guidance_scale: request.guidance_scale,
        seed: request.seed,
        scheduler: scheduler.name().into(),
        num_images: request.num_images as u32,
        long_prompt: serde_json::to_value(request.long_prompt)?
            .as_str()
            .unwrap_or("chunk")
            .into(),
        // Locally, the inputs are named by their paths.
        init_image: args.init_image.as_ref().map(|p| p.display().to_string()),
        mask_image: args.mask.as_ref().map(|p| p.display().to_string()),
        strength: request.init_image.as_ref().map(|i| i.strength),
        user: None,
        loras,
        vae,
        clip_skip: args.clip_skip.map(|c| c as u32),
        webhook_url: None,
        webhook_events: Vec::new(),
        previews: false,
        preview_every: None,
        // Stored only when chosen, as the API stores it.
        vae_tiling: (request.vae_tiling != VaeTiling::Auto)
            .then(|| request.vae_tiling.name().into()),
    };
    let count = images.len();
    for (i, image) in images.iter().enumerate() {
        let path = output_path(&args.output, i, count);
        let png = encode(
            image.width as u32,
            image.height as u32,
            &image.rgb,
            &png_metadata(&spec, scheduler, image.seed),
        )?;
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    let per_step = gen.as_secs_f64() * 1000.0 / request.steps.max(1) as f64;
    eprintln!(
        "{count} image(s) {}x{} in {:.2}s ({:.1} ms/step, model load {:.2}s) on {}",
        request.width,
        request.height,
        gen.as_secs_f64(),
        per_step,
        load.as_secs_f64(),
        args.device
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_images_get_numbered_names() {
        assert_eq!(
            output_path(Path::new("out.png"), 0, 1),
            PathBuf::from("out.png")
        );
        assert_eq!(
            output_path(Path::new("dir/out.png"), 1, 2),
            PathBuf::from("dir/out-1.png")
        );
    }
}
