"""Graph IR (or a .mat weight file) -> Chain: affine segments between activation layers.

Activation nodes are the elementwise ops with slope bounds (the rule's `slope_bounds` when it
has one, else the table below) and MaxMin pairs. An activation's *layer* is one more than the
deepest activation its input depends on; the graph is a chain when every segment between
activations reads activations of exactly one earlier layer. Each segment is affine, so its
matrix is read off by evaluating it on the unit vectors (small convolutions become matrices
this way). A segment too large for that (segment.MAX_DENSE entries) is kept structured
(structured.py: Fourier norm bounds), and the network becomes a Composition bounded part by
part (composed.py), as it does when an activation layer is wider than max_sdp_width.

MaxMin in ONNX: torch exports `torch.maximum(a, b)` / `torch.minimum(a, b)` as Max / Min,
which the bound rules do not cover. `load_network` rewrites each Max(a, b) with its Min(a, b)
as  r = Relu(b - a); max = a + r; min = b - r  (exact identities), loads the file normally,
and `chain_from_graph` recognises that trio as one MaxMin pair again.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from bounds.graph.ir import CONSTANT, INPUT, Graph, Node
from bounds.lipschitz.chain import DTYPE, Activation, Chain, Piece
from bounds.lipschitz.composed import Composition, Pooling, assemble_parts
from bounds.lipschitz.dag import Dag
from bounds.lipschitz.structured import StructuredAffine
from bounds.lipschitz.segment import MAX_DENSE, ChainError, dense_segment, evaluator, size, structured_segment

#: slope bounds of the activations nnverify knows, when the rule does not say itself
SLOPES = {"Relu": (0.0, 1.0), "Sigmoid": (0.0, 0.25), "Tanh": (0.0, 1.0),
          # GELU' in [-0.12891, 1.12891], SiLU' in [-0.09984, 1.09984] (rounded outwards); used
          # only once these ops have rules (the extractor evaluates through the rule's fn)
          "Gelu": (-0.129, 1.129), "Silu": (-0.0999, 1.0999), "Softplus": (0.0, 1.0), "Elu": (0.0, 1.0)}
KINDS = {"Relu": "relu", "LeakyRelu": "leaky_relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}
#: activation layers wider than this are not put into an SDP (bounded by their slope alone)
MAX_SDP_WIDTH = 2048


def _rules():
    from bounds.ops import RULES
    return RULES


def slope_bounds(node: Node) -> tuple[float, float] | None:
    rule = _rules().get(node.op)
    own = getattr(rule, "slope_bounds", None)
    if callable(own) and (got := own(node)) is not None:   # None: unbounded or unknown slope
        a, b = got
        return float(a), float(b)
    if node.op == "LeakyRelu":
        alpha = float(node.attrs.get("alpha", 0.01))
        return (min(alpha, 1.0), max(alpha, 1.0))
    return SLOPES.get(node.op)


def _maxmin_trios(graph: Graph) -> dict[str, tuple[str, str, str, str]]:
    """relu name -> (a, b, max_name, min_name) for r = Relu(Sub(b, a)), max = Add(a, r) and
    min = Sub(b, r), the exact form load_network gives Max / Min pairs."""
    users = graph.consumers()
    found = {}
    for node in graph.nodes:
        if node.op != "Relu":
            continue
        d = graph[node.inputs[0]]
        if d.op != "Sub" or len(users[d.name]) != 1:
            continue
        b, a = d.inputs
        outs = users[node.name]
        adds = [u for u in outs if u.op == "Add" and set(u.inputs) == {a, node.name}]
        subs = [u for u in outs if u.op == "Sub" and u.inputs == (b, node.name)]
        if len(outs) == 2 and len(adds) == 1 and len(subs) == 1 and graph[a].shape == graph[b].shape:
            found[node.name] = (a, b, adds[0].name, subs[0].name)
    return found


def chain_from_graph(graph: Graph, max_sdp_width: int = MAX_SDP_WIDTH) -> Chain | Composition:
    """The chain of a feed-forward graph (raises ChainError naming what does not fit)."""
    return _network(graph, False, max_sdp_width)


def network_from_graph(graph: Graph, max_sdp_width: int = MAX_SDP_WIDTH) -> Chain | Dag | Composition:
    """A Chain when the graph is one, else the network with its skip connections (Dag)."""
    return _network(graph, True, max_sdp_width)


def _network(graph: Graph, allow_skips: bool, max_sdp_width: int) -> Chain | Dag | Composition:
    graph = _float64(graph)
    trios = _maxmin_trios(graph)
    trio_nodes = {n for a, b, mx, mn in trios.values() for n in (mx, mn)} | \
                 {graph[r].inputs[0] for r in trios}
    # units: activation "nodes" of the chain; each has inputs (values) and outputs (values)
    units: list[tuple[str, tuple[str, ...], tuple[str, ...], Node]] = []   # (kind, ins, outs, node)
    unit_of_output: dict[str, int] = {}
    bad = []
    for node in graph.nodes:
        if node.name in trio_nodes:
            continue
        if node.name in trios:
            a, b, mx, mn = trios[node.name]
            units.append(("maxmin", (a, b), (mx, mn), node))
        elif node.op in ("nnverify.MaxMin", "nnverify.GroupSort"):   # fused by bounds.graph.fuse_minmax
            units.append(("sort", (node.inputs[0],), (node.name,), node))
        elif node.op in ("MaxPool", "GlobalMaxPool"):
            units.append(("pool", (node.inputs[0],), (node.name,), node))
        elif node.op in ("Max", "Min"):
            bad.append(f"{node.describe()} (a Max without its Min on the same pair, or vice versa)")
            continue
        elif node.op not in (INPUT, CONSTANT) and slope_bounds(node) is not None:
            units.append(("elementwise", (node.inputs[0],), (node.name,), node))
        else:
            continue
        for out in units[-1][2]:
            unit_of_output[out] = len(units) - 1
    if bad:
        raise ChainError("unsupported for Lipschitz bounds: " + "; ".join(bad))
    # sources (unit outputs or the input) each value depends on through affine nodes
    sources: dict[str, frozenset[str]] = {}
    for node in graph.nodes:
        if node.op == INPUT:
            sources[node.name] = frozenset([node.name])
        elif node.op == CONSTANT:
            sources[node.name] = frozenset()
        elif node.name in unit_of_output:
            sources[node.name] = frozenset([node.name])
        else:
            sources[node.name] = frozenset().union(*(sources[i] for i in node.inputs))
    level = {graph.inputs[0]: 0}
    layers: list[list[int]] = []
    skips: list[str] = []
    for k, (kind, ins, outs, node) in enumerate(units):
        deps = frozenset().union(*(sources[i] for i in ins))
        lv = {level[d] for d in deps} or {0}
        if len(lv) != 1:
            skips.append(f"{node.describe()} reads activations of layers {sorted(lv)}")
        here = max(lv) + 1
        for out in outs:
            level[out] = here
        while len(layers) < here:
            layers.append([])
        layers[here - 1].append(k)
    out_deps = sources[graph.outputs[0]]
    lv = {level[d] for d in out_deps}
    if lv != {len(layers)}:
        skips.append(f"the output reads activations of layers {sorted(lv)}")
    if skips and not allow_skips:
        raise ChainError("; ".join(skips) + ": residual connections are not supported by the chain "
                         "formulation (network_from_graph reads them)")
    if skips:
        return _assemble_dag(graph, units, layers, sources)
    return _assemble(graph, units, layers, max_sdp_width)


def _pooling(graph: Graph, units, layer: list[int]) -> tuple[Pooling, list[str], list[str]]:
    if len(layer) != 1:
        raise ChainError(f"{units[layer[0]][3].describe()} shares its layer with other activations; "
                         f"max pooling must be a layer of its own")
    _, (src,), (out,), node = units[layer[0]]
    return (Pooling(size(graph, [src]), size(graph, [out]), _max_cover(graph, node), evaluator(graph, [src], [out]),
                    node.op), [src], [out])


def _max_cover(graph: Graph, node: Node) -> int:
    """The largest number of pooling windows that contain one input element."""
    shape = tuple(graph[node.inputs[0]].shape)
    if node.op == "GlobalMaxPool":
        return 1
    from bounds.ops.minmax import _pool_geometry, _window_index
    kernel, strides, dil, pads = _pool_geometry(node, shape)
    n = len(kernel)
    out = graph[node.name].shape[-n:]
    index, valid = _window_index(list(shape[-n:]), list(out), kernel, strides, dil, pads, "cpu")
    # index[k, p]: the input at kernel offset k of window p; each (k, p) names a distinct pair
    return max(int(torch.bincount(index[valid]).max()), 1) if bool(valid.any()) else 1


def _activation(graph: Graph, units, layer: list[int]) -> tuple[Activation, list[str], list[str]]:
    """One activation layer from its units: (activation, unit inputs, unit outputs), the
    neurons ordered as the inputs are."""
    if any(units[k][0] == "pool" for k in layer):
        raise ChainError(f"{units[layer[0]][3].describe()}: max pooling is bounded only in feed-forward "
                         f"networks (no skip connections)")
    ins: list[str] = []
    for k in layer:
        ins.extend(units[k][1])
    sizes = [int(math.prod(graph[v].shape)) for v in ins]
    pieces, pos, outs = [], 0, []
    for k in layer:
        kind, uin, uout, node = units[k]
        if kind == "maxmin":
            m = sizes[len(outs)]
            idx = torch.stack([torch.arange(pos, pos + m), torch.arange(pos + m, pos + 2 * m)], 1)
            pieces.append(Piece("sort", idx))
            pos += 2 * m
        elif kind == "sort":
            from bounds.ops.minmax import group_index
            pieces.append(Piece("sort", pos + group_index(node, tuple(graph[uin[0]].shape))))
            pos += sizes[len(outs)]
        else:
            m = sizes[len(outs)]
            lo, hi = slope_bounds(node)
            param = float(node.attrs.get("alpha", 0.01)) if node.op == "LeakyRelu" else None
            kindname = KINDS.get(node.op, "slope")
            fn = None
            if kindname == "slope":
                fn = _elementwise_fn(node)
            pieces.append(Piece(kindname, torch.arange(pos, pos + m), lo, hi, param, fn))
            pos += m
        outs.extend(uout)
    return Activation(pos, tuple(pieces)), ins, outs


def _assemble_dag(graph: Graph, units, layers: list[list[int]], sources: dict[str, frozenset[str]]) -> Dag:
    """Every affine segment (into a layer's pre-activations, or into the output) is read off
    over exactly the values it depends on, then placed at their columns of v = (x, h_1, ...)."""
    x = graph.inputs[0]
    column = {x: 0}                               # value -> its first column in v
    width = int(math.prod(graph[x].shape))
    weights, biases, acts = [], [], []

    def segment(targets: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        deps = sorted(frozenset().union(*(sources[t] for t in targets)), key=lambda v: column[v])
        n_out = sum(int(math.prod(graph[t].shape)) for t in targets)
        full = torch.zeros(n_out, width, dtype=DTYPE)
        if not deps:
            W, b = dense_segment(graph, [], targets)
            return full, b
        W, b = dense_segment(graph, deps, targets)
        pos = 0
        for d in deps:
            m = int(math.prod(graph[d].shape))
            full[:, column[d]:column[d] + m] = W[:, pos:pos + m]
            pos += m
        return full, b

    for layer in layers:
        act, ins, outs = _activation(graph, units, layer)
        W, b = segment(ins)
        weights.append(W)
        biases.append(b)
        acts.append(act)
        for v in outs:
            column[v] = width
            width += int(math.prod(graph[v].shape))
    W, b = segment([graph.outputs[0]])
    weights.append(W)
    biases.append(b)
    return Dag(tuple(weights), tuple(acts), tuple(biases), graph.name, int(math.prod(graph[x].shape)))


def _assemble(graph: Graph, units, layers: list[list[int]], max_sdp_width: int) -> Chain | Composition:
    segments, biases, acts = [], [], []
    prev = [graph.inputs[0]]
    for layer in layers + [None]:
        if layer is None:
            act, ins, outs = None, [graph.outputs[0]], []
        elif units[layer[0]][0] == "pool":
            act, ins, outs = _pooling(graph, units, layer)
        else:
            act, ins, outs = _activation(graph, units, layer)
        if ins == prev and size(graph, ins) > max_sdp_width:      # nothing in between: identity
            n = size(graph, ins)
            W, b = StructuredAffine(n, n, (), lambda x: x, "identity"), None
        elif size(graph, prev) * size(graph, ins) <= MAX_DENSE:
            W, b = dense_segment(graph, prev, ins)
        elif len(prev) == 1 and len(ins) == 1:
            W = structured_segment(graph, prev[0], ins[0])
            b = None
        else:
            raise ChainError(f"the segment {prev[:2]} -> {ins[:2]} would need a dense {size(graph, ins)} x "
                             f"{size(graph, prev)} matrix, and a structured one must read one value and write one")
        segments.append(W)
        biases.append(b)
        if act is not None:
            acts.append(act)
        prev = outs
    return assemble_parts(segments, acts, biases, max_sdp_width, graph.name)


def _elementwise_fn(node: Node):
    rule = _rules()[node.op]
    return lambda x: rule.fn(node, x)


def _float64(graph: Graph) -> Graph:
    from bounds.graph.ir import graph_to
    return graph_to(graph, dtype=DTYPE)


# ----------------------------------------------------------------------------------------
# files

def _rewrite_max_min(model) -> int:
    """In place: Max(a, b) / Min(a, b) -> a + relu(b - a) / b - relu(b - a) (shared per pair)."""
    import onnx
    from onnx import helper

    graph = model.graph
    shared: dict[tuple[str, str], str] = {}
    new_nodes, count = [], 0
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | \
            {i.name for i in graph.initializer}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    for node in graph.node:
        if node.op_type in ("Max", "Min") and len(node.input) == 2 and node.domain in ("", "ai.onnx"):
            a, b = node.input
            if (a, b) not in shared and (b, a) in shared:
                a, b = b, a                       # max and min are symmetric in their inputs
            key = (a, b)
            if key not in shared:
                d, r = fresh(f"{node.name or 'maxmin'}/diff"), fresh(f"{node.name or 'maxmin'}/relu")
                new_nodes.append(helper.make_node("Sub", [b, a], [d], name=d))
                new_nodes.append(helper.make_node("Relu", [d], [r], name=r))
                shared[key] = r
            r = shared[key]
            if node.op_type == "Max":
                new_nodes.append(helper.make_node("Add", [a, r], [node.output[0]], name=node.name))
            else:
                new_nodes.append(helper.make_node("Sub", [b, r], [node.output[0]], name=node.name))
            count += 1
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    return count


def load_network(source: str | Path, max_sdp_width: int = MAX_SDP_WIDTH) -> Chain | Dag | Composition:
    """A Chain (or, with skip connections, a Dag; with segments too large for dense matrices,
    a Composition) from an ONNX file (MaxMin as Max / Min pairs allowed) or a MATLAB .mat file."""
    path = Path(source)
    if path.suffix == ".mat":
        return chain_from_mat(path)
    import onnx

    from bounds.graph.onnx_import import load_onnx

    from bounds.errors import ModelLoadError

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors have no common base class
        raise ModelLoadError(f"{path}: not a readable ONNX model ({exc})") from exc
    if _rewrite_max_min(model):
        graph = load_onnx(model.SerializeToString())
    else:
        graph = load_onnx(path)
    net = network_from_graph(graph, max_sdp_width)
    if isinstance(net, Composition):
        return Composition(net.parts, path.stem)
    if isinstance(net, Dag):
        return Dag(net.weights, net.activations, net.biases, path.stem, net.n_inputs)
    return Chain(net.weights, net.activations, net.biases, path.stem)


def chain_from_mat(path: str | Path, activation: str = "maxmin") -> Chain:
    """The weight files of Pauli et al.: key W, a 1 x L cell array of matrices (first layer
    first), MaxMin on consecutive pairs between layers, no biases."""
    import scipy.io

    from bounds.lipschitz.chain import elementwise, maxmin

    data = scipy.io.loadmat(str(path))
    if "W" not in data:
        raise ChainError(f"{path}: no variable 'W' (a cell array of weight matrices)")
    ws = [torch.as_tensor(w, dtype=DTYPE) for w in data["W"].ravel()]
    if activation == "maxmin":
        acts = tuple(maxmin(w.shape[0]) for w in ws[:-1])
    else:
        acts = tuple(elementwise(activation, w.shape[0]) for w in ws[:-1])
    return Chain(tuple(ws), acts, name=Path(path).stem)


__all__ = ["chain_from_graph", "network_from_graph", "load_network", "chain_from_mat", "slope_bounds", "ChainError"]
