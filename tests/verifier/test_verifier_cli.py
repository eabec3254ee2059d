"""The `verify` command: in-process through main([...]) and as `python -m verifier`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from specs import parse_vnnlib, parse_witness
from verifier.cli import main
from tests.verifier import verifier_fixtures as F

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture()
def net(tmp_path: Path) -> Path:
    return F.write_tiny_net(tmp_path / "net.onnx")


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "verifier", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


# ---------------------------------------------------------------------------------------
# in-process

def test_main_unsat(net, tmp_path, capsys):
    out = tmp_path / "result.txt"
    code = main([str(net), str(_write(tmp_path, "p.vnnlib", F.UNSAT)), "--out", str(out), "--timeout", "60"])
    assert code == 0
    assert out.read_text() == "unsat\n"
    line = capsys.readouterr().out.strip()
    assert re.match(r"unsat +net p +\d+\.\d\d s +\(CROWN, min margin 0\.5\)$", line), line
    assert not list(tmp_path.glob(".result.txt.*"))  # the temporary file was renamed away


def test_main_sat_json(net, tmp_path, capsys):
    out = tmp_path / "result.txt"
    spec = _write(tmp_path, "p.vnnlib", F.SAT)
    code = main([str(net), str(spec), "--out", str(out), "--json", "--seed", "3"])
    assert code == 0
    obj = json.loads(capsys.readouterr().out)
    assert {"result", "time_s", "stage", "message", "best_bound", "witness", "instance", "details"} <= obj.keys()
    assert obj["result"] == "sat"
    text = out.read_text()
    assert text.startswith("sat\n((X_0 ")
    x, y = parse_witness(text)
    assert x.tolist() == obj["witness"]["x"]
    assert parse_vnnlib(spec).is_violated_by(x, F.tiny_forward(x), tol=1e-6)


def test_main_quiet_and_ibp(net, tmp_path, capsys):
    code = main([str(net), str(_write(tmp_path, "p.vnnlib", F.HARD)), "-q", "--method", "ibp", "--timeout", "30"])
    assert code == 0 and capsys.readouterr().out == "unsat\n"  # IBP alone fails; branch and bound decides


def test_main_arithmetic_flag_reaches_the_run(net, tmp_path, capsys):
    spec = str(_write(tmp_path, "p.vnnlib", F.UNSAT))
    assert main([spec.replace("p.vnnlib", "x.vnnlib"), spec, "--arithmetic", "real"]) == 2
    assert main([str(net), spec, "--json", "--arithmetic", "exact", "--timeout", "60"]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert obj["result"] == "unsat" and obj["details"]["arithmetic"] == "exact"


def test_main_usage_errors(net, tmp_path, capsys):
    assert main([]) == 2
    assert main([str(net)]) == 2
    assert main([str(net), "p.vnnlib", "--timeout", "-1"]) == 2
    assert main([str(net), "p.vnnlib", "--method", "alpha"]) == 2
    assert main([str(net), "p.vnnlib", "--out", str(tmp_path / "no" / "such" / "dir" / "r.txt")]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0
    helptext = capsys.readouterr().out
    assert "exit codes" in helptext and "4  bad spec" in helptext
    assert "--debug" not in helptext.split("exit codes")[0]  # hidden option


def test_main_bad_model(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage that is not protobuf")
    out = tmp_path / "r.txt"
    code = main([str(bad), str(_write(tmp_path, "p.vnnlib", F.UNSAT)), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 3 and out.read_text() == "error\n"
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err
    code = main([str(tmp_path / "missing.onnx"), str(tmp_path / "p.vnnlib"), "--out", str(out)])
    assert code == 3 and "missing.onnx" in capsys.readouterr().err


def test_main_bad_spec(net, tmp_path, capsys):
    out = tmp_path / "r.txt"
    broken = _write(tmp_path, "broken.vnnlib",
                    "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 0.5)\n")
    code = main([str(net), str(broken), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 4 and out.read_text() == "error\n"
    assert re.search(re.escape(str(broken)) + r":\d+:\d+:", err), err
    assert "Traceback" not in err
    # input count mismatch: the spec has 3 inputs, the network 2
    three = _write(tmp_path, "three.vnnlib",
                   F.declarations(3, 2) + F.box([0, 0, 0], [1, 1, 1]) + "(assert (<= Y_0 Y_1))\n")
    code = main([str(net), str(three), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 4 and out.read_text() == "error\n"
    assert "3 inputs" in captured.err
    assert json.loads(captured.out)["result"] == "error"


# ---------------------------------------------------------------------------------------
# as a separate process

def test_python_m_verifier_end_to_end(net, tmp_path):
    spec = _write(tmp_path, "d.vnnlib", F.DISJUNCTIVE_SAT)
    out = tmp_path / "result.txt"
    proc = _cli(str(net), str(spec), "--out", str(out), "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sat") and "net d" in proc.stdout
    x, _ = parse_witness(out.read_text())
    assert np.all(x >= 0.9)

    proc = _cli(str(net), str(_write(tmp_path, "u.vnnlib", F.UNSAT)), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["result"] == "unsat"


def test_python_m_verifier_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not an onnx file")
    out = tmp_path / "r.txt"
    proc = _cli(str(bad), str(_write(tmp_path, "p.vnnlib", F.UNSAT)), "--out", str(out))
    assert proc.returncode == 3 and out.read_text() == "error\n"
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_tiny_timeout_on_a_slow_case(tmp_path):
    model = F.write_wide_net(tmp_path / "wide.onnx")
    rng = np.random.default_rng(0)
    centre = rng.uniform(0.2, 0.8, 784)
    spec = _write(tmp_path, "wide.vnnlib", F.declarations(784, 10) + F.box(centre - 0.3, centre + 0.3)
                  + "(assert (or (and (>= Y_1 Y_0)) (and (>= Y_2 Y_0)) (and (>= Y_3 Y_0))))\n")
    out = tmp_path / "r.txt"
    limit = 1.0
    start = time.monotonic()
    proc = _cli(str(model), str(spec), "--out", str(out), "--timeout", str(limit))
    elapsed = time.monotonic() - start
    assert elapsed < limit + 1.0, f"took {elapsed:.2f} s"
    assert proc.returncode == 0, proc.stderr
    word = out.read_text().split()[0]
    assert word in {"timeout", "sat", "unsat", "unknown"}
    assert proc.stdout.split()[0] == word


def test_sigterm_writes_timeout(tmp_path):
    model = F.write_wide_net(tmp_path / "wide.onnx")
    spec = _write(tmp_path, "wide.vnnlib", F.declarations(784, 10) + F.box(np.zeros(784), np.ones(784))
                  + "(assert (>= Y_1 Y_0))\n(assert (>= Y_2 Y_0))\n(assert (>= Y_1 Y_3))\n(assert (>= Y_5 Y_8))\n")
    out = tmp_path / "r.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "verifier", str(model), str(spec), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait until loading is reported: the handlers are installed and the work has begun
    started = proc.stderr.readline()
    assert "loaded in" in started, started
    proc.terminate()
    stdout, stderr = proc.communicate(timeout=30)
    if proc.returncode == 0:  # finished before the signal: only possible on a very fast machine
        assert out.read_text().split()[0] in {"sat", "unsat", "unknown"}
        return
    assert proc.returncode == 143, stderr
    assert out.read_text() == "timeout\n" and stdout.startswith("timeout") and "Traceback" not in stderr
