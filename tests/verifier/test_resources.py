"""Resource limits: the time limit holds inside long solver calls, signals still write a
result, and running out of memory backs off (smaller batches) or degrades to a clean answer."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import verifier.api as api
from branching.bab import BaBOptions, input_split_bab
from branching.problem import SpecTensors
from specs import parse_vnnlib
from tests.verifier import verifier_fixtures as F
from verifier.deadline import Deadline
from verifier.options import VerifyOptions

ROOT = Path(__file__).resolve().parents[2]
CPU_OOM = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def _spec(tmp_path: Path, text: str, name: str = "p.vnnlib") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------
# out of memory: back off, then degrade

def _many_boxes(n: int) -> str:
    boxes = " ".join(F.box_and([0.5 + 0.01 * k, 0.5], [0.6 + 0.01 * k, 0.6]) for k in range(n))
    return F.declarations(2, 2) + f"(assert (or {boxes}))\n(assert (<= Y_0 Y_1))\n"


def test_bounds_back_off_on_cpu_out_of_memory(tmp_path: Path, monkeypatch) -> None:
    honest = api.spec_lower_bounds
    sizes = []

    def tight(graph, box, C, *args, **kwargs):
        sizes.append(box.lower.shape[0])
        if box.lower.shape[0] > 3:
            raise RuntimeError(CPU_OOM)      # how the CPU allocator reports it: not a MemoryError
        return honest(graph, box, C, *args, **kwargs)

    monkeypatch.setattr(api, "spec_lower_bounds", tight)
    net = F.write_tiny_net(tmp_path / "net.onnx")
    res = api.verify(net, _spec(tmp_path, _many_boxes(10)), options=VerifyOptions(timeout=60))
    assert res.word == "unsat", res.message
    assert sizes[0] == 10 and 2 in sizes  # halved from 64 boxes a batch until a batch fits


def test_bounds_that_never_fit_degrade_to_the_attack(tmp_path: Path, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise MemoryError("no memory at all")

    monkeypatch.setattr(api, "spec_lower_bounds", never)
    net = F.write_tiny_net(tmp_path / "net.onnx")
    res = api.verify(net, _spec(tmp_path, F.UNSAT), options=VerifyOptions(timeout=20))
    assert res.word == "unknown" and "out of memory" in res.message, res.message
    res = api.verify(net, _spec(tmp_path, F.SAT, "s.vnnlib"), options=VerifyOptions(timeout=20))
    assert res.word == "sat"                # the attack still finds what it can


def test_out_of_memory_anywhere_is_a_clean_unknown(tmp_path: Path, monkeypatch) -> None:
    def boom(self, *args, **kwargs):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(api._Run, "crosscheck", boom)
    net = F.write_tiny_net(tmp_path / "net.onnx")
    res = api.verify(net, _spec(tmp_path, F.UNSAT), options=VerifyOptions(timeout=20))
    assert res.word == "unknown" and "out of memory" in res.message
    monkeypatch.setattr(api._Run, "crosscheck", lambda self: (_ for _ in ()).throw(RuntimeError("a real bug")))
    with pytest.raises(RuntimeError, match="a real bug"):  # other errors are not swallowed
        api.verify(net, _spec(tmp_path, F.UNSAT), options=VerifyOptions(timeout=20))


def test_input_split_bab_halves_its_batch_on_out_of_memory(monkeypatch) -> None:
    import branching.bab as bab

    honest = bab.spec_lower_bounds
    sizes = []

    def tight(graph, box, C, *args, **kwargs):
        sizes.append(box.lower.shape[0])
        if box.lower.shape[0] > 2:
            raise RuntimeError(CPU_OOM)
        return honest(graph, box, C, *args, **kwargs)

    monkeypatch.setattr(bab, "spec_lower_bounds", tight)
    spec = parse_vnnlib(_write_tmp(F.HARD))
    graph = api.load_model(_tiny_path(), spec, None)[0]
    problem = SpecTensors.from_spec(spec, graph.input.shape, dtype=torch.float64)
    from bounds.graph.ir import graph_to
    out = input_split_bab(graph_to(graph, dtype=torch.float64), problem, Deadline(30), BaBOptions(input_batch_size=64))
    assert out.status == "unsat"
    assert max(sizes) > 2 and sizes.count(1) + sizes.count(2) > 2  # failed once, went on smaller
    assert max(sizes) <= 64                                           # rounds of input_batch_size at most


def _write_tmp(text: str) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".vnnlib")
    os.close(fd)
    Path(name).write_text(text)
    return Path(name)


def _tiny_path() -> Path:
    import tempfile

    return F.write_tiny_net(Path(tempfile.mkdtemp()) / "net.onnx")


CAPPED = textwrap.dedent("""
    import re, resource, sys
    import numpy, onnxruntime, torch          # the libraries' own mappings are not what is tested
    import verifier.api, verifier.cli
    vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    extra = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, vm + extra))
    from verifier.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_a_memory_capped_run_still_answers(tmp_path: Path) -> None:
    """Under an address-space cap a little above what the libraries take, a run whose bounds
    need more memory backs off and still writes a verdict (or a clean unknown / timeout)."""
    net = F.write_wide_net(tmp_path / "wide.onnx", width=512, depth=2)
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(24):
        lo = rng.uniform(0, 0.9, 784)
        boxes.append(F.box_and(lo, lo + 0.001))
    spec = _spec(tmp_path, F.declarations(784, 10) + f"(assert (or {' '.join(boxes)}))\n"
                 "(assert (>= Y_0 (+ Y_1 100.0)))\n")
    script = tmp_path / "capped.py"
    script.write_text(CAPPED)
    out = tmp_path / "r.txt"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), "300", str(net), str(spec), "--out", str(out),
                           "--timeout", "40"], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=90)
    assert time.monotonic() - start < 60
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_text().split("\n")[0] in ("unsat", "unknown", "timeout")


