#!/usr/bin/env bash
# The GPU benchmark, ready for one NVIDIA H100/H200 with PyTorch and no network (bench/gpu_bench.py does the work):
# ViT-B/32 and ViT-B/16 CLIP training steps at the largest batch that fits, bf16, with and without torch.compile,
# under mmtool's DeepSpeed ZeRO-2 engine (one process) and open_clip where importable; samples/s, step time, peak
# memory and MFU against a bf16 matmul measured in the same run. About 5 minutes on an H100.
#
#   bash bench/gpu.sh                 # on the GPU machine; the log lands in runs/gpu_bench/ (and $OUT when set)
#   bash bench/gpu.sh --cpu-smoke     # here: a toy model through every path, with and without DeepSpeed
#   bash bench/gpu.sh --real-data     # ViT-B/16 fed from web-style JPEG shards by each tool's own loader:
#                                     # mmtool (ZeRO-2 + compile) vs open_clip (--torchcompile), then mmtool with
#                                     # patch dropout 0.5 (bench/vs_open_clip.py --gpu); about 7 minutes
#
# --real-data needs, carried to the GPU machine: .whl (bench/gpu_wheels.sh), .whl_oc (webdataset 0.2.86, the
# version open_clip_train reads shards with; installed ahead of mmtool's 1.0.2 for open_clip only) and three
# training shards of data/emoji5, which bench/jpeg_shards.py turns into 60,000 samples of 256 px JPEG.
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
if [ "${1:-}" = "--real-data" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_oc .whl_oc/*.whl
    "$PYTHON" bench/jpeg_shards.py data/emoji5/train-00000{0,1,2}.tar --out /tmp/jpeg_shards --samples 60000 \
        --workers 16
    printf '#!/bin/sh\nPYTHONPATH=/tmp/site_oc:%s exec %s "$@"\n' "${PYTHONPATH:-}" "$PYTHON" > /tmp/open_clip_python
    chmod +x /tmp/open_clip_python
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    common=(--gpu --models vit_b16 --batch 1024 --workers 14 --warmup 30 --steps 40 --rounds 1
            --shards '/tmp/jpeg_shards/train-*.tar' --mmtool-python "$PYTHON" --open-clip-python /tmp/open_clip_python
            --work /tmp/vs_open_clip)
    log=runs/gpu_bench/real_$stamp.log
    { "$PYTHON" bench/vs_open_clip.py "${common[@]}" --pipeline-batches 1 "${@:2}" || true
      "$PYTHON" bench/vs_open_clip.py "${common[@]}" --tools mmtool --skip pipeline \
          --mmtool-set model.vision.patch_dropout=0.5 "${@:2}"; } 2>&1 | tee "$log" ${OUT:+"$OUT/real_$stamp.log"}
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/real_runs_$stamp.tgz" --exclude='*.pt' --exclude='*.safetensors' \
        --exclude=state --exclude='*.tar' -C /tmp vs_open_clip; fi
    exit 0
fi
# The log goes to $OUT as it is written, so a run cut off by the device tool's limit still returns its rows.
"$PYTHON" bench/gpu_bench.py --json "runs/gpu_bench/$stamp.json" "$@" 2>&1 \
    | tee "runs/gpu_bench/$stamp.log" ${OUT:+"$OUT/$stamp.log"}
if [ -n "${OUT:-}" ]; then cp "runs/gpu_bench/$stamp.json" "$OUT/"; fi
