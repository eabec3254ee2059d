"""Random networks and random specs for soundness fuzzing.

A case is fully described by a `CaseParams` (a few integers and floats) and rebuilt from it
deterministically, so shrinking a failure means shrinking its parameters and rebuilding.

Activations and binary elementwise ops are discovered from `bounds.ops.RULES` at run time
(`discover_ops`): every registered rule that evaluates, bounds by IBP and relaxes backward
on a probe graph is used, so ops added later are fuzzed without touching this file.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from bounds.graph.ir import Graph, Node
from bounds.graph.shapes import infer_shapes
from specs import Polytope, Spec, SpecCase

FAMILIES = ("mlp", "residual", "cnn")
SPEC_KINDS = ("box", "robust", "polytope", "disjunction")
#: ops whose probe passes but which make poor fuzz material (a denominator straddling zero
#: sends outputs to infinity, which no bound can contain usefully)
EXCLUDED = frozenset({"Div", "Pow", "Reciprocal",
                      "Log", "Sqrt",    # h1: defined for x >= 0 only, NaN on the generator's boxes
                      "Asin", "Acos",   # defined on [-1, 1] only (tests/bounds cover them there)
                      "Atanh", "Acosh"})  # (-1, 1) and [1, inf) only
#: ops the generator already places itself (linear plumbing)
STRUCTURAL = frozenset({"Add", "Sub"})
#: non-default attributes worth drawing at random, per op
ATTRS = {"LeakyRelu": lambda rng: {"alpha": float(rng.choice([0.01, 0.1, 0.3, 0.7]))},
         # h1: unary forms the canonicalisation produces
         "nnverify.Pow": lambda rng: {"exponent": float(rng.choice([2.0, 3.0]))},
         "nnverify.Clip": lambda rng: {"min": -1.0, "max": float(rng.choice([0.5, 1.0, 6.0]))},
         # h4: convex (alpha <= 1), concave kink (alpha > 1), concave exponential (alpha < 0)
         "Elu": lambda rng: {"alpha": float(rng.choice([-0.5, 0.5, 1.0, 2.0]))},
         "Celu": lambda rng: {"alpha": float(rng.choice([0.3, 1.0, 2.5]))}}


# ----------------------------------------------------------------------------------------
# op discovery

def _probe_graph(op: str, arity: int, attrs: dict, width: int = 4, scale: float = 1.0) -> Graph:
    nodes = [Node("x", "Input", shape=(1, width))]
    inputs = ["x"]
    if arity == 2:
        w = scale * torch.tensor([[1.0, -0.5, 0.3, 2.0, -1.2, 0.7][:width]]).T
        nodes.append(Node("w", "Constant", attrs={"value": w}, shape=(width, 1)))
        nodes.append(Node("h", "MatMul", ("x", "w")))
        nodes.append(Node("e", "Constant", attrs={"value": torch.ones(1, width)}, shape=(1, width)))
        nodes.append(Node("z", "MatMul", ("h", "e")))
        inputs = ["x", "z"]
    nodes.append(Node("y", op, tuple(inputs), attrs))
    return infer_shapes(Graph(tuple(nodes), ("x",), ("y",)))


def _probe(op: str, arity: int, width: int = 4) -> bool:
    """True when `op` with `arity` variable inputs of one shape keeps that shape, is finite on
    a moderate box, and IBP and CROWN both bound it without raising."""
    from bounds.crown import spec_lower_bounds
    from bounds.graph.interpret import run
    from bounds.graph.passes import check_supported
    from bounds.types import Interval

    try:
        graph = _probe_graph(op, arity, ATTRS.get(op, lambda rng: {})(np.random.default_rng(0)), width)
        check_supported(graph)  # e.g. LayerNormalization needs a constant scale: not fuzz material here
        if graph.output.shape != (1, width):
            return False
        xs = (torch.linspace(-3, 3, 41).reshape(41, 1, 1) * torch.linspace(1.0, -0.5, width)).contiguous()
        ys = run(graph, xs)
        if not ys.is_floating_point() or not torch.isfinite(ys).all():
            return False
        if arity == 2:  # the second input must matter (some rules ignore extra inputs)
            other = _probe_graph(op, arity, ATTRS.get(op, lambda rng: {})(np.random.default_rng(0)), width, -2.0)
            if torch.allclose(run(other, xs), ys):
                return False
        box = Interval(-torch.ones(1, 1, width), torch.ones(1, 1, width))
        C = torch.eye(width).unsqueeze(0)
        for method in ("ibp", "crown"):
            if not torch.isfinite(spec_lower_bounds(graph, box, C, method)).all():
                return False
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable as fuzz material"
        return False


@functools.lru_cache(maxsize=1)
def discover_ops() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(unary activations, binary elementwise ops) of the registry that pass the probe."""
    from bounds.ops import RULES
    from bounds.ops.base import ActivationRule, LinearRule

    unary, binary = [], []
    for op, rule in sorted(RULES.items()):
        if op in EXCLUDED or op in STRUCTURAL or not (rule.has_ibp and rule.has_backward):
            continue
        if isinstance(rule, LinearRule) or not (isinstance(rule, ActivationRule) or rule.needs_input_bounds):
            continue
        if _probe(op, 1):
            unary.append(op)   # elementwise activations, and shape-keeping ones (Softmax, MaxMin, ...)
        if not isinstance(rule, ActivationRule) and 1 not in rule.constant_inputs and _probe(op, 2):
            binary.append(op)  # nonlinear in two variables (Mul of two values, Max, Min, ...)
    return tuple(unary), tuple(binary)


