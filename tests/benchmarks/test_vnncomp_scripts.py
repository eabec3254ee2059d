"""The vnncomp/ scripts, driven as the competition harness drives them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from verifier.client import stop_server

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "vnncomp"
TINY = ROOT / "examples" / "tiny"


@pytest.fixture
def harness_env(tmp_path):
    env = dict(os.environ, NNVERIFY_SERVER_DIR=str(tmp_path / "server"), NNVERIFY_PYTHON=sys.executable)
    yield env
    stop_server(tmp_path / "server")


def _script(name: str, *args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / name), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_prepare_then_run_writes_competition_results(harness_env, tmp_path):
    net, robust, border = TINY / "net.onnx", TINY / "robust.vnnlib", TINY / "border.vnnlib"
    prep = _script("prepare_instance.sh", "v1", "tiny", str(net), str(robust), env=harness_env)
    assert prep.returncode == 0, prep.stderr
    for spec, word in ((robust, "unsat"), (border, "sat")):
        out = tmp_path / f"{spec.stem}.txt"
        run = _script("run_instance.sh", "v1", "tiny", str(net), str(spec), str(out), "30", env=harness_env)
        assert run.returncode == 0, run.stderr
        text = out.read_text()
        assert text.split()[0] == word
        assert "without the warm server" not in run.stderr  # the prepared server took the job
    assert "(X_0 " in (tmp_path / "border.txt").read_text()


def test_scripts_reject_a_wrong_version_or_missing_files(harness_env, tmp_path):
    net, spec = TINY / "net.onnx", TINY / "robust.vnnlib"
    for name, args in (("install_tool.sh", ("v2",)),
                       ("prepare_instance.sh", ("v2", "tiny", str(net), str(spec))),
                       ("run_instance.sh", ("v2", "tiny", str(net), str(spec), str(tmp_path / "r"), "5"))):
        done = _script(name, *args, env=harness_env)
        assert done.returncode != 0 and "v1" in done.stderr
    missing = _script("prepare_instance.sh", "v1", "tiny", str(tmp_path / "absent.onnx"), str(spec), env=harness_env)
    assert missing.returncode != 0 and "absent.onnx" in missing.stderr
