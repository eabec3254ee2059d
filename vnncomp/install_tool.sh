#!/usr/bin/env bash
# VNN-COMP: install the tool once. Usage: install_tool.sh v1
# Creates .venv in the repository (torch, onnx, onnxruntime, highspy, ...); CPU-only machines
# get the same code path as GPU ones (torch picks the device at run time).
set -euo pipefail
if [[ "${1:-}" != "v1" ]]; then
    echo "install_tool.sh: expected the version argument 'v1', got '${1:-}'" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
python3 dev.py env
# one import now, so the first instance does not pay for compiling bytecode
.venv/bin/python -c "import verifier.api, branching.bab" 
echo "nnverify installed in $(pwd)/.venv"
