"""VNN-LIB 1.0 reader: text or (optionally gzipped) file -> ``Spec``.

The file is a conjunction of assertions over inputs ``X_i`` and outputs
``Y_j`` describing the unsafe set.  Assertions that are plain conjunctions are
folded into one global box and one global set of output rows; the remaining
disjunctive assertions are multiplied out into DNF terms.  Each term becomes a
(box, polytope) pair, and terms with the same box are merged into one case.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable
from itertools import product
from pathlib import Path

import numpy as np

from ._logic import BOUND, Atom, Evaluator, declared
from ._sexpr import VARIABLE_RE, Node, Reading, Source, item_start, last_text, read, show
from .errors import SpecError
from .model import Polytope, Spec, SpecCase

MAX_DNF_TERMS = 100_000
# '(vnnlib-version ...)' first (after comments): a VNN-LIB 2.0 query
_VERSION_2 = re.compile(r"\A(?:\s|;[^\n]*)*\(\s*vnnlib-version(?![^\s();])")

# SMT-LIB commands that carry no constraint; tolerated so that solver-style files load.
_IGNORED_COMMANDS = {"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"}


def read_spec_text(path: str | Path, what: str = "property file") -> str:
    """A spec file's text; gzip is recognised by its magic bytes."""
    try:
        data = Path(path).read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise SpecError(f"{path}: cannot read the {what}: {exc}") from exc
    return data.decode("utf-8", errors="replace")


def parse_vnnlib(path: str | Path) -> Spec:
    """Parse a ``.vnnlib`` file; gzip is recognised by its magic bytes."""
    return parse_vnnlib_text(read_spec_text(path), source=str(path))


def parse_vnnlib_text(text: str, source: str = "<string>") -> Spec:
    """Parse VNN-LIB text; ``source`` names it in error messages and ``Spec.source``."""
    if text.startswith("\ufeff"):
        text = " " + text[1:]  # keep offsets (and so columns) unchanged
    if _VERSION_2.match(text):  # VNN-LIB 2.0 has its own reader and gives the same Spec
        from .vnnlib2 import parse_vnnlib2_text

        return parse_vnnlib2_text(text, source)
    src = Source(text, source)
    reading = read(src)
    if reading.is_empty():
        raise src.error(0, "'(declare-const X_0 Real)' or '(assert ...)'", found="end of file")
    asserts = _declarations(src, reading)
    n_inputs, n_outputs = _counts(src, reading)
    if not asserts and not reading.upper_idx and not reading.lower_idx:
        raise src.error(len(text), "at least one '(assert ...)'", found="end of file")

    lower = np.full(n_inputs, -np.inf)
    upper = np.full(n_inputs, np.inf)
    _apply_fast_bounds(src, reading.upper_idx, reading.upper_val, n_inputs, upper, np.minimum)
    _apply_fast_bounds(src, reading.lower_idx, reading.lower_val, n_inputs, lower, np.maximum)

    evaluator = Evaluator(src, n_inputs, n_outputs, MAX_DNF_TERMS)
    global_rows: list[Atom] = []
    disjunctions: list[tuple[Node, list[tuple[Atom, ...]]]] = []
    satisfiable = True
    for node in asserts:
        terms = evaluator.formula(node.items[1]).terms
        if len(terms) == 1:
            _fold(terms[0], lower, upper, global_rows)
        elif not terms:
            satisfiable = False  # a false assertion: nothing is unsafe
        else:
            disjunctions.append((node, terms))
    if not satisfiable:
        return Spec(n_inputs, n_outputs, (), source)

    size = 1
    for node, terms in disjunctions:
        size *= len(terms)
        if size > MAX_DNF_TERMS:
            raise SpecError(
                f"{src.where(node.start)}: the assertions multiply out to more than "
                f"{MAX_DNF_TERMS} disjunctive terms, which is not supported"
            )
    combos = product(*(terms for _, terms in disjunctions))
    cases = _cases(src, (sum(c, ()) for c in combos), lower, upper, global_rows, n_outputs)
    return Spec(n_inputs, n_outputs, cases, source)


