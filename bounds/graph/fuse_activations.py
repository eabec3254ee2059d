"""Fuse the ONNX export patterns of unary activations into one node the bound rules know.

* Pow(x, c) with a constant scalar c          -> nnverify.Pow(x), attr exponent = c
* x * 0.5 * (1 + Erf(x / sqrt 2)), any order   -> Gelu(x)                 (approximate "none")
* 0.5 x (1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3))) -> Gelu(x)              (approximate "tanh")
* x * Sigmoid(x)                              -> nnverify.SiLU(x)
* x * Tanh(Softplus(x))                        -> Mish(x)   (how exporters before opset 18 write it)
* Clip(x, min, max) with constant scalar limits -> nnverify.Clip(x), attrs min / max

Why: relaxing the pieces of GELU separately (a product of x with a function of x) loses the
correlation between the factors; one rule for the whole function is far tighter, and exact
on points.

GELU exports differ in operand order, in Div by sqrt 2 versus Mul by 1/sqrt 2, in where the
0.5 is applied. Rather than list them, the pass takes each Erf / Tanh node, walks back through
arithmetic with scalar constants to the one variable value x it is computed from, then
forward through arithmetic that reads only x, constants and the region itself, and accepts
the furthest value that equals GELU(x) on random trial inputs (within float32 rounding: the
exporters' constants are float32). The fused node keeps that value's name; the region's inner
nodes die unless something else reads them.
"""
from __future__ import annotations

import math

import torch

from bounds.graph.ir import CONSTANT, Graph, Node

SILU, POW, CLIP = "nnverify.SiLU", "nnverify.Pow", "nnverify.Clip"
#: arithmetic ops a GELU pattern is written with
_ARITH = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Pow", POW})
#: largest region searched on either side of the Erf / Tanh node
_MAX_STEPS = 6
_TRIALS = 64
#: agreement required (relative + absolute) between the region and the fused function
_TOL = 2e-6


def _rules():
    from bounds.ops import RULES
    return RULES


def gelu_reference(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate=approximate)


def _scalar_const(graph: Graph, name: str) -> bool:
    node = graph[name]
    return node.op == CONSTANT and node.value.numel() == 1 and node.value.is_floating_point()


# ----------------------------------------------------------------------------------------
# Pow with a constant exponent

def pow_to_unary(graph: Graph) -> tuple[Graph, bool]:
    nodes, changed = [], False
    for node in graph.nodes:
        if node.op == "Pow" and len(node.inputs) == 2 and graph[node.inputs[1]].op == CONSTANT \
                and graph[node.inputs[1]].value.numel() == 1 and not graph.is_constant(node.inputs[0]) \
                and tuple(node.shape) == tuple(graph[node.inputs[0]].shape):
            exponent = float(graph[node.inputs[1]].value.reshape(()))
            node = Node(node.name, POW, (node.inputs[0],), {"exponent": exponent}, node.shape,
                        node.source, node.opset)
            changed = True
        nodes.append(node)
    return (graph.replace(nodes), True) if changed else (graph, False)


# ----------------------------------------------------------------------------------------
# Clip with constant limits

def clip_to_unary(graph: Graph) -> tuple[Graph, bool]:
    nodes, changed = [], False
    for node in graph.nodes:
        if node.op == "Clip" and node.inputs and not graph.is_constant(node.inputs[0]) \
                and all(graph[i].op == CONSTANT and graph[i].value.numel() == 1 for i in node.inputs[1:]):
            attrs = {}
            for key, k in (("min", 1), ("max", 2)):
                value = float(graph[node.inputs[k]].value.reshape(())) if k < len(node.inputs) else \
                    float(node.attrs[key]) if key in node.attrs else None
                if value is not None and not math.isinf(value):
                    attrs[key] = value
            node = Node(node.name, CLIP, (node.inputs[0],), attrs, node.shape, node.source, node.opset)
            changed = True
        nodes.append(node)
    return (graph.replace(nodes), True) if changed else (graph, False)


# ----------------------------------------------------------------------------------------
# SiLU and Mish: x times a gate computed from x

