"""Graphs whose weights are a module's live parameters: what certified training bounds.

`from_torch` copies every parameter into a detached constant, so bounds computed on its
graph carry no gradient. Training needs the same graph with the module's current tensors
in it, every step, without tracing again:

    pg = parametric_graph(model, (1, 1, 28, 28))    # traces once
    graph = pg.bind(dict(model.named_parameters()) | dict(model.named_buffers()))

`bind` builds a new Graph (a few dozen small Node objects) whose bound constants ARE the
given tensors, so IBP/CROWN over it are differentiable w.r.t. the parameters. Tensors may
be overridden per step (BatchNorm in training mode binds its batch statistics in place of
the running ones).

How constants are matched to tensors: the importer names a parameter's constant after the
parameter's qualified name ("0.weight"; "fc.weight.T" when it stored the transpose). A
name alone is not trusted: the constant must also equal the tensor's value at import time.
Everything else (shapes, axes, folded expressions of parameters) stays a frozen constant;
`frozen` names the trainable parameters that thereby get no gradient, so callers can refuse
such models instead of training them silently wrong.

The template is canonicalised like every imported graph except that BatchNormalization is
not folded into the preceding layer: the fold would turn weight and statistics into one
derived constant. `bind` folds it afterwards, from the bound tensors (differentiably), so
the bound graph has the verifier's structure; the folded weights differ from the verifier's
only by rounding (it folds in float64 and rounds to the model's dtype).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn

from bounds.graph.ir import CONSTANT, Graph, Node, graph_to
from bounds.graph.passes import PASSES, canonicalise, check_supported, fuse_batchnorm

log = logging.getLogger(__name__)

__all__ = ["ParametricGraph", "parametric_graph", "module_signature", "module_tensors"]


@dataclass(frozen=True)
class ParametricGraph:
    """A graph template plus which of its constants stand for which module tensors.

    graph      canonical (BatchNormalization kept), float32 unless moved with `to`
    bindings   constant name -> (qualified tensor name in the module, transposed?)
    frozen     trainable parameters no constant is bound to (they get no gradient)
    signature  module_signature() of the module it was built from
    """

    graph: Graph
    bindings: Mapping[str, tuple[str, bool]]
    frozen: tuple[str, ...] = ()
    signature: tuple = field(default=(), compare=False)
    folds: tuple[tuple[str, str, str], ...] = ()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ParametricGraph":
        """The same template with its floating constants on `device` with `dtype`."""
        return ParametricGraph(graph_to(self.graph, device, dtype), self.bindings, self.frozen, self.signature,
                               self.folds)

    def bind(self, tensors: Mapping[str, torch.Tensor], fold: bool = True) -> Graph:
        """The template with every bound constant replaced by `tensors[qualified name]`.

        Constants whose tensor is missing from `tensors` keep their template value.
        `fold`: fold each BatchNormalization listed in `folds` into its producer with the
        bound tensors (differentiably), as the verifier's graph has it; `fold=False` keeps
        the template's structure.
        """
        nodes = []
        for node in self.graph.nodes:
            target = self.bindings.get(node.name) if node.op == CONSTANT else None
            if target is not None and target[0] in tensors:
                value = tensors[target[0]]
                if target[1]:
                    value = value.transpose(-1, -2)
                node = Node(node.name, CONSTANT, (), {"value": value}, node.shape, node.source, node.opset)
            nodes.append(node)
        graph = self.graph.replace(nodes)
        return fold_batchnorms(graph, self.folds) if fold and self.folds else graph


def module_signature(module: nn.Module) -> tuple:
    """What a parametric graph depends on besides tensor values: submodule types and
    tensor shapes. A different signature means the cached template is stale."""
    mods = tuple((name, type(m).__qualname__) for name, m in module.named_modules())
    shapes = tuple((name, tuple(t.shape)) for name, t in module_tensors(module).items())
    return mods + shapes


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by qualified name (what `ParametricGraph.bind` takes)."""
    tensors = dict(module.named_buffers())
    tensors.update(module.named_parameters())
    return tensors


def parametric_graph(module: nn.Module, input_shape: tuple[int, ...] | torch.Size) -> ParametricGraph:
    """Trace `module` once (see bounds.graph.torch_import) and record its bindings."""
    from bounds.graph.torch_import import from_torch

    graph = from_torch(module, input_shape, canonical=False)
    graph = canonicalise(graph, tuple(p for p in PASSES if p is not fuse_batchnorm))
    check_supported(graph)
    tensors = module_tensors(module)
    bindings: dict[str, tuple[str, bool]] = {}
    for node in graph.nodes:
        if node.op != CONSTANT or not node.value.is_floating_point():
            continue
        match = _match(node, tensors)
        if match is not None:
            bindings[node.name] = match
    bound = {name for name, _ in bindings.values()}
    frozen = tuple(name for name, p in module.named_parameters() if p.requires_grad and name not in bound)
    if frozen:
        log.info("parameters not bound to the graph of %s (no gradient through bounds): %s",
                 type(module).__name__, ", ".join(frozen))
    return ParametricGraph(graph, bindings, frozen, module_signature(module), _fold_plan(graph))


