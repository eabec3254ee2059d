"""The errors a user of nnverify can meet, and the command-line exit code of each.

Exit codes of `verify` / `python -m verifier`:

    0  a result was produced: sat, unsat, unknown or timeout
    1  internal error (a bug in nnverify, or our graph disagreeing with onnxruntime)
    2  bad command-line usage (unknown option, missing argument, unusable --out path)
    3  bad model: unreadable, corrupt or using unsupported operators (ModelLoadError,
       UnsupportedOpError)
    4  bad spec: VNN-LIB parse error (reported as file:line:column) or a spec whose
       variable counts do not match the network (SpecParseError, SpecShapeError)
  130  interrupted by SIGINT (the result file says `unknown`)
  143  terminated by SIGTERM (the result file says `timeout`)

Whatever the code, when --out is given the result file is always written: the verdict, or
`error` when no verdict could be produced.
"""
from __future__ import annotations

from bounds.errors import ModelLoadError, NumericalError, UnsupportedOpError, VerifierError
from specs.errors import SpecError, SpecParseError, SpecShapeError

from verifier.exit_codes import (EXIT_INTERNAL, EXIT_MODEL, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_SPEC,
                                 EXIT_USAGE)


class GraphMismatchError(VerifierError):
    """Our internal graph computes something else than onnxruntime / the torch module does."""


def exit_code(exc: BaseException) -> int:
    """The exit code documented above for an exception that ended a run."""
    if isinstance(exc, SpecError):
        return EXIT_SPEC
    if isinstance(exc, (ModelLoadError, UnsupportedOpError)):
        return EXIT_MODEL
    return EXIT_INTERNAL


def kind(exc: BaseException) -> str:
    """A short label of what went wrong: 'spec', 'model' or 'internal'."""
    return {EXIT_SPEC: "spec", EXIT_MODEL: "model"}.get(exit_code(exc), "internal")


__all__ = [
    "VerifierError", "ModelLoadError", "NumericalError", "UnsupportedOpError", "GraphMismatchError",
    "SpecError", "SpecParseError", "SpecShapeError",
    "EXIT_OK", "EXIT_INTERNAL", "EXIT_USAGE", "EXIT_MODEL", "EXIT_SPEC", "EXIT_SIGINT", "EXIT_SIGTERM",
    "exit_code", "kind",
]
