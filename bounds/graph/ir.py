"""The computation graph every layer of nnverify reads.

A Graph is frozen and topologically ordered. Every value has exactly one producing Node
(inputs and constants included), named after the value. Shapes are static full ONNX shapes
(symbolic dimensions resolved to 1); at run time every tensor carries one extra leading
batch dimension in front of that shape (see bounds.types).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch

INPUT = "Input"
CONSTANT = "Constant"


@dataclass(frozen=True, eq=False)
class Node:
    name: str                      # name of the value this node produces
    op: str                        # ONNX op type (or a fused op such as "Gelu")
    inputs: tuple[str, ...] = ()   # names of consumed values, in ONNX argument order
    attrs: Mapping[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()    # full static ONNX shape of the value
    source: str = ""               # ONNX node name / torch node, for error messages
    opset: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.attrs, MappingProxyType):
            object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))

    @property
    def is_constant(self) -> bool:
        return self.op == CONSTANT

    @property
    def value(self) -> torch.Tensor:
        """The tensor of a Constant node (unbatched)."""
        return self.attrs["value"]

    def describe(self) -> str:
        where = f" (node '{self.source}')" if self.source and self.source != self.name else ""
        return f"{self.op} -> '{self.name}'{where}"


@dataclass(frozen=True, eq=False)
class Graph:
    nodes: tuple[Node, ...]        # topological order
    inputs: tuple[str, ...]        # variable inputs (the verified input comes first)
    outputs: tuple[str, ...]
    name: str = "graph"

    def __post_init__(self) -> None:
        index = {n.name: n for n in self.nodes}
        object.__setattr__(self, "_index", index)
        seen: set[str] = set()
        for node in self.nodes:
            for inp in node.inputs:
                if inp not in seen:
                    raise ValueError(f"graph is not topologically ordered: {node.describe()} reads '{inp}' before it is produced")
            seen.add(node.name)
        for out in self.outputs:
            if out not in index:
                raise ValueError(f"graph output '{out}' has no producer")

    def __getitem__(self, name: str) -> Node:
        return self._index[name]  # type: ignore[attr-defined]

    def __contains__(self, name: str) -> bool:
        return name in self._index  # type: ignore[attr-defined]

    @property
    def input(self) -> Node:
        return self[self.inputs[0]]

    @property
    def output(self) -> Node:
        return self[self.outputs[0]]

    def is_constant(self, name: str) -> bool:
        return self[name].is_constant

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            for inp in node.inputs:
                users[inp].append(node)
        return users

    def ancestors(self, name: str, stop_at_constants: bool = True) -> set[str]:
        """Names of all non-constant values that `name` depends on, itself included."""
        todo, found = [name], set()
        while todo:
            cur = todo.pop()
            if cur in found:
                continue
            node = self[cur]
            if node.is_constant and stop_at_constants:
                continue
            found.add(cur)
            todo.extend(node.inputs)
        return found

    def last_uses(self) -> dict[str, int]:
        """Index of the last node reading each value (outputs live to the end)."""
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for inp in node.inputs:
                last[inp] = i
        for out in self.outputs:
            last[out] = len(self.nodes)
        return last

    def replace(self, nodes: list[Node] | tuple[Node, ...], outputs: tuple[str, ...] | None = None) -> "Graph":
        return Graph(tuple(nodes), self.inputs, outputs or self.outputs, self.name)

    def summary(self) -> str:
        ops: dict[str, int] = {}
        for n in self.nodes:
            ops[n.op] = ops.get(n.op, 0) + 1
        return ", ".join(f"{k}x{v}" for k, v in sorted(ops.items()))


def graph_to(graph: Graph, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> Graph:
    """A copy of the graph whose floating constants live on `device` with `dtype`."""
    nodes = []
    for node in graph.nodes:
        if node.is_constant:
            value = node.value
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            if device is not None:
                value = value.to(device)
            attrs = dict(node.attrs)
            attrs["value"] = value
            node = Node(node.name, node.op, node.inputs, attrs, node.shape, node.source, node.opset)
        nodes.append(node)
    return graph.replace(nodes)
