#!/usr/bin/env bash
# The README's `make demo`: build the demo store and show it. Arguments: venv bin dir, demo dir, store dir.
set -euo pipefail
BIN=$1 DEMO=$2 STORE=$3
"$BIN/python" -c "import shards, teachers, pipeline, student; print('packages import; the pipeline demo is not built yet')"
