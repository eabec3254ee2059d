"""Tokenizer and iterative s-expression reader for VNN-LIB text.

One compiled regex scans the whole text.  Two alternatives of that regex match
complete commands in one step -- ``(declare-const X_i Real)`` and
``(assert (<= X_i c))`` / ``(assert (>= X_i c))`` -- because they make up
nearly all of the large files (one pair of bounds per input pixel); everything
else becomes a small tree of ``Node``/atom objects built with an explicit stack,
so nesting depth never meets Python's recursion limit.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from .errors import SpecParseError

# Strict SMT-LIB-ish decimal: no 'inf', 'nan', hex or underscores, which float() would take.
NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
# At most 9 digits: indices stay far inside int64 and absurd ones are plain errors.
_INDEX = r"(?:0|[1-9][0-9]{0,8})"

NUMBER_RE = re.compile(NUMBER)
VARIABLE_RE = re.compile(rf"([XY])_({_INDEX})")

# Group numbers are relied upon in ``read``; keep the order.  Every '(' shares
# one prefix so the fast forms cost little when they do not match.  Upper and
# lower bounds, inputs and outputs are separate branches so that ``lastindex``
# (the group closed last) alone says what matched, and no per-command tuple has
# to be built: hundreds of thousands of small tuples wake the cyclic GC.
_TOKEN = re.compile(
    rf"""
    \(\s*(?:
        assert\s*\(\s*(?:
            <=\s*X_({_INDEX})\s+({NUMBER})            # 1-2  (assert (<= X_i c))
          | >=\s*X_({_INDEX})\s+({NUMBER})            # 3-4  (assert (>= X_i c))
        )\s*\)\s*\)
      | declare-const\s+(?:
            X_({_INDEX})                              # 5    (declare-const X_i Real)
          | Y_({_INDEX})                              # 6    (declare-const Y_j Real)
        )\s+Real\s*\)
      | ()                                            # 7    any other '('
    )
  | (\))                                             # 8
  | ([^\s();]+)                                      # 9    atom
  | (;[^\n]*)                                        # 10   comment
    """,
    re.VERBOSE,
)
_UPPER, _LOWER, _DECL_X, _DECL_Y, _LP, _COMMENT = 2, 4, 5, 6, 7, 10
_GENERAL = re.compile(r"(\()|(\))|([^\s();]+)")


class Source:
    """The text being parsed plus its name; turns offsets into located errors."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self._line_starts: list[int] | None = None

    def loc(self, offset: int) -> tuple[int, int]:
        if self._line_starts is None:  # built lazily: only errors need it
            self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def where(self, offset: int) -> str:
        line, col = self.loc(offset)
        return f"{self.path}:{line}:{col}"

    def error(
        self, offset: int, expected: str, found: str | None = None, after: str | None = None
    ) -> SpecParseError:
        line, col = self.loc(offset)
        return SpecParseError(self.path, line, col, expected, found, after)


class Node:
    """A parenthesised list; ``start``/``end`` are the offsets of its parens."""

    __slots__ = ("start", "end", "items")

    def __init__(self, start: int) -> None:
        self.start = start
        self.end = -1
        self.items: list[Node | tuple[int, str]] = []


Item = Node | tuple[int, str]  # an atom is (offset, text)


def item_start(item: Item) -> int:
    return item.start if isinstance(item, Node) else item[0]


def show(item: Item | None) -> str:
    """How an item is quoted in error messages ('found ...')."""
    if item is None:
        return "end of file"
    if isinstance(item, Node):
        head = item.items[0] if item.items else None
        if isinstance(head, tuple):
            return f"'({head[1]} ...)'"
        return "'('"
    return f"'{item[1]}'"


def last_text(node: Node) -> str:
    """Text of the token just before ``node``'s closing paren (for 'after ...')."""
    if not node.items:
        return "("
    last = node.items[-1]
    return ")" if isinstance(last, Node) else last[1]


@dataclass
class Reading:
    """Everything found at the top level of a file.

    Fast-path commands are kept as text columns (index, value) rather than
    tuples; they are converted in bulk later.
    """

    commands: list[Node] = field(default_factory=list)  # general commands, in order
    x_decls: list[str] = field(default_factory=list)  # declared input indices
    y_decls: list[str] = field(default_factory=list)  # declared output indices
    upper_idx: list[str] = field(default_factory=list)  # (assert (<= X_i c)): i
    upper_val: list[str] = field(default_factory=list)  # ... and c
    lower_idx: list[str] = field(default_factory=list)  # (assert (>= X_i c))
    lower_val: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.commands or self.x_decls or self.y_decls or self.upper_idx or self.lower_idx)


def read(src: Source) -> Reading:
    text = src.text
    out = Reading()
    stack: list[Node] = []
    commands = out.commands
    up_i, up_v = out.upper_idx.append, out.upper_val.append
    lo_i, lo_v = out.lower_idx.append, out.lower_val.append
    for m in _TOKEN.finditer(text):
        kind = m.lastindex
        if kind >= _LP:
            if kind != _COMMENT:
                # '(' ')' atom are groups 7 8 9 here and 1 2 3 in _GENERAL.
                _feed(src, kind - _LP + 1, m.start(), m.group(), stack, commands)
        elif stack:
            # A whole command nested inside another expression: read it token by
            # token so that the evaluator reports it like any misplaced operator.
            for g in _GENERAL.finditer(text, m.start(), m.end()):
                _feed(src, g.lastindex, g.start(), g.group(), stack, commands)
        elif kind == _UPPER:
            up_i(m.group(1))
            up_v(m.group(2))
        elif kind == _LOWER:
            lo_i(m.group(3))
            lo_v(m.group(4))
        elif kind == _DECL_X:
            out.x_decls.append(m.group(5))
        else:
            out.y_decls.append(m.group(6))
    if stack:
        line, col = src.loc(stack[-1].start)
        raise src.error(
            len(text), f"')' to close the '(' at line {line}, column {col}", found="end of file"
        )
    return out


def _feed(src: Source, kind: int, start: int, tok: str, stack: list[Node], commands: list[Node]) -> None:
    # kind: 1 '(', 2 ')', 3 atom -- the numbering of _GENERAL's groups.
    if kind == 1:
        stack.append(Node(start))
    elif kind == 2:
        if not stack:
            raise src.error(start, "'(' to start a command", found="')' (unbalanced parenthesis)")
        node = stack.pop()
        node.end = start
        if stack:
            stack[-1].items.append(node)
        else:
            commands.append(node)
    elif stack:
        stack[-1].items.append((start, tok))
    else:
        raise src.error(start, "'(' to start a command", found=f"'{tok}'")
