#!/usr/bin/env bash
# Builds open_clip's own virtual environment for bench/vs_open_clip.py (git-ignored, ~5.5 GB: torchvision
# only imports beside torch 2.14.1, a CUDA build; it runs on the CPU here). transformers + sentencepiece let
# open_clip read mmtool's sentencepiece vocabulary as a Hugging Face tokenizer.
# pandas, braceexpand, fsspec and webdataset <= 0.2.86: what open_clip_train needs (its [training] extra pulls more).
# efficientnet-lite-pytorch: bench/lit_vs_open_clip.py checks open_clip's timm EfficientNet-Lite0 against it.
# Safe to re-run: pip skips what is there.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-open-clip
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1 open-clip-torch==3.3.0 webdataset==0.2.86 \
    pillow==13.0.0 pyyaml==6.0.4 transformers==5.24.0 tokenizers==0.23.3 sentencepiece==0.2.3 protobuf==7.36.2 \
    pandas==3.1.1 braceexpand==0.1.7 fsspec efficientnet-lite-pytorch==0.1.0
"$VENV/bin/python" -c "import open_clip, torch, torchvision; print('open_clip', open_clip.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
