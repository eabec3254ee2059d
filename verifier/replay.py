"""Independent re-checks of the network: a counterexample is replayed before `sat` is said.

A *reference* computes the network outside our graph code: onnxruntime for ONNX files, the
module itself for torch models (for a bare Graph only the graph itself is available). The
caller keeps one reference per model (it caches its onnxruntime session).
"""
from __future__ import annotations

import gzip
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from bounds.errors import ModelLoadError
from bounds.graph.interpret import run
from bounds.graph.ir import Graph
from specs import Spec
from verifier.errors import GraphMismatchError

log = logging.getLogger(__name__)

#: a replayed input may lie this far outside its box, only when no float32 value lies inside
BOX_TOL = 1e-6
#: tolerance of the graph-vs-reference comparison (absolute and relative)
MATCH_TOL = 1e-3

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


class Reference(Protocol):
    description: str

    @property
    def input_dtype(self) -> type: ...

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Flat inputs (N, n_in) -> flat first output (N, n_out), float64."""
        ...


class OnnxReference:
    """onnxruntime on the original file; the session is created on first use and kept."""

    def __init__(self, path: str | Path, fallback_shape: tuple[int, ...] | None = None) -> None:
        self.path = Path(path)
        self.fallback_shape = fallback_shape
        self.description = f"onnxruntime on {self.path.name}"
        self._session = None
        self._input_name = ""
        self._shape: tuple[int, ...] = ()
        self._dtype: type = np.float32

    def _open(self) -> None:
        if self._session is not None:
            return
        import onnxruntime as ort

        data = self.path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{self.path}: onnxruntime cannot load the model: {exc}") from exc
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self._shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in inp.shape)
        self._dtype = _ORT_TYPES.get(inp.type, np.float32)

    @property
    def input_dtype(self) -> type:
        self._open()
        return self._dtype

    def outputs(self, x: np.ndarray) -> np.ndarray:
        self._open()
        x = np.asarray(x, dtype=np.float64)
        shape = self._shape
        if math.prod(shape) != x.shape[1] and self.fallback_shape is not None:
            shape = self.fallback_shape
        ys = []
        for row in x:  # one at a time: many exported models fix the batch size at 1
            feed = {self._input_name: row.astype(self._dtype).reshape(shape)}
            y = self._session.run(None, feed)[0]
            ys.append(np.asarray(y, dtype=np.float64).reshape(-1))
        return np.stack(ys)


class TorchReference:
    """The user's torch module, run without gradients on its own device and dtype."""

    def __init__(self, module: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
        self.module = module
        self.input_shape = tuple(input_shape)
        self.description = f"the torch module {type(module).__name__}"
        param = next(iter(module.parameters()), None)
        self._device = param.device if param is not None else torch.device("cpu")
        self._torch_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        if module.training:
            log.warning("the torch module is in training mode; call .eval() for reproducible outputs")

    @property
    def input_dtype(self) -> type:
        return {torch.float64: np.float64, torch.float16: np.float16}.get(self._torch_dtype, np.float32)

    def outputs(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        ys = []
        with torch.no_grad():
            for row in x:
                t = torch.as_tensor(row.reshape(self.input_shape), dtype=self._torch_dtype, device=self._device)
                out = self.module(t)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                ys.append(out.detach().double().cpu().numpy().reshape(-1))
        return np.stack(ys)


class GraphReference:
    """Only our own graph (when the caller passed a Graph): a replay here checks the spec
    arithmetic and float32 rounding, not the model import."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.description = f"our graph '{graph.name}' (no independent model given)"

    @property
    def input_dtype(self) -> type:
        return np.float32

    def outputs(self, x: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        with torch.no_grad():
            y = run(self.graph, t.reshape(t.shape[0], *self.graph.input.shape))
        return y.reshape(t.shape[0], -1).double().numpy()


def snap_to_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """x clipped to the box and made exactly representable in `dtype`, inside the box
    wherever the box holds a `dtype` value; returned as float64."""
    x = np.clip(np.asarray(x, dtype=np.float64), lower, upper)
    if dtype == np.float64:
        return x
    xs = x.astype(dtype)
    lo_bad = xs.astype(np.float64) < lower
    xs[lo_bad] = np.nextafter(xs[lo_bad], dtype(np.inf))
    hi_bad = xs.astype(np.float64) > upper
    xs[hi_bad] = np.nextafter(xs[hi_bad], dtype(-np.inf))
    return xs.astype(np.float64)


@dataclass(frozen=True, eq=False)
class Replay:
    ok: bool
    x: np.ndarray                 # the input as it was fed (float64 of the model's input dtype)
    y: np.ndarray | None          # the reference's output, flat
    case: int | None = None       # the case and polytope the replayed point violates
    polytope: int | None = None
    message: str = ""


def violated_at(spec: Spec, x: np.ndarray, y: np.ndarray) -> tuple[int, int] | None:
    """(case, polytope) that (x, y) violates, strictly on the outputs; None if none."""
    for k, case in enumerate(spec.cases):
        if not case.contains(x, BOX_TOL):
            continue
        for p, poly in enumerate(case.polytopes):
            if poly.holds(y, 0.0):
                return k, p
    return None


def replay(reference: Reference, spec: Spec, x: np.ndarray, case: int) -> Replay:
    """Run the reference on candidate x (snapped into the box of `case`) and check the spec."""
    box = spec.cases[case]
    x = snap_to_box(x, box.lower, box.upper, reference.input_dtype)
    try:
        y = reference.outputs(x.reshape(1, -1))[0]
    except Exception as exc:  # the reference is someone else's code: report, never crash
        msg = f"replay with {reference.description} failed: {exc}"
        log.warning(msg)
        return Replay(False, x, None, message=msg)
    if y.shape != (spec.n_outputs,) or not np.all(np.isfinite(y)):
        msg = f"candidate counterexample gives a non-finite or misshaped output with {reference.description}"
        log.warning(msg)
        return Replay(False, x, y, message=msg)
    where = violated_at(spec, x, y)
    if where is None:
        msg = f"candidate counterexample did not replay with {reference.description}"
        log.warning(msg)
        return Replay(False, x, y, message=msg)
    return Replay(True, x, y, where[0], where[1], message=f"replayed with {reference.description}")


def crosscheck(reference: Reference, graph: Graph, x: np.ndarray) -> float:
    """Compare our graph with the reference on flat inputs x (N, n_in); raise
    GraphMismatchError when they disagree beyond MATCH_TOL. Returns the largest difference."""
    if isinstance(reference, GraphReference):
        return 0.0
    want = reference.outputs(x)
    t = torch.as_tensor(np.asarray(x, dtype=np.float64).astype(reference.input_dtype).astype(np.float32))
    with torch.no_grad():
        got = run(graph, t.reshape(t.shape[0], *graph.input.shape)).reshape(t.shape[0], -1).double().cpu().numpy()
    if got.shape != want.shape:
        raise GraphMismatchError(f"our graph has {got.shape[1]} outputs but {reference.description} "
                                 f"gives {want.shape[1]}")
    diff = np.abs(got - want)
    bad = ~(diff <= MATCH_TOL * (1 + np.abs(want)))
    if bad.any():
        i = int(np.argmax(np.where(bad, diff, -1).max(axis=1)))
        j = int(np.argmax(np.where(bad[i], diff[i], -1)))
        raise GraphMismatchError(
            f"our graph disagrees with {reference.description}: output {j} is {got[i, j]!r} "
            f"instead of {want[i, j]!r} (difference {diff[i, j]:.3g}); this is a bug in nnverify's "
            "model import, please report it with the model")
    return float(diff.max()) if diff.size else 0.0
