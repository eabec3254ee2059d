"""Suite folders, the results CSV, VNN-COMP scoring (counterexamples replayed in onnxruntime),
the report and the progress line."""
from __future__ import annotations

import gzip
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks import plots
from benchmarks.progress import Progress
from benchmarks.report import Comparison, write_report
from benchmarks.results import ResultsError, ResultsFile, Row, read_results
from benchmarks.scoring import RULES, WitnessChecker, score_row, score_rows
from benchmarks.suite import SuiteError, read_suite, sample
from specs import format_witness
from tests.benchmarks.bench_fixtures import make_suite, tiny_suite
from verifier.replay import OnnxReference

# a point of border.vnnlib's box where class 2 beats class 0 (found by the verifier)
BORDER_X = np.array([0.5499999523162842, -0.04999999701976776])


# ---------------------------------------------------------------------------- suites
def test_suite_files_resolve_with_or_without_gz_and_truth_is_read(tmp_path):
    root = make_suite(tmp_path / "s", ["a.vnnlib", "b.vnnlib"], truth={"a.vnnlib": "unsat", "b.vnnlib": "unknown"})
    (root / "vnnlib" / "a.vnnlib.gz").write_bytes(gzip.compress(b"x"))
    (root / "vnnlib" / "a.vnnlib").unlink()            # listed plain, shipped gzipped
    (root / "instances.csv").write_text((root / "instances.csv").read_text().replace("b.vnnlib", "b.vnnlib.gz"))
    suite = read_suite(root)                           # b listed gzipped, shipped plain
    a, b = suite.instances
    assert suite.name == "s" and a.timeout == 5.0
    assert a.vnnlib_path.name == "a.vnnlib.gz" and b.vnnlib_path.name == "b.vnnlib"
    assert a.expected == "unsat" and b.expected == ""  # unknown is no ground truth
    assert [i.vnnlib for i in sample(suite.instances * 3, every=2, limit=2)] == ["vnnlib/a.vnnlib", "vnnlib/a.vnnlib"]


def test_suite_errors_name_the_problem(tmp_path):
    with pytest.raises(SuiteError, match="no instances.csv"):
        read_suite(tmp_path)
    root = make_suite(tmp_path / "s", ["a.vnnlib"])
    (root / "vnnlib" / "a.vnnlib").unlink()
    with pytest.raises(SuiteError, match="missing.*a.vnnlib"):
        read_suite(root)
    (root / "instances.csv").write_text("onnx/net.onnx,vnnlib/a.vnnlib,soon\n")
    with pytest.raises(SuiteError, match="instances.csv:1.*soon"):
        read_suite(root, check_files=False)


# ---------------------------------------------------------------------------- results CSV
def test_competition_csv_reads_without_header_and_old_words(tmp_path):
    path = tmp_path / "theirs.csv"
    path.write_text("acasxu,./benchmarks/acasxu/onnx/n.onnx,./benchmarks/acasxu/vnnlib/p.vnnlib,.012,holds,3.5\n"
                    "acasxu,./benchmarks/acasxu/onnx/n.onnx,./benchmarks/acasxu/vnnlib/q.vnnlib.gz,0,violated,1\n"
                    "acasxu,onnx/n.onnx,vnnlib/r.vnnlib,0,timeout,116.2,extra\n")
    rows = read_results(path)
    assert [(r.result, r.run_time) for r in rows] == [("unsat", 3.5), ("sat", 1.0), ("timeout", 116.2)]
    path.write_text("acasxu,n.onnx,p.vnnlib,unsat\n")
    with pytest.raises(ResultsError, match="six columns"):
        read_results(path)


def test_results_file_drops_a_cut_off_line_and_refuses_foreign_files(tmp_path):
    path = tmp_path / "r.csv"
    rf = ResultsFile(path)
    rf.append(Row("s", "n.onnx", "a.vnnlib", result="unsat", run_time=1.5, timeout=10.0))
    with open(path, "a") as fh:
        fh.write("s,n.onnx,b.vnnlib,0.000,sa")   # a crash in the middle of a row
    rf = ResultsFile(path)
    assert rf.done() == {("s", "n.onnx", "a.vnnlib")}
    rf.append(Row("s", "n.onnx", "b.vnnlib", result="sat"))
    assert [r.result for r in read_results(path)] == ["unsat", "sat"]
    assert path.read_text().count("\n") == 3
    other = tmp_path / "theirs.csv"
    other.write_text("acasxu,n.onnx,p.vnnlib,0,unsat,1\n")
    with pytest.raises(ResultsError, match="not a results file"):
        ResultsFile(other)


# ---------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tiny_suite(tmp_path_factory.mktemp("tiny") / "tiny")
    suite = read_suite(root)
    insts = {i.vnnlib: i for i in suite.instances}
    ref = OnnxReference(root / "net.onnx")
    base = root.parent
    witnesses = {}
    for name, x in (("good", BORDER_X), ("outside", np.array([5.0, 0.0])), ("holds", np.array([0.6, 0.35]))):
        y = ref.outputs(x.reshape(1, -1))[0]
        (base / f"{name}.cex").write_text("sat\n" + format_witness(x, y) + "\n")
        witnesses[name] = f"{name}.cex"
    return insts, base, witnesses


def _row(vnnlib: str, result: str, **kw) -> Row:
    return Row("tiny", "net.onnx", vnnlib, result=result, run_time=kw.pop("run_time", 0.5), timeout=20.0, **kw)


