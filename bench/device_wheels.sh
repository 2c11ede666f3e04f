#!/usr/bin/env bash
# Downloads the Python wheels the GPU machine's image lacks into .whl/ (git-ignored), for
# bench/device_run.sh. Run here, where PyPI is reachable; the device machine has no network.
#
#   bash bench/device_wheels.sh          # then carry .whl (see bench/README.md)
#
# The image has JAX (CUDA), flax, optax, orbax-checkpoint, torch, transformers, safetensors,
# huggingface-hub, etils, absl and the rest of what the suite imports; it lacks diffusers (the
# reference side) and ml-collections (our configs). Versions are the ones the test venv uses.
# flax goes to .whl/optional/: device_run.sh installs it only if the image's flax is older.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

version() {  # the active environment's version of $1, else the pinned fallback $2
  "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null \
    || echo "$2"
}

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
download() {  # download DIR SPEC...
  local dir=$1; shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$dir" "$@"
}

rm -rf .whl
mkdir -p .whl/optional
download .whl "diffusers==$(version diffusers 0.42.1)" "ml-collections==$(version ml-collections 1.1.0)"
download .whl/optional "flax==$(version flax 0.12.8)"

ls -l .whl .whl/optional
size_kib=$(du -sk .whl | cut -f1)
echo ".whl: $((size_kib / 1024)) MiB"
if [ "$size_kib" -gt $((50 * 1024)) ]; then
  echo "error: .whl is over 50 MiB" >&2
  exit 1
fi