@functools.lru_cache(maxsize=1)
def even_width_ops() -> frozenset[str]:
    """Discovered ops that only work on an even width (pairwise ops such as MaxMin)."""
    unary, binary = discover_ops()
    return frozenset(op for op in unary if not _probe(op, 1, width=3)) | \
        frozenset(op for op in binary if not _probe(op, 2, width=3))


def _elementwise(op: str) -> bool:
    from bounds.ops import RULES
    from bounds.ops.base import ActivationRule

    return isinstance(RULES.get(op), ActivationRule)


def piecewise_linear(op: str) -> bool:
    return op in ("Relu", "LeakyRelu")


# ----------------------------------------------------------------------------------------
# networks

@dataclass(frozen=True)
class CaseParams:
    """Everything a case is rebuilt from (see build_case)."""

    seed: int
    family: str = "mlp"
    n_in: int = 3
    n_out: int = 3
    width: int = 6
    depth: int = 2
    acts: tuple[str, ...] = ("Relu",)
    binary: tuple[str, ...] = ()      # binary ops mixed in (one per hidden layer at most)
    spec_kind: str = "box"
    n_cases: int = 1
    n_polytopes: int = 1
    n_rows: int = 1
    radius: float = 0.3
    #: where the threshold sits in the sampled range of the polytope's value: < 0 leans unsat
    offset: float = -0.1

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict) -> "CaseParams":
        data = dict(data)
        data["acts"] = tuple(data["acts"])
        data["binary"] = tuple(data["binary"])
        return CaseParams(**data)


@dataclass
class _Builder:
    input_shape: tuple[int, ...]
    rng: np.random.Generator
    nodes: list[Node] = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        self.nodes.append(Node("x", "Input", shape=self.input_shape))

    def const(self, value: np.ndarray) -> str:
        self.count += 1
        t = torch.tensor(np.asarray(value), dtype=torch.float32)
        self.nodes.append(Node(f"c{self.count}", "Constant", attrs={"value": t}, shape=tuple(t.shape)))
        return f"c{self.count}"

    def op(self, op: str, *inputs: str, **attrs) -> str:
        self.count += 1
        name = f"{op.lower()}{self.count}"
        self.nodes.append(Node(name, op, tuple(inputs), attrs))
        return name

    def act(self, x: str, op: str) -> str:
        return self.op(op, x, **ATTRS.get(op, lambda rng: {})(self.rng))

    def dense(self, x: str, n_in: int, n_out: int) -> str:
        w = self.rng.normal(size=(n_in, n_out)) / math.sqrt(n_in)
        b = self.rng.normal(size=n_out) * 0.3
        if self.rng.random() < 0.5:
            return self.op("Gemm", x, self.const(w.T), self.const(b), transB=1)
        return self.op("Add", self.op("MatMul", x, self.const(w)), self.const(b))

    def graph(self, out: str) -> Graph:
        return infer_shapes(Graph(tuple(self.nodes), ("x",), (out,)))


def _mix_binary(b: _Builder, h: str, width: int, op: str) -> str:
    """op(h, W·h + c): a nonlinear op of two variable values of the same shape."""
    other = b.dense(h, width, width)
    return b.op(op, h, other)


