"""The bad-input corpus: every broken model or spec gets a clear message naming the problem,
the documented exit code (verifier/cli.py EPILOG), `error` in the --out file, no traceback
and no hang. All inputs are generated here, in a temporary folder.
"""
from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.verifier import verifier_fixtures as F
from verifier.cli import main
from verifier.exit_codes import EXIT_MODEL, EXIT_OK, EXIT_SPEC

ROOT = Path(__file__).resolve().parents[2]
GOOD_SPEC = F.UNSAT


# ----------------------------------------------------------------------------------------
# models

def _valid_bytes() -> bytes:
    return F.mlp_model([(F.W1, F.B1), (F.W2, F.B2)], (1, 2)).SerializeToString()


def _model(nodes, inits, inputs, outputs, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bad", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _io(name: str, dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _gemm_model(w: np.ndarray, in_dims=(1, 2), extra_inputs=()) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.float32), "B")]
    node = helper.make_node("Gemm", ["input", "W", "B"], ["output"], transB=1)
    return _model([node], inits, [_io("input", list(in_dims)), *extra_inputs], [_io("output", [1, w.shape[0]])])


def write_empty(d: Path) -> Path:
    (d / "m.onnx").write_bytes(b"")
    return d / "m.onnx"


def write_truncated(d: Path) -> Path:
    data = _valid_bytes()
    (d / "m.onnx").write_bytes(data[: len(data) // 2])
    return d / "m.onnx"


def write_corrupt(d: Path) -> Path:
    rng = np.random.default_rng(0)
    (d / "m.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\x0f" + rng.bytes(300))
    return d / "m.onnx"


def write_text_file(d: Path) -> Path:
    (d / "m.onnx").write_text("(declare-const X_0 Real)\n")   # a spec where the model belongs
    return d / "m.onnx"


def write_corrupt_gz(d: Path) -> Path:
    data = gzip.compress(_valid_bytes())
    (d / "m.onnx.gz").write_bytes(data[: len(data) - 12])
    return d / "m.onnx.gz"


def write_gz_of_garbage(d: Path) -> Path:
    (d / "m.onnx.gz").write_bytes(gzip.compress(b"this is not protobuf at all \xff\xfe" * 20))
    return d / "m.onnx.gz"


def write_unsupported(d: Path) -> Path:
    nodes = [helper.make_node("Gemm", ["input", "W", "B"], ["h"], transB=1),
             helper.make_node("Hardmax", ["h"], ["output"], name="the_hardmax")]
    inits = [numpy_helper.from_array(np.eye(2, dtype=np.float32), "W"),
             numpy_helper.from_array(np.zeros(2, np.float32), "B")]
    onnx.save(_model(nodes, inits, [_io("input", [1, 2])], [_io("output", [1, 2])]), str(d / "m.onnx"))
    return d / "m.onnx"


def write_dynamic(d: Path) -> Path:
    onnx.save(_gemm_model(np.eye(2), in_dims=(1, "features")), str(d / "m.onnx"))
    return d / "m.onnx"


def write_dynamic_batch(d: Path) -> Path:
    """Only the leading (batch) dimension is symbolic: this one is fine (batch 1)."""
    onnx.save(_gemm_model(F.W2 @ np.maximum(F.W1, 0), in_dims=("N", 2)), str(d / "m.onnx"))
    return d / "m.onnx"


def write_two_inputs(d: Path) -> Path:
    nodes = [helper.make_node("Add", ["input", "other"], ["output"])]
    onnx.save(_model(nodes, [], [_io("input", [1, 2]), _io("other", [1, 2])], [_io("output", [1, 2])]),
              str(d / "m.onnx"))
    return d / "m.onnx"


def write_nan_weights(d: Path) -> Path:
    onnx.save(_gemm_model(np.array([[1.0, np.nan], [0.0, 1.0]])), str(d / "m.onnx"))
    return d / "m.onnx"


def write_inf_weights(d: Path) -> Path:
    onnx.save(_gemm_model(np.array([[1.0, 0.0], [np.inf, 1.0]])), str(d / "m.onnx"))
    return d / "m.onnx"


def write_no_outputs(d: Path) -> Path:
    nodes = [helper.make_node("Relu", ["input"], ["output"])]
    onnx.save(_model(nodes, [], [_io("input", [1, 2])], []), str(d / "m.onnx"))
    return d / "m.onnx"


def write_directory(d: Path) -> Path:
    (d / "m.onnx").mkdir()
    return d / "m.onnx"


def write_missing(d: Path) -> Path:
    return d / "nowhere.onnx"


def _external(d: Path, location: str) -> Path:
    model = _gemm_model(np.eye(2))
    w = model.graph.initializer[0]
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("float_data")
    w.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    (d / "sub").mkdir(exist_ok=True)
    onnx.save(model, str(d / "sub" / "m.onnx"))
    return d / "sub" / "m.onnx"


def write_external_escape(d: Path) -> Path:
    (d / "secret").write_bytes(np.eye(2, dtype=np.float32).tobytes())
    return _external(d, "../secret")


def write_external_absolute(d: Path) -> Path:
    (d / "secret").write_bytes(np.eye(2, dtype=np.float32).tobytes())
    return _external(d, str((d / "secret").resolve()))


MODELS: dict[str, tuple[Callable[[Path], Path], str]] = {
    # name: (writer, a pattern the message must contain)
    "empty": (write_empty, r"is empty"),
    "truncated": (write_truncated, r"not a readable ONNX model|truncated|corrupt"),
    "corrupt": (write_corrupt, r"not a readable ONNX model|corrupt"),
    "text": (write_text_file, r"not a readable ONNX model|corrupt|no ONNX graph"),
    "corrupt_gz": (write_corrupt_gz, r"gzip.*cannot be decompressed"),
    "gz_of_garbage": (write_gz_of_garbage, r"not a readable ONNX model|corrupt|no ONNX graph"),
    "unsupported_op": (write_unsupported, r"Hardmax"),
    "dynamic_shape": (write_dynamic, r"dynamic.*1 \(.features.\)"),
    "two_inputs": (write_two_inputs, r"2 variable inputs"),
    "nan_weights": (write_nan_weights, r"non-finite|NaN"),
    "inf_weights": (write_inf_weights, r"non-finite|inf"),
    "no_outputs": (write_no_outputs, r"no outputs"),
    "directory": (write_directory, r"m\.onnx: not a file"),
    "missing": (write_missing, r"nowhere\.onnx"),
    "external_escape": (write_external_escape, r"outside the model's folder"),
    "external_absolute": (write_external_absolute, r"absolute path"),
}


# ----------------------------------------------------------------------------------------
# specs

def _decl(n_in: int = 2, n_out: int = 2) -> str:
    return F.declarations(n_in, n_out)


SPECS: dict[str, tuple[Callable[[Path], Path], str]] = {}


def _spec(name: str, pattern: str):
    def register(fn: Callable[[], str | bytes]):
        def writer(d: Path) -> Path:
            content = fn()
            suffix = ".vnnlib.gz" if name.endswith("gz") else ".vnnlib"
            path = d / f"p{suffix}"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            return path
        SPECS[name] = (writer, pattern)
        return fn
    return register


@_spec("syntax_error", r"p\.vnnlib:\d+:\d+")
def _syntax() -> str:
    return _decl() + "(assert (<= X_0 0.5)\n"


@_spec("undeclared_variable", r"X_7")
def _undeclared() -> str:
    return _decl() + F.box([0, 0], [1, 1]) + "(assert (<= X_7 0.5))\n(assert (<= Y_0 Y_1))\n"


@_spec("too_many_inputs", r"3 inputs")
def _inputs() -> str:
    return _decl(3, 2) + F.box([0, 0, 0], [1, 1, 1]) + "(assert (<= Y_0 Y_1))\n"


@_spec("too_few_outputs", r"1 outputs?")
def _outputs() -> str:
    return _decl(2, 1) + F.box([0, 0], [1, 1]) + "(assert (<= Y_0 0.0))\n"


@_spec("unbounded_input", r"X_1.*(no finite|unbounded|bound)")
def _unbounded() -> str:
    return _decl() + "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= Y_0 Y_1))\n"


@_spec("infinite_bound", r"X_0|finite|inf")
def _infinite() -> str:
    return _decl() + "(assert (>= X_0 -inf))\n(assert (<= X_0 1.0))\n" + \
        "(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n(assert (<= Y_0 Y_1))\n"


@_spec("empty_box", r"empty|lower.*upper|X_0")
def _empty_box() -> str:
    return _decl() + F.box([1.0, 0.0], [0.0, 1.0]) + "(assert (<= Y_0 Y_1))\n"


@_spec("empty_file", r"empty|no|declare")
def _empty() -> str:
    return ""


@_spec("binary_junk", r"p\.vnnlib|UTF-8|text|character")
def _junk() -> bytes:
    return b"\x00\xff\xfe garbage \x80\x81" * 50


@_spec("corrupt_gz", r"gzip|decompress|corrupt|truncated")
def _corrupt_gz() -> bytes:
    data = gzip.compress((_decl() + F.box([0, 0], [1, 1]) + "(assert (<= Y_0 Y_1))\n").encode())
    return data[: len(data) // 2]


@_spec("deep_nesting", r"p\.vnnlib")
def _deep() -> str:
    return _decl() + "(assert " + "(and " * 200_000 + "(<= X_0 1.0)" + ")" * 200_001 + "\n"


@_spec("unterminated_comment_and_string", r"p\.vnnlib:\d+:\d+")
def _unterminated() -> str:
    return _decl() + '(assert (<= X_0 |never closed\n'


@_spec("wrong_operator", r"p\.vnnlib:\d+:\d+")
def _wrong_op() -> str:
    return _decl() + F.box([0, 0], [1, 1]) + "(assert (frobnicate Y_0 Y_1))\n"


# ----------------------------------------------------------------------------------------
# the checks

def _run_in_process(model: Path, spec: Path, tmp_path: Path, capsys) -> tuple[int, str, str, float]:
    out = tmp_path / "result.txt"
    start = time.monotonic()
    code = main([str(model), str(spec), "--out", str(out), "--timeout", "60"])
    elapsed = time.monotonic() - start
    captured = capsys.readouterr()
    return code, out.read_text() if out.exists() else "", captured.err, elapsed


def _assert_clean_error(code: int, expected: int, text: str, err: str, pattern: str, elapsed: float) -> None:
    assert code == expected, f"exit code {code}, expected {expected}; stderr: {err}"
    assert text == "error\n", text
    assert err.startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert re.search(pattern, err, re.IGNORECASE | re.DOTALL), f"message does not name the problem: {err}"
    assert elapsed < 30, f"took {elapsed:.1f} s"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_model(name: str, tmp_path: Path, capsys) -> None:
    writer, pattern = MODELS[name]
    model = writer(tmp_path)
    spec = tmp_path / "good.vnnlib"
    spec.write_text(GOOD_SPEC)
    code, text, err, elapsed = _run_in_process(model, spec, tmp_path, capsys)
    _assert_clean_error(code, EXIT_MODEL, text, err, pattern, elapsed)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bad_spec(name: str, tmp_path: Path, capsys) -> None:
    writer, pattern = SPECS[name]
    spec = writer(tmp_path)
    model = F.write_tiny_net(tmp_path / "net.onnx")
    code, text, err, elapsed = _run_in_process(model, spec, tmp_path, capsys)
    _assert_clean_error(code, EXIT_SPEC, text, err, pattern, elapsed)


def test_missing_spec_is_a_spec_error(tmp_path: Path, capsys) -> None:
    model = F.write_tiny_net(tmp_path / "net.onnx")
    code, text, err, elapsed = _run_in_process(model, tmp_path / "absent.vnnlib", tmp_path, capsys)
    _assert_clean_error(code, EXIT_SPEC, text, err, r"absent\.vnnlib", elapsed)


def test_dynamic_batch_dimension_is_accepted(tmp_path: Path, capsys) -> None:
    model = write_dynamic_batch(tmp_path)
    spec = tmp_path / "s.vnnlib"
    spec.write_text(_decl() + F.box([0, 0], [1, 1]) + "(assert (<= Y_0 -1.0))\n")
    code, text, err, _ = _run_in_process(model, spec, tmp_path, capsys)
    assert code == EXIT_OK and text == "unsat\n", err


def test_huge_spec_file_is_read_in_time(tmp_path: Path, capsys) -> None:
    """A 10 MB spec (a long disjunction of output constraints) parses and is decided."""
    model = F.write_tiny_net(tmp_path / "net.onnx")
    spec = tmp_path / "huge.vnnlib"
    rows = "".join(f"(<= Y_0 {-1.0 - i * 1e-6:.9f})" for i in range(20000))
    body = _decl() + F.box([0, 0], [1, 1]) + "(assert (or " + rows + "))\n"
    padding = "; " + "x" * 200 + "\n"
    spec.write_text(body + padding * ((10_000_000 - len(body)) // len(padding)))
    assert spec.stat().st_size > 9_000_000
    code, text, err, elapsed = _run_in_process(model, spec, tmp_path, capsys)
    assert code == EXIT_OK and text in ("unsat\n", "unknown\n", "timeout\n"), err
    assert elapsed < 60


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "verifier", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_as_a_process_nan_model_and_deep_spec(tmp_path: Path) -> None:
    """The same guarantees hold for a real process (exit status, stderr, result file)."""
    spec = tmp_path / "good.vnnlib"
    spec.write_text(GOOD_SPEC)
    out = tmp_path / "r.txt"
    proc = _cli(str(write_nan_weights(tmp_path)), str(spec), "--out", str(out))
    assert proc.returncode == EXIT_MODEL and out.read_text() == "error\n", proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    deep = SPECS["deep_nesting"][0](tmp_path)
    proc = _cli(str(F.write_tiny_net(tmp_path / "net.onnx")), str(deep), "--out", str(out))
    assert proc.returncode == EXIT_SPEC and out.read_text() == "error\n", proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------
# safe loading: no user file is ever unpickled, evaluated or followed outside its folder

PACKAGES = ("specs", "bounds", "branching", "verifier", "benchmarks")
#: modules whose loaders run code from the data they read
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
#: attribute calls that unpickle or run code: (object name, attribute)
UNSAFE_CALLS = {("torch", "load"), ("yaml", "load"), ("yaml", "unsafe_load"), ("pd", "read_pickle"),
                ("pandas", "read_pickle"), ("ray", "cloudpickle")}


def _unsafe_uses(path: Path) -> list[str]:
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile"):
                found.append(f"{f.id}()")
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if (f.value.id, f.attr) in UNSAFE_CALLS:
                    found.append(f"{f.value.id}.{f.attr}()")
                if f.value.id in ("np", "numpy") and f.attr == "load":
                    # numpy unpickles object arrays unless told not to
                    safe = any(k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                               for k in node.keywords)
                    if not safe:
                        found.append("np.load() without allow_pickle=False")
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [f"{where}:{u}" for u in found]


def test_no_package_unpickles_or_evaluates_anything() -> None:
    bad = [u for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py")) for u in _unsafe_uses(path)]
    assert not bad, "code that can execute what it loads:\n" + "\n".join(bad)


def test_the_scan_would_see_an_unsafe_use(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"  # scanned as text, never imported
    probe.write_text("import pickle\nimport numpy as np\nx = np.load('a')\ny = eval('1')\nimport torch\n"
                     "torch.load('m')\nz = np.load('b', allow_pickle=False)\nmodel.eval()\n")
    uses = _unsafe_uses(probe)
    assert len(uses) == 4, uses


def test_a_pickle_posing_as_a_model_is_refused_unopened(tmp_path: Path, capsys) -> None:
    import pickle

    marker = tmp_path / "was_run"
    payload = pickle.dumps(_Exploit(str(marker)))      # unpickling it would create `marker`
    model = tmp_path / "m.onnx"
    model.write_bytes(payload)
    spec = tmp_path / "good.vnnlib"
    spec.write_text(GOOD_SPEC)
    code, text, err, elapsed = _run_in_process(model, spec, tmp_path, capsys)
    _assert_clean_error(code, EXIT_MODEL, text, err, r"not a readable ONNX model|no ONNX graph", elapsed)
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_external_data_inside_the_folder_still_loads(tmp_path: Path) -> None:
    from bounds.graph.onnx_import import load_onnx

    model = _external(tmp_path, "weights.bin")
    (model.parent / "weights.bin").write_bytes(np.eye(2, dtype=np.float32).tobytes())
    graph = load_onnx(model)
    assert graph.output.shape == (1, 2)


@pytest.mark.parametrize("escape", ["../secret", "/etc/passwd", "sub/../../secret"])
def test_every_onnx_reader_refuses_escaping_external_data(tmp_path: Path, escape: str) -> None:
    from bounds.errors import ModelLoadError
    from bounds.graph.onnx_import import load_onnx

    (tmp_path / "secret").write_bytes(np.eye(2, dtype=np.float32).tobytes())
    model = _external(tmp_path, escape)
    with pytest.raises(ModelLoadError, match="outside the model's folder|absolute path"):
        load_onnx(model)
    from bounds.lipschitz.extract import load_network

    with pytest.raises(Exception, match="outside|absolute|escape|Location|should be"):
        load_network(model)
