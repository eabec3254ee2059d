#!/usr/bin/env python3
"""Train the shipped example network and write it with two properties.

A 2-32-32-3 ReLU classifier learns which of three sectors a point of the plane lies in.
Writes examples/tiny/net.onnx and two VNN-LIB properties:
  robust.vnnlib  a small box around a point deep inside sector 0 -> expected `unsat`
  border.vnnlib  a box straddling the 0/1 sector border        -> expected `sat`
Deterministic (fixed seeds); rerun with `.venv/bin/python examples/make_tiny.py`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent / "tiny"


def sector(points: torch.Tensor) -> torch.Tensor:
    angle = torch.atan2(points[:, 1], points[:, 0]) % (2 * math.pi)
    return (angle // (2 * math.pi / 3)).long()


def train() -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(1500):
        x = torch.rand(256, 2) * 2 - 1
        loss = torch.nn.functional.cross_entropy(net(x), sector(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def to_onnx(net: torch.nn.Sequential) -> onnx.ModelProto:
    nodes, inits, prev = [], [], "input"
    for i, layer in enumerate(net):
        if isinstance(layer, torch.nn.Linear):
            w, b = f"W{i}", f"b{i}"
            inits += [numpy_helper.from_array(layer.weight.detach().numpy().astype(np.float32), w),
                      numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), b)]
            nodes.append(helper.make_node("Gemm", [prev, w, b], [f"gemm{i}"], transB=1, name=f"gemm{i}"))
            prev = f"gemm{i}"
        else:
            nodes.append(helper.make_node("Relu", [prev], [f"relu{i}"], name=f"relu{i}"))
            prev = f"relu{i}"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(nodes, "tiny_sectors",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="nnverify-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def robustness_vnnlib(center: list[float], eps: float, label: int, n_classes: int, comment: str) -> str:
    lines = [f"; {comment}", "; unsafe: some other class scores at least as high as class " + str(label)]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(center))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_classes)]
    for i, c in enumerate(center):
        lines += [f"(assert (>= X_{i} {c - eps!r}))", f"(assert (<= X_{i} {c + eps!r}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_classes) if j != label)
    lines.append(f"(assert (or {others}))")
    return "\n".join(lines) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    net = train()
    onnx.save(to_onnx(net), OUT / "net.onnx")
    deep = [0.6, 0.35]  # angle ~30 degrees: the middle of sector 0
    (OUT / "robust.vnnlib").write_text(robustness_vnnlib(deep, 0.05, 0, 3, "tiny example: robustness inside sector 0"))
    border = [0.5, 0.0]  # angle 0: on the border between sectors 0 and 2
    (OUT / "border.vnnlib").write_text(robustness_vnnlib(border, 0.05, 0, 3, "tiny example: a box across a sector border"))
    with torch.no_grad():
        print("prediction at robust centre:", net(torch.tensor([deep])).argmax().item(),
              "at border centre:", net(torch.tensor([border])).softmax(-1).numpy().round(3))


if __name__ == "__main__":
    main()
