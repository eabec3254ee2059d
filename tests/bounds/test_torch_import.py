"""from_torch: imported graphs compute what the module computes, under the batched convention."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bounds.errors import ModelLoadError, UnsupportedOpError
from bounds.graph.interpret import run
from bounds.graph.torch_import import from_torch
from bounds.ops import RULES


def _bn(num: int, gen: torch.Generator, dims: int = 2) -> nn.Module:
    bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(num)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(num, generator=gen))
        bn.running_var.copy_(torch.rand(num, generator=gen) + 0.3)
        bn.weight.copy_(torch.randn(num, generator=gen))
        bn.bias.copy_(torch.randn(num, generator=gen))
    return bn


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(x)))


class FlattenView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 4)
        self.out = nn.Linear(3 * 25, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        a = self.fc(torch.flatten(y, 1))
        b = self.out(y.view(y.size(0), -1))
        return torch.cat([a, b], dim=1)


class Normalise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1, -0.2, 0.3]))
        self.std = 0.5
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = 2.0 * x + 1 - x * 0.5
        return self.fc(-x).tanh()


class CatPermute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding="same")
        self.w = nn.Parameter(torch.randn(5, 2))

    def forward(self, x):                       # x: (N, 3, 5)
        y = self.conv(x)                        # (N, 4, 5)
        z = torch.cat((y, x), 1).permute(0, 2, 1)   # (N, 5, 7)
        z = z.transpose(1, 2) @ self.w          # (N, 7, 2)
        m = z.mean(dim=1, keepdim=True) + z.sum(-1).unsqueeze(-1)[:, :1]
        return F.leaky_relu(m.squeeze(1), 0.2)


class Misc(nn.Module):
    """Slices, split/chunk, stack, clamp, functional pooling/padding, in-place relu."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="replicate")
        self.fc = nn.Linear(4 * 2 * 2 + 3, 3)

    def forward(self, x):                          # (N, 2, 6, 6)
        y = self.conv(x)[:, :, 1:, ::1]            # (N, 4, 5, 6)
        y = F.pad(y, (0, 0, 0, 1))                 # (N, 4, 6, 6)
        y = F.avg_pool2d(y, 2) + F.max_pool2d(y, 2)    # (N, 4, 3, 3)
        y = F.relu(y, inplace=True)
        a, b = torch.split(y, [1, 3], dim=1)
        y = torch.stack([a[:, 0], b.sum(1)], dim=1)    # (N, 2, 3, 3)
        y = F.adaptive_avg_pool2d(torch.cat([y, y], 1), (1, 1))[..., 0, 0]  # (N, 4)
        y = torch.clamp(y, -0.5, 0.7)
        extra = x[:, 0, 0, :3].clamp(min=0.1)
        h = torch.cat([y.unsqueeze(-1).expand(-1, -1, 4).flatten(1), extra], 1)
        return self.fc(h)


def _mlp(act: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 3))


def _cnn(gen: torch.Generator) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=1, padding=1), _bn(4, gen), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, padding=(1, 0), dilation=1, groups=2), nn.Sigmoid(),
        nn.MaxPool2d(2, stride=1), nn.Dropout(0.3), nn.Flatten(), nn.Linear(6 * 3 * 1, 10), _bn(10, gen, 1),
        nn.Tanh(), nn.Identity(), nn.Linear(10, 4))


def _cases():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return [
        ("mlp_relu", _mlp(nn.ReLU()), (1, 5)),
        ("mlp_sigmoid", _mlp(nn.Sigmoid()), (1, 5)),
        ("mlp_tanh", _mlp(nn.Tanh()), (1, 5)),
        ("mlp_leaky", _mlp(nn.LeakyReLU(0.1)), (1, 5)),
        ("mlp_relu6", _mlp(nn.ReLU6()), (1, 5)),
        ("cnn", _cnn(gen), (1, 1, 8, 8)),
        ("residual", Residual(), (1, 6)),
        ("flatten_view", FlattenView(), (1, 2, 5, 5)),
        ("normalise", Normalise(), (1, 3)),
        ("cat_permute", CatPermute(), (1, 3, 5)),
        ("misc", Misc(), (1, 2, 6, 6)),
        ("global_pool", nn.Sequential(nn.Conv2d(2, 3, 3), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()), (1, 2, 5, 5)),
    ]


