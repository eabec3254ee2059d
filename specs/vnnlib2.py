"""VNN-LIB 2.0 reader: a query -> the same ``Spec`` the 1.0 reader produces.

A 2.0 query starts with ``(vnnlib-version <2.0>)``, declares its networks with typed,
shaped tensors and then asserts formulas over indexed elements::

    (vnnlib-version <2.0>)
    (declare-network acas
        (declare-input  X float32 [1,5])
        (declare-output Y float32 [1,5]))
    (assert (<= X[0,0] 0.5))
    (assert (or (<= (- Y[0,1] Y[0,0]) 0.0) (<= Y[0,2] Y[0,0])))

Elements map to the flat ``X_i`` / ``Y_j`` of 1.0 in C order of their tensor, so a
query and its 1.0 twin give equal specs.  The subset read here is the one ``Spec`` can
represent (the standard's "SNET / SIO / NH / LIN" logic on real or float tensors): one
network with one input and one output, no hidden nodes, linear arithmetic (``+``, ``-``,
``*`` by constants), ``and`` / ``or`` and the comparisons; everything else is refused
with a located ``SpecParseError``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from ._logic import Atom, Evaluator, Lin
from ._sexpr import NUMBER_RE, Item, Node, Source, _feed, item_start, show
from .errors import SpecError
from .model import Spec
from .vnnlib import _VERSION_2, MAX_DNF_TERMS, _cases, _fold, read_spec_text

_VERSION = re.compile(r"<?([0-9]+)\.([0-9]+)>?")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ELEMENT = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\[([^\[\]]*)\]")
_DIMS = re.compile(r"\[\s*(?:[0-9]+\s*(?:,\s*[0-9]+\s*)*)?\]")
# '(' ')' atom comment; strings (ONNX names) are atoms with their quotes
_TOKEN = re.compile(r'(\()|(\))|("[^"]*"|[^\s();"]+)|(;[^\n]*)')

#: element types whose values are reals or floats: the bounds treat them all as reals
FLOAT_TYPES = frozenset({"Real", "real", "float16", "bfloat16", "float32", "float64", "float", "double"})
#: ONNX element types the verifier cannot reason about (integers, booleans, strings, ...)
OTHER_ONNX_TYPES = frozenset({"int4", "int8", "int16", "int32", "int64", "uint4", "uint8", "uint16", "uint32",
                              "uint64", "bool", "string", "complex64", "complex128", "float8e4m3fn",
                              "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz"})
SUPPORTED_MAJOR = 2
#: the newest minor version read; later minors are read too (non-breaking by the standard's rule)
LATEST_VERSION = "2.0"


@dataclass(frozen=True)
class TensorDecl:
    """One declared tensor: ``(declare-input X float32 [1,5] "onnx_name")``."""

    name: str
    element_type: str
    shape: tuple[int, ...]
    onnx_name: str | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def element_names(self) -> list[str]:
        """``X[0,0]``, ``X[0,1]``, ... in C order (a scalar is just ``X``)."""
        if not self.shape:
            return [self.name]
        return [f"{self.name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*self.shape)]


@dataclass(frozen=True)
class Query:
    """A parsed 2.0 query: its one network's interface and the property as a ``Spec``."""

    version: str
    network: str
    input: TensorDecl
    output: TensorDecl
    spec: Spec


def is_vnnlib2(text: str) -> bool:
    """True iff ``text`` starts (after comments) with a ``(vnnlib-version ...)`` command."""
    return _VERSION_2.match(text.lstrip("\ufeff")) is not None


def parse_query(path: str | Path) -> Query:
    """Read a 2.0 query file (gzip recognised by its magic bytes)."""
    return parse_query_text(read_spec_text(path, "query file"), source=str(path))


def parse_vnnlib2_text(text: str, source: str = "<string>") -> Spec:
    """The ``Spec`` of a 2.0 query (what ``parse_vnnlib_text`` returns for 2.0 text)."""
    return parse_query_text(text, source).spec


