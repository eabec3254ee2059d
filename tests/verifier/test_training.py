"""Certified training (verifier.training): gradients, soundness, agreement with the verifier."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from bounds.crown import spec_lower_bounds
from bounds.graph.bind import module_tensors, parametric_graph
from bounds.graph.ir import graph_to
from bounds.graph.torch_import import from_torch
from bounds.types import Interval
from specs.vnnlib import parse_vnnlib_text
from verifier.api import verify
from verifier.options import VerifyOptions
from verifier.result import Outcome
from verifier.training import (CertifiedLoss, EpsScheduler, MixScheduler, certified_bounds, certified_loss,
                               export_onnx, ibp_init_, input_box, margin_matrix, robustness_vnnlib,
                               warmup_regularisers)

METHODS = ("ibp", "crown-ibp", "crown")


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.head(h + self.block(h))


def _mlp(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))


def _data(n: int, shape: tuple[int, ...], classes: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


# ---- gradients and learning -----------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_gradients_reach_every_parameter(method: str, training: bool) -> None:
    model = ibp_init_(_cnn())
    model.train(training)
    x, y = _data(8, (1, 4, 4), 5)
    loss, margins = certified_loss(model, x, y, 0.05, method, kappa=0.2, regulariser=0.1)
    assert margins.shape == (8, 4) and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient for {missing}"


def test_gradients_through_a_residual_network_with_tanh() -> None:
    model = _Residual()
    x, y = _data(6, (6,), 4)
    loss, _ = certified_loss(model, x, y, 0.02, "crown")
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


def test_loss_decreases_on_a_toy_set() -> None:
    torch.manual_seed(0)
    x = torch.rand(128, 6)
    y = (x[:, 0] > x[:, 1]).long() + 2 * (x[:, 2] > 0.5).long()
    model = ibp_init_(_mlp(width=32))
    crit = CertifiedLoss("crown-ibp", mix=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss, _ = crit(model, x, y, 0.02)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses[::5]


# ---- the same bounds as the verifier -----------------------------------------------------

@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_margins_equal_the_verifiers_bounds(method: str) -> None:
    model = _cnn().eval()
    x, y = _data(5, (1, 4, 4), 5)
    double = copy.deepcopy(model).double()
    ours = certified_bounds(double, x.double(), y, 0.03, method).margins
    # the verifier's graph: BatchNorm folded, float64 as verify uses on the CPU
    graph = graph_to(from_torch(model, (1, 1, 4, 4)), "cpu", torch.float64)
    box = input_box(x.double(), 0.03, (0.0, 1.0))
    C = margin_matrix(y, 5, torch.float64)
    theirs = spec_lower_bounds(graph, Interval(box.lower.unsqueeze(1), box.upper.unsqueeze(1)), C, method=method)
    # equal up to the float32 rounding of the folded BatchNorm weights (~1e-8 relative)
    assert torch.allclose(ours.detach(), theirs, rtol=1e-6, atol=1e-6)
    unfused = graph_to(parametric_graph(model, (1, 1, 4, 4)).graph, "cpu", torch.float64)
    exact = spec_lower_bounds(unfused, Interval(box.lower.unsqueeze(1), box.upper.unsqueeze(1)), C, method=method)
    # on the same graph (the template with BatchNorm folded at bind time, in float64 here)
    # the numbers are the verifier's own, bit for bit
    same = spec_lower_bounds(parametric_graph(double, (1, 1, 4, 4)).bind(module_tensors(double)),
                             Interval(box.lower.unsqueeze(1), box.upper.unsqueeze(1)), C, method=method)
    with torch.no_grad():
        assert torch.equal(certified_bounds(double, x.double(), y, 0.03, method).margins, same)
    assert torch.allclose(ours.detach(), exact, rtol=1e-12, atol=1e-12)  # autograd may reorder sums


def test_training_call_and_verify_report_the_same_margin() -> None:
    model = _mlp().eval()
    x, _ = _data(1, (6,), 4, seed=3)
    y = model(x).argmax(1)
    eps = 0.002
    margins = certified_bounds(model, x, y, eps, "crown").margins.detach()
    assert bool((margins > 0).all()), "pick a smaller eps: the test needs a certified point"
    spec = parse_vnnlib_text(robustness_vnnlib(x[0], int(y), eps, 4), "robust.vnnlib")
    res = verify(model, spec, options=VerifyOptions(timeout=20, branch_and_bound=False), input_shape=(1, 6))
    assert res.outcome == Outcome.UNSAT
    assert res.best_bound == pytest.approx(float(margins.min()), rel=1e-5, abs=1e-6)


def test_exported_onnx_computes_the_model_and_the_vnnlib_box_is_the_training_box(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _cnn().eval()
    path = export_onnx(model, tmp_path / "net.onnx", (1, 1, 4, 4))
    sess = ort.InferenceSession(str(path))
    x, y = _data(1, (1, 4, 4), 5)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    spec = parse_vnnlib_text(robustness_vnnlib(x[0], int(y), 0.1, 5), "p.vnnlib")
    box = input_box(x, 0.1, (0.0, 1.0))
    np.testing.assert_array_equal(spec.cases[0].lower, box.lower.reshape(-1).double().numpy())
    np.testing.assert_array_equal(spec.cases[0].upper, box.upper.reshape(-1).double().numpy())
    assert len(spec.cases[0].polytopes) == 4


# ---- soundness -----------------------------------------------------------------------------

@pytest.mark.parametrize("method,mix", [("ibp", None), ("crown-ibp", 0.5), ("crown-ibp", 1.0), ("crown", None)])
@pytest.mark.parametrize("make", [_cnn, _Residual])
def test_margins_are_sound(method: str, mix: float | None, make) -> None:
    model = make().eval()
    shape = (1, 4, 4) if make is _cnn else (6,)
    x, y = _data(4, shape, 5 if make is _cnn else 4)
    eps = 0.08
    with torch.no_grad():
        lower = certified_bounds(model, x, y, eps, method, mix=mix).margins
        box = input_box(x, eps, (0.0, 1.0))
        g = torch.Generator().manual_seed(7)
        n = 2000
        u = torch.rand(n, *x.shape, generator=g)
        u[:2] = torch.stack([torch.zeros_like(x), torch.ones_like(x)])     # corners of the box
        pts = box.lower + u * (box.upper - box.lower)
        out = model(pts.reshape(-1, *shape)).reshape(n, x.shape[0], -1)
        C = margin_matrix(y, out.shape[-1])
        true = torch.einsum("bjk,nbk->nbj", C, out).amin(0)
    assert bool((true >= lower - 1e-5).all()), float((lower - true).max())


def test_clamping_keeps_the_box_in_the_domain() -> None:
    x = torch.tensor([[0.0, 0.5, 1.0]])
    box = input_box(x, 0.2, (0.0, 1.0))
    assert box.lower[0].tolist() == pytest.approx([0.0, 0.3, 0.8])
    assert box.upper[0].tolist() == pytest.approx([0.2, 0.7, 1.0])
    box = input_box(x, torch.tensor([0.0, 0.1, 0.0]), None)
    assert box.upper[0].tolist() == pytest.approx([0.0, 0.6, 1.0])


def test_training_mode_batchnorm_bounds_use_the_batch_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = _data(16, (6,), 3)
    train = certified_bounds(model.train(), x, y, 0.01, "ibp").margins.detach()
    frozen = copy.deepcopy(model).eval()
    with torch.no_grad():
        z = model[0](x)
        frozen[1].running_mean.copy_(z.mean(0))
        frozen[1].running_var.copy_(z.var(0, unbiased=False))
    evald = certified_bounds(frozen, x, y, 0.01, "ibp").margins.detach()
    assert torch.allclose(train, evald, atol=1e-5)


# ---- options, schedules, initialisation, regularisers ---------------------------------------

def test_weightings_are_never_silently_ignored() -> None:
    model = _mlp()
    x, y = _data(2, (6,), 4)
    with pytest.raises(ValueError, match="mix"):
        certified_loss(model, x, y, 0.1, "ibp", mix=0.5)
    with pytest.raises(ValueError, match="method"):
        certified_loss(model, x, y, 0.1, "deeppoly")
    with pytest.raises(ValueError, match="kappa"):
        certified_loss(model, x, y, 0.1, kappa=1.5)
    with pytest.raises(ValueError, match="eps"):
        certified_loss(model, x, y, -0.1)


def test_mix_interpolates_between_ibp_and_crown_ibp() -> None:
    model = _mlp().eval()
    x, y = _data(3, (6,), 4)
    b = certified_bounds(model, x, y, 0.05, "crown-ibp", mix=0.25)
    assert torch.allclose(b.margins, 0.25 * b.crown + 0.75 * b.ibp)
    pure_ibp = certified_bounds(model, x, y, 0.05, "ibp").margins
    assert torch.allclose(certified_bounds(model, x, y, 0.05, "crown-ibp", mix=0.0).margins, pure_ibp)


def test_schedulers() -> None:
    eps = EpsScheduler(0.3, warmup=10, ramp=20, shape="linear")
    assert [eps(s) for s in (0, 9, 10, 20, 30, 99)] == pytest.approx([0, 0, 0, 0.15, 0.3, 0.3])
    smooth = EpsScheduler(0.3, warmup=10, ramp=20)
    assert smooth(20) == pytest.approx(0.15) and 0 < smooth(12) < eps(12) and smooth(28) > eps(28)
    values = [smooth(s) for s in range(40)]
    assert values == sorted(values)
    assert eps.regulariser_weight(5, 0.5) == 0 and eps.regulariser_weight(20, 0.5) == pytest.approx(0.25)
    assert eps.regulariser_weight(30, 0.5) == 0
    mix = MixScheduler(1.0, 0.0, warmup=5, ramp=10)
    assert [mix(s) for s in (0, 5, 10, 15, 50)] == pytest.approx([1, 1, 0.5, 0, 0])
    with pytest.raises(ValueError):
        EpsScheduler(0.1, shape="cosine")
    with pytest.raises(ValueError):
        MixScheduler(1.5)


def test_ibp_init_scales_with_fan_in() -> None:
    torch.manual_seed(0)
    model = ibp_init_(nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Conv2d(3, 200, 5)))
    for m, fan_in in ((model[0], 400), (model[2], 75)):
        assert float(m.weight.detach().std()) == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.05)
        assert float(m.bias.detach().abs().max()) == 0


def test_regularisers_flag_exploding_bounds_and_dead_relus() -> None:
    model = ibp_init_(_mlp(width=32)).eval()
    x, y = _data(64, (6,), 4)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.1)          # shrinking layers: widths do not grow
    tight, _ = warmup_regularisers(certified_bounds(model, x, y, 0.05))
    assert float(tight) == 0
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(100.0)        # every layer now widens the intervals ~5x
        model[0].bias.fill_(-50.0)          # first layer: every ReLU dead for every input
    b = certified_bounds(model, x, y, 0.05)
    tight, balance = warmup_regularisers(b)
    assert float(tight) > 1 and float(balance) > 1
    (tight + balance).backward()
    assert model[2].weight.grad is not None


def test_parametric_graph_binds_every_parameter() -> None:
    model = _cnn()
    pg = parametric_graph(model, (1, 1, 4, 4))
    assert not pg.frozen
    assert {t for t, _ in pg.bindings.values()} >= {n for n, _ in model.named_parameters()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_gpu() -> None:
    model = _cnn().cuda()
    x, y = _data(8, (1, 4, 4), 5)
    loss, margins = CertifiedLoss("crown-ibp")(model, x.cuda(), y.cuda(), 0.05, mix=0.5)
    loss.backward()
    assert margins.is_cuda and all(p.grad is not None for p in model.parameters())
    cpu = certified_bounds(model.cpu().eval(), x, y, 0.05, "crown-ibp", mix=0.5).margins
    gpu = certified_bounds(model.cuda().eval(), x.cuda(), y.cuda(), 0.05, "crown-ibp", mix=0.5).margins
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)
