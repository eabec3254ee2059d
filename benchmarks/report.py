"""The markdown report (per-suite table, wrong answers, bad counterexamples, comparison with
another results CSV) and its plots, written next to each other.
"""
from __future__ import annotations

import datetime
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks import plots
from benchmarks.results import match_key
from benchmarks.scoring import Scored, SuiteScore

WORDS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass(frozen=True)
class Comparison:
    """Another tool's (or version's) scored rows, for the time scatter and the side-by-side table."""

    name: str
    suites: dict[str, SuiteScore]


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def suite_table(suites: dict[str, SuiteScore]) -> list[str]:
    head = ("| suite | instances | " + " | ".join(WORDS) + " | correct | wrong | bad cex | unconfirmed | score "
            "| known truth | time solved s | median s | max overrun s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    total = SuiteScore("**total**", [s for suite in suites.values() for s in suite.scored])
    for suite in [*suites.values(), total] if len(suites) > 1 else list(suites.values()):
        sc = suite.scored
        words = " | ".join(str(suite.count(word=w)) + _other(suite, w) for w in WORDS)
        times = [max(1.0, s.row.run_time) for s in sc]
        overrun = max((s.row.overrun for s in sc), default=0.0)
        known = sum(1 for s in sc if s.expected in ("sat", "unsat"))
        lines.append(f"| {suite.category} | {len(sc)} | {words} | {suite.count(status='correct')} "
                     f"| {suite.count(status='wrong')} | {suite.count(status='invalid-witness')} "
                     f"| {suite.count(status='unconfirmed')} | {suite.score:g} | {known} "
                     f"| {_fmt(sum(suite.solved_times))} | {_fmt(statistics.median(times)) if times else '-'} "
                     f"| {_fmt(overrun)} |")
    return lines


def _other(suite: SuiteScore, word: str) -> str:
    """Words outside the five (a competition CSV's own words) are counted under `error`."""
    if word != "error":
        return ""
    extra = sum(1 for s in suite.scored if s.word not in WORDS)
    return f" (+{extra} other)" if extra else ""


def _listing(title: str, scored: list[Scored], why: str) -> list[str]:
    if not scored:
        return []
    lines = ["", f"## {title}", ""]
    for s in scored:
        lines.append(f"- {s.row.category} `{s.row.onnx}` `{s.row.vnnlib}`: {s.word}"
                     + (f", truth {s.expected}" if s.expected else "") + (f" — {s.note}" if s.note else "")
                     + (f" ({why})" if why else ""))
    return lines


def _stages(suites: dict[str, SuiteScore]) -> list[str]:
    lines = ["", "## What decided", ""]
    for suite in suites.values():
        counts: dict[str, int] = {}
        for s in suite.scored:
            if s.word in ("sat", "unsat"):
                stage = s.row.stage or "?"
                counts[stage] = counts.get(stage, 0) + 1
        if counts:
            lines.append(f"- {suite.category}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(),
                                                                                          key=lambda kv: -kv[1])))
    return lines if len(lines) > 3 else []


def _pairs(ours: dict[str, SuiteScore], other: Comparison) -> list[tuple[Scored, Scored | None]]:
    theirs = {match_key(s.row.onnx, s.row.vnnlib): s for suite in other.suites.values() for s in suite.scored}
    return [(s, theirs.get(match_key(s.row.onnx, s.row.vnnlib))) for suite in ours.values() for s in suite.scored]


