#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what bench/gpu.sh needs beyond PyTorch on a GPU machine without network:
# DeepSpeed (source-only on PyPI: built here into a pure-Python wheel), its pure-Python needs that the GPU image
# lacks, pydantic-core for that image's Python 3.12, and open_clip with ftfy. Pass the run tool `carry: [".whl"]`
# (and ".whl_oc" for --real-data).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
"$PY" -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl pydantic==2.14.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5 hjson==3.1.0 open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 pydantic-core==2.50.5
# For --real-data: mmtool's loader (webdataset 1.x) and, kept apart in .whl_oc/, the webdataset open_clip_train
# reads shards with (<= 0.2.86); gpu.sh puts .whl_oc/ ahead of .whl/ for open_clip only. Carry both.
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl webdataset==1.0.2 braceexpand==0.1.7
mkdir -p .whl_oc
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl_oc webdataset==0.2.86
ls -la .whl .whl_oc