def parse_query_text(text: str, source: str = "<string>") -> Query:
    if text.startswith("\ufeff"):
        text = " " + text[1:]  # keep offsets (and so columns) unchanged
    src = Source(text, source)
    commands = _read(src)
    if not commands:
        raise src.error(len(text), "'(vnnlib-version <2.0>)'", found="end of file")
    version = _version(src, commands[0])
    network: tuple[str, TensorDecl, TensorDecl] | None = None
    asserts: list[Node] = []
    for node in commands[1:]:
        word = _head(src, node, "a command 'declare-network' or 'assert'")
        if word == "declare-network":
            if network is not None:
                raise SpecError(f"{src.where(node.start)}: queries with several networks are not supported "
                                f"(only one 'declare-network')")
            if asserts:
                raise src.error(node.start, "'(assert ...)' (networks are declared before the assertions)",
                                found="'(declare-network ...)'")
            network = _network(src, node)
        elif word == "assert":
            if network is None:
                raise src.error(node.start, "'(declare-network ...)' before the first assertion",
                                found="'(assert ...)'")
            if len(node.items) < 2:
                raise src.error(node.end, "a formula", after="assert", found="')'")
            if len(node.items) > 2:
                raise src.error(item_start(node.items[2]), "')'", after="(assert ...", found=show(node.items[2]))
            asserts.append(node)
        else:
            raise src.error(node.items[0][0], "a command 'declare-network' or 'assert'", after="(",
                            found=f"'{word}'")
    if network is None:
        raise src.error(len(text), "'(declare-network ...)'", found="end of file")
    if not asserts:
        raise src.error(len(text), "at least one '(assert ...)'", found="end of file")
    name, x, y = network
    spec = _spec(src, x, y, asserts)
    return Query(version, name, x, y, spec)


# -- reading ---------------------------------------------------------------------------------

def _read(src: Source) -> list[Node]:
    """Top-level commands as trees (the 1.0 fast paths do not apply: names differ)."""
    stack: list[Node] = []
    commands: list[Node] = []
    for m in _TOKEN.finditer(src.text):
        kind = m.lastindex
        if kind != 4:
            _feed(src, kind, m.start(), m.group(), stack, commands)
    if stack:
        line, col = src.loc(stack[-1].start)
        raise src.error(len(src.text), f"')' to close the '(' at line {line}, column {col}", found="end of file")
    return commands


def _head(src: Source, node: Node, expected: str) -> str:
    head = node.items[0] if node.items else None
    if not isinstance(head, tuple):
        where, found = (head.start, show(head)) if head is not None else (node.end, "')'")
        raise src.error(where, expected, after="(", found=found)
    return head[1]


def _version(src: Source, node: Node) -> str:
    if _head(src, node, "'vnnlib-version'") != "vnnlib-version":
        raise src.error(node.items[0][0], "'(vnnlib-version <2.0>)' as the first command", after="(",
                        found=show(node.items[0]))
    if len(node.items) != 2 or isinstance(node.items[1], Node):
        at = node.items[1] if len(node.items) > 1 else None
        raise src.error(item_start(at) if at else node.end, "a version such as '<2.0>'", after="vnnlib-version",
                        found=show(at) if at else "')'")
    offset, text = node.items[1]
    m = _VERSION.fullmatch(text)
    if not m:
        raise src.error(offset, "a version such as '<2.0>'", after="vnnlib-version", found=f"'{text}'")
    if int(m.group(1)) != SUPPORTED_MAJOR:
        raise src.error(offset, f"VNN-LIB version {SUPPORTED_MAJOR}.x (this reader knows 1.0 and 2.x)",
                        found=f"'{text}'")
    return f"{int(m.group(1))}.{int(m.group(2))}"


