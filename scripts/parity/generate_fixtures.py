#!/usr/bin/env python3
"""Writes the parity fixtures under tests/fixtures/parity/ with diffusers as the reference.

diffusers runs on CPU in float32 on the tiny model that our own binary writes
(`sdq tiny-model`), so both sides read the very same weights. For every case the script
keeps what a Rust test needs to reproduce diffusers without Python:

* the starting latents (float32 NCHW, exactly what `latents=` would take),
* every later random draw of the scheduler (ancestral / SDE / LCM noise), in draw order,
* the output image as float32 NHWC in [0, 1] (`output_type="np"`), plus a PNG to look at.

Random draws are not generated here but recorded: every `randn_tensor` call diffusers
makes is intercepted, so the files hold exactly what diffusers used. The pipeline gets a
list of `torch.Generator("cpu").manual_seed(seed + i)`, one per image, which is what
`sdq --rng torch-cpu` reproduces; a case marked `seed_path` is also checked with no files.

Usage (from the repository root):

    scripts/parity/install.sh
    cargo build --bin sdq
    target/parity-venv/bin/python scripts/parity/generate_fixtures.py
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import PIL.Image
import torch
from safetensors.numpy import load_file

import diffusers
import transformers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from diffusers.utils import torch_utils

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "parity"
TINY_SEED = 0
# The tiny models, by the `--kind` our binary writes them with.
MODELS = ["sd15", "sd2", "inpaint", "sdxl", "sdxl-inpaint"]

# Our API name -> how a diffusers user would select the same sampler on top of the model's
# own scheduler config (`Class.from_config(pipe.scheduler.config, **overrides)`).
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp-2m-karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp-2m-sde-karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}

CAT = "a photo of a cat sitting on a red chair, highly detailed"
LONG = (
    "oil painting of a mountain landscape at sunset, a castle on a hill, a river through the valley, "
    "snow covered trees, blue sky and white clouds, a small house in the forest, a dog running on the "
    "beach, an old man with a beard, a woman in a green dress, flowers in a vase, a bowl of fruit on a "
    "wooden table, studio lighting, sharp focus, 4k, digital art of a city street at night with neon "
    "lights, portrait of an astronaut riding a horse on the moon"
)


INIT_IMAGE = "img2img.init.png"
MASK = "inpaint.mask.png"
# Larger than the tiny VAE's 64-pixel tile, for the tiled encode.
INIT_IMAGE_LARGE = "img2img-160x128.init.png"


def write_init_image() -> None:
    """A deterministic picture with edges, gradients and flat areas for img2img."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32) / 63.0
    r = 0.5 + 0.5 * np.sin(6.0 * x + 2.0 * y)
    g = ((x - 0.4) ** 2 + (y - 0.6) ** 2 < 0.08).astype(np.float32) * 0.8 + 0.1 * y
    b = np.where(x + y > 1.0, 0.9, 0.2) * (1.0 - 0.5 * x)
    rgb = (np.stack([r, g, b], axis=-1).clip(0, 1) * 255).round().astype(np.uint8)
    PIL.Image.fromarray(rgb).save(OUT / INIT_IMAGE)
    # White repaints: a disc and a bar, with soft (anti-aliased) edges to binarize.
    disc = np.clip(1.0 - (np.sqrt((x - 0.35) ** 2 + (y - 0.4) ** 2) - 0.22) * 40.0, 0, 1)
    bar = ((x > 0.6) & (x < 0.85) & (y > 0.1) & (y < 0.9)).astype(np.float32)
    mask = (np.maximum(disc, bar) * 255).round().astype(np.uint8)
    PIL.Image.fromarray(mask, mode="L").save(OUT / MASK)


def write_large_init_image() -> None:
    """The same kind of picture at 160 x 128, so that a tiled encode has tiles to blend."""
    y, x = np.mgrid[0:128, 0:160].astype(np.float32)
    y, x = y / 127.0, x / 159.0
    r = 0.5 + 0.5 * np.sin(9.0 * x + 4.0 * y)
    g = ((x - 0.3) ** 2 + (y - 0.5) ** 2 < 0.05).astype(np.float32) * 0.8 + 0.1 * y
    b = np.where(x + 2.0 * y > 1.2, 0.9, 0.2) * (1.0 - 0.5 * x)
    rgb = (np.stack([r, g, b], axis=-1).clip(0, 1) * 255).round().astype(np.uint8)
    PIL.Image.fromarray(rgb).save(OUT / INIT_IMAGE_LARGE)


