"""Fuse the ONNX export patterns of MaxMin / GroupSort activations into one native node.

Exporters write a sorting activation in many ways: split in halves + Max + Min + Concat,
Reshape to pairs + ReduceMax + ReduceMin + Unsqueeze + Concat + Reshape, Reshape + TopK
(a full sort) + Reshape, with Slice / Split / Gather / Transpose variants. Rather than list
the variants, this pass looks for *regions*: a value computed from one variable value x
only through shape plumbing and selections (Max, Min, ReduceMax, ReduceMin, TopK), with the
shape of x. Each region is a candidate for nnverify.GroupSort / nnverify.MaxMin with some
(axis, group, strided, descending); the candidate is accepted when it reproduces the region
exactly on random inputs. Shape plumbing and selections do no arithmetic, so both sides are
the same input values moved around: equality is exact, and a wrong candidate differs on
generic inputs (all values distinct) at once. Selections against constants (a clamp such as
Max(x, -1e9)) exclude a region: they could agree with a sort on the trial inputs only.
Without constants every output is a max/min expression of x's values, which commutes with
monotone maps of x; the trials mix generic inputs with 0/1 inputs (the 0-1 principle of
sorting networks) so that comparisons resolved differently show up.

The fused node keeps the name of the region's output, so consumers and graph outputs are
unchanged; the region's inner nodes become dead unless something else reads them. A fused
MaxMin also reads an nnverify.PairDiff node (b - a per pair, linear): CROWN bounds that
difference like any input of a nonlinear op, and the MaxMin relaxation uses those bounds.
Why fuse: the bound rule of a fused MaxMin relaxes each pair once, keeping max + min = a + b
exact, where separate Max and Min rules relax the same kink twice.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from bounds.graph.ir import CONSTANT, INPUT, Graph, Node

#: ops that only move values around (for constant index / shape inputs)
PLUMBING = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
                      "Gather", "Identity", "Expand"})
#: ops that select among their inputs' values
SELECTIONS = frozenset({"Max", "Min", "ReduceMax", "ReduceMin", "TopK"})
MAXMIN, GROUPSORT, PAIRDIFF = "nnverify.MaxMin", "nnverify.GroupSort", "nnverify.PairDiff"
#: the largest region (in nodes) examined; real exports need a handful
_MAX_REGION = 64
_TRIALS = 3
#: largest group size tried for sorting networks written with Max / Min
_MAX_GROUP = 16


def _rules():
    from bounds.ops import RULES
    return RULES


def _region(graph: Graph, out: Node) -> tuple[list[Node], str] | None:
    """The plumbing/selection nodes `out` is computed from and their one variable source."""
    seen: dict[str, Node] = {}
    sources: set[str] = set()
    todo = [out.name]
    while todo:
        name = todo.pop()
        if name in seen or name in sources:
            continue
        node = graph[name]
        if node.op == CONSTANT:
            continue
        if node.op not in PLUMBING and node.op not in SELECTIONS:
            sources.add(name)
            continue
        if name != out.name and node.op == INPUT:
            sources.add(name)
            continue
        if node.op in ("Max", "Min") and any(graph[i].is_constant for i in node.inputs):
            return None          # a clamp against a constant is not a sort (see _match)
        seen[name] = node
        if len(seen) > _MAX_REGION:
            return None
        todo.extend(node.inputs)
    if len(sources) != 1 or not any(n.op in SELECTIONS for n in seen.values()):
        return None
    order = [n for n in graph.nodes if n.name in seen]
    return order, next(iter(sources))


def _evaluate(graph: Graph, nodes: list[Node], source: str, x: torch.Tensor) -> torch.Tensor:
    rules = _rules()
    env = {source: x}
    for node in nodes:
        args = [env[i] if i in env else graph[i].value.unsqueeze(0) for i in node.inputs]
        env[node.name] = rules[node.op].forward(node, args)
    return env[nodes[-1].name]


def _candidates(shape: tuple[int, ...], groups: list[int]):
    """(op, attrs) for every layout of a sort of groups along some axis of `shape`."""
    for axis in range(len(shape)):
        for g in groups:
            if g < 2 or shape[axis] % g or shape[axis] == 0:
                continue
            for strided in (0, 1) if shape[axis] > g else (0,):
                for desc in (1, 0):
                    op = MAXMIN if g == 2 else GROUPSORT
                    attrs = {"axis": axis, "strided": strided, "descending": desc}
                    if g != 2:
                        attrs["group"] = g
                    yield op, attrs


def _group_sizes(graph: Graph, nodes: list[Node], shape: tuple[int, ...]) -> list[int]:
    """Group sizes worth trying: 2 (MaxMin) first, the k of TopKs, then every divisor of an
    axis up to _MAX_GROUP (sorting networks written with Max / Min)."""
    sizes = [2]
    for node in nodes:
        if node.op == "TopK":
            k = node.attrs.get("k")
            if k is None and len(node.inputs) > 1 and graph[node.inputs[1]].is_constant:
                k = int(graph[node.inputs[1]].value.reshape(-1)[0])
            if k is not None:
                sizes.append(int(k))
    if sum(n.op in ("Max", "Min") for n in nodes) > 2:
        sizes += [d for n in set(shape) for d in range(3, min(n, _MAX_GROUP) + 1) if n % d == 0]
    return list(dict.fromkeys(sizes))


def _match(graph: Graph, out: Node) -> tuple[Node, set[str]] | None:
    found = _region(graph, out)
    if found is None:
        return None
    nodes, source = found
    shape = tuple(graph[source].shape)
    if tuple(out.shape) != shape or not shape:
        return None
    gen = torch.Generator().manual_seed(0)
    xs = torch.cat([torch.randn(_TRIALS, *shape, generator=gen, dtype=torch.float64),
                    torch.randint(0, 2, (2 * _TRIALS, *shape), generator=gen).to(torch.float64)])
    try:
        want = _evaluate(graph, nodes, source, xs)
    except Exception:   # a region our rules cannot evaluate on its own is simply not fused
        return None
    rules = _rules()
    for op, attrs in _candidates(shape, _group_sizes(graph, nodes, shape)):
        fused = Node(out.name, op, (source,), attrs, out.shape, out.source, out.opset)
        got = rules[op].forward(fused, [xs])
        if got.shape == want.shape and torch.equal(got, want):
            return fused, {n.name for n in nodes}
    return None


def fuse_minmax(graph: Graph) -> tuple[Graph, bool]:
    """Replace each MaxMin / GroupSort region by one native node (outermost regions first)."""
    if not any(n.op in SELECTIONS for n in graph.nodes):
        return graph, False
    replaced: dict[str, Node] = {}
    covered: set[str] = set()
    for node in reversed(graph.nodes):
        if node.name in covered or (node.op not in PLUMBING and node.op not in SELECTIONS):
            continue
        hit = _match(graph, node)
        if hit is not None:
            replaced[node.name], inner = hit
            covered |= inner
    if not replaced:
        return graph, False
    from bounds.graph.passes import _fresh, check_graph, remove_dead
    taken = {n.name for n in graph.nodes}
    nodes: list[Node] = []
    for n in graph.nodes:
        fused = replaced.get(n.name)
        if fused is None:
            nodes.append(n)
            continue
        if fused.op == MAXMIN:   # its pair differences, read for their (CROWN) bounds
            diff = _pair_diff(graph, fused, _fresh(f"{fused.name}/diff", taken))
            nodes.append(diff)
            fused = replace(fused, inputs=(fused.inputs[0], diff.name))
        nodes.append(fused)
    # a fused node reads its source, which may come after the region's first node: reorder
    graph = graph.replace(_reorder(nodes))
    graph, _ = remove_dead(graph)
    return check_graph(graph), True


def _pair_diff(graph: Graph, fused: Node, name: str) -> Node:
    rules = _rules()
    attrs = {k: fused.attrs[k] for k in ("axis", "strided")}
    probe = Node(name, PAIRDIFF, (fused.inputs[0],), attrs)
    shape = rules[PAIRDIFF].forward(probe, [torch.zeros(1, *graph[fused.inputs[0]].shape)]).shape[1:]
    return replace(probe, shape=tuple(shape), source=fused.source, opset=fused.opset)


def _reorder(nodes: list[Node]) -> list[Node]:
    """A topological order of `nodes` that keeps the given order where it is already valid."""
    done: set[str] = set()
    names = {n.name for n in nodes}
    pending = list(nodes)
    out: list[Node] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in done or i not in names for i in n.inputs):
                out.append(n)
                done.add(n.name)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("cycle while reordering fused nodes")
        pending = rest
    return out


def unfuse(graph: Graph) -> Graph:
    """Standard ONNX ops for every fused node (to export a canonical graph to ONNX):
    Reshape to groups, one Slice per group member, an odd-even transposition network of
    Max / Min pairs, Concat, Reshape back. The result fuses again on import."""
    from bounds.graph.passes import _constant, _fresh, check_graph

    taken = {n.name for n in graph.nodes}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op == PAIRDIFF:          # only read for bounds by the MaxMin it feeds
            continue
        if node.op not in (MAXMIN, GROUPSORT):
            nodes.append(node)
            continue
        shape = tuple(graph[node.inputs[0]].shape)
        axis = int(node.attrs.get("axis", -1)) % len(shape)
        g = int(node.attrs.get("group", 2)) if node.op == GROUPSORT else 2
        strided = bool(node.attrs.get("strided", 0))
        k = shape[axis] // g
        split = (*shape[:axis], g, k, *shape[axis + 1:]) if strided else (*shape[:axis], k, g, *shape[axis + 1:])
        gaxis = axis if strided else axis + 1
        one = tuple(1 if d == gaxis else s for d, s in enumerate(split))

        def const(base: str, value: list[int]) -> str:
            name = _fresh(f"{node.name}/{base}", taken)
            nodes.append(_constant(name, torch.tensor(value, dtype=torch.int64)))
            return name

        def add(base: str, op: str, inputs: tuple[str, ...], attrs: dict, shp: tuple[int, ...],
                name: str | None = None) -> str:
            name = name or _fresh(f"{node.name}/{base}", taken)
            nodes.append(Node(name, op, inputs, attrs, shp, node.source, node.opset))
            return name

        grouped = add("groups", "Reshape", (node.inputs[0], const("shape", list(split))), {}, split)
        axes = const("axis", [gaxis])
        vals = [add(f"v{i}", "Slice", (grouped, const(f"s{i}", [i]), const(f"e{i}", [i + 1]), axes), {}, one)
                for i in range(g)]
        for t in range(g):                       # descending: position i keeps the larger value
            for i in range(t % 2, g - 1, 2):
                hi = add(f"max{t}_{i}", "Max", (vals[i], vals[i + 1]), {}, one)
                lo = add(f"min{t}_{i}", "Min", (vals[i], vals[i + 1]), {}, one)
                vals[i], vals[i + 1] = hi, lo
        if not int(node.attrs.get("descending", 1)):
            vals.reverse()
        joined = add("sorted", "Concat", tuple(vals), {"axis": gaxis}, split)
        add("back", "Reshape", (joined, const("shape_back", list(shape))), {}, shape, name=node.name)
    return check_graph(graph.replace(_reorder(nodes)))


__all__ = ["fuse_minmax", "unfuse", "MAXMIN", "GROUPSORT", "PAIRDIFF", "PLUMBING", "SELECTIONS"]
