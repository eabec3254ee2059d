"""Graph rewrites that keep the computed function and make the graph easier to bound.

Each pass maps a Graph to (new graph, modified?) and checks the invariants of its result
(`check_graph`). Passes need filled shapes (as produced by load_onnx). `canonicalise` runs
them all to a fixed point:

* fold_constants    nodes whose inputs are all constant (and Shape of anything) -> Constant
* remove_identities Identity, Dropout and float->float Cast disappear
* fuse_batchnorm    BatchNormalization after Conv / Gemm / MatMul+Add folded into the weights
* fuse_activations  Pow by a constant, GELU, SiLU and Mish export patterns -> one node (bounds.graph.fuse_activations)
* fuse_minmax       MaxMin / GroupSort export patterns -> one native node (bounds.graph.fuse_minmax)
* remove_dead       nodes the outputs do not need are dropped
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from bounds.errors import ModelLoadError, UnsupportedOpError
from bounds.graph.fuse_activations import fuse_activations
from bounds.graph.fuse_minmax import fuse_minmax
from bounds.graph.ir import CONSTANT, INPUT, Graph, Node

Pass = Callable[[Graph], "tuple[Graph, bool]"]

#: ops that only compute shapes / masks; they must be gone once constants are folded
CONSTANT_PRODUCERS = ("Shape", "ConstantOfShape", "Range", "Equal")
_FLOAT_ONNX_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_MAX_ROUNDS = 100


class GraphInvariantError(RuntimeError):
    """A pass produced a malformed graph: a bug in nnverify, not in the model."""


def _rules():
    from bounds.ops import RULES
    return RULES


def check_graph(graph: Graph) -> Graph:
    """Structural invariants every canonical graph satisfies (raises GraphInvariantError)."""
    rules = _rules()
    seen: set[str] = set()
    for node in graph.nodes:
        if node.name in seen:
            raise GraphInvariantError(f"value '{node.name}' is produced twice")
        seen.add(node.name)
        if node.op == CONSTANT:
            if not isinstance(node.attrs.get("value"), torch.Tensor) or node.inputs:
                raise GraphInvariantError(f"constant '{node.name}' has no tensor value or has inputs")
        elif node.op == INPUT:
            if node.inputs:
                raise GraphInvariantError(f"input '{node.name}' has inputs")
        elif node.op not in rules:
            raise GraphInvariantError(f"{node.describe()} has no rule")
        for inp in node.inputs:
            if inp not in seen:
                raise GraphInvariantError(f"{node.describe()} reads '{inp}' before it is produced")
    for name in graph.inputs:
        if name not in graph or graph[name].op != INPUT:
            raise GraphInvariantError(f"graph input '{name}' is not an Input node")
    for name in graph.outputs:
        if name not in graph:
            raise GraphInvariantError(f"graph output '{name}' has no producer")
    return graph


def _constant(name: str, value: torch.Tensor, like: Node | None = None) -> Node:
    return Node(name, CONSTANT, (), {"value": value}, tuple(value.shape),
                like.source if like else name, like.opset if like else 0)


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------------
# constant folding

def fold_constants(graph: Graph) -> tuple[Graph, bool]:
    """Evaluate every node whose value does not depend on the variable input.

    Shape is folded from the static shape of its input even when that input is variable.
    Afterwards no Shape/ConstantOfShape/Range/Equal may remain: those left depend on the
    input's values, which nnverify does not support (UnsupportedOpError).
    """
    rules = _rules()
    nodes: list[Node] = []
    is_const: dict[str, bool] = {}
    values: dict[str, torch.Tensor] = {}
    changed = False
    for node in graph.nodes:
        if node.op in (INPUT, CONSTANT):
            nodes.append(node)
            is_const[node.name] = node.op == CONSTANT
            if node.op == CONSTANT:
                values[node.name] = node.value
            continue
        value = None
        try:
            with torch.no_grad():
                if node.op == "Shape" and not is_const[node.inputs[0]]:
                    meta = torch.empty((1, *graph[node.inputs[0]].shape), device="meta")
                    value = rules["Shape"].forward(node, [meta])[0]
                elif all(is_const[i] for i in node.inputs):
                    out = rules[node.op].forward(node, [values[i].unsqueeze(0) for i in node.inputs])
                    if out.dim() == 0 or out.shape[0] != 1:
                        raise GraphInvariantError(f"folding {node.describe()} produced a batch of {tuple(out.shape)}")
                    value = out[0]
        except (GraphInvariantError, UnsupportedOpError):
            raise
        except Exception as exc:
            raise ModelLoadError(f"computing the constant {node.describe()} failed: {exc}") from exc
        if value is None:
            nodes.append(node)
            is_const[node.name] = False
            continue
        if node.shape and tuple(value.shape) != tuple(node.shape):
            raise GraphInvariantError(f"folding {node.describe()} gave shape {tuple(value.shape)}, "
                                      f"expected {tuple(node.shape)}")
        value = value.detach().clone() if value.is_floating_point() else value.detach().contiguous()
        nodes.append(_constant(node.name, value, node))
        is_const[node.name] = True
        values[node.name] = value
        changed = True
    left = [n for n in nodes if n.op in CONSTANT_PRODUCERS]
    if left:
        raise UnsupportedOpError([(n.op, n.source or n.name, n.opset) for n in left], supported=[*_rules(), CONSTANT],
                                 reasons=["it depends on the values of the variable input"] * len(left))
    if not changed:
        return graph, False
    return check_graph(graph.replace(nodes)), True


# ---------------------------------------------------------------------------------------
# identities

def _floating_values(graph: Graph) -> dict[str, bool]:
    """Whether each value is floating-point (inferred from the ops; inputs are floats)."""
    res: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op == INPUT:
            res[node.name] = True
        elif node.op == CONSTANT:
            res[node.name] = node.value.is_floating_point()
        elif node.op == "Cast":
            res[node.name] = int(node.attrs.get("to", 1)) in _FLOAT_ONNX_TYPES
        elif node.op in ("Shape", "Equal"):
            res[node.name] = False
        elif node.op == "ConstantOfShape":
            v = node.attrs.get("value")
            res[node.name] = True if v is None else v.is_floating_point()
        elif node.op == "Where":
            res[node.name] = res[node.inputs[1]]
        else:
            res[node.name] = res[node.inputs[0]] if node.inputs else True
    return res


def remove_identities(graph: Graph) -> tuple[Graph, bool]:
    """Drop Identity, Dropout (inference) and Cast between floating types.

    Consumers read the node's input instead. When the removed node is a graph output, its
    producer is renamed to the output's name (unless the producer is the graph input or
    itself an output: then the node stays, so output names remain valid).
    """
    floating = _floating_values(graph)

    def removable(node: Node) -> bool:
        if node.op in ("Identity", "Dropout"):
            return len(node.inputs) >= 1
        if node.op == "Cast":
            return floating[node.inputs[0]] and int(node.attrs.get("to", 1)) in _FLOAT_ONNX_TYPES
        return False

    outputs = set(graph.outputs)
    alias: dict[str, str] = {}
    kept: list[Node] = []
    changed = False
    for node in graph.nodes:
        if node.inputs:
            ins = tuple(alias.get(i, i) for i in node.inputs)
            if ins != node.inputs:
                node = replace(node, inputs=ins)
        if removable(node) and node.name not in outputs:
            alias[node.name] = node.inputs[0]
            changed = True
            continue
        kept.append(node)
    # removable nodes that are graph outputs: rename their producer instead
    index = {n.name: n for n in kept}
    for out_node in [n for n in kept if removable(n) and n.name in outputs]:
        out_node = index[out_node.name]
        src = out_node.inputs[0]
        if index[src].op == INPUT or src in outputs:
            continue
        new_name = out_node.name
        renamed: list[Node] = []
        for n in kept:
            if n.name == new_name:
                continue
            if n.name == src:
                n = replace(n, name=new_name)
            if src in n.inputs:
                n = replace(n, inputs=tuple(new_name if i == src else i for i in n.inputs))
            renamed.append(n)
        kept = renamed
        index = {n.name: n for n in kept}
        changed = True
    if not changed:
        return graph, False
    return check_graph(graph.replace(kept)), True


# ---------------------------------------------------------------------------------------
# batch-norm fusion

def _bn_affine(graph: Graph, bn: Node) -> tuple[torch.Tensor, torch.Tensor] | None:
    """BatchNormalization as y = s*x + t per channel (float64), or None if not constant."""
    if len(bn.inputs) < 5 or not all(graph.is_constant(i) for i in bn.inputs[1:5]):
        return None
    scale, bias, mean, var = (graph[i].value.double().reshape(-1) for i in bn.inputs[1:5])
    if not scale.numel() == bias.numel() == mean.numel() == var.numel():
        return None
    s = scale / torch.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return s, bias - mean * s


def _fuse_one(graph: Graph, bn: Node, users: dict[str, list[Node]], taken: set[str]):
    """The replacement (nodes to insert at the producer, names to drop) or None."""
    outputs = set(graph.outputs)
    if bn.attrs.get("spatial", 1) == 0 or not bn.inputs:
        return None
    prod = graph[bn.inputs[0]]
    if prod.name in outputs or len(users[prod.name]) != 1 or prod.op in (INPUT, CONSTANT):
        return None
    affine = _bn_affine(graph, bn)
    if affine is None:
        return None
    s, t = affine
    channels = s.numel()

    def const(name: str) -> torch.Tensor | None:
        return graph[name].value if graph.is_constant(name) else None

    if prod.op == "Conv":
        w = const(prod.inputs[1])
        b = const(prod.inputs[2]) if len(prod.inputs) > 2 else None
        if w is None or (len(prod.inputs) > 2 and b is None) or graph.is_constant(prod.inputs[0]):
            return None
        if w.shape[0] != channels or not w.is_floating_point():
            return None
        b = torch.zeros(channels, dtype=torch.float64) if b is None else b.double().reshape(-1)
        w_new = (w.double() * s.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        b_new = (b * s + t).to(w.dtype)
        wn, bnm = _fresh(f"{bn.name}::weight", taken), _fresh(f"{bn.name}::bias", taken)
        fused = Node(bn.name, "Conv", (prod.inputs[0], wn, bnm), prod.attrs, bn.shape, prod.source, prod.opset)
        return [_constant(wn, w_new, prod), _constant(bnm, b_new, prod), fused], {prod.name}

    if prod.op == "Gemm":
        if len(prod.shape) != 2 or prod.shape[1] != channels:
            return None
        w = const(prod.inputs[1])
        c = const(prod.inputs[2]) if len(prod.inputs) > 2 else None
        if w is None or (len(prod.inputs) > 2 and c is None) or not w.is_floating_point():
            return None
        trans_b = bool(prod.attrs.get("transB", 0))
        w_new = (w.double() * (s.reshape(-1, 1) if trans_b else s.reshape(1, -1))).to(w.dtype)
        beta = float(prod.attrs.get("beta", 1.0))
        c_new = (t if c is None else beta * c.double() * s + t).to(w.dtype)
        attrs = dict(prod.attrs)
        attrs["beta"] = 1.0
        wn, cn = _fresh(f"{bn.name}::weight", taken), _fresh(f"{bn.name}::bias", taken)
        fused = Node(bn.name, "Gemm", (prod.inputs[0], wn, cn), attrs, bn.shape, prod.source, prod.opset)
        return [_constant(wn, w_new, prod), _constant(cn, c_new, prod), fused], {prod.name}

    if prod.op == "Add" and len(prod.shape) == 2 and prod.shape[1] == channels:
        k = next((k for k in (0, 1) if graph.is_constant(prod.inputs[k])), None)
        if k is None:
            return None
        mm = graph[prod.inputs[1 - k]]
        if mm.op != "MatMul" or mm.name in outputs or len(users[mm.name]) != 1 or len(mm.shape) != 2:
            return None
        w = const(mm.inputs[1])
        if w is None or w.dim() != 2 or w.shape[1] != channels or graph.is_constant(mm.inputs[0]):
            return None
        b = graph[prod.inputs[k]].value
        if b.dim() > 2 or (b.dim() >= 1 and b.shape[-1] not in (1, channels)):
            return None
        w_new = (w.double() * s.reshape(1, -1)).to(w.dtype)
        b_new = (b.double() * s + t).to(b.dtype if b.is_floating_point() else w.dtype)
        wn, bnm = _fresh(f"{bn.name}::weight", taken), _fresh(f"{bn.name}::bias", taken)
        new_mm = Node(mm.name, "MatMul", (mm.inputs[0], wn), mm.attrs, mm.shape, mm.source, mm.opset)
        new_add = Node(bn.name, "Add", (mm.name, bnm), prod.attrs, bn.shape, prod.source, prod.opset)
        # inserted at the Add's position; the MatMul moves there too (its inputs precede it)
        return [_constant(wn, w_new, mm), _constant(bnm, b_new, prod), new_mm, new_add], {mm.name, prod.name}
    return None


def fuse_batchnorm(graph: Graph) -> tuple[Graph, bool]:
    """Fold BatchNormalization into a directly preceding Conv, Gemm or MatMul+Add.

    Only when the producer's output feeds nothing but the BatchNormalization (and is not a
    graph output); the fused node takes the BatchNormalization's name.
    """
    changed = False
    while True:
        users = graph.consumers()
        taken = {n.name for n in graph.nodes}
        for bn in graph.nodes:
            if bn.op != "BatchNormalization":
                continue
            found = _fuse_one(graph, bn, users, taken)
            if found is None:
                continue
            new_nodes, drop = found
            anchor = bn.inputs[0]  # the producer (Add for MatMul+Add): insert there
            nodes: list[Node] = []
            for n in graph.nodes:
                if n.name == anchor:
                    nodes.extend(new_nodes)
                elif n.name in drop or n.name == bn.name:
                    continue
                else:
                    nodes.append(n)
            graph = check_graph(graph.replace(nodes))
            changed = True
            break
        else:
            return graph, changed


# ---------------------------------------------------------------------------------------
# dead code

def remove_dead(graph: Graph) -> tuple[Graph, bool]:
    """Drop every node the outputs do not depend on (the graph inputs always stay)."""
    needed = set(graph.outputs) | set(graph.inputs)
    for node in reversed(graph.nodes):
        if node.name in needed:
            needed.update(node.inputs)
    kept = [n for n in graph.nodes if n.name in needed]
    if len(kept) == len(graph.nodes):
        return graph, False
    return check_graph(graph.replace(kept)), True


PASSES: tuple[Pass, ...] = (fold_constants, remove_identities, fuse_batchnorm, fuse_activations, fuse_minmax,
                            remove_dead)


def canonicalise(graph: Graph, passes: tuple[Pass, ...] = PASSES) -> Graph:
    """Run the passes until none changes the graph."""
    check_graph(graph)
    for _ in range(_MAX_ROUNDS):
        changed = False
        for p in passes:
            graph, modified = p(graph)
            changed = changed or modified
        if not changed:
            return graph
    raise GraphInvariantError(f"graph passes did not reach a fixed point in {_MAX_ROUNDS} rounds")


def check_supported(graph: Graph) -> None:
    """Inputs that a rule needs constant (weights, shapes, axes) must be constant.

    Raises UnsupportedOpError listing every node that reads a variable where its rule needs
    a constant: such models evaluate, but no bound can be propagated through them.
    """
    rules = _rules()
    entries, reasons = [], []
    for node in graph.nodes:
        if node.op in (INPUT, CONSTANT):
            continue
        for k in rules[node.op].constant_inputs:
            if k < len(node.inputs) and not graph.is_constant(node.inputs[k]):
                entries.append((node.op, node.source or node.name, node.opset))
                reasons.append(f"its input #{k} ('{node.inputs[k]}') must be a constant but depends on the input")
                break
    if entries:
        raise UnsupportedOpError(entries, supported=[*rules, CONSTANT], reasons=reasons)


__all__ = ["fold_constants", "remove_identities", "fuse_batchnorm", "remove_dead", "canonicalise",
           "check_graph", "check_supported", "GraphInvariantError", "PASSES", "CONSTANT_PRODUCERS"]
