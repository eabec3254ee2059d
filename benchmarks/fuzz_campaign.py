#!/usr/bin/env python3
"""Soundness fuzzing campaign: random networks and specs, every bound method and search.

    PYTHONPATH=. python benchmarks/fuzz_campaign.py --cases 10000 --seed 0 --csv fuzz.csv

Case i is built from seed S + i (tests/fuzz/generators.random_params), so any row of the
CSV can be rebuilt alone. For each case the oracles (tests/fuzz/oracles: float64 sampling,
PGD, and the exact MILP on piecewise-linear networks) gather ground truth, then every check
of tests/fuzz/checks runs. A failure (unsound bound, `unsat` with a known counterexample,
`sat` with a witness that does not violate, or a crash) is shrunk to a minimal case and
saved under tests/fuzz/regressions/, which tests/fuzz/test_fuzz.py replays in CI.

Exit status: 0 when no unsound result was found, 1 otherwise. A summary (counts per check
and verdict, agreement with the oracle, time) is printed at the end and with --every.
"""
from __future__ import annotations

import argparse
import collections
import csv
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzz.checks import ALL_CHECKS, run_check  # noqa: E402
from tests.fuzz.generators import build_case, random_params  # noqa: E402
from tests.fuzz.oracles import gather  # noqa: E402
from tests.fuzz.regression import REGRESSIONS, save, shrink  # noqa: E402

log = logging.getLogger("fuzz_campaign")

COLUMNS = ["seed", "family", "acts", "binary", "spec_kind", "n_in", "width", "depth", "n_cases", "oracle",
           *ALL_CHECKS, "failures", "seconds"]


def _oracle_word(ev) -> str:
    if ev.sat:
        return "sat"
    return ev.exact or "open"


class Summary:
    def __init__(self) -> None:
        self.cases = 0
        self.statuses: dict[str, collections.Counter] = {c: collections.Counter() for c in ALL_CHECKS}
        self.oracle: collections.Counter = collections.Counter()
        self.failures: collections.Counter = collections.Counter()
        self.start = time.monotonic()

    def add(self, oracle: str, results) -> None:
        self.cases += 1
        self.oracle[oracle] += 1
        for r in results:
            self.statuses[r.check][r.status] += 1
            for f in r.failures:
                self.failures[(f.check, f.kind)] += 1

    def text(self) -> str:
        lines = [f"{self.cases} cases in {time.monotonic() - self.start:.0f} s; oracle: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.oracle.items()))]
        for c in ALL_CHECKS:
            lines.append(f"  {c:<14} " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses[c].items())))
        unsound = sum(v for (c, k), v in self.failures.items() if k in ("unsound-bound", "unsound-unsat"))
        lines.append(f"  failures: {dict(self.failures) or 'none'}; unsound results: {unsound}")
        return "\n".join(lines)

    @property
    def unsound(self) -> int:
        return sum(v for (c, k), v in self.failures.items() if k in ("unsound-bound", "unsound-unsat"))


def run_case(seed: int, checks: tuple[str, ...], seconds: float, oracle: dict):
    params = random_params(seed)
    fc = build_case(params)
    ev = gather(fc.graph, fc.spec, seed, **oracle)
    return params, fc, ev, [run_check(c, fc, ev, seed, seconds) for c in checks]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the first case")
    p.add_argument("--csv", type=Path, default=Path("fuzz_campaign.csv"), help="one row per case (appended)")
    p.add_argument("--seconds", type=float, default=2.0, help="deadline of each search (default 2)")
    p.add_argument("--checks", default=",".join(ALL_CHECKS), help="comma-separated subset of the checks")
    p.add_argument("--samples", type=int, default=1000, help="oracle samples per input box")
    p.add_argument("--milp-seconds", type=float, default=10.0)
    p.add_argument("--no-shrink", action="store_true", help="record failures without shrinking or saving")
    p.add_argument("--regressions", type=Path, default=REGRESSIONS)
    p.add_argument("--every", type=int, default=500, help="print the summary every N cases")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("verifier", "bounds", "branching", "specs"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one line per case is enough
    checks = tuple(c for c in args.checks.split(",") if c)
    unknown = set(checks) - set(ALL_CHECKS)
    if unknown:
        p.error(f"unknown checks {sorted(unknown)}; choose from {', '.join(ALL_CHECKS)}")
    oracle = {"n_samples": args.samples, "milp_seconds": args.milp_seconds}
    summary = Summary()
    new_file = not args.csv.exists()
    with args.csv.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(COLUMNS)
        for seed in range(args.seed, args.seed + args.cases):
            t = time.monotonic()
            try:
                params, fc, ev, results = run_case(seed, checks, args.seconds, oracle)
            except Exception as exc:  # noqa: BLE001 - a generator/oracle defect must not end the campaign
                log.error("seed %d: could not build or judge the case: %s: %s", seed, type(exc).__name__, exc)
                continue
            word = _oracle_word(ev)
            summary.add(word, results)
            by_check = {r.check: r.status for r in results}
            fails = [f for r in results for f in r.failures]
            writer.writerow([seed, params.family, "+".join(params.acts), "+".join(params.binary), params.spec_kind,
                             params.n_in, params.width, params.depth, params.n_cases, word,
                             *[by_check.get(c, "") for c in ALL_CHECKS],
                             "; ".join(f"{f.check}:{f.kind}:{f.detail}" for f in fails),
                             round(time.monotonic() - t, 3)])
            fh.flush()
            for f in fails:
                log.error("seed %d: %s %s: %s", seed, f.check, f.kind, f.detail)
                if args.no_shrink:
                    continue
                small = shrink(params, f, args.seconds, oracle)
                if small is None:
                    log.error("  (did not reproduce when rebuilt; not saved)")
                    continue
                sp, sfc, sev, sf = small
                path = save(f"{f.check}_{f.kind}_seed{seed}", sp, sfc, sev, sf, args.regressions)
                log.error("  shrunk to %s, saved as %s", sp, path)
            if args.every and summary.cases % args.every == 0:
                log.info("%s", summary.text())
    log.info("%s", summary.text())
    return 1 if summary.unsound else 0


if __name__ == "__main__":
    sys.exit(main())
