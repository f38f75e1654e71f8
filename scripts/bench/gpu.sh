#!/usr/bin/env bash
# GPU measurement, run ON the GPU machine from the repository root, with a CUDA build
# carried there compressed (the carry limit is 64 MiB):
#
#   here:   scripts/build-cuda.sh --flash-attn && scripts/bench/gpu.sh pack
#           (writes target/gpu/sdq.xz; carry target/gpu)
#   there:  scripts/bench/gpu.sh run          # prints the table and JSON lines
#
# It writes the real SD 1.5 and SDXL geometries with random weights on the device
# (`tiny-model --kind sd15-full|sdxl-full`; nothing is downloaded), then times SD 1.5
# 512² × 20 steps and SDXL 1024² × 20 steps end to end (DDIM, CFG 7.5), in f16 and
# bf16, with FlashAttention and without (SDQ_FLASH_ATTN=off: candle's attention).
# it/s = 1000 / ms_per_step (each step is one UNet batch of 2; the figure includes the
# text encoders and the VAE decode, spread over the steps).
set -euo pipefail
cd "$(dirname "$0")/../.."

case "${1:-run}" in
pack)
    mkdir -p target/gpu
    xz -T0 -9 -c target/release/sdq >target/gpu/sdq.xz
    ls -l target/gpu/sdq.xz
    ;;
run)
    sdq=/tmp/sdq-cuda
    xz -dc target/gpu/sdq.xz >"$sdq"
    chmod +x "$sdq"
    models="${GPU_MODELS:-/tmp/sdq-models}"
    mkdir -p "$models"
    [ -e "$models/sd15/model_index.json" ] || "$sdq" tiny-model --kind sd15-full --out "$models/sd15"
    [ -e "$models/sdxl/model_index.json" ] || "$sdq" tiny-model --kind sdxl-full --out "$models/sdxl"
    for dtype in f16 bf16; do
        for flash in on off; do
            echo "== dtype $dtype, flash attention $flash"
            SDQ_FLASH_ATTN=$flash "$sdq" --model "$models/sd15" bench e2e --device cuda:0 \
                --dtype "$dtype" --sizes 512 --steps 20 --iterations "${ITERATIONS:-3}"
            SDQ_FLASH_ATTN=$flash "$sdq" --model "$models/sdxl" bench e2e --device cuda:0 \
                --dtype "$dtype" --sizes 1024 --steps 20 --iterations "${ITERATIONS:-3}"
        done
    done
    ;;
*)
    echo "usage: $0 pack|run" >&2
    exit 2
    ;;
esac
