#!/usr/bin/env bash
# The test suite (CPU only, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Which CPU features this machine has and which tests they switch (fp16 training, bf16 speed).
.venv/bin/python scripts/cpu_features.py 2>/dev/null || true
exec .venv/bin/python -m pytest -q "$@"