def _fuse_self_gated(graph: Graph, gate: tuple[str, ...], op: str) -> tuple[Graph, bool]:
    """Mul(x, g(x)) -> op(x), where g is the chain of unary ops `gate` (outermost first)
    applied to the same x, in either operand order."""
    nodes, changed = [], False
    for node in graph.nodes:
        if node.op == "Mul" and len(node.inputs) == 2:
            a, b = node.inputs
            for x, g in ((a, b), (b, a)):
                for want in gate:
                    if graph[g].op != want:
                        break
                    g = graph[g].inputs[0]
                else:
                    if g == x and tuple(node.shape) == tuple(graph[x].shape):
                        node = Node(node.name, op, (x,), {}, node.shape, node.source, node.opset)
                        changed = True
                        break
        nodes.append(node)
    return (graph.replace(nodes), True) if changed else (graph, False)


def fuse_silu(graph: Graph) -> tuple[Graph, bool]:
    return _fuse_self_gated(graph, ("Sigmoid",), SILU)


def fuse_mish(graph: Graph) -> tuple[Graph, bool]:
    return _fuse_self_gated(graph, ("Tanh", "Softplus"), "Mish")


# ----------------------------------------------------------------------------------------
# GELU

def _backward(graph: Graph, start: str) -> tuple[set[str], list[str]]:
    """Arithmetic nodes (with scalar constants) `start` is computed by, walking back a few
    steps; and the variable values met on the way, nearest first (candidates for x)."""
    inner: set[str] = set()
    seen: list[str] = []
    frontier = [start]
    for _ in range(_MAX_STEPS):
        nxt = []
        for name in frontier:
            if name in seen:
                continue
            seen.append(name)
            node = graph[name]
            if node.op in _ARITH and all(_scalar_const(graph, i) or not graph.is_constant(i) for i in node.inputs):
                inner.add(name)
                nxt.extend(i for i in node.inputs if not graph.is_constant(i))
        frontier = nxt
    return inner, seen


def _forward_region(graph: Graph, core: Node, x: str, users: dict[str, list[Node]]) -> list[Node]:
    """Arithmetic nodes after `core` (or after x: the 0.5 * x factor) reading only x, scalar
    constants and the region itself."""
    inside = {core.name, x}
    region: list[Node] = []
    frontier = [core.name, x]
    for _ in range(_MAX_STEPS):
        nxt = []
        for name in frontier:
            for user in users.get(name, []):
                if user.name in inside or user.op not in _ARITH:
                    continue
                if all(i in inside or _scalar_const(graph, i) for i in user.inputs):
                    inside.add(user.name)
                    region.append(user)
                    nxt.append(user.name)
        frontier = nxt
    order = {n.name: k for k, n in enumerate(graph.nodes)}
    return sorted(region, key=lambda n: order[n.name])


def _evaluate(graph: Graph, names: set[str], x: str, trial: torch.Tensor) -> dict[str, torch.Tensor]:
    """Values of the nodes in `names` (and what they need) with x set to `trial`."""
    rules = _rules()
    env: dict[str, torch.Tensor] = {x: trial}
    for node in graph.nodes:
        if node.name in env or node.name not in names:
            continue
        if node.op == CONSTANT:
            env[node.name] = node.value.unsqueeze(0).to(trial.dtype)
            continue
        if any(i not in env and graph[i].op != CONSTANT for i in node.inputs):
            continue        # depends on something other than x: left out (and so is all after it)
        args = [env[i] if i in env else graph[i].value.unsqueeze(0).to(trial.dtype) for i in node.inputs]
        env[node.name] = rules[node.op].forward(node, args)
    return env


def _gelu_output(graph: Graph, core: Node, users: dict[str, list[Node]]) -> tuple[str, str] | None:
    """(x, name of the value equal to GELU(x)) for an Erf / Tanh node, or None."""
    approximate = "none" if core.op == "Erf" else "tanh"
    inner, candidates = _backward(graph, core.inputs[0])
    gen = torch.Generator().manual_seed(0)
    for x in candidates:
        region = _forward_region(graph, core, x, users)
        if not region:
            continue
        shape = tuple(graph[x].shape)
        trial = torch.randn((_TRIALS, *shape), generator=gen, dtype=torch.float64) * 3
        needed = (inner - {x}) | {core.name} | {n.name for n in region}
        try:
            with torch.no_grad():
                env = _evaluate(graph, needed, x, trial)
        except Exception:   # a region that does not even evaluate is no GELU
            continue
        want = gelu_reference(trial, approximate)
        for node in reversed(region):
            got = env.get(node.name)
            if got is not None and got.shape == want.shape and \
                    bool(((got - want).abs() <= _TOL * (1 + want.abs())).all()):
                return x, node.name
    return None


