#!/usr/bin/env bash
# Launch a lift_jax job on every host of a Cloud TPU pod slice (multi-host).
#
#   tools/launch_tpu.sh TPU_NAME ZONE [PROJECT] -- lift-jax train \
#       --config=configs/lift_2b.py --workdir /mnt/shared/runs/lift_2b \
#       --config.model.transformer=/mnt/shared/ckpt/cogvideox-2b/transformer \
#       --config.data.dir=/mnt/shared/prepared --config.mesh.fsdp=-1
#   tools/launch_tpu.sh TPU_NAME ZONE -- lift-jax loop --config=configs/lift_2b_run.py \
#       --workdir /mnt/shared/runs/lift
#
# Every host runs the same command (any `lift-jax` stage, or the loop); jax.distributed starts by
# itself on a Cloud TPU VM (lift_jax/parallel/distributed.py), generate/score/prepare split their
# videos over the hosts, training feeds each host its own shard of the data and the mesh spans all
# chips. Outputs go to one folder every host sees (a shared file system). The repository is copied
# to each host and installed (`pip install .`, which also puts `lift-jax` on the PATH) into a
# virtual environment there. Set LIFT_JAX_SKIP_SETUP=1 to skip the copy/install on re-launches.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,17p' "$0"; exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_FLAG=()
if [[ $1 != "--" ]]; then PROJECT_FLAG=(--project "$1"); shift; fi
[[ ${1:-} == "--" ]] || { echo "expected -- before the command" >&2; exit 2; }
shift
COMMAND=$(printf '%q ' "$@")
REPO=$(cd "$(dirname "$0")/.." && pwd)
REMOTE_DIR=lift_jax

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all \
      --command "$1"
}

if [[ -z ${LIFT_JAX_SKIP_SETUP:-} ]]; then
  tar -C "$REPO" --exclude=.git --exclude=.venv -czf /tmp/lift_jax_src.tgz .
  gcloud compute tpus tpu-vm scp /tmp/lift_jax_src.tgz "$TPU_NAME":/tmp/ --zone "$ZONE" \
      "${PROJECT_FLAG[@]}" --worker=all
  ssh_all "mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf /tmp/lift_jax_src.tgz && \
    cd $REMOTE_DIR && python3 -m venv .venv && . .venv/bin/activate && \
    pip install -q -U pip && pip install -q . 'jax[tpu]'"
fi

# Same command on every worker; output of worker 0 is what you see.
ssh_all "cd $REMOTE_DIR && . .venv/bin/activate && $COMMAND"