CASES = _cases()


@pytest.mark.parametrize("label,module,shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("canonical", [False, True])
def test_graph_matches_module(label, module, shape, canonical) -> None:
    graph = from_torch(module, shape, canonical=canonical)
    module.eval()
    assert graph.input.shape == shape
    assert all(node.shape or node.is_constant or node.op == "ReduceSum" for node in graph.nodes if node.op != "Input")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, *shape[1:], generator=gen) * 2
    with torch.no_grad():
        want = module(x)
        got = run(graph, x.unsqueeze(1))       # (7, 1, *shape[1:]): batch of sub-problems
    assert got.shape == (7, *graph.output.shape)
    torch.testing.assert_close(got[:, 0], want, atol=1e-5, rtol=1e-5)


def test_shapes_filled_with_module_batch_dim() -> None:
    graph = from_torch(_cnn(torch.Generator().manual_seed(3)), (1, 1, 8, 8), canonical=False)
    ops = {n.op for n in graph.nodes}
    assert {"Conv", "BatchNormalization", "AveragePool", "MaxPool", "Reshape", "Gemm", "Relu", "Sigmoid",
            "Tanh"} <= ops
    assert "Dropout" not in ops and "Identity" not in ops
    for node in graph.nodes:
        if not node.is_constant:
            assert node.shape[0] == 1, node
    assert graph.output.shape == (1, 4)
    gemm = next(n for n in graph.nodes if n.op == "Gemm")
    assert gemm.attrs["transB"] == 1 and graph.is_constant(gemm.inputs[1])


def test_training_flag_restored_and_running_stats_used() -> None:
    gen = torch.Generator().manual_seed(4)
    module = _cnn(gen)
    module.train()
    module[1].eval()  # a mixed state must come back exactly
    flags = [m.training for m in module.modules()]
    graph = from_torch(module, (1, 1, 8, 8))
    assert [m.training for m in module.modules()] == flags
    module.eval()
    x = torch.randn(3, 1, 8, 8, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(graph, x.unsqueeze(1))[:, 0], module(x), atol=1e-5, rtol=1e-5)


def test_parameters_are_copied() -> None:
    module = _mlp(nn.ReLU())
    graph = from_torch(module, (1, 5))
    x = torch.randn(4, 1, 5)
    before = run(graph, x.unsqueeze(1))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    torch.testing.assert_close(run(graph, x.unsqueeze(1)), before)
    assert all(n.value.dtype == torch.float32 and not n.value.requires_grad
               for n in graph.nodes if n.is_constant and n.value.is_floating_point())


def test_unsupported_layers_are_all_named() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 4, batch_first=True)
            self.act = nn.GELU()
            self.soft = nn.Softsign()
            self.unused = nn.Hardswish()

        def forward(self, x):
            y, _ = self.lstm(x)
            z = self.unused(x)  # noqa: F841 -- dead code is not reported
            return self.soft(self.act(y)) + torch.erfinv(x.clamp(-0.5, 0.5)) * 0

    expected = {"torch.nn.LSTM"}
    if "Gelu" not in RULES:
        expected.add("torch.nn.GELU")
    if "Softsign" not in RULES:
        expected.add("torch.nn.Softsign")
    with pytest.raises(UnsupportedOpError) as info:
        from_torch(Bad(), (1, 3, 4))
    err = info.value
    ops = set(err.op_types)
    assert expected <= ops and "torch.erfinv" in ops
    assert "torch.nn.Hardswish" not in ops
    names = {name for _, name, _ in err.entries}
    assert "lstm" in names and "unused" not in names
    assert "LSTM" in str(err) and "erfinv" in str(err)


def test_unsupported_variants_give_reasons() -> None:
    bn = nn.BatchNorm1d(3, track_running_stats=False)
    with pytest.raises(UnsupportedOpError, match="running statistics"):
        from_torch(nn.Sequential(nn.Linear(2, 3), bn), (4, 2))
    with pytest.raises(UnsupportedOpError, match="beta != 1"):
        from_torch(_Functional(lambda x: F.softplus(x, beta=2.0)), (1, 3))


def test_untraceable_module_is_named() -> None:
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ModelLoadError, match="Branchy"):
        from_torch(Branchy(), (1, 3))