def test_vnncomp_2023_rules(tiny):
    insts, base, cex = tiny
    robust, border = insts["robust.vnnlib"], insts["border.vnnlib"]
    checker = WitnessChecker()
    rules = RULES["2023"]

    def judge(row, inst):
        s = score_row(row, inst, rules, checker, base)
        return s.status, s.points

    assert judge(_row("robust.vnnlib", "unsat"), robust) == ("correct", 10)
    assert judge(_row("border.vnnlib", "sat", witness=cex["good"]), border) == ("correct", 10)
    assert judge(_row("border.vnnlib", "unsat"), border) == ("wrong", -150)
    assert judge(_row("border.vnnlib", "sat"), border) == ("invalid-witness", -150)          # no file
    assert judge(_row("border.vnnlib", "sat", witness=cex["outside"]), border) == ("invalid-witness", -150)
    assert judge(_row("robust.vnnlib", "sat", witness=cex["holds"]), robust) == ("invalid-witness", -150)
    assert judge(_row("robust.vnnlib", "timeout"), robust) == ("none", 0)
    assert judge(_row("robust.vnnlib", "unknown"), robust) == ("none", 0)
    no_truth = replace(robust, expected="")
    assert judge(_row("robust.vnnlib", "unsat"), no_truth) == ("unconfirmed", 10)
    # a counterexample that replays is a proof, even against truth.csv
    lying_truth = replace(border, expected="unsat")
    s = score_row(_row("border.vnnlib", "sat", witness=cex["good"]), lying_truth, rules, checker, base)
    assert (s.status, s.witness_ok) == ("correct", True) and "truth.csv says unsat" in s.note


def test_other_presets_and_rows_without_witness_column(tiny):
    insts, base, _ = tiny
    robust, border = insts["robust.vnnlib"], insts["border.vnnlib"]
    late = _row("robust.vnnlib", "unsat", run_time=25.0)
    assert score_row(late, robust, RULES["2023"], None, base).points == 10
    assert score_row(late, robust, RULES["2026"], None, base).status == "none"
    assert score_row(_row("border.vnnlib", "unsat"), border, RULES["2022"], None, base).points == -100
    # another tool's competition CSV has no counterexamples: sat is judged by truth.csv alone
    assert score_row(_row("border.vnnlib", "sat"), border, RULES["2023"], None, None).status == "correct"


def test_score_rows_groups_by_suite_and_matches_other_tools_paths(tiny):
    insts, base, _ = tiny
    theirs = [Row("tiny_2023", "./benchmarks/tiny/net.onnx", "./benchmarks/tiny/robust.vnnlib.gz", result="unsat"),
              Row("tiny_2023", "./benchmarks/tiny/net.onnx", "./unrelated.vnnlib", result="unsat")]
    suites = score_rows(theirs, list(insts.values()), RULES["2023"], base=None)
    assert list(suites) == ["tiny"]
    (scored,) = suites["tiny"].scored
    assert scored.status == "correct" and suites["tiny"].score == 10


# ---------------------------------------------------------------------------- report
def _scored(tiny):
    insts, base, cex = tiny
    ours = [_row("robust.vnnlib", "unsat", run_time=0.2, stage="crown"),
            _row("border.vnnlib", "unsat", run_time=3.0, stage="crown")]
    theirs = [Row("tiny", "onnx/net.onnx", "robust.vnnlib", result="unsat", run_time=2.0),
              Row("tiny", "onnx/net.onnx", "border.vnnlib", result="sat", run_time=5.0)]
    return (score_rows(ours, list(insts.values()), base=base),
            Comparison("other", score_rows(theirs, list(insts.values()), base=None)))


def test_report_has_the_tables_the_wrong_answers_and_the_plots(tiny, tmp_path):
    ours, other = _scored(tiny)
    written = write_report(tmp_path / "rep" / "report.md", tmp_path / "r.csv", ours, "2023", other)
    text = written[0].read_text()
    assert "| tiny | 2 | 0 | 2 | 0 | 0 | 0 | 1 | 1 | 0 | 0 | -140 |" in text
    assert "## Wrong answers" in text and "`border.vnnlib`: unsat, truth sat" in text
    assert "## nnverify vs other" in text and "| tiny | 2 | 1 | 0 | 1 | 1 |" in text   # one clash: sat vs unsat
    assert "- tiny: crown 2" in text
    if plots.have_matplotlib():
        names = sorted(p.name for p in written[1:])
        assert names == ["report_cactus.png", "report_scatter.png"]
        assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in written[1:])
        assert "![cactus plot](report_cactus.png)" in text


def test_report_without_matplotlib_says_the_plots_were_skipped(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    ours, _ = _scored(tiny)
    written = write_report(tmp_path / "report.md", tmp_path / "r.csv", ours, "2023")
    assert written == [tmp_path / "report.md"]
    assert "Plots skipped: matplotlib is not installed" in written[0].read_text()


# ---------------------------------------------------------------------------- progress
def test_progress_line_counts_and_estimates():
    out = io.StringIO()
    p = Progress(4, stream=out, tty=True, previously={"unsat": 3})
    p.begin()
    p.update("unsat", False, "s n a", 1.0)
    p.update("sat", True, "s n b", 1.0)
    p.update("memout", False, "s n c", 1.0)
    text = out.getvalue()
    assert text.startswith("resuming: 3 instance(s)") and "\r" in text and "WRONG s n b: sat" in text
    assert "3/4  solved 2  unsat 1  sat 1  timeout 0  unknown 0  error 1  wrong 1  ETA" in text
    plain = io.StringIO()
    q = Progress(1, stream=plain, tty=False)
    q.begin()
    q.update("timeout", False, "s n a", 9.5)
    assert "\r" not in plain.getvalue() and "timeout      9.50 s  s n a" in plain.getvalue()
    assert "done in" in plain.getvalue()
