#!/usr/bin/env python3
"""Set-up and everyday commands; needs only Python >= 3.10 and pip.

    python3 dev.py example   create .venv if needed, then verify the shipped example
    python3 dev.py test      create .venv if needed, then run the whole test suite
    python3 dev.py env       only create / refresh .venv

The virtual environment is rebuilt when pyproject.toml or constraints.txt change.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".nnverify-installed"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def ensure_env() -> None:
    want = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing nnverify and its pinned dependencies into .venv ...", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"example", "test", "env"}:
        print(__doc__)
        return 2
    ensure_env()
    command, rest = argv[0], argv[1:]
    if command == "env":
        return 0
    if command == "example":
        example = ROOT / "examples" / "tiny"
        args = [str(BIN / "verify"), str(example / "net.onnx"), str(example / "robust.vnnlib"),
                "--timeout", "60", "--out", str(ROOT / "out" / "example_result.txt")]
        (ROOT / "out").mkdir(exist_ok=True)
        code = subprocess.run(args + rest).returncode
        if code == 0:
            print(f"result file: {ROOT / 'out' / 'example_result.txt'}")
        return code
    return subprocess.run([str(PY), "-m", "pytest", *rest], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
