#!/usr/bin/env bash
# The main job on the embedded default data: `mmtool pipeline --config emoji` builds the five-style
# emoji shards (Twemoji held out of training), pretrains the default CLIP, aligns its image tower to the bundled
# SmolLM2-135M, instruction-tunes with LoRA, exports, evaluates, and ends with a summary table. Re-running skips
# the steps that are up to date; extra arguments go to `mmtool pipeline` (e.g. --force, --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mmtool pipeline --config emoji "$@"
