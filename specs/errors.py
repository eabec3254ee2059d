"""Exceptions raised by the spec package.

Kept free of other imports so that the lead can later re-parent them under a
shared verifier error type without touching the rest of the package.
"""

from __future__ import annotations


class SpecError(Exception):
    """A specification that cannot be used: unreadable, unsupported or inconsistent."""


class SpecParseError(SpecError):
    """Malformed VNN-LIB (or witness) text, located by 1-based line and column.

    ``expected`` says what the parser wanted at that position; ``found`` is the
    offending token as written (``'end of file'`` at EOF) and ``after`` the token
    before it, when that helps the reader.
    """

    def __init__(
        self,
        path: str,
        line: int,
        column: int,
        expected: str,
        found: str | None = None,
        after: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.expected = expected
        self.found = found
        self.after = after
        super().__init__(self._render())

    def _render(self) -> str:
        msg = f"{self.path}:{self.line}:{self.column}: expected {self.expected}"
        if self.after is not None:
            msg += f" after '{self.after}'"
        if self.found is not None:
            msg += f", found {self.found}"
        return msg

    def __reduce__(self):  # keep the error picklable across worker processes
        return (
            type(self),
            (self.path, self.line, self.column, self.expected, self.found, self.after),
        )


class SpecShapeError(SpecError):
    """The spec's variable counts do not match the network (or a given point)."""