def _network(src: Source, node: Node) -> tuple[str, TensorDecl, TensorDecl]:
    items = node.items
    if len(items) < 2 or isinstance(items[1], Node) or not _NAME.fullmatch(items[1][1]):
        at = items[1] if len(items) > 1 else None
        raise src.error(item_start(at) if at else node.end, "a network name", after="declare-network",
                        found=show(at) if at else "')'")
    name = items[1][1]
    inputs: list[TensorDecl] = []
    outputs: list[TensorDecl] = []
    names: set[str] = set()
    for item in items[2:]:
        if not isinstance(item, Node):
            raise src.error(item[0], "'(declare-input ...)' or '(declare-output ...)'", found=show(item))
        word = _head(src, item, "'declare-input' or 'declare-output'")
        if word in ("declare-hidden", "equal-to", "isomorphic-to"):
            what = "hidden-node declarations" if word == "declare-hidden" else f"'{word}' (several networks)"
            raise SpecError(f"{src.where(item.start)}: {what} are not supported")
        if word not in ("declare-input", "declare-output"):
            raise src.error(item.items[0][0], "'declare-input' or 'declare-output'", after="(", found=f"'{word}'")
        if word == "declare-input" and outputs:
            raise src.error(item.start, "'(declare-output ...)' (inputs are declared before outputs)",
                            found="'(declare-input ...)'")
        decl = _tensor(src, item, word)
        if decl.name in names or decl.name == name:
            raise src.error(item.items[1][0], f"a new name ('{decl.name}' is declared already)",
                            found=f"'{decl.name}'")
        names.add(decl.name)
        (inputs if word == "declare-input" else outputs).append(decl)
        if len(inputs) > 1 or len(outputs) > 1:
            role = "inputs" if len(inputs) > 1 else "outputs"
            raise SpecError(f"{src.where(item.start)}: networks with several {role} are not supported "
                            f"(one declare-input and one declare-output)")
    for role, decls in (("declare-input", inputs), ("declare-output", outputs)):
        if not decls:
            raise src.error(node.end, f"'({role} NAME TYPE [SHAPE])'", after=show(items[-1]).strip("'"),
                            found="')'")
    return name, inputs[0], outputs[0]


def _tensor(src: Source, node: Node, word: str) -> TensorDecl:
    """``(declare-input NAME TYPE [d0,d1,...] ["onnx name"])``; the shape may contain spaces."""
    items = node.items
    if len(items) < 2 or isinstance(items[1], Node) or not _NAME.fullmatch(items[1][1]):
        at = items[1] if len(items) > 1 else None
        raise src.error(item_start(at) if at else node.end, "a variable name (a letter, then letters, digits, _)",
                        after=word, found=show(at) if at else "')'")
    name = items[1][1]
    if len(items) < 3 or isinstance(items[2], Node):
        at = items[2] if len(items) > 2 else None
        raise src.error(item_start(at) if at else node.end, "an element type such as 'float32' or 'Real'",
                        after=name, found=show(at) if at else "')'")
    offset, element = items[2]
    if element in OTHER_ONNX_TYPES:
        raise SpecError(f"{src.where(offset)}: element type '{element}' is not supported "
                        f"(only real and floating-point tensors)")
    if element not in FLOAT_TYPES:
        raise src.error(offset, "an element type such as 'float32' or 'Real'", after=name, found=f"'{element}'")
    # the shape: atoms from '[' to ']' joined (so '[1, 5]' reads like '[1,5]')
    k, parts = 3, []
    while k < len(items) and isinstance(items[k], tuple) and not items[k][1].startswith('"'):
        parts.append(items[k][1])
        k += 1
        if parts[-1].endswith("]"):
            break
    text = "".join(parts)
    if not parts or not _DIMS.fullmatch(text):
        at = items[3] if len(items) > 3 else None
        raise src.error(item_start(at) if at else node.end, "a shape such as '[1,5]' or '[]'", after=element,
                        found=f"'{text}'" if parts else (show(at) if at else "')'"))
    inner = text[1:-1].strip()
    shape = tuple(int(d) for d in inner.split(",")) if inner else ()
    if any(d == 0 for d in shape):
        raise src.error(items[3][0], "a shape without zero dimensions", found=f"'{text}'")
    onnx_name = None
    if k < len(items) and isinstance(items[k], tuple) and items[k][1].startswith('"'):
        onnx_name = items[k][1][1:-1]
        k += 1
    if k < len(items):
        raise src.error(item_start(items[k]), "')'", after=show(items[k - 1]).strip("'"), found=show(items[k]))
    return TensorDecl(name, element, shape, onnx_name)


# -- assertions ------------------------------------------------------------------------------

