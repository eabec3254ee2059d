"""VNN-COMP counterexample blocks, the part of a result file after ``sat``.

::

    ((X_0 0.1)
     (X_1 -0.25)
     (Y_0 1.5))
"""

from __future__ import annotations

import math
import re

import numpy as np

from ._sexpr import NUMBER_RE, VARIABLE_RE, Source
from .errors import SpecError

_TOKEN = re.compile(r"(\()|(\))|(;[^\n]*)|([^\s();]+)")


def format_witness(x: np.ndarray, y: np.ndarray) -> str:
    """Render inputs then outputs in index order, at full float64 precision (no trailing newline)."""
    lines = []
    for kind, values in (("X", x), ("Y", y)):
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        for i, v in enumerate(flat.tolist()):
            if not math.isfinite(v):
                raise SpecError(f"cannot write a witness: {kind}_{i} is {v!r}")
            lines.append(f"({kind}_{i} {v!r})")
    if not lines:
        return "()"
    return "(" + "\n ".join(lines) + ")"


def parse_witness(text: str, source: str = "<witness>") -> tuple[np.ndarray, np.ndarray]:
    """Read a block written by ``format_witness`` (or another tool), optionally after ``sat``.

    The outer parentheses may be missing, as some tools omit them.
    """
    src = Source(text, source)
    tokens = [(m.start(), m.group()) for m in _TOKEN.finditer(text) if m.lastindex != 3]
    tokens.append((len(text), None))  # end-of-file sentinel
    pos = 0

    def peek() -> tuple[int, str | None]:
        return tokens[pos]

    def take(expected: str, ok) -> str:
        nonlocal pos
        offset, tok = tokens[pos]
        if tok is None or not ok(tok):
            after = tokens[pos - 1][1] if pos else None
            raise src.error(offset, expected, after=after, found="end of file" if tok is None else f"'{tok}'")
        pos += 1
        return tok

    if peek()[1] is not None and peek()[1].lower() == "sat":
        pos += 1
    wrapped = peek()[1] == "(" and tokens[pos + 1][1] == "("
    if wrapped:
        pos += 1
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    while peek()[1] == "(":
        pos += 1
        offset = peek()[0]
        name = take("a variable X_<i> or Y_<j>", VARIABLE_RE.fullmatch)
        number = take("a number", NUMBER_RE.fullmatch)
        take("')'", lambda t: t == ")")
        slot = values[name[0]]
        index = int(name[2:])
        if index in slot:
            raise src.error(offset, f"each variable once ({name} is repeated)", found=f"'{name}'")
        slot[index] = float(number)
    if wrapped:
        take("'(' or ')'", lambda t: t == ")")
    if peek()[1] is not None:
        take("end of input", lambda t: False)  # always raises: stray trailing token
    out = []
    for kind in ("X", "Y"):
        slot = values[kind]
        if not slot:
            raise src.error(len(text), f"at least one ({kind}_0 value) entry", found="end of file")
        n = len(slot)
        if max(slot) != n - 1:
            missing = min(set(range(n)) - slot.keys())
            raise SpecError(f"{source}: witness has no value for {kind}_{missing}")
        out.append(np.array([slot[i] for i in range(n)], dtype=np.float64))
    return out[0], out[1]