def case(name, scheduler, **kw):
    c = {
        "name": name,
        "scheduler": scheduler,
        "prompt": CAT,
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance_scale": 7.5,
        "num_images": 1,
        "seed": 42,
        "long_prompt": "truncate",
        "seed_path": False,
        "model": "sd15",
        "init_image": None,
        "strength": None,
        "mask": None,
        "scheduler_config": {},
        # Models-directory features (issue 16).
        "clip_skip": None,
        "single_file": None,
        "loras": [],
        "embeddings": [],
        "vae": None,
        "given_latents": False,
        # "on": diffusers runs with vae.enable_tiling() (sdq with vae_tiling "on").
        "vae_tiling": None,
    }
    c.update(kw)
    return c


CASES = [
    case("ddim", "ddim"),
    case("euler", "euler"),
    case("euler-a", "euler-a", seed_path=True),
    case("negative-prompt", "euler", negative_prompt="blurry, low quality, ugly", seed=7),
    case("guidance-1", "euler", guidance_scale=1.0, seed=3),
    case("batch-2", "euler-a", num_images=2, seed=11, seed_path=True),
    case("long-prompt", "ddim", prompt=LONG, negative_prompt="cartoon, " * 50, seed=5),
    case("pndm", "pndm", steps=6),
    case("heun", "heun"),
    case("dpmpp-2m", "dpmpp-2m", steps=6),
    case("dpmpp-2m-karras", "dpmpp-2m-karras", steps=6),
    case("dpmpp-2m-sde-karras", "dpmpp-2m-sde-karras", steps=6, seed_path=True),
    case("unipc", "unipc", steps=6),
    case("lcm", "lcm", guidance_scale=1.0, seed_path=True),
    # SD 2.x: v-prediction, linear attention projections, gelu text encoder, "!" padding.
    case("sd2-ddim", "ddim", model="sd2", negative_prompt="blurry"),
    case("sd2-euler-a", "euler-a", model="sd2", seed=8, seed_path=True),
    case("sd2-dpmpp-2m-karras", "dpmpp-2m-karras", model="sd2", steps=6),
    case("sd2-heun", "heun", model="sd2"),
    # img2img from a fixed 64x64 picture: the posterior sample, add_noise's noise, then
    # the scheduler's own draws.
    case("img2img-ddim", "ddim", init_image=INIT_IMAGE, strength=0.6, steps=5),
    case("img2img-euler-a", "euler-a", init_image=INIT_IMAGE, strength=0.6, steps=5, seed_path=True),
    case("img2img-heun", "heun", init_image=INIT_IMAGE, strength=0.6, steps=5),
    case("img2img-dpmpp-2m-sde-karras", "dpmpp-2m-sde-karras", init_image=INIT_IMAGE, strength=0.5, steps=6),
    # Inpainting: an ordinary UNet (masked latent blending) and a 9-channel one.
    case("inpaint-blend-ddim", "ddim", init_image=INIT_IMAGE, mask=MASK, strength=1.0),
    case("inpaint-blend-euler-a", "euler-a", init_image=INIT_IMAGE, mask=MASK, strength=0.75, steps=4, seed_path=True),
    case("inpaint-ddim", "ddim", model="inpaint", init_image=INIT_IMAGE, mask=MASK, strength=1.0),
    case("inpaint-euler-a", "euler-a", model="inpaint", init_image=INIT_IMAGE, mask=MASK, strength=1.0, seed_path=True),
    case("inpaint-dpmpp-2m-karras", "dpmpp-2m-karras", model="inpaint", init_image=INIT_IMAGE, mask=MASK, strength=0.6, steps=6),
    # Scheduler settings that SD 1.5's own file does not use, written into the model's
    # scheduler_config.json on our side and passed to from_config on diffusers'.
    case("trailing-euler", "euler", scheduler_config={"timestep_spacing": "trailing"}),
    case("karras-euler-sigma-min", "euler", scheduler_config={"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
    case("pndm-prk", "pndm", steps=6, scheduler_config={"skip_prk_steps": False}),
    case("cosine-ddim", "ddim", scheduler_config={"beta_schedule": "squaredcos_cap_v2"}),
    case("unipc-order-3", "unipc", steps=8, scheduler_config={"solver_order": 3}),
    case(
        "sd2-zero-snr-ddim",
        "ddim",
        model="sd2",
        scheduler_config={"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
    ),
    # SDXL: two text encoders, pooled text embeds and size/crop time ids. An empty negative
    # prompt is passed as None, so force_zeros_for_empty_prompt zeroes the negative side.
    case("sdxl-euler", "euler", model="sdxl"),
    case("sdxl-euler-a", "euler-a", model="sdxl", seed=9, seed_path=True),
    case("sdxl-dpmpp-2m-karras", "dpmpp-2m-karras", model="sdxl", steps=6),
    case("sdxl-negative-prompt", "euler", model="sdxl", negative_prompt="blurry, low quality, ugly", seed=7),
    # Not square, so that height and width cannot trade places in the time ids unnoticed.
    case("sdxl-guidance-1", "euler", model="sdxl", guidance_scale=1.0, height=48, seed=3),
    case("sdxl-long-prompt", "ddim", model="sdxl", prompt=LONG, negative_prompt="cartoon, " * 50, seed=5),
    case("sdxl-batch-2", "euler-a", model="sdxl", num_images=2, seed=11, seed_path=True),
    case("sdxl-img2img-euler-a", "euler-a", model="sdxl", init_image=INIT_IMAGE, strength=0.6, steps=5, seed_path=True),
    # SDXL inpainting: the ordinary SDXL UNet with latent blending, and a 9-channel one.
    case("sdxl-inpaint-blend-euler-a", "euler-a", model="sdxl", init_image=INIT_IMAGE, mask=MASK, strength=0.75, seed_path=True),
    case("sdxl-inpaint-ddim", "ddim", model="sdxl-inpaint", init_image=INIT_IMAGE, mask=MASK, strength=1.0),
    case("sdxl-inpaint-euler-a", "euler-a", model="sdxl-inpaint", init_image=INIT_IMAGE, mask=MASK, strength=1.0, seed_path=True),
    case(
        "sdxl-inpaint-dpmpp-2m-karras",
        "dpmpp-2m-karras",
        model="sdxl-inpaint",
        init_image=INIT_IMAGE,
        mask=MASK,
        strength=0.6,
        steps=6,
        negative_prompt="blurry",
    ),
    # Single-file checkpoints: sdq's export of each tiny folder, loaded by diffusers'
    # from_single_file with the folder as config (the tiny families are not on the hub).
    case("single-file-sd15", "euler", single_file={"half": False, "ema": False}),
    case("single-file-sd15-fp16-ema", "euler", single_file={"half": True, "ema": True}, seed=5),
    case("single-file-sd2", "euler-a", model="sd2", single_file={"half": False, "ema": False}, seed=8),
    case("single-file-inpaint", "ddim", model="inpaint", init_image=INIT_IMAGE, mask=MASK, strength=1.0,
         single_file={"half": False, "ema": False}),
    case("single-file-sdxl", "euler", model="sdxl", single_file={"half": False, "ema": False}),
    case("single-file-sdxl-inpaint", "ddim", model="sdxl-inpaint", init_image=INIT_IMAGE, mask=MASK, strength=1.0,
         single_file={"half": False, "ema": False}),
    # LoRAs written here with random weights, loaded by load_lora_weights + set_adapters.
    case("lora-kohya", "euler", loras=[{"file": "lora-kohya.safetensors", "weight": 0.8}]),
    case("lora-kohya-negative-weight", "euler", loras=[{"file": "lora-kohya.safetensors", "weight": -0.5}], seed=3),
    case("lora-peft", "euler", loras=[{"file": "lora-peft.safetensors", "weight": 1.0}], seed=4),
    case(
        "lora-two-at-once",
        "euler",
        loras=[{"file": "lora-kohya.safetensors", "weight": 0.6}, {"file": "lora-peft.safetensors", "weight": 0.7}],
        seed=6,
    ),
    case("lora-sdxl-kohya", "euler", model="sdxl", loras=[{"file": "lora-sdxl-kohya.safetensors", "weight": 0.9}]),
    case("lora-sdxl-kohya-half", "euler", model="sdxl", loras=[{"file": "lora-sdxl-kohya.safetensors", "weight": 0.4}], seed=2),
    # Textual inversion: a random two-vector embedding, in the prompt and the negative prompt.
    case("embedding", "euler", prompt="a photo of tinyemb sitting on a red chair", embeddings=["tinyemb.safetensors"]),
    case("embedding-negative", "euler", negative_prompt="tinyemb, blurry", embeddings=["tinyemb.safetensors"], seed=9),
    case("sdxl-embedding", "euler", model="sdxl", prompt="a photo of tinyembxl on a chair", embeddings=["tinyembxl.safetensors"]),
    # Clip skip 2 (A1111's count) is diffusers' clip_skip=1.
    # Without guidance: diffusers applies clip_skip to the prompt only, A1111 (and sdq) to
    # the negative prompt too, so the unconditional pass is left out of the comparison.
    case("clip-skip-2", "euler", clip_skip=2, guidance_scale=1.0),
    case("sdxl-clip-skip-2", "euler", model="sdxl", clip_skip=2),
    # Another VAE (a tiny model of another seed), as a diffusers folder and as one file.
    case("vae-folder", "euler", vae={"seed": 1, "single_file": False}),
    case("vae-single-file", "euler-a", vae={"seed": 1, "single_file": True}, seed=12),
    # Inpainting with caller-supplied latents (diffusers' latents=).
    case("inpaint-latents", "ddim", model="inpaint", init_image=INIT_IMAGE, mask=MASK, strength=1.0, given_latents=True),
    case("inpaint-blend-latents", "euler-a", init_image=INIT_IMAGE, mask=MASK, strength=0.75, given_latents=True),
    # VAE tiling: the tiny VAE's tiles are 64 pixels (8 latents), starting every 48
    # pixels, so 160 x 128 is 4 x 3 tiles with a last column 16 pixels wide and a last row
    # 32 high; img2img encodes in tiles too.
    case("vae-tiling", "euler", width=160, height=128, vae_tiling="on"),
    case("vae-tiling-img2img", "euler-a", init_image=INIT_IMAGE_LARGE, width=160, height=128, strength=0.6, steps=5,
         vae_tiling="on"),
    case("vae-tiling-sdxl", "euler", model="sdxl", width=128, height=160, vae_tiling="on", seed=4),
]

TOKENIZER_PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT!!!",
    "portrait of an astronaut, riding a horse; on the moon... (4k) [sharp focus]",
    "3 dogs and 12 cats, 1920x1080, 0.5 weight, 2024-01-01",
    "  lots   of\twhitespace \n and newlines  ",
    "café crème brûlée, naïve façade",
    "東京の夜景 and 日本語 text",
    "emoji 🐱🚀 test ✨",
    "don't can't we're I'll you've she'd it's",
    "snake_case-and-kebab/with\\slashes @ # $ % ^ & *",
    "ÀÉÎÕÜ uppercase accents",
    "a cat<|endoftext|>a dog <|startoftext|>",
    "mixed CASE with ﬁ ligature and full-width ＡＢＣ and e\u0301 combining",
    LONG,
    LONG + ", " + LONG,
]

RNG_CASES = [(0, 16), (0, 17), (1, 31), (42, 100), (42, 256), (7, 1000), (123456789, 4101), (2**32 + 5, 64)]


def run_tiny_model(sdq: pathlib.Path, folder: pathlib.Path, kind: str) -> None:
    subprocess.run(
        [str(sdq), "tiny-model", "--out", str(folder), "--seed", str(TINY_SEED), "--kind", kind], check=True
    )


def fingerprint(folder: pathlib.Path) -> dict:
    """Sums of |w| per component, so a test can tell that its tiny model is this one."""
    out = {}
    for part, file in [
        ("text_encoder", "model.safetensors"),
        ("text_encoder_2", "model.safetensors"),
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
    ]:
        if not (folder / part / file).exists():
            continue
        tensors = load_file(folder / part / file)
        out[part] = {
            "tensors": len(tensors),
            "abs_sum": float(sum(np.abs(t.astype(np.float64)).sum() for t in tensors.values())),
        }
    return out


class DrawRecorder:
    """Replaces diffusers' `randn_tensor` everywhere it was imported and keeps each draw."""

    def __init__(self):
        self.original = torch_utils.randn_tensor
        self.draws = []
        self.patched = []

    def __enter__(self):
        def recording(*args, **kwargs):
            value = self.original(*args, **kwargs)
            self.draws.append(value.detach().to(torch.float32).cpu().numpy().copy())
            return value

        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "") or ""
            if name.startswith("diffusers") and getattr(module, "randn_tensor", None) is self.original:
                module.randn_tensor = recording
                self.patched.append(module)
        return self

    def __exit__(self, *exc):
        for module in self.patched:
            module.randn_tensor = self.original


def save_npy(path: pathlib.Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array, dtype=np.float32))



