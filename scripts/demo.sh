#!/usr/bin/env bash
# The controller end to end on this machine (`make demo`, `make demo-keep`); see docs/demo.md.
#   scripts/demo.sh                 run the seed README's story, then clean everything up
#   scripts/demo.sh --keep          leave it running (state in .testbed/demo) to explore
#   scripts/demo.sh --down          stop what --keep left running
# All logic lives in scripts/demo.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "demo.sh: $PY missing; run 'make setup' first" >&2; exit 1; }
# Not `cd "$ROOT"`: a relative --dir stays relative to the caller.
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m scripts.demo "$@"
