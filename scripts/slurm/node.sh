#!/bin/bash
# The per-node body of train.sbatch (srun starts it once on every node): one torchrun agent for this node's
# processes, joined to the others through a c10d rendezvous. Reads Slurm's variables; runs as is on one machine
# with them set by hand (tests/mmtool/test_slurm_recipe.py does).
#   SLURM_JOB_NUM_NODES, SLURM_NODEID, SLURM_JOB_ID  from Slurm
#   SLURM_GPUS_ON_NODE     processes on this node (one per GPU; default 1)
#   MMTOOL_RDZV_HOST       the rendezvous host (train.sbatch: the allocation's first node; default 127.0.0.1)
#   MMTOOL_RDZV_PORT       its port (default 29500)
#   MMTOOL_MAX_RESTARTS    times torchrun restarts the node's processes after a failure (default 0)
# Arguments: the mmtool command, e.g. pretrain-clip --config vit_b16 --out /shared/ckpt/b16
set -euo pipefail

exec python -m torch.distributed.run \
    --nnodes "${SLURM_JOB_NUM_NODES:?not inside a Slurm job}" \
    --node-rank "${SLURM_NODEID:?}" \
    --nproc-per-node "${SLURM_GPUS_ON_NODE:-1}" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${MMTOOL_RDZV_HOST:-127.0.0.1}:${MMTOOL_RDZV_PORT:-29500}" \
    --rdzv-id "${SLURM_JOB_ID:?}" \
    --max-restarts "${MMTOOL_MAX_RESTARTS:-0}" \
    -m mmtool "$@"
