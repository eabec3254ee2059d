"""`verify lipschitz ...` and the Python API: JSON fields, options, errors, certified radius."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bounds.lipschitz.nets import maxmin_onnx, random_chain
from verifier.cli import main as verify_main
from verifier.lipschitz import certified_radius, lipschitz_bounds


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal((8, 6)) / 2, rng.standard_normal((8, 8)) / 3, rng.standard_normal((4, 8)) / 3]
    path = tmp_path_factory.mktemp("lip") / "net.onnx"
    path.write_bytes(maxmin_onnx(ws, [rng.standard_normal(w.shape[0]) for w in ws]))
    return path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = verify_main(["lipschitz", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_has_certified_upper_and_attained_lower(capsys, net: Path) -> None:
    code, out, _ = _run(capsys, str(net), "--json", "-q")
    assert code == 0
    res = json.loads(out)
    assert 0 < res["lower"] <= res["upper"] <= res["details"]["naive"] * (1 + 1e-9)
    assert res["method"] == "neuron" and res["norm"] == 2


def test_pair_norm_and_methods(capsys, net: Path) -> None:
    values = {}
    for method in ("naive", "layer", "neuron"):
        code, out, _ = _run(capsys, str(net), "--json", "-q", "--norm", "inf", "--pair", "1,3", "--method", method)
        assert code == 0
        values[method] = json.loads(out)
        assert values[method]["pair"] == [1, 3]
    assert values["neuron"]["upper"] <= values["layer"]["upper"] * (1 + 1e-6) <= values["naive"]["upper"] * (1 + 1e-6)


def test_single_output_and_per_output_maximum(capsys, net: Path) -> None:
    each = []
    for k in range(4):
        code, out, _ = _run(capsys, str(net), "--json", "-q", "--norm", "inf", "--output", str(k))
        assert code == 0
        res = json.loads(out)
        assert res["output"] == k and 0 < res["lower"] <= res["upper"] * (1 + 1e-6)
        each.append(res["upper"])
    code, out, _ = _run(capsys, str(net), "--json", "-q", "--norm", "inf", "--per-output")
    assert code == 0
    res = json.loads(out)
    assert res["upper"] == pytest.approx(max(each), rel=1e-5)
    assert [e["output"] for e in res["details"]["per_output"]] == [0, 1, 2, 3]
    # the l-inf -> l-inf bound is never looser than the l-inf -> l2 one the whole-output SDP gives
    whole = json.loads(_run(capsys, str(net), "--json", "-q", "--norm", "inf", "--no-lower")[1])
    assert res["upper"] <= whole["upper"] * (1 + 1e-6)
    assert res["lower"] <= res["upper"] * (1 + 1e-6)


def test_human_summary(capsys, net: Path) -> None:
    code, out, _ = _run(capsys, str(net), "-q", "--no-lower")
    assert code == 0 and out.startswith("Lipschitz constant (l2, output) in [0, ")


@pytest.mark.parametrize("args,code", [(["--pair", "1"], 2), (["--pair", "0,9"], 2), (["--norm", "3"], 2),
                                       (["--output", "4"], 2), (["--per-output"], 2),
                                       (["--output", "1", "--pair", "0,1"], 2)])
def test_usage_errors(capsys, net: Path, args: list[str], code: int) -> None:
    assert _run(capsys, str(net), "-q", *args)[0] == code


def test_bad_model_is_exit_3(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    code, _, err = _run(capsys, str(bad), "-q")
    assert code == 3 and "error" in err
    assert _run(capsys, str(tmp_path / "missing.onnx"), "-q")[0] == 3


def test_certified_radius_is_sound() -> None:
    chain = random_chain([5, 8, 8, 3], "relu", seed=4)
    x = torch.randn(5, dtype=torch.float64)
    radius, label = certified_radius(chain, x, norm=2)
    assert 0 < radius < math.inf
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(4000, 5, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True) * radius * torch.rand(4000, 1, generator=gen, dtype=torch.float64)
    assert bool((chain(x + d).argmax(1) == label).all())


def test_api_on_a_torch_module() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    res = lipschitz_bounds(module, input_shape=(1, 4), method="layer")
    assert 0 < res.lower <= res.upper


def _conv_onnx(path: Path) -> None:
    """3x32x32 -> conv3x3 (16 channels, 16384 ReLUs: a 16384 x 3072 matrix, too large to write
    down densely) -> strided conv4x4 (4 channels) -> ReLU -> Gemm 256 -> 10."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    init = [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) / 10, "b1"),
            numpy_helper.from_array((rng.standard_normal((4, 16, 4, 4)) / 16).astype(np.float32), "w2"),
            numpy_helper.from_array((rng.standard_normal((10, 256)) / 16).astype(np.float32), "w3"),
            numpy_helper.from_array(np.zeros(10, np.float32), "b3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[4, 4]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_a_convolution_too_large_for_dense_matrices(capsys, tmp_path: Path) -> None:
    import onnxruntime as ort

    path = tmp_path / "conv.onnx"
    _conv_onnx(path)
    code, out, err = _run(capsys, str(path), "--json", "-q", "--timeout", "120")
    assert code == 0, err
    res = json.loads(out)
    assert "conv3x3[3->16]" in res["details"]["network"] and "relu[16384]" in res["details"]["network"]
    assert 0 < res["lower"] <= res["upper"] <= res["details"]["naive"] * (1 + 1e-9)
    # no difference quotient of the real network (onnxruntime, float32) beats the bound
    sess = ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        d = (rng.standard_normal(x.shape) * 1e-2).astype(np.float32)
        dy = sess.run(None, {"x": x + d})[0] - sess.run(None, {"x": x})[0]
        assert np.linalg.norm(dy) <= res["upper"] * np.linalg.norm(d) * (1 + 1e-4) + 1e-6
    code, out, _ = _run(capsys, str(path), "--json", "-q", "--no-lower", "--max-sdp-width", "0")
    assert code == 2
