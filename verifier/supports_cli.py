"""`verify supports --CAPABILITY`: the VNN-LIB 2.0 capability queries, one answer per line.

    verify supports --onnx-operators          ONNX operators a network may use
    verify supports --onnx-opset-versions     lowest and highest default-domain opset
    verify supports --onnx-element-types      element types analysed soundly
    verify supports --vnnlib-versions         lowest and highest VNN-LIB version read
    verify supports --hidden-node-theories | --multiple-input-output-theories
                   | --multiple-network-theories | --multiple-node-comparison-theories
                   | --arithmetic-complexity-theories      the query-language subset (theories)
    verify supports --optimised-disjunctive-reasoning | --serialise-assignments
                   | --unsat-proofs                          true / false

The theory names (NH, SIO, SNET, SNC, BND, COUT, ...) are the draft standard's. Answers are
computed from the code where they can be (the operator registry, the spec reader), so they
cannot drift from what the verifier really does.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from verifier.exit_codes import EXIT_OK, EXIT_USAGE

#: the oldest default-domain opset seen working (the VNN-COMP acasxu networks use opset 8)
MIN_OPSET = 8


def onnx_operators() -> list[str]:
    """Every ONNX operator type the importer accepts: the rule registry plus `Constant`
    (folded on import). Private ops that only the graph passes create are left out: no
    ONNX file can contain them."""
    import onnx.defs

    from bounds.graph.ir import CONSTANT
    from bounds.ops import RULES

    return sorted({op for op in RULES if onnx.defs.has(op)} | {CONSTANT})


def onnx_opsets() -> list[str]:
    import onnx.defs

    return [str(MIN_OPSET), str(onnx.defs.onnx_opset_version())]


def vnnlib_versions() -> list[str]:
    from specs.vnnlib2 import LATEST_VERSION

    return ["1.0", LATEST_VERSION]


ANSWERS: dict[str, Callable[[], list[str]]] = {
    "onnx-operators": onnx_operators,
    "onnx-opset-versions": onnx_opsets,
    # bounds are computed over the reals (float64 with outward margins), not in the float32
    # semantics of the network: by the standard's rule that is the `real` type only
    "onnx-element-types": lambda: ["real"],
    "vnnlib-versions": vnnlib_versions,
    "hidden-node-theories": lambda: ["NH"],
    "multiple-input-output-theories": lambda: ["SIO"],
    "multiple-network-theories": lambda: ["SNET"],
    "multiple-node-comparison-theories": lambda: ["SNC"],
    # inputs bounded by constants; outputs in linear comparisons with each other
    "arithmetic-complexity-theories": lambda: ["BND", "COUT"],
    "optimised-disjunctive-reasoning": lambda: ["false"],  # disjunctions are expanded to DNF
    "serialise-assignments": lambda: ["false"],
    "unsat-proofs": lambda: ["false"],
    # spellings of an earlier draft
    "hidden-nodes": lambda: ["false"],
    "multiple-input-outputs": lambda: ["false"],
    "multiple-networks": lambda: ["false"],
    "multiple-node-comparisons": lambda: ["false"],
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].startswith("--") or argv[0][2:] not in ANSWERS:
        if argv in (["-h"], ["--help"]):
            print(__doc__)
            return EXIT_OK
        known = "\n  ".join(f"--{k}" for k in ANSWERS)
        got = " ".join(argv) or "nothing"
        print(f"usage: verify supports --CAPABILITY (got {got}); one of:\n  {known}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(ANSWERS[argv[0][2:]]()))
    return EXIT_OK
