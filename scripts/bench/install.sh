#!/usr/bin/env bash
# Installs the PyTorch reference that `sdq bench` runs side by side with sdq
# (diffusers' UNet2DConditionModel / AutoencoderKL in eager mode). Optional: no test
# needs it, and CI does not install it.
#
#   scripts/bench/install.sh            # creates target/bench-venv
#   BENCH_VENV=/some/dir scripts/bench/install.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${BENCH_VENV:-target/bench-venv}"
python="${PYTHON:-python3}"
requirements=scripts/bench/requirements.txt
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
fi
"$venv/bin/python" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__, "threads", torch.get_num_threads())'