# ----------------------------------------------------------------------------------------
# BatchNormalization folded at bind time
#
# The template keeps BatchNormalization apart so that its parameters and statistics stay
# bindable; folding it into the Conv / Gemm before it once the tensors are bound gives the
# verifier's graph structure and spares the bounds a per-element affine map over every
# such activation (forward and backward: ~15% of an IBP training step of a conv net on
# the CPU). The folded weights are computed from the bound tensors, so gradients reach the
# BatchNorm parameters (and, in training mode, the batch statistics) through them.

def _fold_plan(graph: Graph) -> tuple[tuple[str, str, str], ...]:
    """(BatchNormalization name, fused weight name, fused bias name) for every BN that
    directly follows a Conv or a 2-D Gemm with constant weights, as bounds.graph.passes'
    fuse_batchnorm would fold it."""
    users = graph.consumers()
    taken = {n.name for n in graph.nodes}
    plan = []
    for bn in graph.nodes:
        if bn.op != "BatchNormalization" or len(bn.inputs) < 5 or bn.attrs.get("spatial", 1) == 0:
            continue
        if not all(graph[i].is_constant for i in bn.inputs[1:5]):
            continue
        prod = graph[bn.inputs[0]]
        if prod.name in graph.outputs or len(users[prod.name]) != 1 or prod.op not in ("Conv", "Gemm"):
            continue
        if graph[prod.inputs[0]].is_constant or not all(graph[i].is_constant for i in prod.inputs[1:]):
            continue
        channels = graph[bn.inputs[1]].value.numel()
        w = graph[prod.inputs[1]].value
        if not w.is_floating_point():
            continue
        if prod.op == "Conv" and w.shape[0] != channels:
            continue
        if prod.op == "Gemm" and (len(prod.shape) != 2 or prod.shape[1] != channels):
            continue
        names = []
        for part in ("weight", "bias"):
            base, k = f"{bn.name}::{part}", 1
            name = base
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
            names.append(name)
        plan.append((bn.name, names[0], names[1]))
    return tuple(plan)


def fold_batchnorms(graph: Graph, plan: tuple[tuple[str, str, str], ...]) -> Graph:
    """The graph with each planned BatchNormalization folded into its producer; the fused
    node takes the BN's name (downstream names are unchanged), the producer's output is gone."""
    at = {graph[bn].inputs[0]: (graph[bn], wn, bname) for bn, wn, bname in plan}
    folded = {bn for bn, _, _ in plan}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.name in folded:
            continue
        if node.name not in at:
            nodes.append(node)
            continue
        bn, wn, bname = at[node.name]
        scale, shift, mean, var = (graph[i].value.reshape(-1) for i in bn.inputs[1:5])
        s = scale / torch.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        t = shift - mean * s
        w = graph[node.inputs[1]].value
        c = graph[node.inputs[2]].value if len(node.inputs) > 2 else None
        attrs = node.attrs
        if node.op == "Conv":
            w_new = w * s.reshape(-1, *([1] * (w.dim() - 1)))
            b_new = t if c is None else c.reshape(-1) * s + t
        else:   # Gemm: alpha stays, beta is absorbed into the new bias
            w_new = w * (s.reshape(-1, 1) if node.attrs.get("transB", 0) else s.reshape(1, -1))
            b_new = t if c is None else float(node.attrs.get("beta", 1.0)) * c * s + t
            attrs = {**node.attrs, "beta": 1.0}
        for name, value in ((wn, w_new), (bname, b_new)):
            nodes.append(Node(name, CONSTANT, (), {"value": value}, tuple(value.shape), node.source, node.opset))
        nodes.append(Node(bn.name, node.op, (node.inputs[0], wn, bname), attrs, bn.shape, node.source, node.opset))
    return graph.replace(nodes)


def _match(node: Node, tensors: dict[str, torch.Tensor]) -> tuple[str, bool] | None:
    """(tensor name, transposed) when the constant is exactly that module tensor."""
    for name, transposed in ((node.name, False), (node.name[:-2], True) if node.name.endswith(".T") else (None, False)):
        t = tensors.get(name) if name is not None else None
        if t is None or not t.is_floating_point():
            continue
        ref = t.detach().transpose(-1, -2) if transposed and t.dim() >= 2 else t.detach()
        if tuple(ref.shape) == tuple(node.value.shape) and torch.equal(ref.cpu().to(node.value.dtype), node.value):
            return name, transposed
    return None
