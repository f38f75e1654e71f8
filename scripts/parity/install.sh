#!/usr/bin/env bash
# Installs the Python reference stack (diffusers on CPU) that regenerates the parity
# fixtures. Tests never need it: the fixtures it writes are committed.
#
#   scripts/parity/install.sh            # creates target/parity-venv
#   PARITY_VENV=/some/dir scripts/parity/install.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${PARITY_VENV:-target/parity-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade pip
# Versions are pinned so that regenerated fixtures differ only when our code changes.
"$venv/bin/python" -m pip install -r scripts/parity/requirements.txt
"$venv/bin/python" -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
