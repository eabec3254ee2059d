"""The exceptions of nnverify that a user is meant to read.

Every error the product raises on purpose derives from `VerifierError`, so a command-line
front end can catch that one class, print the message and exit cleanly. The messages are
written for the person who supplied the model: they name the offending file, node or value.
This module imports nothing else of the product (so anything may import it).
"""
from __future__ import annotations

from typing import Iterable, Sequence


class VerifierError(Exception):
    """Base class of every error nnverify raises deliberately."""


class ModelLoadError(VerifierError):
    """The model file cannot be used: unreadable, corrupt, empty, several variable inputs,
    non-finite weights, external data outside the model's folder, inconsistent shapes..."""


class NumericalError(VerifierError):
    """A computation produced NaN/Inf or lost the precision a sound answer needs."""


class UnsupportedOpError(VerifierError):
    """The model uses operators (or operator variants) that nnverify has no rule for.

    `entries` lists every offending node as (op_type, node_name, opset); `reasons` is a
    parallel list of short explanations ("" when the operator is simply unknown). The
    message names all of them at once, so that a user learns the whole gap in one go.
    """

    def __init__(self, entries: Iterable[tuple[str, str, int]], supported: Iterable[str] = (),
                 reasons: Sequence[str] | None = None) -> None:
        self.entries: list[tuple[str, str, int]] = [(str(o), str(n), int(v)) for o, n, v in entries]
        self.reasons: list[str] = list(reasons) if reasons is not None else [""] * len(self.entries)
        if len(self.reasons) != len(self.entries):
            raise ValueError("UnsupportedOpError: one reason per entry is needed")
        self.supported: list[str] = sorted(set(supported))
        super().__init__(self._render())

    @property
    def op_types(self) -> list[str]:
        """The distinct unsupported operator types, in order of first appearance."""
        return list(dict.fromkeys(op for op, _, _ in self.entries))

    def _render(self) -> str:
        if not self.entries:
            return "the model uses operators nnverify does not support"
        groups: dict[tuple[str, int, str], list[str]] = {}
        for (op, name, opset), reason in zip(self.entries, self.reasons):
            groups.setdefault((op, opset, reason), []).append(name)
        parts = []
        for (op, opset, reason), names in groups.items():
            quoted = ", ".join(f"'{n}'" for n in names)
            where = f"node {quoted}" if len(names) == 1 else f"{len(names)} nodes {quoted}"
            why = f": {reason}" if reason else ""
            parts.append(f"{op} ({where}{f', opset {opset}' if opset else ''}{why})")
        n_ops = len(self.op_types)
        noun = "operator" if n_ops == 1 else "operators"
        msg = f"the model uses {n_ops} {noun} nnverify does not support: " + "; ".join(parts) + "."
        if self.supported:
            msg += " Supported: " + ", ".join(self.supported) + "."
        return msg

    def __reduce__(self):  # keep the error picklable across worker processes
        return (type(self), (self.entries, self.supported, self.reasons))


__all__ = ["VerifierError", "ModelLoadError", "NumericalError", "UnsupportedOpError"]
