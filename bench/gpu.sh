#!/usr/bin/env bash
# The GPU benchmark, ready for one NVIDIA H100/H200 with PyTorch and no network (bench/gpu_bench.py does the work):
# ViT-B/32 and ViT-B/16 CLIP training steps at the largest batch that fits, bf16, with and without torch.compile,
# under mmtool's DeepSpeed ZeRO-2 engine (one process) and open_clip where importable; samples/s, step time, peak
# memory and MFU against a bf16 matmul measured in the same run. About 5 minutes on an H100.
#
#   bash bench/gpu.sh                 # on the GPU machine; the log lands in runs/gpu_bench/ (and $OUT when set)
#   bash bench/gpu.sh --cpu-smoke     # here: a toy model through every path, with and without DeepSpeed
#
# DeepSpeed and open_clip are optional. To bring them to a machine without network, fill .whl/ here first
# (bash bench/gpu_wheels.sh); on the GPU path this script installs the wheels in .whl/ into /tmp/site first.
# Without DeepSpeed the ZeRO-2 rows are replaced by the same step in a plain torch loop, and the header says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p runs/gpu_bench
stamp=$(date -u +%Y%m%d-%H%M)
if [ "${1:-}" = "--cpu-smoke" ]; then
    export DS_ACCELERATOR=cpu
    "$PYTHON" bench/gpu_bench.py --cpu-smoke "${@:2}"
    if [ -x bench/.venv-open-clip/bin/python ]; then  # open_clip importable, DeepSpeed not: the fallback path
        bench/.venv-open-clip/bin/python bench/gpu_bench.py --cpu-smoke "${@:2}"
    fi
    exit 0
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
# The log goes to $OUT as it is written, so a run cut off by the device tool's limit still returns its rows.
"$PYTHON" bench/gpu_bench.py --json "runs/gpu_bench/$stamp.json" "$@" 2>&1 \
    | tee "runs/gpu_bench/$stamp.log" ${OUT:+"$OUT/$stamp.log"}
if [ -n "${OUT:-}" ]; then cp "runs/gpu_bench/$stamp.json" "$OUT/"; fi