class _Evaluator(Evaluator):
    """The 1.0 evaluator with 2.0 leaves (``X[0,1]``, scalars) and operators (``==``)."""

    def __init__(self, src: Source, x: TensorDecl, y: TensorDecl) -> None:
        super().__init__(src, x.size, y.size, MAX_DNF_TERMS)
        self.tensors = {x.name: ("X", x), y.name: ("Y", y)}

    def leaf(self, atom: tuple[int, str]) -> Lin:
        offset, text = atom
        if NUMBER_RE.fullmatch(text) or text in ("true", "false") or text[0] in "+-.0123456789":
            return super().leaf(atom)
        m = _ELEMENT.fullmatch(text)
        name = m.group(1) if m else text
        if name not in self.tensors:
            if not _NAME.fullmatch(name):
                raise self.src.error(offset, "a number or a tensor element such as 'X[0,1]'", found=f"'{text}'")
            known = ", ".join(f"'{n}'" for n in self.tensors)
            raise self.src.error(offset, f"a declared tensor ({known})", found=f"'{name}'")
        kind, decl = self.tensors[name]
        parts = [p.strip() for p in m.group(2).split(",")] if m else []
        if parts == [""]:
            parts = []
        if len(parts) != len(decl.shape) or not all(p.isdigit() for p in parts):
            want = f"{len(decl.shape)} indices" if decl.shape else "no indices (a scalar)"
            raise self.src.error(offset, f"{want} for {name} of shape {_dims(decl.shape)}", found=f"'{text}'")
        index = tuple(int(p) for p in parts)
        if any(i >= d for i, d in zip(index, decl.shape)):
            raise self.src.error(offset, f"indices within {name}'s shape {_dims(decl.shape)}", found=f"'{text}'")
        flat = int(np.ravel_multi_index(index, decl.shape)) if decl.shape else 0
        return Lin({flat: 1.0}, {}, 0.0) if kind == "X" else Lin({}, {flat: 1.0}, 0.0)

    def _operator(self, node: Node) -> str:
        head = node.items[0] if node.items else None
        if isinstance(head, tuple):
            if head[1] == "==":
                return "="
            if head[1] == "!=":
                raise SpecError(f"{self.src.where(head[0])}: '!=' is not supported (its unsafe set is not a "
                                f"union of closed polytopes)")
        return super()._operator(node)

    def _atom(self, node: Node, e: Lin) -> Atom | bool:
        try:
            return super()._atom(node, e)
        except SpecError as exc:  # the 1.0 message names X_i / Y_j: say X[..] / Y[..] instead
            raise SpecError(self._rename(str(exc))) from None

    def _rename(self, message: str) -> str:
        names = {kind: decl.element_names() for kind, decl in self.tensors.values()}
        return re.sub(r"\b([XY])_([0-9]+)\b", lambda m: names[m.group(1)][int(m.group(2))], message)


def _join_indices(node: Node) -> None:
    """Glue ``X [0, 1]`` (split by spaces into several atoms) back into one ``X[0,1]`` atom."""
    stack = [node]
    while stack:
        n = stack.pop()
        out: list[Item] = []
        for item in n.items:
            prev = out[-1] if out else None
            if isinstance(item, tuple) and isinstance(prev, tuple) and (
                    prev[1].count("[") > prev[1].count("]")
                    or (item[1].startswith("[") and _NAME.fullmatch(prev[1]) is not None)):
                out[-1] = (prev[0], prev[1] + item[1])
                continue
            if isinstance(item, Node):
                stack.append(item)
            out.append(item)
        n.items = out


def _spec(src: Source, x: TensorDecl, y: TensorDecl, asserts: list[Node]) -> Spec:
    evaluator = _Evaluator(src, x, y)
    lower = np.full(x.size, -np.inf)
    upper = np.full(x.size, np.inf)
    rows: list[Atom] = []
    disjunctions: list[tuple[Node, list[tuple[Atom, ...]]]] = []
    satisfiable = True
    for node in asserts:
        _join_indices(node)
        terms = evaluator.formula(node.items[1]).terms
        if len(terms) == 1:
            _fold(terms[0], lower, upper, rows)
        elif not terms:
            satisfiable = False  # a false assertion: nothing is unsafe
        else:
            disjunctions.append((node, terms))
    if not satisfiable:
        return Spec(x.size, y.size, (), src.path)
    size = 1
    for node, terms in disjunctions:
        size *= len(terms)
        if size > MAX_DNF_TERMS:
            raise SpecError(f"{src.where(node.start)}: the assertions multiply out to more than "
                            f"{MAX_DNF_TERMS} disjunctive terms, which is not supported")
    combos = product(*(terms for _, terms in disjunctions))
    try:
        cases = _cases(src, (sum(c, ()) for c in combos), lower, upper, rows, y.size)
    except SpecError as exc:
        raise SpecError(evaluator._rename(str(exc))) from None
    return Spec(x.size, y.size, cases, src.path)


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"