def comparison_section(ours: dict[str, SuiteScore], other: Comparison, our_name: str) -> list[str]:
    lines = ["", f"## {our_name} vs {other.name}", "",
             "On the instances both were run on (times under 1 s count as 1 s). Our times are measured in "
             "warm workers, without process start-up; a competition CSV's times include each tool's start-up "
             "and were taken on other hardware.", "",
             "| suite | common | both solved | only ours | only theirs | disagree | our time s | their time s "
             "| our score | their score |", "|---|---|---|---|---|---|---|---|---|---|"]
    disagree: list[str] = []
    by_suite: dict[str, list[tuple[Scored, Scored]]] = {}
    for s, t in _pairs(ours, other):
        if t is not None:
            by_suite.setdefault(s.row.category, []).append((s, t))
    for cat, pairs in by_suite.items():
        both = [(s, t) for s, t in pairs if s.solved and t.solved]
        clash = [(s, t) for s, t in pairs if {s.word, t.word} == {"sat", "unsat"}]
        disagree += [f"- {cat} `{s.row.onnx}` `{s.row.vnnlib}`: ours {s.word} ({s.status}), "
                     f"theirs {t.word} ({t.status})" for s, t in clash]
        lines.append(f"| {cat} | {len(pairs)} | {len(both)} | {sum(s.solved and not t.solved for s, t in pairs)} "
                     f"| {sum(t.solved and not s.solved for s, t in pairs)} | {len(clash)} "
                     f"| {_fmt(sum(max(1.0, s.row.run_time) for s, _ in both))} "
                     f"| {_fmt(sum(max(1.0, t.row.run_time) for _, t in both))} "
                     f"| {sum(s.points for s, _ in pairs):g} | {sum(t.points for _, t in pairs):g} |")
    if not by_suite:
        lines.append("| (no instance in common) | | | | | | | | | |")
    if disagree:
        lines += ["", "Disagreements (sat against unsat):", "", *disagree]
    return lines


def write_report(path: Path, results_csv: Path, suites: dict[str, SuiteScore], rules_name: str,
                 comparison: Comparison | None = None, our_name: str = "nnverify") -> list[Path]:
    """Write the markdown report and its plots (PNG, same folder); returns every file written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path]
    every = [s for suite in suites.values() for s in suite.scored]
    lines = [f"# Benchmark report: {our_name}", "",
             f"Results: `{os.path.relpath(results_csv, path.parent)}` ({len(every)} instances). "
             f"Scoring: VNN-COMP {rules_name} rules (+correct, -wrong; sat needs a counterexample that replays "
             f"in onnxruntime). Written {datetime.datetime.now().isoformat(timespec='seconds')}.", "",
             "## Per suite", "", *suite_table(suites)]
    lines += _listing("Wrong answers", [s for s in every if s.status == "wrong"], "soundness bug until shown otherwise")
    lines += _listing("Counterexamples that do not replay", [s for s in every if s.status == "invalid-witness"], "")
    lines += _listing("Counterexamples that contradict truth.csv",
                      [s for s in every if s.witness_ok and s.expected == "unsat"], "")
    late = [s for s in every if s.row.overrun > 1.0]
    lines += _listing("Instances over their limit by more than 1 s", late, "")
    lines += _stages(suites)
    if comparison is not None:
        lines += comparison_section(suites, comparison, our_name)
    lines += ["", "## Plots", ""]
    if not plots.have_matplotlib():
        lines.append("Plots skipped: matplotlib is not installed (`pip install 'nnverify[report]'`).")
    else:
        stem = path.stem
        series = {our_name: [t for suite in suites.values() for t in suite.raw_solved_times]}
        if comparison is not None:
            series[comparison.name] = [t.row.run_time for _, t in _pairs(suites, comparison)
                                       if t is not None and t.solved]
        cactus_path = path.with_name(f"{stem}_cactus.png")
        if plots.cactus(series, cactus_path):
            written.append(cactus_path)
            lines.append(f"![cactus plot]({cactus_path.name})")
        if comparison is not None:
            pairs = [(s, t) for s, t in _pairs(suites, comparison) if t is not None]
            limit = max([s.row.timeout or s.row.run_time for s, _ in pairs] + [1.0])
            points = [(s.row.run_time if s.solved else None, t.row.run_time if t.solved else None) for s, t in pairs]
            scatter_path = path.with_name(f"{stem}_scatter.png")
            if pairs and plots.scatter(points, scatter_path, our_name, comparison.name, limit):
                written.append(scatter_path)
                lines += ["", f"![time scatter]({scatter_path.name})"]
    path.write_text("\n".join(lines) + "\n")
    return written

