"""Small ONNX models built with onnx.helper, and the onnxruntime reference to compare with.

Conventions: `x` is the single variable input; constants are given as numpy arrays and
become initializers named after their key. `compare` evaluates a whole batch through our
interpreter at once and onnxruntime one point at a time.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8  # what onnxruntime accepts for every opset used here
INT64_MAX = 2 ** 63 - 1
INT64_MIN = -(2 ** 63)


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] | str, name: str | None = None,
         domain: str | None = None, **attrs) -> onnx.NodeProto:
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    return helper.make_node(op, list(inputs), outputs, name=name or outputs[0], domain=domain, **attrs)


def model(nodes: Iterable[onnx.NodeProto], input_shape: Sequence[int | str] | None,
          outputs: Sequence[str] | str = "y", consts: Mapping[str, np.ndarray] | None = None,
          opset: int = 13, input_name: str = "x", extra_inputs: Sequence[onnx.ValueInfoProto] = (),
          input_type: int = TensorProto.FLOAT, extra_opsets: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """A model with one float input `x` of `input_shape` and untyped-shape float outputs."""
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    inputs = [helper.make_tensor_value_info(input_name, input_type, input_shape)] if input_shape is not None else []
    inputs += list(extra_inputs)
    inits = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in (consts or {}).items()]
    graph = helper.make_graph(list(nodes), "test", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def single(op: str, input_shape: Sequence[int], consts: Mapping[str, np.ndarray] | None = None,
           extra_inputs: Sequence[str] = (), opset: int = 13, **attrs) -> onnx.ModelProto:
    """x -> op(x, *extra_inputs) -> y, the extra inputs being constants (or '' for omitted)."""
    return model([node(op, ["x", *extra_inputs], "y", **attrs)], input_shape, "y", consts, opset)


def ort_outputs(m: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime's outputs for a batch of inputs x (B, *input_shape), one point at a time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    per_point = [sess.run(None, {name: x[i]}) for i in range(x.shape[0])]
    return [np.stack([p[k] for p in per_point]) for k in range(len(per_point[0]))]


def compare(m: onnx.ModelProto, batch: int = 4, scale: float = 1.0, low: float | None = None,
            seed: int = 0, rtol: float = 1e-5, atol: float = 1e-5):
    """Load `m`, check every output against onnxruntime on `batch` random points.

    Returns (graph, max abs difference). Inputs are N(0, scale) (or U(low, low+scale)).
    """
    from bounds.graph import evaluate, load_onnx

    graph = load_onnx(m.SerializeToString())
    rng = np.random.default_rng(seed)
    shape = (batch, *graph.input.shape)
    x = (rng.uniform(low, low + scale, shape) if low is not None else rng.normal(0, scale, shape)).astype(np.float32)
    refs = ort_outputs(m, x)
    ours = evaluate(graph, torch.from_numpy(x))
    worst = 0.0
    for name, ref in zip(graph.outputs, refs):
        got = ours[name]
        got = got.expand(batch, *got.shape[1:]) if got.shape[0] == 1 else got
        got = got.detach().numpy()
        assert got.shape == ref.shape, f"output '{name}': shape {got.shape} vs onnxruntime {ref.shape}"
        static = tuple(graph[name].shape)
        assert static == ref.shape[1:], f"static shape of '{name}' {static} vs {ref.shape[1:]}"
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=f"output '{name}'")
        if ref.size:
            worst = max(worst, float(np.abs(got.astype(np.float64) - ref).max()))
    return graph, worst


def f32(*shape: int, seed: int = 1, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed + sum(shape)).normal(0, scale, shape)).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)
