"""The pool and the runner with a fake worker: answers land in the CSV, hard limits kill and
replace workers, a run killed half-way resumes without redoing finished instances."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.jobs import KILL_GRACE_S, Job
from benchmarks.pool import LocalPool, PoolError, PoolOptions
from benchmarks.results import FIELDS, ResultsFile, read_results
from benchmarks.runner import RunOptions, run_instances
from benchmarks.suite import read_suite
from tests.benchmarks.bench_fixtures import FAKE_WORKER, make_suite

ROOT = Path(__file__).resolve().parents[2]


def _pool(workers: int, tmp_path: Path) -> LocalPool:
    return LocalPool(PoolOptions(workers=workers, command=FAKE_WORKER, log_path=tmp_path / "workers.log"))


def _run(suite: Path, out: Path, workers: int, tmp_path: Path, **options):
    stream = io.StringIO()
    summary = run_instances(list(read_suite(suite).instances), ResultsFile(out), _pool(workers, tmp_path),
                            RunOptions(**options), progress_stream=stream, tty=False)
    return summary, stream.getvalue()


def test_every_instance_gets_one_row_with_its_answer_and_witness_file(tmp_path, monkeypatch):
    log = tmp_path / "runs.txt"
    monkeypatch.setenv("FAKE_WORKER_LOG", str(log))
    suite = make_suite(tmp_path / "s", ["a_unsat.vnnlib", "b_sat.vnnlib", "c_crash.vnnlib", "d.vnnlib"],
                       truth={"a_unsat.vnnlib": "unsat", "b_sat.vnnlib": "sat", "d.vnnlib": "sat"})
    out = tmp_path / "out" / "r.csv"
    summary, progress = _run(suite, out, 2, tmp_path)
    rows = {Path(r.vnnlib).name: r for r in read_results(out)}
    assert {k: r.result for k, r in rows.items()} == {"a_unsat.vnnlib": "unsat", "b_sat.vnnlib": "sat",
                                                       "c_crash.vnnlib": "error", "d.vnnlib": "unsat"}
    assert "died" in rows["c_crash.vnnlib"].message
    witness = out.parent / rows["b_sat.vnnlib"].witness
    assert witness.read_text().startswith("sat\n((X_0 0.5)")
    assert rows["b_sat.vnnlib"].bound == -0.25 and rows["a_unsat.vnnlib"].stage == "fake"
    assert summary.wrong == [("s", "onnx/net.onnx", "vnnlib/d.vnnlib")]  # unsat where truth says sat
    assert "WRONG" in progress and progress.count("\n") >= 5
    with open(out) as fh:
        assert next(csv.reader(fh)) == list(FIELDS)

    # resume: nothing is run again, nothing is duplicated
    runs_before = log.read_text()
    summary, progress = _run(suite, out, 2, tmp_path)
    assert summary.ran == 0 and summary.skipped == 4 and "already in the results file" in progress
    assert log.read_text() == runs_before
    assert len(out.read_text().splitlines()) == 5


def test_a_hanging_worker_is_killed_at_the_limit_and_replaced(tmp_path):
    suite = make_suite(tmp_path / "s", ["a_hang.vnnlib", "b.vnnlib", "c_hang.vnnlib", "d_sat.vnnlib"], timeout=1.0)
    out = tmp_path / "r.csv"
    start = time.monotonic()
    summary, _ = _run(suite, out, 1, tmp_path)
    elapsed = time.monotonic() - start
    rows = {Path(r.vnnlib).name: r for r in read_results(out)}
    assert [rows[k].result for k in sorted(rows)] == ["timeout", "unsat", "timeout", "sat"]
    for name in ("a_hang.vnnlib", "c_hang.vnnlib"):
        assert "killed" in rows[name].message
        assert 1.0 <= rows[name].run_time <= 1.0 + 1.0      # never more than 1 s past the limit
        assert 0.0 < rows[name].overrun <= KILL_GRACE_S + 0.5
    assert summary.max_overrun <= 1.0
    assert elapsed < 10  # two limits of 1 s plus fresh (fake) workers


def test_timeout_scale_and_cap_set_the_limit(tmp_path):
    suite = make_suite(tmp_path / "s", ["a_hang.vnnlib"], timeout=100.0)
    (inst,) = read_suite(suite).instances
    assert RunOptions(timeout_scale=0.5).limit(inst) == 50.0
    assert RunOptions(timeout_scale=0.5, max_timeout=0.7).limit(inst) == 0.7
    _run(suite, tmp_path / "r.csv", 1, tmp_path, max_timeout=0.7)
    (row,) = read_results(tmp_path / "r.csv")
    assert row.result == "timeout" and row.timeout == 0.7 and row.run_time < 0.7 + 1.0
    with pytest.raises(ValueError):
        RunOptions(timeout_scale=0)


def test_workers_that_cannot_start_stop_the_run_with_their_message(tmp_path):
    bad = LocalPool(PoolOptions(workers=1, command=(sys.executable, "-c", "import sys; sys.exit('no torch here')")))
    with pytest.raises(PoolError, match="no torch here"):
        list(bad.run([Job(0, "a.onnx", "b.vnnlib", 1.0)]))


def test_pool_runs_jobs_side_by_side(tmp_path):
    jobs = [Job(i, "n.onnx", f"slow400_{i}.vnnlib", 5.0) for i in range(4)]
    start = time.monotonic()
    results = list(_pool(4, tmp_path).run(jobs))
    assert sorted(r.id for r in results) == [0, 1, 2, 3]
    assert all(r.result == "unsat" and 0.4 <= r.time_s < 3 for r in results)
    assert time.monotonic() - start < 1.6 * 4 * 0.4 + 2  # not one after another (plus start-up)


def test_killing_the_run_midway_loses_at_most_the_instances_in_flight(tmp_path):
    names = [f"p{i:02d}_slow300.vnnlib" for i in range(10)]
    suite = make_suite(tmp_path / "s", names)
    out = tmp_path / "r.csv"
    log = tmp_path / "runs.txt"
    env = {**os.environ, "FAKE_WORKER_LOG": str(log), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "benchmarks", str(suite), "--out", str(out), "--workers", "2", "-q",
           "--worker-command", " ".join(FAKE_WORKER)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the hardest interruption
    proc.wait()
    finished_before = {r.vnnlib for r in read_results(out)}
    assert 3 <= len(finished_before) < 10
    time.sleep(0.5)  # orphaned fake workers finish their instance and exit
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = read_results(out)
    assert sorted(Path(r.vnnlib).name for r in rows) == names
    assert len(out.read_text().splitlines()) == 11  # header + one line per instance, no duplicate
    runs = log.read_text().split()
    rerun = {n for n in names if runs.count(n) > 1}
    assert len(rerun) <= 2  # only those the two workers had in flight
    assert not rerun & {Path(v).name for v in finished_before}
