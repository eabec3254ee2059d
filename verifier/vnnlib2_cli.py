"""The VNN-LIB 2.0 standard command line:

    verify [verify] QUERY.vnnlib --network NAME=model.onnx [--timeout S]
    verify --name | --version

stdout gets one word first, `sat`, `unsat`, `unknown` or `timed-out`; after `sat` the
satisfying assignment in the standard's command-line format, every declared tensor in
declaration order (inputs, then outputs)::

    sat
    X float32 [1,2]
    0.5
    0.25
    Y float32 [1,3]
    ...

Errors go to stderr with the exit codes of `verify net.onnx spec.vnnlib`. Only the standard
library is imported at the top: `verifier.cli` imports this module on every call.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
import traceback
from pathlib import Path

from verifier.exit_codes import EXIT_OK, EXIT_USAGE

TOOL_NAME = "nnverify"
WORDS = {"sat": "sat", "unsat": "unsat", "unknown": "unknown", "timeout": "timed-out"}
#: VNN-LIB 2.0 leaves the float semantics to the declared type; our bounds reason over reals
REAL_TYPES = ("Real", "real")


def is_vnnlib2_call(argv: list[str]) -> bool:
    """True for the standard's command line: a `--network` option, or `--name` / `--version`
    alone. The classic `verify net.onnx spec.vnnlib` never has `--network`."""
    if argv in (["--name"], ["--version"]):
        return True
    return any(a == "--network" or a.startswith("--network=") for a in argv)


def build_parser() -> argparse.ArgumentParser:
    from verifier.cli import _seconds

    p = argparse.ArgumentParser(prog="verify verify", description="Decide a VNN-LIB 2.0 query: is there an "
                                "assignment that satisfies every assertion (sat) or none (unsat)?")
    p.add_argument("query", help="the VNN-LIB 2.0 query (.vnnlib, optionally gzipped)")
    p.add_argument("--network", action="append", required=True, metavar="NAME=FILE",
                   help="the ONNX model of the query's network NAME (once per declared network)")
    p.add_argument("--timeout", type=_seconds, default=300.0, metavar="S", help="wall-clock limit (default 300)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda or cuda:N")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str]) -> int:
    start = time.monotonic()
    if argv in (["--name"], ["--version"]):
        print(TOOL_NAME if argv[0] == "--name" else _version())
        return EXIT_OK
    if argv and argv[0] == "verify":
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    networks: dict[str, str] = {}
    for item in args.network:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            print(f"error: --network expects NAME=FILE, got '{item}'", file=sys.stderr)
            return EXIT_USAGE
        if name in networks:
            print(f"error: --network {name} is given twice", file=sys.stderr)
            return EXIT_USAGE
        networks[name] = path

    from verifier.cli import WATCHDOG_MARGIN_S, Reporter

    reporter = Reporter(argparse.Namespace(out=None, json=False, quiet=True, model=next(iter(networks.values())),
                                           spec=args.query), start)
    margin = min(WATCHDOG_MARGIN_S, 0.1 * args.timeout)
    watchdog = threading.Timer(max(0.0, args.timeout - margin - reporter.elapsed()), reporter.emergency,
                               args=("timed-out", "hard time limit", EXIT_OK))
    watchdog.daemon = True
    watchdog.start()
    try:
        return _run(args, networks, reporter, max(0.0, args.timeout - 2 * margin - reporter.elapsed()))
    except KeyboardInterrupt:
        reporter.finish("", "unknown")
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure: a message on stderr and an exit code
        from verifier.errors import exit_code, kind

        if args.debug:
            traceback.print_exc()
        text = " ".join(str(exc).split()) or type(exc).__name__
        if kind(exc) == "internal":
            text = f"internal error ({type(exc).__name__}: {text}); rerun with --debug and please report it"
        print(f"error: {text}", file=sys.stderr, flush=True)
        return exit_code(exc)
    finally:
        watchdog.cancel()


def _run(args: argparse.Namespace, networks: dict[str, str], reporter, budget: float) -> int:
    from specs import SpecShapeError, parse_query
    from verifier.api import verify
    from verifier.options import VerifyOptions

    query = parse_query(args.query)
    if set(networks) != {query.network}:
        missing = [] if query.network in networks else [query.network]
        extra = sorted(set(networks) - {query.network})
        parts = ([f"no --network {missing[0]}=FILE for the declared network"] if missing else []) + \
                ([f"--network {', '.join(extra)} names no declared network"] if extra else [])
        print(f"error: {args.query}: {'; '.join(parts)} (the query declares '{query.network}')", file=sys.stderr)
        return EXIT_USAGE
    model = networks[query.network]
    _check_shapes(query, model, SpecShapeError)
    for decl in (query.input, query.output):
        if decl.element_type not in REAL_TYPES:
            print(f"note: {decl.name} is declared {decl.element_type}; nnverify bounds it over the reals (outward "
                  "rounded float64 margins) and replays every counterexample in onnxruntime", file=sys.stderr)
            break
    result = verify(model, query.spec, options=VerifyOptions(timeout=budget, device=args.device))
    word = WORDS.get(result.word)
    if word is None:  # `error` results carry their message
        print(f"error: {result.message}", file=sys.stderr, flush=True)
        return 1
    lines = [word]
    if word == "sat":
        for decl, values in ((query.input, result.witness_x), (query.output, result.witness_y)):
            lines.append(f"{decl.name} {decl.element_type} [{','.join(map(str, decl.shape))}]")
            lines.extend(repr(float(v)) for v in values)
    reporter.finish("", "\n".join(lines))
    return EXIT_OK


def _check_shapes(query, model: str, error: type[Exception]) -> None:
    """The declared shapes must be the ONNX model's, up to dimensions of size 1 (a batch of
    one): a [2,3] tensor read as [3,2] would silently scramble every index."""
    from bounds.graph.onnx_import import load_onnx

    graph = load_onnx(Path(model))
    for decl, node, role in ((query.input, graph.input, "input"), (query.output, graph.output, "output")):
        declared = tuple(d for d in decl.shape if d != 1)
        actual = tuple(d for d in node.shape if d != 1)
        if declared != actual:
            raise error(f"{query.spec.source}: {decl.name} is declared with shape {list(decl.shape)} but the "
                        f"network's {role} has shape {list(node.shape)}")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nnverify")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0+unknown"