def test_bounds_contain_samples() -> None:
    crown = pytest.importorskip("bounds.crown")
    from bounds.types import Interval

    gen = torch.Generator().manual_seed(5)
    module = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), _bn(3, gen), nn.ReLU(), nn.AvgPool2d(2),
                           nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3))
    module.eval()
    graph = from_torch(module, (1, 1, 4, 4))
    center = torch.randn(2, 1, 1, 4, 4, generator=gen)
    box = Interval(center - 0.1, center + 0.1)
    C = torch.randn(2, 4, 3, generator=gen)
    xs = box.lower + torch.rand(300, *box.lower.shape, generator=gen) * (box.upper - box.lower)
    with torch.no_grad():
        ys = module(xs.reshape(-1, 1, 4, 4)).reshape(300, 2, 3)
    values = torch.einsum("bso,nbo->nbs", C, ys)
    for method in ("ibp", "crown"):
        lower = crown.spec_lower_bounds(graph, box, C, method)
        assert (values >= lower - 1e-5).all(), method


def test_defaults_tuple_outputs_and_unbatched_linear() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x, scale=2.0, mask=None):
            y = self.fc(x) * scale
            if mask is not None:
                y = y * mask
            return y, {"neg": -y[..., :2]}

    module = TwoHeads()
    for shape in [(1, 5), (5,), (1, 4, 5)]:
        graph = from_torch(module, shape)
        assert len(graph.outputs) == 2 and graph.input.shape == shape
        x = torch.randn(3, *shape)
        got = [run(graph.replace(graph.nodes, (out,)), x) for out in graph.outputs]
        with torch.no_grad():
            want = [module(x[i]) for i in range(3)]
        for i in range(3):
            torch.testing.assert_close(got[0][i], want[i][0])
            torch.testing.assert_close(got[1][i], want[i][1]["neg"])


