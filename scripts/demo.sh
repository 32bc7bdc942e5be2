#!/usr/bin/env bash
# The main job on the embedded default data: build the emoji shards, pretrain the tiny CLIP, evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
[ -f data/emoji/meta.json ] || mmtool data emoji --out data/emoji
mmtool pretrain-clip --config configs/clip/tiny_vit.yaml --out ckpt/demo "$@"
mmtool eval-clip ckpt/demo/clip.pt --data 'data/emoji/val-*.tar' --json ckpt/demo/eval_val.json
