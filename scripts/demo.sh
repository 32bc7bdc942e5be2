#!/usr/bin/env bash
# The main job on the embedded default data: build the multi-style emoji shards (Twemoji held out of training),
# pretrain the default CLIP recipe, evaluate it on the style it never saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
[ -f data/emoji5/meta.json ] || mmtool data emoji --out data/emoji5 --styles all --eval-style twemoji
mmtool pretrain-clip --config configs/clip/default.yaml --out ckpt/demo "$@"
# Twemoji drawings of the training concepts (only the style is new), then of the val concepts (both new).
mmtool eval-clip ckpt/demo/clip.pt --data 'data/emoji5/heldout_train-*.tar' --json ckpt/demo/eval_heldout_train.json
mmtool eval-clip ckpt/demo/clip.pt --data 'data/emoji5/heldout_val-*.tar' --json ckpt/demo/eval_heldout_val.json
