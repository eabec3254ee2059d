"""nnverify's public face: `verify(model, spec)` and the `verify` command line.

    from verifier import verify, VerifyOptions
    result = verify("net.onnx", "prop.vnnlib", options=VerifyOptions(timeout=60))
    print(result.summary())            # e.g. "unsat    net prop  0.42 s  (CROWN, min margin 0.013)"
    open("out.txt", "w").write(result.to_vnncomp())

Names are imported on first use, so that `python -m verifier` can arm its time limit before
numpy and torch load.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verifier.api import verify
    from verifier.options import AttackOptions, VerifyOptions
    from verifier.result import Outcome, Result

__all__ = ["verify", "VerifyOptions", "AttackOptions", "Result", "Outcome"]

_HOME = {"verify": "verifier.api", "VerifyOptions": "verifier.options", "AttackOptions": "verifier.options",
         "Result": "verifier.result", "Outcome": "verifier.result"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'verifier' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
