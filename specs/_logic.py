"""Evaluate VNN-LIB formulas into disjunctive normal form.

A formula's value is a ``Dnf``: a list of terms, each a tuple of atoms that
must all hold.  Atoms are either an input bound ``(BOUND, i, is_upper, c)``
(X_i <= c or X_i >= c) or an output row ``(ROW, ((j, a_j), ...), d)``
(sum a_j Y_j <= d).  Terms are ``Lin`` linear expressions.  Evaluation is a
post-order walk with an explicit stack, so nesting depth is unlimited.
"""

from __future__ import annotations

from itertools import product

from ._sexpr import NUMBER_RE, VARIABLE_RE, Item, Node, Source, item_start, last_text, show
from .errors import SpecError

BOUND, ROW = 0, 1
Atom = tuple

_COMPARISONS = {"<=", ">=", "<", ">", "="}
_CONNECTIVES = {"and", "or"}
_ARITHMETIC = {"+", "-", "*", "/"}
_OPERATORS = _COMPARISONS | _CONNECTIVES | _ARITHMETIC

TERM = "a number or a declared variable"
FORMULA = "a constraint such as '(<= Y_0 1.5)', '(and ...)' or '(or ...)'"


class Lin:
    """``sum xs[i] X_i + sum ys[j] Y_j + c``."""

    __slots__ = ("xs", "ys", "c")

    def __init__(self, xs: dict[int, float], ys: dict[int, float], c: float) -> None:
        self.xs, self.ys, self.c = xs, ys, c

    def is_constant(self) -> bool:
        return not self.xs and not self.ys

    def scaled(self, k: float) -> Lin:
        return Lin({i: k * a for i, a in self.xs.items()}, {j: k * a for j, a in self.ys.items()}, k * self.c)

    def plus(self, other: Lin, sign: float = 1.0) -> Lin:
        xs, ys = dict(self.xs), dict(self.ys)
        for i, a in other.xs.items():
            xs[i] = xs.get(i, 0.0) + sign * a
        for j, a in other.ys.items():
            ys[j] = ys.get(j, 0.0) + sign * a
        return Lin(xs, ys, self.c + sign * other.c)


class Dnf:
    __slots__ = ("terms",)

    def __init__(self, terms: list[tuple[Atom, ...]]) -> None:
        self.terms = terms


TRUE = Dnf([()])


