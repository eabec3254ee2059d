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
derived constant. Unfused BN computes the same function (the fold is exact in real
arithmetic; float results agree to rounding), so the bounds equal those of the verifier's
fused graph up to rounding.
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

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ParametricGraph":
        """The same template with its floating constants on `device` with `dtype`."""
        return ParametricGraph(graph_to(self.graph, device, dtype), self.bindings, self.frozen, self.signature)

    def bind(self, tensors: Mapping[str, torch.Tensor]) -> Graph:
        """The template with every bound constant replaced by `tensors[qualified name]`.

        Constants whose tensor is missing from `tensors` keep their template value.
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
        return self.graph.replace(nodes)


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
    return ParametricGraph(graph, bindings, frozen, module_signature(module))


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
