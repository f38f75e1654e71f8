#!/usr/bin/env python3
"""The PyTorch side of `sdq bench`: diffusers in eager mode on the CPU, float32.

Same model folder, same shapes, same thread count as sdq's benchmark; prints one JSON
line per case in sdq's row format (`ours_ms` is this side's median), so
scripts/bench/vs_pytorch.py can pair the two.

    target/bench-venv/bin/python scripts/bench/torch_bench.py unet FOLDER --sizes 256,512
    ... vae FOLDER --sizes 512      ... e2e FOLDER --sizes 256 --steps 2
"""
import argparse
import json
import os
import resource
import statistics
import time


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row(bench, case, times, extra=None):
    out = {
        "bench": bench,
        "case": case,
        "ours_ms": statistics.median_high(times) * 1000.0,
        "baseline": None,
        "baseline_ms": None,
        "speedup": None,
        "iterations": len(times),
        "peak_rss_mib": peak_rss_mib(),
        "impl": "pytorch",
    }
    if extra:
        out["extra"] = [[k, v] for k, v in extra.items()]
    print(json.dumps(out), flush=True)


def timed(fn, iterations):
    fn(0)  # warm-up, as sdq's side
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        fn(i + 1)
        times.append(time.perf_counter() - start)
    return times


def unet(args, torch):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(os.path.join(args.folder, "unet"), torch_dtype=torch.float32).eval()
    cfg = model.config
    sdxl = cfg.addition_embed_type == "text_time"
    gen = torch.Generator().manual_seed(0)
    for size in args.sizes:
        latents = torch.randn(2, cfg.in_channels, size // 8, size // 8, generator=gen)
        context = torch.randn(2, 77, cfg.cross_attention_dim, generator=gen)
        added = None
        if sdxl:
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)
            added = {"text_embeds": torch.randn(2, pooled, generator=gen), "time_ids": ids}

        def step(i):
            t = 999.0 - (i * 37.0) % 999.0
            with torch.inference_mode():
                model(latents, t, encoder_hidden_states=context, added_cond_kwargs=added).sample

        family = "sdxl" if sdxl else "sd"
        row("unet", f"{family} {size}x{size} CFG batch 2", timed(step, args.iterations))


def vae(args, torch):
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(os.path.join(args.folder, "vae"), torch_dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    for size in args.sizes:
        z = torch.randn(1, model.config.latent_channels, size // 8, size // 8, generator=gen)

        def decode(_):
            with torch.inference_mode():
                model.decode(z).sample

        row("vae", f"decode {size}x{size}", timed(decode, args.iterations))


def e2e(args, torch):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    index = json.load(open(os.path.join(args.folder, "model_index.json")))
    cls = StableDiffusionXLPipeline if "XL" in index["_class_name"] else StableDiffusionPipeline
    start = time.perf_counter()
    pipe = cls.from_pretrained(args.folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    row("e2e", "load", [time.perf_counter() - start])
    for size in args.sizes:
        for steps in args.steps:
            def generate(_):
                pipe("a photo of a cat sitting on a red chair", height=size, width=size,
                     num_inference_steps=steps, guidance_scale=7.5,
                     generator=torch.Generator().manual_seed(1))

            times = timed(generate, args.iterations)
            per_step = statistics.median_high(times) * 1000.0 / steps
            row("e2e", f"{size}x{size}, {steps} steps, CFG", times, {"ms_per_step": per_step})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["unet", "vae", "e2e"])
    p.add_argument("folder")
    p.add_argument("--sizes", default="256", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--steps", default="4", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--iterations", default=3, type=int)
    p.add_argument("--threads", default=os.cpu_count(), type=int)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    {"unet": unet, "vae": vae, "e2e": e2e}[args.what](args, torch)


if __name__ == "__main__":
    main()