class Evaluator:
    """Evaluates formulas of one file; knows the declared variable counts."""

    def __init__(self, src: Source, n_inputs: int, n_outputs: int, max_terms: int) -> None:
        self.src = src
        self.counts = {"X": n_inputs, "Y": n_outputs}
        self.max_terms = max_terms

    # -- leaves -------------------------------------------------------------
    def leaf(self, atom: tuple[int, str]) -> Lin | Dnf:
        offset, text = atom
        if NUMBER_RE.fullmatch(text):
            return Lin({}, {}, float(text))
        m = VARIABLE_RE.fullmatch(text)
        if m:
            kind, index = m.group(1), int(m.group(2))
            n = self.counts[kind]
            if index >= n:
                raise self.src.error(offset, f"a declared variable ({declared(kind, n)})", found=f"'{text}'")
            return Lin({index: 1.0}, {}, 0.0) if kind == "X" else Lin({}, {index: 1.0}, 0.0)
        if text == "true":
            return TRUE
        if text == "false":
            return Dnf([])
        if text[0] in "+-.0123456789":
            raise self.src.error(offset, "a valid number", found=f"'{text}'")
        raise self.src.error(offset, TERM, found=f"'{text}'")

    # -- walk ---------------------------------------------------------------
    def formula(self, item: Item) -> Dnf:
        value = self.leaf(item) if isinstance(item, tuple) else self._walk(item)
        if not isinstance(value, Dnf):
            raise self.src.error(item_start(item), FORMULA, found=show(item))
        return value

    def _operator(self, node: Node) -> str:
        if not node.items:
            raise self.src.error(node.end, "an operator", after="(", found="')'")
        head = node.items[0]
        if isinstance(head, Node):
            raise self.src.error(head.start, "an operator", after="(", found="'('")
        if head[1] not in _OPERATORS:
            raise self.src.error(
                head[0], "an operator (and, or, <=, >=, <, >, =, +, -, *, /)", after="(", found=f"'{head[1]}'"
            )
        return head[1]

    def _walk(self, root: Node) -> Lin | Dnf:
        # Frames: [node, operator, next item index, values of evaluated items].
        stack = [[root, self._operator(root), 1, []]]
        while True:
            frame = stack[-1]
            node, op, i, values = frame
            if i < len(node.items):
                frame[2] = i + 1
                child = node.items[i]
                if isinstance(child, tuple):
                    values.append(self.leaf(child))
                else:
                    stack.append([child, self._operator(child), 1, []])
                continue
            stack.pop()
            value = self._combine(node, op, values)
            if not stack:
                return value
            stack[-1][3].append(value)

    # -- operators ------------------------------------------------------------
    def _combine(self, node: Node, op: str, values: list) -> Lin | Dnf:
        if op in _CONNECTIVES:
            self._arity(node, values, 1, None, FORMULA)
            self._kinds(node, values, Dnf, FORMULA)
            return self._and(node, values) if op == "and" else self._or(node, values)
        if op in _COMPARISONS:
            self._arity(node, values, 2, None, TERM)
            self._kinds(node, values, Lin, TERM)
            return self._compare(node, op, values)
        self._arity(node, values, *((2, 2) if op == "/" else (1, None)), TERM)
        self._kinds(node, values, Lin, TERM)
        return self._arith(node, op, values)

    def _arity(self, node: Node, values: list, least: int, most: int | None, what: str) -> None:
        if len(values) < least:
            raise self.src.error(node.end, what, after=last_text(node), found="')'")
        if most is not None and len(values) > most:
            extra = node.items[most + 1]
            raise self.src.error(item_start(extra), "')'", after=show(node.items[most]).strip("'"), found=show(extra))

    def _kinds(self, node: Node, values: list, kind: type, what: str) -> None:
        for k, v in enumerate(values):
            if not isinstance(v, kind):
                child = node.items[k + 1]
                raise self.src.error(item_start(child), what, found=show(child))

    def _check_size(self, node: Node, size: int) -> None:
        if size > self.max_terms:
            raise SpecError(
                f"{self.src.where(node.start)}: the disjunctive normal form of this formula would have "
                f"{size} terms, more than the supported {self.max_terms}"
            )

    def _and(self, node: Node, values: list[Dnf]) -> Dnf:
        # Single-term children are concatenated once; only real disjunctions are
        # multiplied out, so long conjunctions stay linear in their length.
        common: list[Atom] = []
        multi: list[list[tuple[Atom, ...]]] = []
        for v in values:
            if not v.terms:
                return Dnf([])
            if len(v.terms) == 1:
                common.extend(v.terms[0])
            else:
                multi.append(v.terms)
        size = 1
        for terms in multi:
            size *= len(terms)
            self._check_size(node, size)
        head = tuple(common)
        return Dnf([head + sum(combo, ()) for combo in product(*multi)])

    def _or(self, node: Node, values: list[Dnf]) -> Dnf:
        terms: list[tuple[Atom, ...]] = []
        for v in values:
            terms.extend(v.terms)
            self._check_size(node, len(terms))
        return Dnf(terms)

    def _compare(self, node: Node, op: str, values: list[Lin]) -> Dnf:
        atoms: list[Atom] = []
        for a, b in zip(values, values[1:]):  # SMT-LIB chains: (<= a b c) is a<=b and b<=c
            if op in ("<=", "<"):
                pairs = [(a, b)]
            elif op in (">=", ">"):
                pairs = [(b, a)]
            else:
                pairs = [(a, b), (b, a)]
            for lo, hi in pairs:
                atom = self._atom(node, lo.plus(hi, -1.0))
                if atom is False:
                    return Dnf([])
                if atom is not True:
                    atoms.append(atom)
        return Dnf([tuple(atoms)])

    def _atom(self, node: Node, e: Lin) -> Atom | bool:
        """Normalise ``e <= 0`` into an atom, or a truth value if ``e`` is constant."""
        xs = {i: a for i, a in e.xs.items() if a != 0.0}
        ys = {j: a for j, a in e.ys.items() if a != 0.0}
        if not xs and not ys:
            return e.c <= 0.0
        if xs and ys:
            raise SpecError(
                f"{self.src.where(node.start)}: constraints that mix inputs and outputs "
                f"({_names('X', xs)} with {_names('Y', ys)}) are not supported"
            )
        if len(xs) > 1:
            raise SpecError(
                f"{self.src.where(node.start)}: linear constraints among inputs "
                f"({_names('X', xs)}) are not supported yet; inputs may only be bounded by constants"
            )
        if xs:
            (i, a), = xs.items()
            return (BOUND, i, a > 0.0, -e.c / a + 0.0)  # + 0.0 turns -0.0 into 0.0
        return (ROW, tuple(sorted(ys.items())), -e.c + 0.0)

    def _arith(self, node: Node, op: str, values: list[Lin]) -> Lin:
        first = values[0]
        if op == "+":
            acc = first
            for v in values[1:]:
                acc = acc.plus(v)
            return acc
        if op == "-":
            if len(values) == 1:
                return first.scaled(-1.0)
            acc = first
            for v in values[1:]:
                acc = acc.plus(v, -1.0)
            return acc
        if op == "/":
            divisor = values[1]
            if not divisor.is_constant() or divisor.c == 0.0:
                at = node.items[2]
                raise self.src.error(item_start(at), "a non-zero constant divisor", found=show(at))
            return first.scaled(1.0 / divisor.c)
        # '*': linear only, so at most one factor may be non-constant.
        k, var_term = 1.0, None
        for idx, v in enumerate(values):
            if v.is_constant():
                k *= v.c
            elif var_term is None:
                var_term = v
            else:
                where = self.src.where(item_start(node.items[idx + 1]))
                raise SpecError(f"{where}: non-linear product of variables is not supported")
        return Lin({}, {}, k) if var_term is None else var_term.scaled(k)


def declared(kind: str, n: int) -> str:
    """'X_0..X_4 are declared' for error messages."""
    if n == 1:
        return f"only {kind}_0 is declared"
    return f"{kind}_0..{kind}_{n - 1} are declared"


def _names(kind: str, coefs: dict[int, float]) -> str:
    return ", ".join(f"{kind}_{i}" for i in sorted(coefs))
