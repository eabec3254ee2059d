"""`verify bench SUITE_DIR... [options]`: run VNN-COMP suites, score them, write the report.

Also `python -m benchmarks SUITE_DIR...`. Stopping a run (Ctrl-C, a kill, a crash) loses at
most the instances in flight: rerun the same command and it carries on.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path

EPILOG = """\
files written (with --out DIR/results.csv):
  DIR/results.csv               one row per instance, as soon as it finishes (resume reads it)
  DIR/results.witnesses/...     the counterexample file of every sat
  DIR/results.md                the report (--report elsewhere); results_cactus.png and, with
                                --compare, results_scatter.png beside it
  DIR/results.workers.log       what the workers wrote to stderr

exit status: 0, or 1 when some answer is wrong or a counterexample does not replay;
130 when interrupted (rerun the same command to resume).

examples:
  verify bench ../shared/benchmarks/acasxu --every 6 --max-timeout 30 --workers 1
  verify bench ../shared/benchmarks/mnist_fc --out runs/v2.csv --compare runs/v1.csv
  verify bench SUITE --compare their_results.csv --compare-name abcrown   (a competition CSV)
  verify bench SUITE --backend ray --address auto
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verify bench", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suites", nargs="+", type=Path, metavar="SUITE_DIR",
                   help="VNN-COMP suite folders (instances.csv, onnx/, vnnlib/, optional truth.csv)")
    p.add_argument("--out", type=Path, default=Path("bench-results/results.csv"), metavar="CSV",
                   help="results CSV, resumed if it exists (default bench-results/results.csv)")
    p.add_argument("--report", type=Path, metavar="MD", help="markdown report (default: the CSV's name, .md)")
    p.add_argument("--every", type=int, default=1, metavar="K", help="run every K-th instance of each suite")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="at most N instances per suite")
    p.add_argument("--timeout-scale", type=float, default=1.0, metavar="F",
                   help="multiply each instance's published limit by F")
    p.add_argument("--max-timeout", type=float, default=0.0, metavar="S", help="cap every limit at S seconds")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="instances run at once (default: one per CPU core; with ray, the cluster's CPUs)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local process pool (default) or a Ray cluster (pip install 'nnverify[ray]')")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (e.g. auto, ray://host:10001); "
                                                     "default: start a local Ray instance")
    p.add_argument("--compare", type=Path, metavar="CSV",
                   help="another results CSV: ours, or a competition CSV (category,onnx,vnnlib,prepare_time,"
                        "result,run_time, no header)")
    p.add_argument("--compare-name", metavar="NAME", help="name of the other run in the report (default: its file)")
    p.add_argument("--name", default="nnverify", help="name of this run in the report")
    p.add_argument("--rules", choices=("2022", "2023", "2026"), default="2023", help="VNN-COMP scoring rules")
    p.add_argument("--report-only", action="store_true", help="run nothing; score and report the CSV as it is")
    p.add_argument("--device", default="cpu", help="verifier device (cpu, cuda, cuda:N)")
    p.add_argument("--method", choices=("crown", "ibp"), default="crown", help="bound method")
    p.add_argument("--seed", type=int, default=0, help="verifier seed")
    p.add_argument("--arithmetic", choices=("float32", "exact"), default="float32",
                   help="which network unsat is about (see verify --help)")
    p.add_argument("--worker-command", metavar="CMD",
                   help="advanced: the command that starts a local worker (it must speak the protocol of "
                        "benchmarks/jobs.py); default: this Python -m benchmarks.worker")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmarks.pool import PoolError
    from benchmarks.results import ResultsError
    from benchmarks.suite import SuiteError

    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.every < 1 or args.limit < 0 or args.workers < 0 or not args.timeout_scale > 0 or args.max_timeout < 0:
        print("error: --every must be >= 1; --limit, --workers, --max-timeout >= 0; --timeout-scale > 0",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    previous = _stop_on_sigterm()
    try:
        return _main(args)
    except (SuiteError, ResultsError, PoolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished instances are in {args.out}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm():
    """Let SIGTERM unwind like Ctrl-C, so that the workers are killed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def _main(args: argparse.Namespace) -> int:
    from benchmarks.results import ResultsFile, read_results
    from benchmarks.suite import read_suite, sample

    suites = [read_suite(path) for path in args.suites]
    chosen = [inst for suite in suites for inst in sample(suite.instances, args.every, args.limit)]
    results = ResultsFile(args.out)
    if not args.report_only:
        _run(args, chosen, results)
    everything = [inst for suite in suites for inst in suite.instances]
    return _report(args, everything, read_results(args.out))


def _run(args: argparse.Namespace, chosen: list, results) -> None:
    from benchmarks.runner import RunOptions, run_instances

    options = RunOptions(timeout_scale=args.timeout_scale, max_timeout=args.max_timeout, device=args.device,
                         seed=args.seed, bound_method=args.method, arithmetic=args.arithmetic)
    if args.backend == "ray":
        from benchmarks.ray_pool import RayPool

        backend = RayPool(address=args.address, workers=args.workers)
    else:
        from benchmarks.pool import LocalPool, PoolOptions

        command = tuple(shlex.split(args.worker_command)) if args.worker_command else ()
        log_path = args.out.with_name(args.out.stem + ".workers.log")
        backend = LocalPool(PoolOptions(workers=args.workers, command=command, log_path=log_path))
    stream = open("/dev/null", "w") if args.quiet else None
    try:
        summary = run_instances(chosen, results, backend, options, progress_stream=stream)
    finally:
        if stream is not None:
            stream.close()
    if summary.skipped:
        logging.getLogger(__name__).info("%d instance(s) were already in %s", summary.skipped, args.out)


def _report(args: argparse.Namespace, instances: list, rows: list) -> int:
    from benchmarks.report import Comparison, write_report
    from benchmarks.results import read_results
    from benchmarks.scoring import RULES, score_rows

    rules = RULES[args.rules]
    scored = score_rows(rows, instances, rules, base=args.out.parent)
    comparison = None
    if args.compare is not None:
        other = read_results(args.compare)
        # another run of ours has witness files to check; a competition CSV does not
        has_witness_column = any(r.witness or r.timeout is not None for r in other)
        comparison = Comparison(args.compare_name or args.compare.stem,
                                score_rows(other, instances, rules,
                                           base=args.compare.parent if has_witness_column else None))
    report = args.report or args.out.with_suffix(".md")
    written = write_report(report, args.out, scored, args.rules, comparison, our_name=args.name)
    bad = 0
    for suite in scored.values():
        wrong, invalid = suite.count(status="wrong"), suite.count(status="invalid-witness")
        bad += wrong + invalid
        print(f"{suite.category}: {len(suite.scored)} instances, solved {suite.count(status='correct')} correct "
              f"+ {suite.count(status='unconfirmed')} unconfirmed, wrong {wrong}, bad counterexamples {invalid}, "
              f"score {suite.score:g}")
    print("written: " + ", ".join(str(p) for p in [args.out, *written]))
    return 1 if bad else 0
