"""The affine pieces of a graph between activation layers: evaluated, written down densely,
or - when the dense matrix would be too large - recognised as a product of structured factors
(bounds.lipschitz.structured) whose norms bound the piece's Lipschitz constant."""
from __future__ import annotations

import math

import torch

from bounds.graph.ir import CONSTANT, INPUT, Graph, Node
from bounds.lipschitz.chain import DTYPE
from bounds.lipschitz.structured import (ConvFactor, DenseFactor, Factor, FixedFactor, ScaleFactor,
                                         StructuredAffine, fold_scales)

#: largest segment matrix (rows x columns) built densely
MAX_DENSE = 50_000_000


class ChainError(ValueError):
    """The network is not a chain LipSDP can read (the message says why)."""


def _forward(node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    from bounds.ops import RULES
    return RULES[node.op].forward(node, xs)


def size(graph: Graph, values: list[str]) -> int:
    return sum(int(math.prod(graph[v].shape)) for v in values)


def evaluator(graph: Graph, sources: list[str], targets: list[str]):
    """fn(x (B, n_sources)) -> (B, n_targets): the nodes between sources and targets."""
    needed: set[str] = set()
    todo = list(targets)
    while todo:
        cur = todo.pop()
        if cur in needed or cur in sources:
            continue
        needed.add(cur)
        todo.extend(graph[cur].inputs)
    order = [node for node in graph.nodes if node.name in needed]
    for node in order:
        if node.op == INPUT:
            raise ChainError(f"'{node.name}' is read past the first activation layer: residual connections "
                             f"are not supported")
    shapes = [graph[s].shape for s in sources]

    def fn(x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {}
        pos = 0
        for s, shape in zip(sources, shapes):
            m = int(math.prod(shape))
            env[s] = x[:, pos:pos + m].reshape(-1, *shape)
            pos += m
        for node in order:
            if node.op == CONSTANT:
                env[node.name] = node.value.unsqueeze(0).to(x.dtype)
            else:
                env[node.name] = _forward(node, [env[i] for i in node.inputs])
        return torch.cat([env[t].reshape(env[t].shape[0], -1).expand(x.shape[0], -1) for t in targets], 1)

    fn.order = order   # type: ignore[attr-defined]
    return fn


def dense_segment(graph: Graph, sources: list[str], targets: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) with concat(targets) = W concat(sources) + b, by evaluating the affine nodes
    between them on zero and on every unit vector (and checking affinity on a random point)."""
    n_in, n_out = size(graph, sources), size(graph, targets)
    if n_in * n_out > MAX_DENSE:
        raise ChainError(f"a segment would need a dense {n_out} x {n_in} matrix")
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(1, n_in, generator=gen, dtype=DTYPE)
    fn = evaluator(graph, sources, targets)
    ends = fn(torch.cat([torch.zeros(1, n_in, dtype=DTYPE), probe]))
    b = ends[0]
    W = torch.empty(n_out, n_in, dtype=DTYPE)
    chunk = max(1, min(n_in, 2 ** 24 // max(n_in + n_out, 1)))   # unit vectors evaluated at once
    for lo in range(0, n_in, chunk):
        hi = min(n_in, lo + chunk)
        units = torch.zeros(hi - lo, n_in, dtype=DTYPE)
        units[:, lo:hi] = torch.eye(hi - lo, dtype=DTYPE)
        W[:, lo:hi] = (fn(units) - b).T
    check = W @ probe[0] + b
    scale = float(torch.cat([ends.abs().flatten(), W.abs().max().reshape(1)]).max())
    if not torch.allclose(check, ends[1], rtol=1e-6, atol=1e-8 * (1 + scale)):
        culprit = _first_nonlinear(fn.order, set(sources))
        raise ChainError(f"the nodes between {sources[:2]} and {targets[:2]} are not affine"
                         + (f": {culprit.describe()} is not an activation Lipschitz bounds know "
                            f"(slope-bounded elementwise, MaxMin / GroupSort, max pooling) and not linear"
                            if culprit is not None else " (unsupported operator between activations)"))
    return W, b


def _first_nonlinear(order: list[Node], sources: set[str]) -> Node | None:
    """The first node that is neither linear in its variable inputs nor a constant."""
    from bounds.ops import RULES
    from bounds.ops.base import LinearRule

    variable = set(sources)
    for node in order:
        if node.op in (INPUT, CONSTANT) or not any(i in variable for i in node.inputs):
            continue
        variable.add(node.name)
        n_var = sum(i in variable for i in node.inputs)
        if not isinstance(RULES.get(node.op), LinearRule) or (node.op in ("Mul", "Div", "MatMul") and n_var > 1) \
                or (node.op == "Div" and node.inputs[1] in variable):
            return node
    return None


_ORDER_KEEPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Dropout")


def structured_segment(graph: Graph, source: str, target: str) -> StructuredAffine:
    """The segment source -> target as a StructuredAffine, when it is a path of linear
    operators with known norms (Conv, Gemm / MatMul, per-element scalings, BatchNormalization,
    shifts, reshapes, Transpose, constant Pad, Slice, AveragePool); ChainError naming the
    first node that is not."""
    fn = evaluator(graph, [source], [target])
    order: list[Node] = fn.order
    n_in, n_out = size(graph, [source]), size(graph, [target])
    with torch.no_grad():
        consts = _constants(order)
    variable = {source}
    factors: list[Factor] = []
    for node in order:
        if node.name in consts:
            continue
        var = [k for k, i in enumerate(node.inputs) if i in variable]
        if not var:
            continue
        if len(var) != 1:
            raise ChainError(f"{node.describe()} combines two values that depend on the previous layer; "
                             f"this {n_out} x {n_in} segment is too large to write down densely")
        variable.add(node.name)
        factor = _factor(graph, node, var[0], consts)
        if factor is not None:
            factors.append(factor)
    if target not in variable:
        raise ChainError(f"the segment into '{target}' does not read '{source}'")
    return StructuredAffine(n_in, n_out, tuple(fold_scales(factors)), fn, target)


def _constants(order: list[Node]) -> dict[str, torch.Tensor]:
    """Values of the nodes that do not depend on the segment's input (unbatched)."""
    env: dict[str, torch.Tensor] = {}
    for node in order:
        if node.op == CONSTANT:
            env[node.name] = node.value.to(DTYPE) if node.value.is_floating_point() else node.value
        elif node.inputs and all(i in env for i in node.inputs):
            env[node.name] = _forward(node, [env[i].unsqueeze(0) for i in node.inputs])[0]
    return env


def _factor(graph: Graph, node: Node, var: int, consts: dict[str, torch.Tensor]) -> Factor | None:
    op = node.op
    x_shape = graph[node.inputs[var]].shape
    unsupported = ChainError(f"{node.describe()}: no structured norm bound for this use of {op}; the segment "
                             f"is too large to write down densely")
    other = [consts.get(i) for k, i in enumerate(node.inputs) if k != var]
    if op in ("Add", "Sub", "Mul", "Div") and tuple(graph[node.name].shape) != tuple(x_shape):
        raise unsupported                             # broadcasting the variable copies entries
    if op in _ORDER_KEEPING or op in ("Add", "Sub", "Neg"):
        return None                                   # shifts, sign flips and reshapes: norm 1
    if op in ("Transpose",):
        return FixedFactor("transpose")
    if op == "Slice":
        return FixedFactor("slice")
    if op == "Pad":
        mode = node.attrs.get("mode", "constant")
        if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or var != 0:
            raise unsupported
        return FixedFactor("pad")
    if op in ("Mul", "Div"):
        if op == "Div" and var != 0:
            raise unsupported
        c = other[0]
        if c is None:
            raise unsupported
        c = c.to(DTYPE)
        if op == "Div":
            c = 1.0 / c
        out_shape = graph[node.name].shape
        return ScaleFactor(torch.broadcast_to(c, out_shape).reshape(-1).clone())
    if op == "BatchNormalization":
        scale, _, _, var_ = (consts[i].to(DTYPE).reshape(-1) for i in node.inputs[1:5])
        s = scale / torch.sqrt(var_ + node.attrs.get("epsilon", 1e-5))
        shape = graph[node.name].shape
        view = [1] * len(shape)
        view[1] = -1
        return ScaleFactor(torch.broadcast_to(s.reshape(view), shape).reshape(-1).clone())
    if op == "Conv":
        if var != 0 or node.inputs[1] not in consts:
            raise unsupported
        from bounds.ops.conv import spatial_pads
        w = consts[node.inputs[1]].to(DTYPE)
        n = w.dim() - 2
        strides = tuple(node.attrs.get("strides", [1] * n))
        dil = tuple(node.attrs.get("dilations", [1] * n))
        pads = tuple(spatial_pads(node, list(x_shape[-n:]), list(w.shape[2:]), list(strides), list(dil)))
        return ConvFactor(w, tuple(x_shape[-(n + 1):]), pads, strides, dil, int(node.attrs.get("group", 1)))
    if op == "AveragePool":
        from bounds.ops.conv import spatial_pads
        kernel = list(node.attrs["kernel_shape"])
        n = len(kernel)
        strides = tuple(node.attrs.get("strides", [1] * n))
        pads = spatial_pads(node, list(x_shape[-n:]), kernel, list(strides), [1] * n)
        if any(pads) or node.attrs.get("ceil_mode", 0):
            raise unsupported
        c = x_shape[-(n + 1)]
        w = torch.full((c, 1, *kernel), 1.0 / math.prod(kernel), dtype=DTYPE)
        return ConvFactor(w, tuple(x_shape[-(n + 1):]), (0,) * (2 * n), strides, (1,) * n, c)
    if op == "GlobalAveragePool":
        count = int(math.prod(x_shape[2:]))
        return FixedFactor("global-average", 1 / math.sqrt(count), 1.0)
    if op == "MatMul":
        c = other[0]
        if c is None or c.dim() != 2:
            raise unsupported
        return DenseFactor(c.to(DTYPE) if var == 0 else c.to(DTYPE).T)
    if op == "Gemm":
        if var != 0 or node.attrs.get("transA", 0) or node.inputs[1] not in consts:
            raise unsupported
        B = consts[node.inputs[1]].to(DTYPE)
        M = B.T if node.attrs.get("transB", 0) else B
        return DenseFactor(M * float(node.attrs.get("alpha", 1.0)))
    raise unsupported


__all__ = ["MAX_DENSE", "ChainError", "evaluator", "dense_segment", "structured_segment", "size"]