def test_inplace_updates() -> None:
    class Shared(nn.Module):  # ReLU(inplace) overwrites x, so x + y == 2 relu(x)
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.relu = nn.Linear(3, 3), nn.ReLU(inplace=True)

        def forward(self, x):
            x = self.fc(x)
            y = self.relu(x)
            x.mul_(3.0)
            return x + y

    module = Shared()
    graph = from_torch(module, (1, 3))
    x = torch.randn(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(run(graph, x.unsqueeze(1))[:, 0], module(x))

    class Aliased(nn.Module):  # the view sees a later in-place update: fx cannot capture that
        def forward(self, x):
            x = x * 1.0
            v = x.view(-1)
            x.add_(1.0)
            return v * 2

    with pytest.raises(ModelLoadError, match="disagrees"):
        from_torch(Aliased(), (1, 4))


# ---- h4: ELU family, Mish, hard activations, LayerNorm, transposed convolutions ----------

class _Functional(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _FunctionalH4(nn.Module):
    """The functional forms: F.selu / celu / mish / layer_norm / conv_transpose2d."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 3, 3, 3) * 0.5)
        self.b = nn.Parameter(torch.randn(3) * 0.1)
        self.g = nn.Parameter(torch.rand(4) + 0.5)

    def forward(self, x):                                   # (N, 2, 4, 4)
        y = F.conv_transpose2d(x, self.w, self.b, stride=2, padding=1, output_padding=1)   # (N, 3, 8, 8)
        y = F.layer_norm(F.selu(y), (8,), self.g.repeat(2), None, 1e-3)
        return F.mish(F.celu(y[:, :, :4, :4], 0.7)) * self.g


def _h4_cases():
    torch.manual_seed(3)
    mlp = lambda act: nn.Sequential(nn.Linear(5, 8), act, nn.Linear(8, 3))  # noqa: E731
    return [
        ("elu", mlp(nn.ELU(0.6)), (1, 5)),
        ("selu", mlp(nn.SELU()), (1, 5)),
        ("celu", mlp(nn.CELU(1.7)), (1, 5)),
        ("mish", mlp(nn.Mish()), (1, 5)),
        ("hardsigmoid", mlp(nn.Hardsigmoid()), (1, 5)),
        ("hardswish", mlp(nn.Hardswish()), (1, 5)),
        ("layernorm", nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2)), (1, 5)),
        ("layernorm_2d", nn.Sequential(nn.Conv2d(1, 2, 3), nn.LayerNorm([2, 3], elementwise_affine=False),
                                       nn.Flatten(), nn.Linear(2 * 3 * 2, 2)), (1, 1, 4, 5)),
        ("conv_transpose2d", nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
                                           nn.ReLU(), nn.ConvTranspose2d(3, 2, 2, groups=1, dilation=2),
                                           nn.Flatten(), nn.Linear(2 * 10 * 10, 3)), (1, 2, 4, 4)),
        ("conv_transpose1d_grouped", nn.Sequential(nn.ConvTranspose1d(4, 4, 3, stride=3, groups=2, bias=False),
                                                   nn.Tanh()), (1, 4, 5)),
        ("functional", _FunctionalH4(), (1, 2, 4, 4)),
        ("softsign", mlp(nn.Softsign()), (1, 5)),
        ("trig_hyperbolic", _Functional(lambda x: torch.asinh(torch.sinh(x)) + torch.cosh(0.5 * x) + F.softsign(x)
                                        + torch.tan(torch.tanh(x)) + torch.asin(torch.tanh(x))
                                        + torch.acos(0.9 * torch.tanh(x)) + torch.atanh(0.9 * torch.tanh(x))
                                        + torch.acosh(1 + torch.exp(x))), (1, 5)),
    ]


H4_CASES = _h4_cases()


@pytest.mark.parametrize("label,module,shape", H4_CASES, ids=[c[0] for c in H4_CASES])
def test_new_modules_import_and_bound_the_module(label, module, shape) -> None:
    """Imported graphs equal the module's forward, and IBP / CROWN contain its outputs."""
    from bounds.crown import spec_lower_bounds
    from bounds.types import Interval

    graph = from_torch(module, shape)
    module.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, *shape[1:], generator=gen) * 2
    with torch.no_grad():
        torch.testing.assert_close(run(graph, x.unsqueeze(1))[:, 0], module(x), atol=1e-5, rtol=1e-5)
    n_out = int(torch.tensor(graph.output.shape).prod())
    centre = torch.randn(2, *shape, generator=gen)
    for radius in (0.05, 0.5):
        box = Interval(centre - radius, centre + radius)
        xs = box.lower + torch.rand(300, *box.lower.shape, generator=gen) * (box.upper - box.lower)
        with torch.no_grad():
            ys = module(xs.reshape(-1, *shape[1:])).reshape(300, 2, n_out)
        C = torch.randn(2, 4, n_out, generator=gen)
        values = torch.einsum("bso,nbo->nbs", C, ys)
        for method in ("ibp", "crown"):
            lower = spec_lower_bounds(graph, box, C, method)
            assert (values >= lower - 1e-4 * (1 + values.abs())).all(), (method, radius)


def test_new_modules_map_to_their_onnx_ops() -> None:
    ops = {label: {n.op for n in from_torch(m, shape).nodes} for label, m, shape in H4_CASES}
    assert "Elu" in ops["elu"] and "Selu" in ops["selu"] and "Celu" in ops["celu"] and "Mish" in ops["mish"]
    assert "LayerNormalization" in ops["layernorm"] and "ConvTranspose" in ops["conv_transpose2d"]
    assert {"ConvTranspose", "LayerNormalization", "Selu", "Celu", "Mish"} <= ops["functional"]
    assert "Softsign" in ops["softsign"]
    assert {"Sinh", "Asinh", "Cosh", "Softsign", "Tan", "Asin", "Acos", "Atanh", "Acosh"} <= ops["trig_hyperbolic"]


def test_mish_round_trips_through_opset_17_export() -> None:
    """to_onnx writes Mish as Softplus / Tanh / Mul (opset 17 has no Mish); loading fuses it again."""
    from bounds.graph import load_onnx
    from bounds.graph.onnx_export import to_onnx

    graph = from_torch(nn.Sequential(nn.Linear(3, 4), nn.Mish(), nn.SELU(), nn.Linear(4, 2)), (1, 3))
    model = to_onnx(graph)
    assert "Mish" not in {n.op_type for n in model.graph.node}
    again = load_onnx(model.SerializeToString())
    assert "Mish" in {n.op for n in again.nodes} and "Selu" in {n.op for n in again.nodes}
    x = torch.randn(5, 1, 3)
    torch.testing.assert_close(run(again, x), run(graph, x), atol=1e-6, rtol=1e-6)
