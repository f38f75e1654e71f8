#!/usr/bin/env python3
"""sdq against PyTorch eager, side by side: whole processes in turn (sdq, torch, sdq, ...).

Each round starts one `sdq bench WHAT --baseline none` process and one
scripts/bench/torch_bench.py process on the same folder, sizes and thread count, so
machine noise hits both; the summary pairs their medians per case and prints a table
(time ratio torch/sdq: above 1, sdq is faster; peak RSS of each process) and JSON lines.

    scripts/bench/install.sh   # once: target/bench-venv with torch + diffusers
    target/bench-venv/bin/python scripts/bench/vs_pytorch.py unet FOLDER --sizes 256,512 --rounds 2
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["unet", "vae", "e2e"])
    p.add_argument("folder")
    p.add_argument("--sizes", default="256")
    p.add_argument("--steps", default="2")
    p.add_argument("--iterations", default=1, type=int, help="timed runs per process")
    p.add_argument("--rounds", default=2, type=int, help="process pairs")
    p.add_argument("--threads", default=os.cpu_count(), type=int)
    p.add_argument("--sdq", default=os.path.join(ROOT, "target/release/sdq"))
    args = p.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    common = ["--sizes", args.sizes, "--iterations", str(args.iterations)]
    sdq = [args.sdq, "--model", args.folder, "bench", args.what] + common
    if args.what == "unet":
        sdq += ["--baseline", "none"]
    if args.what == "vae":
        sdq += ["--no-baseline"]
    if args.what == "e2e":
        sdq += ["--steps", args.steps]
    torch = [sys.executable, os.path.join(ROOT, "scripts/bench/torch_bench.py"), args.what,
             args.folder, "--threads", str(args.threads), "--steps", args.steps] + common
    samples = {}
    for r in range(args.rounds):
        for side, cmd in (("sdq", sdq), ("pytorch", torch)):
            for row in run(cmd, env):
                samples.setdefault(row["case"], {}).setdefault(side, []).append(row)
            print(f"round {r + 1}/{args.rounds}: {side} done", file=sys.stderr, flush=True)
    print(f"{'case':<28} {'sdq ms':>10} {'torch ms':>10} {'torch/sdq':>9} {'sdq RSS':>9} {'torch RSS':>9}")
    lines = []
    for case, sides in samples.items():
        if "sdq" not in sides or "pytorch" not in sides:
            continue
        ms = {s: statistics.median_high([x["ours_ms"] for x in v]) for s, v in sides.items()}
        rss = {s: max(x["peak_rss_mib"] or 0 for x in v) / 1024.0 for s, v in sides.items()}
        ratio = ms["pytorch"] / ms["sdq"]
        print(f"{case:<28} {ms['sdq']:>10.1f} {ms['pytorch']:>10.1f} {ratio:>8.2f}x "
              f"{rss['sdq']:>6.2f}GiB {rss['pytorch']:>6.2f}GiB")
        lines.append({"bench": args.what, "case": case, "ours_ms": ms["sdq"], "baseline": "pytorch eager",
                      "baseline_ms": ms["pytorch"], "speedup": ratio, "rounds": args.rounds,
                      "peak_rss_mib": rss["sdq"] * 1024, "baseline_peak_rss_mib": rss["pytorch"] * 1024,
                      "threads": args.threads})
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