# ----------------------------------------------------------------------------------------
# time limits

def test_milp_time_limit_holds_inside_the_solver() -> None:
    """A MILP far too big to solve stops within its time limit (plus model-building time)."""
    from branching.milp import build_and_solve
    from tests.bounds.random_graphs import random_mlp

    graph = random_mlp(3, width=48, depth=3, n_in=12, n_out=4, acts=["Relu"])
    spec = parse_vnnlib(_write_tmp(F.declarations(12, 4) + F.box([-2.0] * 12, [2.0] * 12)
                                   + "(assert (>= Y_0 (+ Y_1 1000.0)))\n"))
    start = time.monotonic()
    res = build_and_solve(graph, spec.cases[0], 0, time_limit=1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"{elapsed:.2f} s for a 1 s limit ({res.status})"


def test_verify_returns_within_its_time_limit_on_a_slow_case(tmp_path: Path) -> None:
    net = F.write_wide_net(tmp_path / "wide.onnx", width=256, depth=6)
    lo = np.full(784, 0.2)
    spec = _spec(tmp_path, F.declarations(784, 10) + F.box(lo - 0.3, lo + 0.3) + "(assert (>= Y_0 (+ Y_1 5.0)))\n")
    start = time.monotonic()
    res = api.verify(net, spec, options=VerifyOptions(timeout=3.0))
    elapsed = time.monotonic() - start
    assert res.word in ("timeout", "unknown"), res.message   # too hard for 3 s: the limit is what ends it
    assert elapsed < 4.0, f"{elapsed:.2f} s for a 3 s limit ({res.word}, {res.message})"


# ----------------------------------------------------------------------------------------
# signals

def test_sigint_writes_unknown(tmp_path: Path) -> None:
    net = F.write_wide_net(tmp_path / "wide.onnx", width=512, depth=4)
    lo = np.full(784, 0.2)
    spec = _spec(tmp_path, F.declarations(784, 10) + F.box(lo - 0.3, lo + 0.3) + "(assert (>= Y_0 (+ Y_1 100.0)))\n")
    out = tmp_path / "r.txt"
    proc = subprocess.Popen([sys.executable, "-m", "verifier", str(net), str(spec), "--out", str(out),
                             "--timeout", "120"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "input box" not in (proc.stderr.readline() or ""):
        pass                                    # wait until the run has really started
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert out.read_text() == "unknown\n"
    assert "Traceback" not in stderr