def lora_pair(rng, out_features, in_features, kernel, rank, scale):
    """A random LoRA pair for a layer: down [r, in(, k, k)], up [out, r(, 1, 1)], sized so
    that the change it makes is visible but not overwhelming."""
    fan_in = in_features * kernel * kernel
    down = rng.standard_normal((rank, in_features, kernel, kernel) if kernel > 1 or kernel == -1 else (rank, in_features))
    down = down / np.sqrt(fan_in)
    up = rng.standard_normal((out_features, rank)) * (0.6 / np.sqrt(rank) / scale)
    return down.astype(np.float32), up.astype(np.float32)


def linear_and_conv_layers(module, wanted):
    """(name, out, in, kernel) of the Linear / Conv2d layers whose names match `wanted`."""
    found = []
    for name, m in module.named_modules():
        if not any(w(name) for w in wanted):
            continue
        if isinstance(m, torch.nn.Linear):
            found.append((name, m.out_features, m.in_features, 1, False))
        elif isinstance(m, torch.nn.Conv2d):
            found.append((name, m.out_channels, m.in_channels, m.kernel_size[0], True))
    return found


ATTENTION = lambda n: any(n.endswith(x) for x in ("to_q", "to_k", "to_v", "to_out.0"))
TRANSFORMER_LINEARS = lambda n: any(n.endswith(x) for x in ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"))
RESNET_CONVS = lambda n: "resnets" in n and (n.endswith("conv1") or n.endswith("conv2"))
TEXT_LINEARS = lambda n: any(n.endswith(x) for x in ("q_proj", "k_proj", "v_proj", "out_proj", "mlp.fc1", "mlp.fc2"))


def kohya_text_name(name):
    """transformers 5 names CLIP's layers without `text_model.`; kohya's names keep it."""
    name = name if name.startswith("text_model.") else "text_model." + name
    return name.replace(".", "_")


def sgm_name(name, layers_per_block):
    """kohya's SDXL names follow the original UNet's block numbering."""
    parts = name.split(".")
    if parts[0] == "down_blocks":
        i, j = int(parts[1]), int(parts[3])
        return "_".join([f"input_blocks_{1 + i * (layers_per_block + 1) + j}_1"] + parts[4:])
    if parts[0] == "up_blocks":
        i, j = int(parts[1]), int(parts[3])
        return "_".join([f"output_blocks_{i * (layers_per_block + 1) + j}_1"] + parts[4:])
    if parts[0] == "mid_block":
        return "_".join(["middle_block_1"] + parts[3:])
    raise ValueError(name)


def write_loras(pipes: dict) -> None:
    """Random LoRAs in kohya (with alpha and LoCon convolutions), PEFT and kohya SDXL
    (original block names, two text encoders) formats."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(16)
    sd = pipes["sd15"]
    rank, alpha = 4, 2.0
    kohya = {}
    for name, out_f, in_f, k, conv in linear_and_conv_layers(sd.unet, [ATTENTION, TRANSFORMER_LINEARS, RESNET_CONVS]):
        down, up = lora_pair(rng, out_f, in_f, k if conv else 1, rank, alpha / rank)
        if conv:
            up = up.reshape(out_f, rank, 1, 1)
            if k == 1:
                down = down.reshape(rank, in_f, 1, 1)
        key = "lora_unet_" + name.replace(".", "_")
        kohya[f"{key}.lora_down.weight"], kohya[f"{key}.lora_up.weight"] = down, up
        kohya[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
    for name, out_f, in_f, k, _ in linear_and_conv_layers(sd.text_encoder, [TEXT_LINEARS]):
        down, up = lora_pair(rng, out_f, in_f, 1, rank, alpha / rank)
        key = "lora_te_" + kohya_text_name(name)
        kohya[f"{key}.lora_down.weight"], kohya[f"{key}.lora_up.weight"] = down, up
        kohya[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
    save_file(kohya, str(OUT / "lora-kohya.safetensors"))

    peft = {}
    for name, out_f, in_f, k, conv in linear_and_conv_layers(sd.unet, [ATTENTION]):
        down, up = lora_pair(rng, out_f, in_f, 1, rank, 1.0)
        peft[f"unet.{name}.lora_A.weight"], peft[f"unet.{name}.lora_B.weight"] = down, up
    for name, out_f, in_f, k, _ in linear_and_conv_layers(sd.text_encoder, [TEXT_LINEARS]):
        down, up = lora_pair(rng, out_f, in_f, 1, rank, 1.0)
        peft[f"text_encoder.{name}.lora_A.weight"], peft[f"text_encoder.{name}.lora_B.weight"] = down, up
    save_file(peft, str(OUT / "lora-peft.safetensors"))

    xl = pipes["sdxl"]
    lpb = xl.unet.config.layers_per_block
    sdxl = {}
    for name, out_f, in_f, k, conv in linear_and_conv_layers(xl.unet, [ATTENTION, TRANSFORMER_LINEARS]):
        down, up = lora_pair(rng, out_f, in_f, 1, rank, alpha / rank)
        key = "lora_unet_" + sgm_name(name, lpb)
        sdxl[f"{key}.lora_down.weight"], sdxl[f"{key}.lora_up.weight"] = down, up
        sdxl[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
    for prefix, encoder in (("lora_te1_", xl.text_encoder), ("lora_te2_", xl.text_encoder_2)):
        for name, out_f, in_f, k, _ in linear_and_conv_layers(encoder, [TEXT_LINEARS]):
            down, up = lora_pair(rng, out_f, in_f, 1, rank, alpha / rank)
            key = prefix + kohya_text_name(name)
            sdxl[f"{key}.lora_down.weight"], sdxl[f"{key}.lora_up.weight"] = down, up
            sdxl[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
    save_file(sdxl, str(OUT / "lora-sdxl-kohya.safetensors"))


def write_embeddings(pipes: dict) -> None:
    """Random two-vector textual-inversion embeddings: A1111's `emb_params` for SD 1.5,
    SDXL's `clip_l` / `clip_g` pair."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(17)
    width = pipes["sd15"].text_encoder.config.hidden_size
    save_file({"emb_params": rng.standard_normal((2, width)).astype(np.float32)}, str(OUT / "tinyemb.safetensors"))
    xl = pipes["sdxl"]
    save_file(
        {
            "clip_l": rng.standard_normal((2, xl.text_encoder.config.hidden_size)).astype(np.float32),
            "clip_g": rng.standard_normal((2, xl.text_encoder_2.config.hidden_size)).astype(np.float32),
        },
        str(OUT / "tinyembxl.safetensors"),
    )


class Extras:
    """Applies a case's models-directory features to a pipeline for one run and undoes
    them afterwards."""

    def __init__(self, c, pipe, sdq, tmp, folders):
        self.c, self.pipe, self.sdq, self.tmp, self.folders = c, pipe, sdq, pathlib.Path(tmp), folders
        self.old_vae = None
        self.shimmed = False

    def __enter__(self):
        c, pipe = self.c, self.pipe
        names, weights = [], []
        for i, lora in enumerate(c["loras"]):
            name = f"lora{i}"
            pipe.load_lora_weights(str(OUT / lora["file"]), adapter_name=name)
            names.append(name)
            weights.append(lora["weight"])
        if names:
            pipe.set_adapters(names, adapter_weights=weights)
        for file in c["embeddings"]:
            token = pathlib.Path(file).stem
            if isinstance(pipe, StableDiffusionXLPipeline):
                from safetensors.torch import load_file as load_torch

                state = load_torch(str(OUT / file))
                pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
                pipe.load_textual_inversion(
                    state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
                )
            else:
                pipe.load_textual_inversion(str(OUT / file), token=token)
        if c["clip_skip"] and not hasattr(pipe.text_encoder, "text_model"):
            # diffusers' SD 1.x clip_skip normalises through `text_encoder.text_model`,
            # which transformers 5's CLIPTextModel no longer has; point it at the norm.
            object.__setattr__(
                pipe.text_encoder, "text_model", types.SimpleNamespace(final_layer_norm=pipe.text_encoder.final_layer_norm)
            )
            self.shimmed = True
        if c["vae_tiling"] == "on":
            pipe.vae.enable_tiling()
        if c["vae"]:
            other = self.tmp / f"vae-seed-{c['vae']['seed']}"
            if not other.exists():
                subprocess.run(
                    [str(self.sdq), "tiny-model", "--out", str(other), "--seed", str(c["vae"]["seed"]), "--kind", c["model"]],
                    check=True,
                )
            if c["vae"]["single_file"]:
                file = self.tmp / f"vae-seed-{c['vae']['seed']}.safetensors"
                if not file.exists():
                    subprocess.run([str(self.sdq), "models", "export", str(other), "--out", str(file), "--vae-only"], check=True)
                vae = diffusers.AutoencoderKL.from_single_file(str(file), config=str(other / "vae"), torch_dtype=torch.float32)
            else:
                vae = diffusers.AutoencoderKL.from_pretrained(str(other / "vae"), torch_dtype=torch.float32)
            self.old_vae = pipe.vae
            pipe.vae = vae
        return self

    def __exit__(self, *exc):
        pipe = self.pipe
        if self.c["loras"]:
            pipe.unload_lora_weights()
        if self.c["embeddings"]:
            pipe.unload_textual_inversion()
            if isinstance(pipe, StableDiffusionXLPipeline):
                pipe.unload_textual_inversion(tokens=None, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
        if self.c["vae_tiling"] == "on":
            pipe.vae.disable_tiling()
        if self.old_vae is not None:
            pipe.vae = self.old_vae
        if self.shimmed:
            object.__delattr__(pipe.text_encoder, "text_model")


def single_file_pipe(c, sdq, tmp, folders):
    """diffusers' from_single_file on sdq's export of the case's tiny folder."""
    folder = folders[c["model"]]
    opts = c["single_file"]
    file = pathlib.Path(tmp) / f"{c['name']}.safetensors"
    cmd = [str(sdq), "models", "export", str(folder), "--out", str(file)]
    if opts["half"]:
        cmd.append("--half")
    if opts["ema"]:
        cmd.append("--ema")
    subprocess.run(cmd, check=True)
    cls = StableDiffusionXLPipeline if c["model"].startswith("sdxl") else StableDiffusionPipeline
    kwargs = {} if cls is StableDiffusionXLPipeline else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_single_file(str(file), config=str(folder), torch_dtype=torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_pipeline_cases(pipes: dict, sdq=None, tmp=None, folders=None) -> list:
    manifest = []
    # Every case starts from the model's own scheduler config, never from a previous case's.
    bases = {name: pipe.scheduler.config for name, pipe in pipes.items()}
    for c in CASES:
        pipe = single_file_pipe(c, sdq, tmp, folders) if c["single_file"] else pipes[c["model"]]
        base = bases[c["model"]]
        cls, overrides = SCHEDULERS[c["scheduler"]]
        pipe.scheduler = cls.from_config(base, **{**overrides, **c["scheduler_config"]})
        n = c["num_images"]
        generators = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(n)]
        common = dict(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"] or None,
            num_inference_steps=c["steps"],
            guidance_scale=c["guidance_scale"],
            num_images_per_prompt=n,
            generator=generators,
            output_type="np",
        )
        if c["clip_skip"]:
            # A1111 counts the last layer as 1; diffusers counts layers skipped.
            common["clip_skip"] = c["clip_skip"] - 1
        given = None
        if c["given_latents"]:
            shape = (n, 4, c["height"] // 8, c["width"] // 8)
            given = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(c["seed"] + 1000))
            common["latents"] = given
        with Extras(c, pipe, sdq, tmp, folders), DrawRecorder() as rec:
            if c["mask"]:
                assert n == 1, "posterior draws of a batch would need merging"
                if isinstance(pipe, StableDiffusionXLPipeline):
                    inpaint = StableDiffusionXLInpaintPipeline(
                        **pipe.components, force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt
                    )
                else:
                    inpaint = StableDiffusionInpaintPipeline(**pipe.components, requires_safety_checker=False)
                inpaint.set_progress_bar_config(disable=True)
                init = PIL.Image.open(OUT / c["init_image"]).convert("RGB")
                mask = PIL.Image.open(OUT / c["mask"])
                result = inpaint(
                    image=init, mask_image=mask, strength=c["strength"], width=c["width"], height=c["height"], **common
                )
            elif c["init_image"] and isinstance(pipe, StableDiffusionXLPipeline):
                # The folder's own setting, not the img2img class's default.
                img2img = StableDiffusionXLImg2ImgPipeline(
                    **pipe.components, force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt
                )
                img2img.set_progress_bar_config(disable=True)
                init = PIL.Image.open(OUT / c["init_image"]).convert("RGB")
                result = img2img(image=init, strength=c["strength"], **common)
            elif c["init_image"]:
                img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
                img2img.set_progress_bar_config(disable=True)
                init = PIL.Image.open(OUT / c["init_image"]).convert("RGB")
                result = img2img(image=init, strength=c["strength"], **common)
            else:
                result = pipe(width=c["width"], height=c["height"], **common)
        images = result.images.astype(np.float32)
        stem = c["name"]
        entry = dict(c)
        if entry["vae_tiling"] is None:
            # Only the tiling cases carry the key, so the other entries stay as they were.
            del entry["vae_tiling"]
        entry["latents"] = None
        entry["noise"] = None
        if c["mask"]:
            noise = rec.draws
            if given is not None:
                save_npy(OUT / f"{stem}.latents.npy", given.numpy())
                entry["latents"] = f"{stem}.latents.npy"
        elif c["init_image"]:
            # The posterior is sampled image by image; as one draw it is their batch.
            noise = [np.concatenate(rec.draws[:n])] + rec.draws[n:]
        else:
            latents, noise = rec.draws[0], rec.draws[1:]
            save_npy(OUT / f"{stem}.latents.npy", latents)
            entry["latents"] = f"{stem}.latents.npy"
        if noise:
            save_npy(OUT / f"{stem}.noise.npy", np.stack(noise))
            entry["noise"] = f"{stem}.noise.npy"
        save_npy(OUT / f"{stem}.image.npy", images)
        entry["image"] = f"{stem}.image.npy"
        pipe.numpy_to_pil(images)[0].save(OUT / f"{stem}.png")
        entry["diffusers_scheduler"] = {
            "class": cls.__name__,
            "overrides": overrides,
            "timesteps": [float(t) for t in pipe.scheduler.timesteps],
        }
        manifest.append(entry)
        print(f"{stem}: {cls.__name__} {len(noise)} noise draws, mean {images.mean():.4f}", flush=True)
    return manifest


def write_tokenizer_ids(tok, folder: pathlib.Path, name: str) -> None:
    """What diffusers feeds the text encoder for each prompt (its own tokenizer), checked
    against transformers' CLIP tokenizer built from vocab.json + merges.txt alone, so the
    ids do not merely echo the tokenizer.json our binary wrote. `folder` is the
    tokenizer's own folder."""
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [
        tuple(line.split())
        for line in (folder / "merges.txt").read_text().splitlines()[1:]
        if line.strip()
    ]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    pad = config["pad_token"]["content"] if isinstance(config["pad_token"], dict) else config["pad_token"]
    plain = transformers.CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad)
    lines = []
    for prompt in TOKENIZER_PROMPTS:
        full = tok(prompt).input_ids
        window = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        assert plain(prompt).input_ids == full, f"transformers' two CLIP tokenizers disagree on {prompt!r}"
        lines.append(json.dumps({"prompt": prompt, "ids": full, "truncated": window}, ensure_ascii=False))
    doc = '{\n "tokenizer_class": "%s",\n "cases": [\n  %s\n ]\n}\n' % (type(tok).__name__, ",\n  ".join(lines))
    (OUT / f"tokenizer-ids.{name}.json").write_text(doc)


def write_rng() -> None:
    cases = []
    for seed, n in RNG_CASES:
        gen = torch.Generator("cpu").manual_seed(seed)
        values = torch.randn(n, generator=gen, dtype=torch.float32).numpy()
        # A second draw from the same generator checks that the state advances like torch's.
        more = torch.randn(n, generator=gen, dtype=torch.float32).numpy()
        file = f"rng-{seed}-{n}.npy"
        save_npy(OUT / file, np.stack([values, more]))
        cases.append({"seed": seed, "n": n, "file": file})
    (OUT / "rng.json").write_text(json.dumps({"cases": cases}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdq", type=pathlib.Path, default=ROOT / "target" / "debug" / "sdq")
    parser.add_argument("--only", nargs="*", help="regenerate these cases and keep the other fixtures")
    args = parser.parse_args()
    global CASES
    keep = None
    if args.only:
        keep = json.loads((OUT / "manifest.json").read_text())
        CASES = [c for c in CASES if c["name"] in args.only]
    torch.set_num_threads(max(1, torch.get_num_threads()))

    if keep is None:
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        pipes, models = {}, {}
        for model in MODELS:
            folder = pathlib.Path(tmp) / model
            run_tiny_model(args.sdq, folder, model)
            if model.startswith("sdxl"):
                # The inpainting model loads as a text-to-image pipeline too; its cases
                # build StableDiffusionXLInpaintPipeline from these components.
                pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float32)
            else:
                pipe = StableDiffusionPipeline.from_pretrained(
                    folder, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
                )
            pipe.set_progress_bar_config(disable=True)
            write_tokenizer_ids(pipe.tokenizer, folder / "tokenizer", model)
            if model.startswith("sdxl"):
                write_tokenizer_ids(pipe.tokenizer_2, folder / "tokenizer_2", f"{model}.tokenizer_2")
            pipes[model] = pipe
            models[model] = {"kind": model, "seed": TINY_SEED, "fingerprint": fingerprint(folder)}
        if any(c["init_image"] == INIT_IMAGE_LARGE for c in CASES):
            write_large_init_image()
        if keep is None:
            write_init_image()
            write_loras(pipes)
            write_embeddings(pipes)
        folders = {model: pathlib.Path(tmp) / model for model in MODELS}
        cases = write_pipeline_cases(pipes, args.sdq, tmp, folders)
        if keep is not None:
            fresh = {c["name"]: c for c in cases}
            kept = {c["name"] for c in keep["cases"]}
            keep["cases"] = [fresh.get(c["name"], c) for c in keep["cases"]]
            # New cases go last, where a full run puts them.
            keep["cases"] += [c for c in cases if c["name"] not in kept]
            (OUT / "manifest.json").write_text(json.dumps(keep, indent=1) + "\n")
            print(f"rewrote {len(cases)} cases in {OUT.relative_to(ROOT)}")
            return
        write_rng()
        manifest = {
            "generated_by": "scripts/parity/generate_fixtures.py",
            "versions": {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
            "tiny_models": models,
            "tolerance": 2.0 / 255.0,
            "cases": cases,
        }
        (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(CASES)} pipeline cases to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
