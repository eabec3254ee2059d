"""`verify lipschitz net.onnx [--norm 2|inf] [--pair i,j | --output k | --per-output] [--method neuron|layer|naive]
[--max-sdp-width N] [--timeout S] [--json]`"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from verifier.exit_codes import EXIT_INTERNAL, EXIT_MODEL, EXIT_OK, EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verify lipschitz",
        description="Bound the Lipschitz constant of a network: a certified upper bound (LipSDP, "
                    "solved by nnverify's own interior-point method and checked in float64) and a "
                    "lower bound attained at two concrete inputs.")
    p.add_argument("model", help="the network: .onnx (Gemm/MatMul/Conv, ReLU-like, sigmoid, tanh, "
                                 "MaxMin as Max/Min pairs) or a .mat file of MaxMin weights")
    p.add_argument("--norm", choices=("2", "inf"), default="2", help="l2 (default) or l-infinity")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pair", metavar="I,J", help="bound the margin y_I - y_J instead of the whole output")
    which.add_argument("--output", metavar="K", type=int, help="bound the single output y_K")
    which.add_argument("--per-output", action="store_true",
                       help="with --norm inf: one SDP per output, report the largest (the l-inf -> l-inf "
                            "constant; tighter than the default l-inf -> l2 bound, one SDP per output)")
    p.add_argument("--method", choices=("neuron", "layer", "naive"), default="neuron",
                   help="LipSDP multipliers per neuron (default), per layer, or the product of norms")
    p.add_argument("--max-sdp-width", type=int, metavar="N",
                   help="activation layers wider than N (default 2048) are bounded by their slope alone "
                        "instead of inside the SDP; convolutions too large for dense matrices always "
                        "get their Fourier norm bound")
    p.add_argument("--timeout", type=float, metavar="S", help="time limit in seconds (the bound stays certified)")
    p.add_argument("--no-lower", action="store_true", help="skip the lower bound")
    p.add_argument("--json", action="store_true", help="print a JSON object (upper, lower, ...)")
    p.add_argument("-q", "--quiet", action="store_true", help="no log messages")
    return p


def _pair(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pair wants two output indices like 3,5, got '{text}'") from None
    return i, j


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        pair = _pair(args.pair)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.max_sdp_width is not None and args.max_sdp_width < 1:
        print("error: --max-sdp-width must be a positive number of neurons", file=sys.stderr)
        return EXIT_USAGE
    if args.timeout is not None and not args.timeout > 0:
        print("error: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    from bounds.errors import VerifierError
    from bounds.lipschitz.extract import ChainError
    from verifier.lipschitz import lipschitz_bounds

    try:
        res = lipschitz_bounds(args.model, args.norm, pair, args.method, args.timeout, lower=not args.no_lower,
                               output=args.output, per_output=args.per_output, max_sdp_width=args.max_sdp_width)
    except (VerifierError, ChainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - report, then exit with the internal-error code
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    print(json.dumps(res.to_json()) if args.json else res.summary())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
