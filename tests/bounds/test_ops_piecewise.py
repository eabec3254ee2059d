"""Clip / HardSigmoid / HardSwish / Sign / ThresholdedRelu (bounds.ops.piecewise): onnxruntime
agreement, Clip canonicalisation, jumps, soundness on graphs; and the torch importer's
mapping of the unary modules and functions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bounds.graph.ir import Node, graph_to
from bounds.ops import RULES
from bounds.types import Interval
from tests.bounds import onnx_fixtures as fx
from tests.bounds.op_soundness import check_sound, random_box
from tests.bounds.random_graphs import Builder


def _ops(graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op not in ("Input", "Constant")]


@pytest.mark.parametrize("op,attrs", [("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
                                      ("HardSwish", {}), ("Sign", {}), ("ThresholdedRelu", {"alpha": 0.5}),
                                      ("ThresholdedRelu", {})])
def test_interpreter_matches_onnxruntime(op: str, attrs: dict) -> None:
    fx.compare(fx.single(op, [3, 4], opset=14, **attrs), batch=6, scale=4.0)


@pytest.mark.parametrize("limits", [(-1.0, 1.0), (0.0, None), (None, 6.0)])
def test_clip_becomes_unary_and_matches_onnxruntime(limits) -> None:
    consts, extra = {}, []
    for name, v in zip(("lo", "hi"), limits):
        if v is None:
            extra.append("")
        else:
            consts[name] = np.array(v, dtype=np.float32)
            extra.append(name)
    graph, _ = fx.compare(fx.single("Clip", [5], consts=consts, extra_inputs=extra), batch=6, scale=4.0)
    assert _ops(graph) == ["nnverify.Clip"]
    node = graph.nodes[-1]
    assert node.attrs.get("min") == limits[0] and node.attrs.get("max") == limits[1]


def test_old_style_clip_attributes() -> None:
    graph, _ = fx.compare(fx.single("Clip", [5], opset=6, min=-0.5, max=0.5), batch=4, scale=2.0)
    assert _ops(graph) == ["nnverify.Clip"]


def test_sign_relaxation_covers_both_sides_of_the_jump() -> None:
    rule, node = RULES["Sign"], Node("y", "Sign", ("x",))
    x = Interval(torch.tensor([-1.0, 0.0, -2.0], dtype=torch.float64),
                 torch.tensor([1.0, 3.0, 0.0], dtype=torch.float64))
    r = rule.relax(node, x)
    for k in range(3):
        pts = torch.tensor([x.lower[k], -1e-12, 0.0, 1e-12, x.upper[k]], dtype=torch.float64)
        pts = pts[(pts >= x.lower[k]) & (pts <= x.upper[k])]
        f = torch.sign(pts)
        assert (r.lw[k] * pts + r.lb[k] <= f + 1e-12).all() and (r.uw[k] * pts + r.ub[k] >= f - 1e-12).all()
    ibp = rule.ibp(node, [x])
    assert ibp.lower.tolist() == [-1.0, 0.0, -1.0] and ibp.upper.tolist() == [1.0, 1.0, 0.0]


def test_clip_relaxation_is_the_relu_triangle_on_one_kink() -> None:
    rule, node = RULES["nnverify.Clip"], Node("y", "nnverify.Clip", ("x",), {"min": 0.0})
    r = rule.relax(node, Interval(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)))
    assert torch.allclose(r.uw, torch.tensor([0.75], dtype=torch.float64))
    assert torch.allclose(r.ub, torch.tensor([0.75], dtype=torch.float64))
    assert torch.allclose(r.lw, torch.tensor([1.0], dtype=torch.float64)) and abs(float(r.lb)) < 1e-9


def _net(seed: int, acts: list[tuple[str, dict]], width: int = 5):
    gen = torch.Generator().manual_seed(seed)
    b = Builder((width,), gen)
    h = "x"
    for op, attrs in acts:
        h = b.op("Add", b.op("MatMul", h, b.const(b.randn(width, width, scale=2 * width ** -0.5))),
                 b.const(b.randn(width, scale=0.5)))
        h = b.op(op, h, **attrs)
    return b.graph(b.op("MatMul", h, b.const(b.randn(width, 3, scale=width ** -0.5))))


NETS = [[("nnverify.Clip", {"min": -1.0, "max": 1.0}), ("HardSwish", {})],
        [("HardSigmoid", {}), ("ThresholdedRelu", {"alpha": 0.3})],
        [("Sign", {}), ("nnverify.Clip", {"min": 0.0, "max": 6.0})]]


@pytest.mark.parametrize("net", range(len(NETS)))
@pytest.mark.parametrize("kind", ["tiny", "straddle", "wide"])
def test_crown_contains_sampled_outputs(net: int, kind: str) -> None:
    graph = graph_to(_net(net, NETS[net]), dtype=torch.float64)
    check_sound(graph, random_box(graph.input.shape, net, kind), seed=net, n=200)


class _Unary(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.acts = nn.ModuleList([nn.GELU(approximate="tanh"), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(),
                                   nn.Softplus(), nn.Hardtanh(-0.5, 0.5)])

    def forward(self, x):
        h = self.fc(x)
        parts = [act(h) for act in self.acts]
        parts += [torch.sin(h), torch.cos(h), h ** 2, torch.atan(h), torch.exp(-h.abs()), torch.nn.functional.gelu(h)]
        return torch.cat(parts, dim=-1)


def test_torch_import_maps_unary_modules_and_functions() -> None:
    from bounds.graph.interpret import run
    from bounds.graph.torch_import import from_torch

    torch.manual_seed(0)
    module = _Unary().eval()
    graph = from_torch(module, (4,))
    ops = set(_ops(graph))
    assert {"Gelu", "nnverify.SiLU", "HardSwish", "HardSigmoid", "Softplus", "Sin", "Cos", "nnverify.Pow",
            "Atan", "Exp", "Abs"} <= ops
    x = torch.randn(16, 4) * 3
    with torch.no_grad():
        assert torch.allclose(run(graph, x), module(x), atol=1e-5)
