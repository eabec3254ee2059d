#!/usr/bin/env bash
# VNN-COMP: run one instance. Usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT_S
# Hands the job to the warm server started by prepare_instance.sh; without one it runs the
# verifier in this process. Either way RESULTS_FILE is written (unsat / sat + witness / timeout /
# unknown / error) slightly before TIMEOUT_S, which the client enforces by killing the job.
set -euo pipefail
if [[ "${1:-}" != "v1" ]]; then
    echo "run_instance.sh: expected the version argument 'v1', got '${1:-}'" >&2
    exit 1
fi
if [[ $# -ne 6 ]]; then
    echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT_S" >&2
    exit 1
fi
category=$2 onnx=$3 vnnlib=$4 results=$5 timeout=$6
root="$(cd "$(dirname "$0")/.." && pwd)"
# the interpreter install_tool.sh set up (NNVERIFY_PYTHON overrides it, e.g. for tests)
py="${NNVERIFY_PYTHON:-$root/.venv/bin/python}"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m verifier.client \
    run "$onnx" "$vnnlib" "$results" "$timeout" --category "$category"
