#!/usr/bin/env bash
# Start/stop the local Kubernetes test bed (all logic lives in tests/support/testbed.py).
#   testbed/cluster.sh up [--dir DIR]        start it; writes DIR/kubeconfig (default DIR: .testbed)
#   testbed/cluster.sh down [--dir DIR]      stop it and remove its state
#   testbed/cluster.sh sa-kubeconfig NAMESPACE NAME OUT [--dir DIR]
#                                            kubeconfig for a ServiceAccount (TokenRequest API)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "cluster.sh: $PY missing; run 'make venv' first" >&2; exit 1; }
command="${1:?usage: cluster.sh up|down|sa-kubeconfig NAMESPACE NAME OUT [--dir DIR]}"
shift
# argparse wants --dir before the sub-command; accept it anywhere on our command line.
dir=() rest=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir=(--dir "$2"); shift 2 ;;
        --dir=*) dir=(--dir "${1#--dir=}"); shift ;;
        *) rest+=("$1"); shift ;;
    esac
done
# Not `cd "$ROOT"`: relative paths on the command line stay relative to the caller.
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m tests.support.testbed "${dir[@]}" "$command" "${rest[@]}"