def _declarations(src: Source, reading: Reading) -> list[Node]:
    """Validate general-form commands; record declarations, return the assertions."""
    asserts = []
    for node in reading.commands:
        items = node.items
        head = items[0] if items else None
        if not isinstance(head, tuple):
            where, found = (head.start, show(head)) if head is not None else (node.end, "')'")
            raise src.error(where, "a command 'declare-const' or 'assert'", after="(", found=found)
        word = head[1]
        if word == "assert":
            if len(items) < 2:
                raise src.error(node.end, "a formula", after="assert", found="')'")
            if len(items) > 2:
                raise src.error(item_start(items[2]), "')'", after="(assert ...", found=show(items[2]))
            asserts.append(node)
        elif word in ("declare-const", "declare-fun"):
            kind, index = _declaration(src, node, word)
            (reading.x_decls if kind == "X" else reading.y_decls).append(index)
        elif word not in _IGNORED_COMMANDS:
            raise src.error(head[0], "a command 'declare-const' or 'assert'", after="(", found=f"'{word}'")
    return asserts


def _declaration(src: Source, node: Node, word: str) -> tuple[str, str]:
    # (declare-const NAME Real) or the SMT-LIB equivalent (declare-fun NAME () Real)
    items = node.items
    if len(items) < 2 or isinstance(items[1], Node) or not VARIABLE_RE.fullmatch(items[1][1]):
        found = show(items[1]) if len(items) > 1 else "')'"
        where = item_start(items[1]) if len(items) > 1 else node.end
        raise src.error(where, "a variable name X_<i> or Y_<j>", after=word, found=found)
    name = items[1][1]
    sort_pos = 2
    if word == "declare-fun":
        if len(items) < 3 or not isinstance(items[2], Node) or items[2].items:
            where = item_start(items[2]) if len(items) > 2 else node.end
            raise src.error(where, "'()' (no arguments)", after=name, found=show(items[2]) if len(items) > 2 else "')'")
        sort_pos = 3
    if len(items) <= sort_pos:
        raise src.error(node.end, "the sort 'Real'", after=last_text(node), found="')'")
    sort = items[sort_pos]
    if isinstance(sort, Node) or sort[1] != "Real":
        after = show(items[sort_pos - 1]).strip("'")
        raise src.error(item_start(sort), "the sort 'Real'", after=after, found=show(sort))
    if len(items) > sort_pos + 1:
        extra = items[sort_pos + 1]
        raise src.error(item_start(extra), "')'", after="Real", found=show(extra))
    return name[0], name[2:]


def _counts(src: Source, reading: Reading) -> tuple[int, int]:
    """Check that X and Y indices are each exactly 0..n-1 and return the counts."""
    counts = []
    for kind, role, decls in (("X", "input", reading.x_decls), ("Y", "output", reading.y_decls)):
        n = len(decls)
        if n == 0:
            raise src.error(
                len(src.text), f"at least one {role} declaration '(declare-const {kind}_0 Real)'", found="end of file"
            )
        ordered = np.sort(np.fromiter(map(int, decls), dtype=np.int64, count=n))
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeated.size:
            name = f"{kind}_{repeated[0]}"
            first, again = (_declared_at(src.text, name, k) for k in (0, 1))
            line, col = src.loc(first)
            expected = f"a new variable ({name} was already declared at line {line}, column {col})"
            raise src.error(again, expected, found=f"'{name}'")
        if ordered[-1] != n - 1:
            missing = int(np.flatnonzero(ordered != np.arange(n))[0])
            name = f"{kind}_{ordered[-1]}"
            raise src.error(
                _declared_at(src.text, name, 0),
                f"{role} indices 0..{n - 1} ({kind}_{missing} is not declared)",
                found=f"'{name}'",
            )
        counts.append(n)
    return counts[0], counts[1]


def _declared_at(text: str, name: str, nth: int) -> int:
    # Fast-path declarations keep no offsets; errors find the text again.
    pattern = re.compile(rf"\(\s*declare-(?:const|fun)\s+({name})(?![0-9A-Za-z_])")
    for k, m in enumerate(pattern.finditer(text)):
        if k == nth:
            return m.start(1)
    return 0


