#!/usr/bin/env bash
# Builds sdq with the `cuda` feature (and `flash-attn` with --flash-attn) on a machine
# without a CUDA toolkit: nvcc, the CUDA headers and libraries come from NVIDIA's PyPI
# wheels, installed into target/cuda-venv and gathered under target/cuda-root. Builds for
# compute capability 90 (H100 / H200) unless CUDA_COMPUTE_CAP says otherwise; no GPU is
# needed to build.
#
#   scripts/build-cuda.sh                 # target/release/sdq with --features cuda
#   scripts/build-cuda.sh --flash-attn    # with --features flash-attn (much longer)
#   scripts/build-cuda.sh --check         # cargo check only
#
# The driver library (libcuda.so.1) belongs to the GPU machine's driver; for linking
# here a stub exporting the driver API's symbols is generated from cudarc's bindings,
# as the toolkit's own lib64/stubs/libcuda.so is. The binary loads the real one at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

features=cuda
mode=build
for arg in "$@"; do
    case "$arg" in
        --flash-attn) features=flash-attn ;;
        --check) mode=check ;;
        *) echo "unknown argument $arg" >&2; exit 2 ;;
    esac
done

venv=target/cuda-venv
root="$PWD/target/cuda-root"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# CUDA 12.9, the newest 12.x line; candle's kernels and cudarc support it.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc-cu12==12.9.86 \
    nvidia-cuda-runtime-cu12==12.9.79 \
    nvidia-cuda-nvrtc-cu12==12.9.86 \
    nvidia-cuda-cccl-cu12==12.9.27 \
    nvidia-cublas-cu12==12.9.3.13 \
    nvidia-curand-cu12==10.3.10.19

# One toolkit-shaped folder: bin/, include/, lib64/ (symlinks into the wheels).
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia"
rm -rf "$root"
mkdir -p "$root/bin" "$root/include" "$root/lib64/stubs"
for pkg in "$site"/*/; do
    for sub in bin include lib nvvm; do
        [ -d "$pkg$sub" ] || continue
        case "$sub" in
            lib) dest="$root/lib64" ;;
            nvvm) dest="$root/nvvm" ; mkdir -p "$dest" ;;
            *) dest="$root/$sub" ;;
        esac
        for f in "$pkg$sub"/*; do
            ln -sf "$f" "$dest/$(basename "$f")"
        done
    done
done
# Unversioned names for the linker (-lcublas ...), as a toolkit install has them.
for lib in "$root"/lib64/lib*.so.*; do
    base="${lib%%.so.*}.so"
    [ -e "$base" ] || ln -sf "$(readlink -f "$lib")" "$base"
done
chmod +x "$root"/bin/* 2>/dev/null || true

# Fetch the crates first so that cudarc's bindings can be read for the driver stub.
cargo fetch --locked >/dev/null
cudarc="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1)"
if [ ! -e "$root/lib64/stubs/libcuda.so" ]; then
    [ -n "$cudarc" ] || { echo "cudarc sources not found" >&2; exit 1; }
    grep -rhoE 'pub fn (cu[A-Z][A-Za-z0-9_]*)' "$cudarc/src/driver/sys/" \
        | sed -E 's/pub fn //' | sort -u \
        | sed -E 's/.*/void &(void) {}/' >"$root/lib64/stubs/cuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" \
        "$root/lib64/stubs/cuda_stub.c"
fi

export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
export PATH="$root/bin:$PATH"
export LIBRARY_PATH="$root/lib64:$root/lib64/stubs:${LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
nvcc --version | tail -2
time cargo "$mode" --release --locked --features "$features"