def build_graph(p: CaseParams) -> Graph:
    rng = np.random.default_rng([p.seed, 1])
    if p.family == "cnn":
        return _cnn(p, rng)
    b = _Builder((1, p.n_in), rng)
    x = b.dense("x", p.n_in, p.width)
    for layer in range(p.depth - 1):
        h = b.act(x, p.acts[layer % len(p.acts)])
        if p.binary and layer < len(p.binary):
            h = _mix_binary(b, h, p.width, p.binary[layer])
        y = b.dense(h, p.width, p.width)
        x = b.op("Add", y, x) if p.family == "residual" else y
    x = b.act(x, p.acts[(p.depth - 1) % len(p.acts)])
    return b.graph(b.dense(x, p.width, p.n_out))


def _cnn(p: CaseParams, rng: np.random.Generator) -> Graph:
    """Conv (+BatchNorm) -> act -> pooling -> act -> Flatten -> Gemm on a (1, 1, s, s) input
    with s*s close to n_in (at least 3x3)."""
    size = max(3, int(round(math.sqrt(p.n_in))))
    ch = max(1, min(4, p.width // 2))
    b = _Builder((1, 1, size, size), rng)
    x = b.op("Conv", "x", b.const(rng.normal(size=(ch, 1, 2, 2)) * 0.7), b.const(rng.normal(size=ch) * 0.2),
             pads=[1, 1, 0, 0] if rng.random() < 0.5 else [0, 0, 0, 0])
    if rng.random() < 0.5:
        x = b.op("BatchNormalization", x, b.const(rng.uniform(0.5, 1.5, ch)), b.const(rng.normal(size=ch) * 0.1),
                 b.const(rng.normal(size=ch) * 0.1), b.const(rng.uniform(0.5, 1.5, ch)))
    x = b.act(x, p.acts[0])
    pool = ("AveragePool", "MaxPool")[int(rng.random() < 0.3)]
    x = b.op(pool, x, kernel_shape=[2, 2], strides=[1, 1])
    if p.depth > 2:
        x = b.act(x, p.acts[1 % len(p.acts)])
    x = b.op("Flatten", x, axis=1)
    g = infer_shapes(Graph(tuple(b.nodes), ("x",), (x,)))
    n = int(np.prod(g[x].shape))
    return b.graph(b.dense(x, n, p.n_out))


# ----------------------------------------------------------------------------------------
# specs

def _outputs(graph: Graph, lower: np.ndarray, upper: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Float64 outputs at `n` random points (a quarter of them corners) of the box."""
    from bounds.graph.interpret import run
    from bounds.graph.ir import graph_to

    t = rng.uniform(size=(n, lower.size))
    t[: n // 4] = t[: n // 4].round()
    xs = lower + t * (upper - lower)
    g64 = graph_to(graph, dtype=torch.float64)
    with torch.no_grad():
        ys = run(g64, torch.tensor(xs).reshape(n, *graph.input.shape))
    return ys.reshape(n, -1).numpy()


def _threshold(vals: np.ndarray, offset: float) -> float:
    """A threshold near the sampled minimum of `vals`, shifted by `offset` of its range."""
    low, high = float(vals.min()), float(vals.max())
    return low + offset * (high - low + 1e-3)


def _polytopes(p: CaseParams, ys: np.ndarray, rng: np.random.Generator) -> tuple[Polytope, ...]:
    n_out = ys.shape[1]
    if p.spec_kind == "robust" and n_out > 1:
        # "the predicted class changes": y_j - y_t >= -offset for some j != t, one polytope each
        t = int(rng.integers(n_out))
        polys = []
        for j in [j for j in range(n_out) if j != t][: max(1, p.n_polytopes)]:
            C = np.zeros((1, n_out))
            C[0, t], C[0, j] = 1.0, -1.0
            polys.append(Polytope(C, np.array([_threshold(ys @ C[0], p.offset)])))
        return tuple(polys)
    count = p.n_polytopes if p.spec_kind == "disjunction" else 1
    rows = 1 if p.spec_kind == "box" else p.n_rows
    polys = []
    for _ in range(count):
        if p.spec_kind == "box":
            C = np.zeros((1, n_out))
            C[0, int(rng.integers(n_out))] = rng.choice([-1.0, 1.0])
        else:
            C = rng.normal(size=(rows, n_out))
        vals = ys @ C.T                                  # (n, rows)
        # the polytope holds at y iff max_r (C_r·y - d_r) <= 0: shift one row to hit the
        # borderline and leave the others slack, so the threshold decides the verdict
        d = vals.max(0) + 0.05 * (vals.max(0) - vals.min(0)) if rows > 1 else np.zeros(1)
        key = int(rng.integers(rows))
        d = d.astype(float)
        d[key] = _threshold(vals[:, key], p.offset)
        polys.append(Polytope(C, d))
    return tuple(polys)


def build_spec(p: CaseParams, graph: Graph) -> Spec:
    rng = np.random.default_rng([p.seed, 2])
    n_in = int(np.prod(graph.input.shape))
    n_out = int(np.prod(graph.output.shape))
    cases = []
    for _ in range(max(1, p.n_cases)):
        center = rng.normal(size=n_in)
        radius = p.radius * rng.uniform(0.3, 1.0, size=n_in)
        lower, upper = center - radius, center + radius
        ys = _outputs(graph, lower, upper, 256, rng)
        cases.append(SpecCase(lower, upper, _polytopes(p, ys, rng)))
    return Spec(n_in, n_out, tuple(cases), source=f"fuzz seed {p.seed}")


@dataclass(frozen=True)
class FuzzCase:
    params: CaseParams
    graph: Graph
    spec: Spec


def build_case(p: CaseParams) -> FuzzCase:
    graph = build_graph(p)
    return FuzzCase(p, graph, build_spec(p, graph))


def random_params(seed: int, max_width: int = 8, max_depth: int = 3) -> CaseParams:
    """Parameters of case `seed`: family, sizes, activations and spec kind all drawn at random."""
    rng = np.random.default_rng([seed, 0])
    unary, binary = discover_ops()
    family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    depth = int(rng.integers(1, max_depth + 1))
    if rng.random() < 0.4:
        acts = tuple(a for a in unary if piecewise_linear(a)) or unary  # MILP-decidable nets
    else:
        acts = unary
    k = int(rng.integers(1, min(3, len(acts)) + 1))
    acts = tuple(rng.choice(acts, size=k, replace=False).tolist())
    mixed: tuple[str, ...] = ()
    if binary and family != "cnn" and depth > 1 and rng.random() < 0.25:
        mixed = (str(rng.choice(binary)),)
    kind = SPEC_KINDS[int(rng.integers(len(SPEC_KINDS)))]
    width = int(rng.integers(2, max_width + 1))
    if even_width_ops() & set(acts + mixed):
        width += width % 2
    if family == "cnn" and not all(a in unary and _elementwise(a) for a in acts):
        family = "mlp"   # channel-wise conv outputs: only elementwise activations fit there
    return CaseParams(
        seed=seed, family=family, n_in=int(rng.integers(2, 6)) if family != "cnn" else int(rng.choice([9, 16])),
        n_out=int(rng.integers(2, 5)), width=width, depth=depth, acts=acts,
        binary=mixed, spec_kind=kind, n_cases=int(rng.choice([1, 1, 1, 2, 3])),
        n_polytopes=int(rng.integers(1, 4)), n_rows=int(rng.integers(1, 4)),
        radius=float(rng.choice([0.02, 0.1, 0.3, 0.8, 2.0])),
        offset=float(rng.uniform(-0.35, 0.15)))


def shrink_candidates(p: CaseParams) -> list[CaseParams]:
    """Strictly smaller variants of `p`, most aggressive first (for delta-debugging)."""
    out = []
    rep = dataclasses.replace
    if p.depth > 1:
        out.append(rep(p, depth=p.depth - 1, binary=p.binary[: p.depth - 2]))
    if p.n_cases > 1:
        out.append(rep(p, n_cases=1))
    if p.n_polytopes > 1:
        out.append(rep(p, n_polytopes=p.n_polytopes - 1))
    if p.n_rows > 1:
        out.append(rep(p, n_rows=p.n_rows - 1))
    if p.binary:
        out.append(rep(p, binary=()))
    if len(p.acts) > 1:
        out += [rep(p, acts=(a,)) for a in p.acts]
    step = 2 if even_width_ops() & set(p.acts + p.binary) else 1
    if p.width > step:
        out.append(rep(p, width=max(step, p.width // 2 // step * step)))
        out.append(rep(p, width=p.width - step))
    if p.n_in > 1 and p.family != "cnn":
        out.append(rep(p, n_in=p.n_in - 1))
    if p.n_out > 1:
        out.append(rep(p, n_out=p.n_out - 1))
    if p.family != "mlp":
        out.append(rep(p, family="mlp"))
    if p.spec_kind != "box":
        out.append(rep(p, spec_kind="box"))
    if p.radius > 0.02:
        out.append(rep(p, radius=p.radius / 2))
    return out
