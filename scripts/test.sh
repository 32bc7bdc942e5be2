#!/usr/bin/env bash
# The test suite (CPU only; 7-17 minutes on 2 cores by machine: README, "Time").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Which CPU features this machine has and which tests they switch (fp16 training, bf16 speed).
.venv/bin/python scripts/cpu_features.py 2>/dev/null || true
# Two pytest workers, one torch thread each: much of a test's time is single-threaded (imports, launcher start-up,
# small models), so two tests at once keep both cores busy, where torch's default thread per core in each worker
# would oversubscribe them. On 2 cores: 424 s against 907 s one test at a time. `-n 0`: one test at a time.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -n 2 "$@"
