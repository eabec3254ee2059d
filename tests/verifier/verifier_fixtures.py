"""Tiny hand-made networks and VNN-LIB properties whose answers are known exactly.

The network (2 inputs, 3 hidden ReLUs, 2 outputs), Gemm -> Relu -> Gemm:

    y0 = relu(x0) + relu(x1)
    y1 = relu(x0 + x1) - 0.5

so y0 - y1 >= 0.5 everywhere (relu is subadditive), with equality where all ReLUs are active
or all inactive. Properties below describe the UNSAFE set, as VNN-LIB does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

W1 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
B1 = np.zeros(3, dtype=np.float32)
W2 = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
B2 = np.array([0.0, -0.5], dtype=np.float32)


def mlp_model(layers: Sequence[tuple[np.ndarray, np.ndarray]], input_shape: Sequence[int]) -> onnx.ModelProto:
    """Gemm(transB=1) / Relu alternating; a Flatten first when the input is not (1, n)."""
    nodes, inits, prev = [], [], "input"
    if len(input_shape) != 2:
        nodes.append(helper.make_node("Flatten", [prev], ["flat"], axis=1, name="flatten"))
        prev = "flat"
    for i, (w, b) in enumerate(layers):
        if i:
            nodes.append(helper.make_node("Relu", [prev], [f"relu{i}"], name=f"relu{i}"))
            prev = f"relu{i}"
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"B{i}")]
        out = "output" if i == len(layers) - 1 else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [out], transB=1, name=f"gemm{i}"))
        prev = out
    n_out = int(np.asarray(layers[-1][0]).shape[0])
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def write_tiny_net(path: Path) -> Path:
    onnx.save(mlp_model([(W1, B1), (W2, B2)], (1, 2)), str(path))
    return path


def write_wide_net(path: Path, n_in: int = 784, width: int = 1024, depth: int = 4, seed: int = 0) -> Path:
    """A bigger random network (slow enough to outlive a tiny timeout)."""
    rng = np.random.default_rng(seed)
    sizes = [n_in] + [width] * depth + [10]
    layers = [(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1) for i, o in zip(sizes, sizes[1:])]
    onnx.save(mlp_model(layers, (1, n_in)), str(path))
    return path


def tiny_forward(x: np.ndarray) -> np.ndarray:
    h = np.maximum(W1.astype(np.float64) @ x + B1, 0)
    return W2.astype(np.float64) @ h + B2


def declarations(n_in: int, n_out: int) -> str:
    return "\n".join([f"(declare-const X_{i} Real)" for i in range(n_in)] +
                     [f"(declare-const Y_{j} Real)" for j in range(n_out)]) + "\n"


def box(lower: Sequence[float], upper: Sequence[float]) -> str:
    return "\n".join(f"(assert (>= X_{i} {float(lo)!r}))\n(assert (<= X_{i} {float(hi)!r}))"
                     for i, (lo, hi) in enumerate(zip(lower, upper))) + "\n"


def box_and(lower: Sequence[float], upper: Sequence[float]) -> str:
    return "(and " + " ".join(f"(>= X_{i} {float(lo)!r}) (<= X_{i} {float(hi)!r})"
                              for i, (lo, hi) in enumerate(zip(lower, upper))) + ")"


# unsafe: Y_0 <= Y_1 on [0.5, 1]^2. There y0 - y1 = 0.5 exactly (all ReLUs active): CROWN proves it.
UNSAT = "; clearly unsat\n" + declarations(2, 2) + box([0.5, 0.5], [1.0, 1.0]) + "(assert (<= Y_0 Y_1))\n"
# unsafe: Y_1 >= 1.2 on [-1, 1]^2, i.e. x0 + x1 >= 1.7: the corner (1, 1) violates it.
SAT = "; clearly sat\n" + declarations(2, 2) + box([-1.0, -1.0], [1.0, 1.0]) + "(assert (>= Y_1 1.2))\n"
# unsafe: Y_0 <= Y_1 on [-1, 1]^2: never true (y0 - y1 >= 0.5), but plain CROWN cannot show it.
HARD = "; holds, beyond plain CROWN\n" + declarations(2, 2) + box([-1.0, -1.0], [1.0, 1.0]) + "(assert (<= Y_0 Y_1))\n"
# two boxes, both safe: all ReLUs active in the first, all inactive in the second.
DISJUNCTIVE_UNSAT = ("; two boxes, both safe\n" + declarations(2, 2) +
                     f"(assert (or {box_and([0.5, 0.5], [1.0, 1.0])} {box_and([-1.0, -1.0], [-0.5, -0.5])}))\n"
                     "(assert (<= Y_0 Y_1))\n")
# two boxes, only the second violates: y1 >= 1.3 > 1.2 on [0.9, 1]^2, y1 = -0.5 on [-1, -0.5]^2.
DISJUNCTIVE_SAT = ("; two boxes, the second one unsafe\n" + declarations(2, 2) +
                   f"(assert (or {box_and([-1.0, -1.0], [-0.5, -0.5])} {box_and([0.9, 0.9], [1.0, 1.0])}))\n"
                   "(assert (>= Y_1 1.2))\n")
# one box of each row count: case 0 has HARD's single open row; case 1 three rows, refuted.
# Padded rows of case 0 must not count as refuting it -> unknown, never unsat.
PADDED = ("; cases with different row counts\n" + declarations(2, 2) +
          f"(assert (or (and {box_and([-1.0, -1.0], [1.0, 1.0])[5:-1]} (<= Y_0 Y_1))"
          f" (and {box_and([0.5, 0.5], [1.0, 1.0])[5:-1]} (<= Y_0 Y_1) (>= Y_0 -10.0) (>= Y_1 -10.0))))\n")
