"""Drive the `vnncomp/` scripts exactly as the competition harness does, and time them.

    python -m benchmarks.harness SUITE_DIR [--every N] [--limit K] [--out results.csv]

For every chosen instance: `prepare_instance.sh v1 CATEGORY ONNX VNNLIB`, then
`run_instance.sh v1 CATEGORY ONNX VNNLIB RESULT_FILE TIMEOUT`, each a fresh process with the
wall clock measured from outside (what the competition scores). The harness' own kill
(timeout + a grace second) is applied too, and an overrun is reported. Writes a competition-style
CSV (`category,onnx,vnnlib,prepare_time,result,run_time`, no header) and prints a summary with
the verdicts checked against truth.csv. Run `install_tool.sh v1` first.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.suite import read_suite, sample

SCRIPTS = Path(__file__).resolve().parents[1] / "vnncomp"
#: the harness kills a run this long after its timeout
GRACE_S = 1.0


def first_word(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError:
        return "missing"
    words = text.split()
    return words[0] if words else "empty"


def run_one(category: str, onnx: Path, vnnlib: Path, timeout: float, work: Path) -> tuple[float, str, float]:
    """(prepare seconds, result word, run seconds) for one instance."""
    start = time.monotonic()
    prep = subprocess.run([str(SCRIPTS / "prepare_instance.sh"), "v1", category, str(onnx), str(vnnlib)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    prepare_time = time.monotonic() - start
    if prep.returncode != 0:
        return prepare_time, "error", 0.0
    result_file = work / "result.txt"
    result_file.unlink(missing_ok=True)
    start = time.monotonic()
    try:
        subprocess.run([str(SCRIPTS / "run_instance.sh"), "v1", category, str(onnx), str(vnnlib),
                        str(result_file), f"{timeout:g}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + GRACE_S)
    except subprocess.TimeoutExpired:
        return prepare_time, "killed", time.monotonic() - start
    return prepare_time, first_word(result_file), time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__.split("\n\n")[0])
    p.add_argument("suite", type=Path)
    p.add_argument("--every", type=int, default=1, help="take every N-th instance")
    p.add_argument("--limit", type=int, default=0, help="at most this many instances")
    p.add_argument("--timeout-scale", type=float, default=1.0)
    p.add_argument("--out", type=Path, help="competition-style results CSV")
    args = p.parse_args(argv)
    suite = read_suite(args.suite)
    chosen = sample(suite.instances, every=args.every, limit=args.limit)
    rows, wrong, overruns = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for inst in chosen:
            timeout = inst.timeout * args.timeout_scale
            prep_s, word, run_s = run_one(inst.category, inst.onnx_path, inst.vnnlib_path, timeout, Path(tmp))
            bad = inst.expected in ("sat", "unsat") and word in ("sat", "unsat") and word != inst.expected
            wrong += bad
            overruns += run_s > timeout + GRACE_S
            rows.append((inst.category, inst.onnx, inst.vnnlib, f"{prep_s:.3f}", word, f"{run_s:.3f}"))
            print(f"{word:8s} {run_s:7.2f} s  (prepare {prep_s:.2f} s)  {inst.onnx} {inst.vnnlib}"
                  f"{'  WRONG vs truth ' + inst.expected if bad else ''}", flush=True)
            if args.out:
                with open(args.out, "a", newline="") as fh:
                    csv.writer(fh).writerow(rows[-1])
    times = [float(r[5]) for r in rows]
    decided = sum(r[4] in ("sat", "unsat") for r in rows)
    if times:
        print(f"{len(rows)} instances: {decided} decided, {wrong} wrong, {overruns} over the limit; "
              f"run time median {statistics.median(times):.2f} s, total {sum(times):.1f} s")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
