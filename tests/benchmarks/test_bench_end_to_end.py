"""`verify bench` with the real verifier in warm workers, locally and on a local Ray instance."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmarks.results import ResultsFile, read_results
from benchmarks.runner import run_instances
from benchmarks.suite import read_suite
from tests.benchmarks.bench_fixtures import tiny_suite
from benchmarks.cli import main as bench_main
from verifier.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[2]


def test_verify_bench_runs_scores_reports_and_resumes(tmp_path, capsys):
    suite = tiny_suite(tmp_path / "tiny")
    out = tmp_path / "res" / "r.csv"
    assert SUBCOMMANDS["bench"] == "benchmarks.cli"  # `verify bench ...` lands in bench_main
    argv = [str(suite), "--out", str(out), "--workers", "1", "-q"]
    assert bench_main(argv) == 0
    rows = {r.vnnlib: r for r in read_results(out)}
    assert {k: r.result for k, r in rows.items()} == {"robust.vnnlib": "unsat", "border.vnnlib": "sat"}
    assert all(r.overrun == 0 and r.expected for r in rows.values())
    assert (out.parent / rows["border.vnnlib"].witness).read_text().startswith("sat\n((X_0 ")
    printed = capsys.readouterr().out
    assert "tiny: 2 instances, solved 2 correct" in printed and "score 20" in printed
    report = (out.parent / "r.md").read_text()
    assert "| tiny | 2 | 1 | 1 | 0 | 0 | 0 | 2 | 0 | 0 | 0 | 20 |" in report
    before = out.read_text()
    assert bench_main(argv) == 0          # resume: nothing left to run
    assert out.read_text() == before


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()


def test_ray_backend_writes_the_same_csv_resumes_and_enforces_limits(local_ray, tmp_path):
    from benchmarks.ray_pool import RayPool
    from tests.benchmarks.fake_worker import SleepyActor  # importable by Ray's workers, unlike this module

    suite = read_suite(tiny_suite(tmp_path / "tiny"))
    out = tmp_path / "r.csv"
    summary = run_instances(list(suite.instances), ResultsFile(out), RayPool(), progress_stream=io.StringIO())
    assert summary.ran == 2 and not summary.wrong
    rows = {r.vnnlib: r for r in read_results(out)}
    assert rows["robust.vnnlib"].result == "unsat" and rows["border.vnnlib"].result == "sat"
    assert (tmp_path / rows["border.vnnlib"].witness).is_file()
    again = run_instances(list(suite.instances), ResultsFile(out), RayPool(), progress_stream=io.StringIO())
    assert again.ran == 0 and again.skipped == 2

    # an instance that overruns: its actor is killed at the limit and a fresh one takes the next
    hang = tiny_suite(tmp_path / "hang", timeout=1.0)
    (hang / "hang.vnnlib").write_text("; never answered\n")
    (hang / "instances.csv").write_text("net.onnx,hang.vnnlib,1.0\nnet.onnx,robust.vnnlib,1.0\n")
    out2 = tmp_path / "r2.csv"
    run_instances(list(read_suite(hang).instances), ResultsFile(out2), RayPool(actor=SleepyActor),
                  progress_stream=io.StringIO())
    rows = {r.vnnlib: r for r in read_results(out2)}
    assert rows["hang.vnnlib"].result == "timeout" and 1.0 <= rows["hang.vnnlib"].run_time <= 2.0
    assert rows["robust.vnnlib"].result == "unsat" and rows["robust.vnnlib"].message == "sleepy", rows
