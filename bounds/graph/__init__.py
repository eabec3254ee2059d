"""The graph layer: IR, ONNX import, canonicalising passes and concrete evaluation.

`load_onnx`, `evaluate` and `run` are imported lazily: bounds.ops imports bounds.graph.ir,
and the importer and interpreter import bounds.ops, so eager imports here would be circular.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bounds.graph.ir import Graph, Node

if TYPE_CHECKING:  # pragma: no cover
    from bounds.graph.interpret import evaluate, run
    from bounds.graph.onnx_import import load_onnx

_LAZY = {"load_onnx": "bounds.graph.onnx_import", "evaluate": "bounds.graph.interpret",
         "run": "bounds.graph.interpret"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bounds.graph' has no attribute '{name}'")


__all__ = ["load_onnx", "Graph", "Node", "evaluate", "run"]
