#!/usr/bin/env python3
"""Run `verify` over a VNN-COMP suite folder and compare with its truth.csv.

Results are appended to a CSV as each instance finishes; rerunning with the same --out
skips instances already there (resume). One warm process runs every instance, so the
import cost is paid once; the per-instance time limit is the verifier's own deadline.

    .venv/bin/python benchmarks/run_suite.py ../shared/benchmarks/acasxu --out results/acasxu.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from verifier import VerifyOptions, verify

FIELDS = ["onnx", "vnnlib", "timeout", "result", "time_s", "stage", "expected", "agrees", "message"]


def read_truth(suite: Path) -> dict[tuple[str, str], str]:
    path = suite / "truth.csv"
    if not path.exists():
        return {}
    with open(path) as fh:
        return {(r["onnx"], r["vnnlib"]): r["expected"] for r in csv.DictReader(fh)}


def read_instances(suite: Path) -> list[tuple[str, str, float]]:
    with open(suite / "instances.csv") as fh:
        return [(r[0].strip(), r[1].strip(), float(r[2])) for r in csv.reader(fh) if r]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=None, help="override every instance's timeout (seconds)")
    parser.add_argument("--limit", type=int, default=0, help="run only the first N instances")
    parser.add_argument("--every", type=int, default=1, help="run every k-th instance (a fixed sample)")
    parser.add_argument("--isolate", action="store_true",
                        help="one fresh `python -m verifier` process per instance, killed at its limit "
                             "(competition conditions: start-up paid every time)")
    args = parser.parse_args()

    truth = read_truth(args.suite)
    instances = read_instances(args.suite)[:: args.every]
    if args.limit:
        instances = instances[: args.limit]
    done: set[tuple[str, str]] = set()
    if args.out.exists():
        with open(args.out) as fh:
            done = {(r["onnx"], r["vnnlib"]) for r in csv.DictReader(fh)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.out.exists()
    with open(args.out, "a", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        if new_file:
            writer.writeheader()
        for onnx_rel, spec_rel, timeout in instances:
            if (onnx_rel, spec_rel) in done:
                continue
            limit = args.timeout or timeout
            start = time.perf_counter()
            if args.isolate:
                word, stage, message = run_isolated(args.suite / onnx_rel, args.suite / spec_rel, limit)
            else:
                result = verify(args.suite / onnx_rel, args.suite / spec_rel, options=VerifyOptions(timeout=limit))
                word, stage, message = result.outcome.word, result.stage or "", result.message or ""
            elapsed = time.perf_counter() - start
            expected = truth.get((onnx_rel, spec_rel), "")
            agrees = "" if word not in ("sat", "unsat") or expected not in ("sat", "unsat") else str(word == expected)
            writer.writerow({"onnx": onnx_rel, "vnnlib": spec_rel, "timeout": limit, "result": word,
                             "time_s": f"{elapsed:.3f}", "stage": stage, "expected": expected,
                             "agrees": agrees, "message": message[:200]})
            fh.flush()
            print(f"{word:8s} {elapsed:7.2f}s  {Path(onnx_rel).name} {Path(spec_rel).name}"
                  f"{'  WRONG (expected ' + expected + ')' if agrees == 'False' else ''}", flush=True)
    return summarize(args.out)


def run_isolated(onnx: Path, spec: Path, limit: float) -> tuple[str, str, str]:
    """Run the CLI in a fresh process; the parent kills it one second past its limit."""
    cmd = [sys.executable, "-m", "verifier", str(onnx), str(spec), "--timeout", str(limit), "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit + 1.0)
    except subprocess.TimeoutExpired:
        return "timeout", "", "killed by the runner at the limit"
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "error", "", (proc.stderr or proc.stdout).strip()[-200:]
    return data.get("result", "error"), data.get("stage") or "", data.get("message") or ""


def summarize(path: Path) -> int:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    wrong = [r for r in rows if r["agrees"] == "False"]
    times = [float(r["time_s"]) for r in rows]
    decided = counts.get("sat", 0) + counts.get("unsat", 0)
    print(f"\n{len(rows)} instances: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"decided {decided}, wrong {len(wrong)}, total {sum(times):.1f} s, median {statistics.median(times):.2f} s")
    for r in wrong:
        print(f"WRONG: {r['onnx']} {r['vnnlib']}: {r['result']} but truth says {r['expected']}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
