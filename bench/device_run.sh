#!/usr/bin/env bash
# On the GPU machine, from the repository root (with .whl carried): install the carried wheels
# into /tmp/site and run the accelerator suite.
#
#   bash bench/device_run.sh [OUT_DIR] [device_suite.py options...]     # OUT_DIR: $OUT/suite
set -uo pipefail
out_dir=${1:-${OUT:-/tmp}/suite}
shift || true
install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$@"
}
install .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# Our modules need flax >= 0.12.8: the carried wheel only if the image's is older (or missing).
if ! python3 -c "import sys, flax; from packaging.version import Version as V; \
sys.exit(V(flax.__version__) < V('0.12.8'))" 2>/dev/null; then
  install .whl/optional/flax-*.whl || exit 1
fi
python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda.*|flax|optax|orbax-checkpoint|torch|diffusers|transformers|huggingface.hub|nvidia-cudnn.*) '
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
export PYTHONUNBUFFERED=1
exec python3 bench/device_suite.py --out "$out_dir" "$@"