def _apply_fast_bounds(
    src: Source, idx_text: list[str], val_text: list[str], n: int, bound: np.ndarray, tighten: np.ufunc
) -> None:
    if not idx_text:
        return
    idx = np.fromiter(map(int, idx_text), dtype=np.int64, count=len(idx_text))
    val = np.fromiter(map(float, val_text), dtype=np.float64, count=len(val_text))
    bad = np.flatnonzero(idx >= n)
    if bad.size:
        name = f"X_{idx[bad[0]]}"
        m = re.search(rf"\(\s*assert\s*\(\s*(?:<=|>=)\s*({name})\s", src.text)
        raise src.error(m.start(1) if m else 0, f"a declared variable ({declared('X', n)})", found=f"'{name}'")
    tighten.at(bound, idx, val)


def _fold(term: tuple[Atom, ...], lower: np.ndarray, upper: np.ndarray, rows: list[Atom]) -> None:
    for atom in term:
        if atom[0] == BOUND:
            _, i, is_upper, c = atom
            if is_upper:
                upper[i] = min(upper[i], c)
            else:
                lower[i] = max(lower[i], c)
        else:
            rows.append(atom)


def _cases(
    src: Source,
    terms: Iterable[tuple[Atom, ...]],
    lower: np.ndarray,
    upper: np.ndarray,
    global_rows: list[Atom],
    n_outputs: int,
) -> tuple[SpecCase, ...]:
    """Group DNF terms by their effective input box; each term adds one polytope."""
    groups: dict[tuple, tuple[list[Polytope], set[bytes]]] = {}
    for term in terms:
        box: dict[int, list[float]] = {}
        rows = list(global_rows)
        for atom in term:
            if atom[0] == BOUND:
                _, i, is_upper, c = atom
                b = box.setdefault(i, [lower[i], upper[i]])
                if is_upper:
                    b[1] = min(b[1], c)
                else:
                    b[0] = max(b[0], c)
            else:
                rows.append(atom)
        # Only changes relative to the global box form the key, so redundant
        # atoms do not split what is really the same box.
        key = tuple(sorted((i, lo, hi) for i, (lo, hi) in box.items() if (lo, hi) != (lower[i], upper[i])))
        polytope = _polytope(rows, n_outputs)
        polys, seen = groups.setdefault(key, ([], set()))
        fingerprint = polytope.C.tobytes() + b"|" + polytope.d.tobytes()
        if fingerprint not in seen:  # exact duplicates add nothing to a disjunction
            seen.add(fingerprint)
            polys.append(polytope)
    cases = []
    for number, (key, (polys, _)) in enumerate(groups.items()):
        lo, hi = lower.copy(), upper.copy()
        for i, l, h in key:
            lo[i], hi[i] = l, h
        where = f" (in disjunct {number + 1} of {len(groups)})" if len(groups) > 1 else ""
        _check_box(src, lo, hi, where)
        cases.append(SpecCase(lo, hi, tuple(polys)))
    return tuple(cases)


def _polytope(rows: list[Atom], n_outputs: int) -> Polytope:
    C = np.zeros((len(rows), n_outputs))
    d = np.empty(len(rows))
    for r, (_, coefs, rhs) in enumerate(rows):
        for j, a in coefs:
            C[r, j] = a
        d[r] = rhs
    return Polytope(C, d)


def _check_box(src: Source, lo: np.ndarray, hi: np.ndarray, where: str) -> None:
    for arr, side in ((lo, "lower"), (hi, "upper")):
        missing = np.flatnonzero(~np.isfinite(arr))
        if missing.size:
            raise SpecError(f"{src.path}: input X_{missing[0]} has no finite {side} bound{where}")
    empty = np.flatnonzero(lo > hi)
    if empty.size:
        i = empty[0]
        raise SpecError(
            f"{src.path}: input X_{i} has lower bound {float(lo[i])!r} above its upper bound {float(hi[i])!r}{where}"
        )
