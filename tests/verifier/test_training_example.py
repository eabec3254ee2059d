"""examples/certified_training.py on a tiny setting: it trains, writes its table and the ONNX
models with VNN-LIB properties, and `verify` proves every point the training call certified."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bounds.crown import spec_lower_bounds
from bounds.graph.bind import module_tensors, parametric_graph
from bounds.types import Interval

from specs.vnnlib import parse_vnnlib
from verifier.training import _batchnorm_statistics, input_box, margin_matrix

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "certified_training.py"


@pytest.fixture(scope="module")
def example():
    if not EXAMPLE.exists():
        pytest.skip("examples/certified_training.py is not in this checkout")
    spec = importlib.util.spec_from_file_location("certified_training_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_example_runs_end_to_end(example, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    argv = ["--out", str(tmp_path), "--epochs", "4", "--warmup-epochs", "1", "--ramp-epochs", "2",
            "--train-limit", "300", "--test-limit", "24", "--verify-points", "6", "--verify-timeout", "3",
            "--width", "24", "--eps", "0.01", "--lr", "0.01", "--pgd-steps", "5", "--pgd-restarts", "1",
            "--no-plot"]
    assert example.main(argv) == 0
    out = capsys.readouterr().out
    assert "| standard (mlp) |" in out and "| crown-ibp (mlp) |" in out
    assert "verify " in out and "point_0.vnnlib" in out
    assert (tmp_path / "results.md").read_text().count("(mlp) |") == 3
    data = json.loads((tmp_path / "results.json").read_text())
    reports = data["reports"]
    assert [r["model"] for r in reports] == ["standard", "ibp", "crown-ibp"]
    certified = 0
    for r in reports:
        folder = tmp_path / r["model"]
        assert (folder / "model.onnx").stat().st_size > 0
        props = sorted((folder / "props").glob("point_*.vnnlib"))
        assert len(props) == r["verify_points"] == 6
        spec = parse_vnnlib(props[0])
        assert (spec.n_inputs, spec.n_outputs) == (64, 10)
        # every point certified by the training call's bounds is proved by the complete verifier
        proved, claimed = r["agree"]
        assert proved == claimed
        certified += claimed
        assert sum(r["verify_outcomes"].values()) == 6
        assert 0.0 <= r["certified"] <= r["pgd"] + 1e-9 <= r["clean"] + 2e-9   # sound bounds, sound attack
        assert len(r["losses"]) == 4 and all(l == l for l in r["losses"])
    assert certified > 0, "the agreement check needs at least one certified point"


def test_a_generated_data_set_stands_in_for_the_digits(example) -> None:
    x, y = example.generated_digits(50, seed=0)
    assert x.shape == (50, 64) and y.shape == (50,)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(y.tolist()) == set(range(10))


def test_batchnorm_folded_at_bind_time_changes_neither_bounds_nor_gradients() -> None:
    """The bound graph folds BatchNorm into the layer before it (as the verifier's does); the
    margins and every parameter's gradient equal those of the unfolded template."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(27, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).double()
    x = torch.rand(6, 1, 3, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    pg = parametric_graph(model, (1, 1, 3, 3))
    assert len(pg.folds) == 2
    assert "BatchNormalization" not in {n.op for n in pg.bind(module_tensors(model)).nodes}
    box = input_box(x, 0.05, (0.0, 1.0))
    box = Interval(box.lower.unsqueeze(1), box.upper.unsqueeze(1))
    C = margin_matrix(y, 4, torch.float64)
    for train in (True, False):
        model.train(train)
        results = []
        for fold in (True, False):
            model.zero_grad()
            _, stats = _batchnorm_statistics(model, x) if train else (None, {})
            graph = pg.bind({**module_tensors(model), **stats}, fold=fold)
            for method in ("ibp", "crown"):
                lb = spec_lower_bounds(graph, box, C, method=method, grad=True)
                lb.sum().backward(retain_graph=True)
                results.append(lb.detach())
            results.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        half = len(results) // 2
        for a, b in zip(results[:half], results[half:]):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
