"""The `verify` command: `verify net.onnx spec.vnnlib [--timeout S] [--out FILE] ...`.

This module imports only the standard library at the top: the clock starts and the watchdog
is armed before numpy, torch and the bound code load, so that even a run whose time runs
out while loading reports `timeout` in time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from verifier.exit_codes import EXIT_INTERNAL, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE

EPILOG = """\
result: the first line of the --out file is sat, unsat, unknown, timeout or error; after
`sat` the counterexample follows in VNN-COMP format ((X_0 v) ... (Y_m v)), already replayed
with onnxruntime. stdout gets a one-line summary (a JSON object with --json).

exit codes:
  0  a result was produced (sat, unsat, unknown or timeout)
  1  internal error (please report it with the traceback that --debug shows)
  2  bad command-line usage
  3  bad model: unreadable, corrupt or unsupported operators
  4  bad spec: VNN-LIB syntax error (file:line:column) or wrong number of inputs/outputs
  130 / 143  interrupted by SIGINT / SIGTERM (--out then says unknown / timeout)
"""

#: the watchdog reports `timeout` this long before the limit (capped at 10% of it)
WATCHDOG_MARGIN_S = 0.5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verify",
        description="Check a VNN-LIB property on an ONNX network: prove it (unsat), "
                    "find a counterexample (sat), or say why neither worked (unknown).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the network, .onnx or .onnx.gz")
    p.add_argument("spec", help="the property, .vnnlib or .vnnlib.gz (describes the unsafe set)")
    p.add_argument("--timeout", type=_seconds, default=300.0, metavar="S",
                   help="wall-clock limit in seconds, start-up included (default 300)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the VNN-COMP result file here")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda or cuda:N")
    p.add_argument("--method", choices=("crown", "ibp"), default="crown", help="bound method (default crown)")
    p.add_argument("--precision", choices=("auto", "float64", "float32"), default="auto",
                   help="floating point of the bounds (default auto: float64 on the CPU, float32 on a GPU)")
    p.add_argument("--arithmetic", choices=("float32", "exact"), default="float32",
                   help="which network unsat is about: float32 (default) also as onnxruntime runs it, so "
                        "margins must clear a 1e-6 relative allowance; exact: the weights in exact "
                        "arithmetic, as VNN-LIB's Real variables and other verifiers read it")
    p.add_argument("--seed", type=int, default=0, help="random seed of the attack (default 0)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the summary line")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result word; no log messages")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: '{text}'") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the timeout must be a positive number of seconds, got '{text}'")
    return value


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file next to `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Reporter:
    """Emits the one and only result of the run (result file + stdout), from the main thread,
    the watchdog or a signal handler, whichever comes first."""

    def __init__(self, args: argparse.Namespace, start: float) -> None:
        self.out: Path | None = args.out
        self.as_json: bool = args.json
        self.quiet: bool = args.quiet
        self.instance = f"{_stem(args.model)} {_stem(args.spec)}"
        self.start = start
        self._lock = threading.Lock()
        self._done = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def finish(self, file_text: str, stdout_text: str | None, blocking: bool = True) -> bool:
        """Write the result file and stdout unless that happened already; True if this call did."""
        if not self._lock.acquire(blocking=blocking):
            return False
        try:
            if self._done:
                return False
            self._done = True
            if self.out is not None:
                try:
                    write_atomically(self.out, file_text)
                except OSError as exc:
                    print(f"error: cannot write the result file {self.out}: {exc}", file=sys.stderr, flush=True)
            if stdout_text is not None:
                print(stdout_text, flush=True)
            return True
        finally:
            self._lock.release()

    def finish_result(self, result: Any) -> bool:
        """Emit a verifier.result.Result."""
        if self.as_json:
            text: str | None = json.dumps(result.to_json())
        elif result.word == "error":
            text = None  # the message is on stderr already
        else:
            text = result.word if self.quiet else result.summary()
        return self.finish(result.to_vnncomp(), text)

    def emergency(self, word: str, reason: str, code: int, blocking: bool = True) -> None:
        """Report `word` (timeout / unknown) now and end the process at once.

        Built without verifier.result, which may not have been imported yet."""
        elapsed = self.elapsed()
        if self.as_json:
            text = json.dumps({"result": word, "instance": self.instance, "time_s": round(elapsed, 6), "stage": "",
                               "message": reason, "best_bound": None, "witness": None, "details": {}})
        elif self.quiet:
            text = word
        else:
            text = f"{word:<8} {self.instance}  {elapsed:.2f} s  ({reason})"
        if self.finish(f"{word}\n", text, blocking=blocking):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _error_message(exc: BaseException, internal: bool) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if internal:
        return (f"internal error ({type(exc).__name__}: {text}). This is a bug in nnverify; "
                "rerun with --debug for the traceback and please report it.")
    return text


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else (logging.ERROR if args.quiet else logging.WARNING)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("verifier", "bounds", "specs", "branching"):
        logging.getLogger(name).setLevel(level)
    # long searches report progress (sub-problems done / waiting, worst margin) unless -q
    progress = logging.getLogger("verifier.progress")
    progress.setLevel(logging.ERROR if args.quiet else logging.INFO)
    if not args.quiet and not any(isinstance(h, logging.StreamHandler) for h in progress.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(handler)
        progress.propagate = False


#: `verify <word> ...` runs another command; each lives in its own module with a
#: `main(argv) -> int`, imported only when used so that `verify net spec` stays light.
SUBCOMMANDS: dict[str, str] = {
    "bench": "benchmarks.cli",  # the suite runner; the one place the CLI reaches benchmarks
    "lipschitz": "verifier.lipschitz_cli",
    "serve": "verifier.server",  # the warm verifier behind vnncomp/run_instance.sh
    "supports": "verifier.supports_cli",  # VNN-LIB 2.0 capability queries
}


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    from verifier.vnnlib2_cli import is_vnnlib2_call

    if is_vnnlib2_call(argv):  # `verify [verify] QUERY --network N=net.onnx`, `--name`, `--version`
        from verifier.vnnlib2_cli import main as vnnlib2_main

        return vnnlib2_main(argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.out is not None and not args.out.parent.is_dir():
        print(f"error: the folder of --out {args.out} does not exist", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(args)
    reporter = Reporter(args, start)

    # the hard limit: whatever is going on, report `timeout` shortly before the harness kills us
    margin = min(WATCHDOG_MARGIN_S, 0.1 * args.timeout)
    watchdog = threading.Timer(max(0.0, args.timeout - margin - reporter.elapsed()), reporter.emergency,
                               args=("timeout", "hard time limit, stopped by the watchdog", EXIT_OK))
    watchdog.daemon = True
    watchdog.start()
    previous = _install_signal_handlers(reporter)
    try:
        return _run(args, reporter, margin)
    finally:
        watchdog.cancel()
        _restore_signal_handlers(previous)


def _report_error(reporter: Reporter, message: str, what: str) -> None:
    """Emit `error` (built by hand: verifier.result itself may be what failed to import)."""
    text = None
    if reporter.as_json:
        text = json.dumps({"result": "error", "instance": reporter.instance, "time_s": round(reporter.elapsed(), 6),
                           "stage": "", "message": message, "best_bound": None, "witness": None, "details": {},
                           "error_kind": what})
    reporter.finish("error\n", text)


def _run(args: argparse.Namespace, reporter: Reporter, margin: float) -> int:
    try:
        from verifier.api import check_device, verify
        from verifier.options import VerifyOptions

        try:
            check_device(args.device)
            budget = max(0.0, args.timeout - 2 * margin - reporter.elapsed())
            options = VerifyOptions(timeout=budget, device=args.device, bound_method=args.method, seed=args.seed,
                                    precision=args.precision, arithmetic=args.arithmetic)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            _report_error(reporter, str(exc), "usage")
            return EXIT_USAGE
        result = verify(args.model, args.spec, options=options)
        result = dataclasses.replace(result, time_s=reporter.elapsed(), instance=reporter.instance)
        reporter.finish_result(result)
        return EXIT_OK
    except KeyboardInterrupt:
        reporter.finish("unknown\n", None if args.quiet or args.json else f"unknown  {reporter.instance}  interrupted")
        return EXIT_SIGINT
    except Exception as exc:  # noqa: BLE001 - every failure becomes `error` + an exit code
        try:
            from verifier.errors import exit_code, kind

            code, what = exit_code(exc), kind(exc)
        except Exception:  # noqa: BLE001 - even the error module failed to import
            code, what = EXIT_INTERNAL, "internal"
        message = _error_message(exc, what == "internal")
        if args.debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr, flush=True)
        _report_error(reporter, message, what)
        return code


def _install_signal_handlers(reporter: Reporter) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}

    def on_term(signum: int, frame: object) -> None:
        reporter.emergency("timeout", "terminated by SIGTERM", EXIT_SIGTERM, blocking=False)

    def on_int(signum: int, frame: object) -> None:
        reporter.emergency("unknown", "interrupted by SIGINT", EXIT_SIGINT, blocking=False)

    for sig, handler in ((signal.SIGTERM, on_term), (signal.SIGINT, on_int)):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError, TypeError):
            pass


if __name__ == "__main__":
    sys.exit(main())