def fuse_gelu(graph: Graph) -> tuple[Graph, bool]:
    users = graph.consumers()
    replace: dict[str, Node] = {}
    for core in graph.nodes:
        if core.op not in ("Erf", "Tanh") or graph.is_constant(core.inputs[0]):
            continue
        found = _gelu_output(graph, core, users)
        if found is None:
            continue
        x, out = found
        node = graph[out]
        replace[out] = Node(out, "Gelu", (x,), {"approximate": "none" if core.op == "Erf" else "tanh"},
                            node.shape, node.source, node.opset)
    if not replace:
        return graph, False
    return graph.replace([replace.get(n.name, n) for n in graph.nodes]), True


def fuse_activations(graph: Graph) -> tuple[Graph, bool]:
    """All the rewrites above (the canonicalisation pass)."""
    changed = False
    for p in (pow_to_unary, clip_to_unary, fuse_silu, fuse_mish, fuse_gelu):
        graph, modified = p(graph)
        changed = changed or modified
    return graph, changed


# ----------------------------------------------------------------------------------------
# back to standard ONNX (export at opset 17, where Gelu and Mish do not exist yet)

def unfuse_activations(graph: Graph) -> Graph:
    from bounds.graph.passes import _constant, _fresh, check_graph

    if not any(n.op in (POW, SILU, CLIP, "Gelu", "Mish") for n in graph.nodes):
        return graph
    taken = {n.name for n in graph.nodes}
    nodes: list[Node] = []

    def add(base: str, op: str, inputs: tuple[str, ...], like: Node, name: str | None = None, **attrs) -> str:
        name = name or _fresh(f"{like.name}/{base}", taken)
        nodes.append(Node(name, op, inputs, attrs, like.shape, like.source, like.opset))
        return name

    def const(base: str, value: float, like: Node) -> str:
        name = _fresh(f"{like.name}/{base}", taken)
        nodes.append(_constant(name, torch.tensor(value, dtype=torch.float32), like))
        return name

    for node in graph.nodes:
        if node.op == POW:
            add("", "Pow", (node.inputs[0], const("exponent", node.attrs["exponent"], node)), node, node.name)
        elif node.op == CLIP:
            limits = tuple(const(k, node.attrs[k], node) if k in node.attrs else "" for k in ("min", "max"))
            if not limits[0] and limits[1]:
                limits = (const("min", -math.inf, node), limits[1])
            add("", "Clip", (node.inputs[0], *[v for v in limits if v]), node, node.name)
        elif node.op == SILU:
            s = add("sigmoid", "Sigmoid", node.inputs, node)
            add("", "Mul", (node.inputs[0], s), node, node.name)
        elif node.op == "Mish":
            t = add("tanh", "Tanh", (add("softplus", "Softplus", node.inputs, node),), node)
            add("", "Mul", (node.inputs[0], t), node, node.name)
        elif node.op == "Gelu":
            x = node.inputs[0]
            if node.attrs.get("approximate", "none") == "tanh":
                cube = add("cube", "Mul", (x, add("square", "Mul", (x, x), node)), node)
                inner = add("inner", "Add", (x, add("c3", "Mul", (cube, const("a", 0.044715, node)), node)), node)
                scaled = add("scaled", "Mul", (inner, const("k", math.sqrt(2 / math.pi), node)), node)
                t = add("tanh", "Tanh", (scaled,), node)
            else:
                t = add("erf", "Erf", (add("scaled", "Mul", (x, const("k", 1 / math.sqrt(2), node)), node),), node)
            one = add("one_plus", "Add", (t, const("one", 1.0, node)), node)
            half = add("half_x", "Mul", (x, const("half", 0.5, node)), node)
            add("", "Mul", (half, one), node, node.name)
        else:
            nodes.append(node)
    return check_graph(graph.replace(nodes))


__all__ = ["fuse_activations", "fuse_gelu", "fuse_silu", "fuse_mish", "pow_to_unary", "clip_to_unary",
           "unfuse_activations", "SILU", "POW", "CLIP"]
