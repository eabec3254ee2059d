#!/usr/bin/env bash
# VNN-COMP: prepare one instance. Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# No analysis of the instance happens here (competition rule): it only checks that the files
# exist and makes sure a warm verifier server (torch and the verifier imported once) is up, so
# that run_instance.sh does not pay the imports inside the timed run.
set -euo pipefail
if [[ "${1:-}" != "v1" ]]; then
    echo "prepare_instance.sh: expected the version argument 'v1', got '${1:-}'" >&2
    exit 1
fi
if [[ $# -ne 4 ]]; then
    echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
category=$2 onnx=$3 vnnlib=$4
for f in "$onnx" "$vnnlib"; do
    if [[ ! -f "$f" ]]; then
        echo "prepare_instance.sh ($category): no such file: $f" >&2
        exit 1
    fi
done
root="$(cd "$(dirname "$0")/.." && pwd)"
# the interpreter install_tool.sh set up (NNVERIFY_PYTHON overrides it, e.g. for tests)
py="${NNVERIFY_PYTHON:-$root/.venv/bin/python}"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$py" -m verifier.client start
