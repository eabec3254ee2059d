"""ONNX model -> nnverify Graph.

`load_onnx` reads a model (plain or gzip-compressed protobuf, never a pickle), refuses it
with one readable error when it cannot be verified (every unsupported node listed at once,
see bounds.errors), converts weights to torch tensors, resolves every shape statically by
one evaluation on zeros, and canonicalises the result (bounds.graph.passes).
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import AttributeProto, TensorProto, numpy_helper

from bounds.errors import ModelLoadError, UnsupportedOpError
from bounds.graph.ir import CONSTANT, INPUT, Graph, Node

GZIP_MAGIC = b"\x1f\x8b"
_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = {TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64,
                TensorProto.FLOAT16: torch.float32, TensorProto.BFLOAT16: torch.float32}
_INT_TYPES = {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
              TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64}


def load_onnx(source: str | os.PathLike | bytes, *, canonical: bool = True) -> Graph:
    """Load an ONNX model (path to a .onnx / gzip file, or the file's bytes) as a Graph.

    Raises ModelLoadError for files that cannot be used and UnsupportedOpError (naming every
    offending node) for models using operators nnverify has no rule for. `canonical=False`
    skips the passes (the graph then mirrors the ONNX nodes one to one; for tests).
    """
    from bounds.graph.passes import canonicalise, check_supported

    model, base_dir, label = _read_model(source)
    opset = _default_opset(model, label)
    _check_operators(model, opset)
    _load_external_data(model, base_dir, label)
    builder = _Builder(model, opset, label)
    graph = builder.build()
    graph = _fill_shapes(graph, builder.input_dtype, label, builder.dynamic_note)
    if canonical:
        graph = canonicalise(graph)
        check_supported(graph)
    return graph


# ---------------------------------------------------------------------------------------
# reading

def _read_model(source) -> tuple[onnx.ModelProto, Path | None, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, base_dir, label = bytes(source), None, "the model given as bytes"
    else:
        path = Path(source)
        label = f"model file '{path}'"
        try:
            data = path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ModelLoadError(f"cannot read {label}: {reason}") from exc
        base_dir = path.resolve().parent
    if not data:
        raise ModelLoadError(f"{label} is empty")
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ModelLoadError(f"{label} is gzip-compressed but cannot be decompressed "
                                 f"({exc}); it is probably truncated or corrupt") from exc
        if not data:
            raise ModelLoadError(f"{label} decompresses to nothing")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError (or RuntimeError on some backends)
        raise ModelLoadError(f"{label} is not a readable ONNX model ({exc}); "
                             f"it is truncated, corrupt or not an ONNX file") from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{label} contains no ONNX graph; it is truncated, corrupt "
                             f"or not an ONNX file")
    if not model.graph.output:
        raise ModelLoadError(f"{label} declares no outputs")
    return model, base_dir, label


def _default_opset(model: onnx.ModelProto, label: str) -> int:
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return int(imp.version)
    if any(n.domain in _DEFAULT_DOMAINS for n in model.graph.node):
        raise ModelLoadError(f"{label} declares no opset for the default ONNX domain")
    return 0


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or next((o for o in node.output if o), node.op_type)


def _check_operators(model: onnx.ModelProto, opset: int) -> None:
    """Raise one UnsupportedOpError naming every node nnverify cannot handle."""
    from bounds.ops import RULES

    graph = model.graph
    used = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    versions = {imp.domain: int(imp.version) for imp in model.opset_import}
    entries: list[tuple[str, str, int]] = []
    reasons: list[str] = []

    def flag(op: str, node: onnx.NodeProto, version: int, reason: str = "") -> None:
        entries.append((op, _node_label(node), version))
        reasons.append(reason)

    for node in graph.node:
        op = node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            flag(f"{node.domain}.{op}", node, versions.get(node.domain, 0), "operator of a custom domain")
            continue
        if op != CONSTANT and op not in RULES:
            flag(op, node, opset)
            continue
        attrs = {a.name: a for a in node.attribute}
        extra = [(k, o) for k, o in enumerate(node.output) if k > 0 and o in used]
        if op == "Split":
            pass
        elif extra and op == "Dropout":
            flag(op, node, opset, f"its mask output '{extra[0][1]}' is used")
        elif extra and op == "BatchNormalization":
            flag(op, node, opset, "its training outputs (" + ", ".join(f"'{o}'" for _, o in extra) + ") are used")
        elif extra:
            k, o = extra[0]
            flag(op, node, opset, f"its output #{k} '{o}' is used; only single-output use is supported")
        elif not node.output or not node.output[0]:
            if any(o in used for o in node.output):
                flag(op, node, opset, "its first output is omitted")
        if op == "BatchNormalization" and "training_mode" in attrs and attrs["training_mode"].i:
            flag(op, node, opset, "training_mode=1 normalises with batch statistics")
        if op == CONSTANT:
            kinds = set(attrs) - {"value", "value_float", "value_floats", "value_int", "value_ints"}
            if kinds or len(attrs) != 1:
                flag(op, node, opset, "only value, value_float(s) and value_int(s) constants are supported")
    if entries:
        raise UnsupportedOpError(entries, supported=[*RULES, CONSTANT], reasons=reasons)


# ---------------------------------------------------------------------------------------
# external data

def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors


def _load_external_data(model: onnx.ModelProto, base_dir: Path | None, label: str) -> None:
    """Fill tensors stored outside the model file, reading only files inside its folder."""
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        what = f"tensor '{tensor.name}'"
        if base_dir is None:
            raise ModelLoadError(f"{what} keeps its data in an external file ('{location}'), which needs the "
                                 f"model to be loaded from a path, not from bytes")
        if not location:
            raise ModelLoadError(f"{what} is marked as external data but names no file")
        if os.path.isabs(location) or Path(location).drive:
            raise ModelLoadError(f"{what} refers to external data by an absolute path ('{location}'); "
                                 f"only files inside the model's folder are read")
        root = base_dir.resolve()
        target = (root / location).resolve()
        if target != root and root not in target.parents:
            raise ModelLoadError(f"{what} refers to external data outside the model's folder ('{location}'); "
                                 f"only files inside '{root}' are read")
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError as exc:
            raise ModelLoadError(f"{what} has malformed external-data offset/length") from exc
        try:
            with open(target, "rb") as fh:
                fh.seek(offset)
                data = fh.read() if length is None else fh.read(length)
        except OSError as exc:
            raise ModelLoadError(f"cannot read the external data of {what} from '{location}': "
                                 f"{exc.strerror or exc}") from exc
        if length is not None and len(data) != length:
            raise ModelLoadError(f"the external data file '{location}' of {what} is truncated "
                                 f"({len(data)} of {length} bytes)")
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


# ---------------------------------------------------------------------------------------
# values

def _shape_text(shape) -> str:
    return "[" + ", ".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                           for d in shape.dim) + "]"


def _type_name(code: int) -> str:
    return TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() else str(code)


def tensor_to_torch(tensor: TensorProto, what: str) -> torch.Tensor:
    """An ONNX tensor as torch: int64 for integers, bool, float32 (float64 kept)."""
    dt = tensor.data_type
    if dt == TensorProto.BOOL:
        target = np.bool_
    elif dt in _INT_TYPES:
        target = np.int64
    elif dt == TensorProto.DOUBLE:
        target = np.float64
    elif dt in _FLOAT_TYPES or dt in _FP8_TYPES:
        target = np.float32
    else:
        raise ModelLoadError(f"{what} has element type {_type_name(dt)}, which nnverify cannot use")
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ModelLoadError(f"{what} keeps its data in an external file that was not loaded")
    try:
        array = numpy_helper.to_array(tensor)
        array = np.array(array, dtype=target, copy=True)
    except Exception as exc:
        raise ModelLoadError(f"{what} cannot be decoded ({exc}); the model file may be corrupt") from exc
    expected = tuple(int(d) for d in tensor.dims)
    if array.shape != expected:
        raise ModelLoadError(f"{what} holds {array.size} values but declares shape {list(expected)}")
    return torch.from_numpy(array)


_FP8_TYPES = {getattr(TensorProto, n) for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
              if hasattr(TensorProto, n)}


def _check_finite(value: torch.Tensor, what: str, label: str) -> None:
    if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        kinds = []
        if bool(torch.isnan(value).any()):
            kinds.append("NaN")
        if bool(torch.isinf(value).any()):
            kinds.append("Inf")
        raise ModelLoadError(f"{what} of {label} contains {bad} non-finite value(s) "
                             f"({'/'.join(kinds)}); a network with such weights cannot be verified")


def _attribute(attr: AttributeProto, what: str):
    t = attr.type
    if t == AttributeProto.FLOAT:
        return float(attr.f)
    if t == AttributeProto.INT:
        return int(attr.i)
    if t == AttributeProto.STRING:
        return attr.s.decode("utf-8", "replace")
    if t == AttributeProto.TENSOR:
        return tensor_to_torch(attr.t, f"attribute '{attr.name}' of {what}")
    if t == AttributeProto.FLOATS:
        return [float(v) for v in attr.floats]
    if t == AttributeProto.INTS:
        return [int(v) for v in attr.ints]
    if t == AttributeProto.STRINGS:
        return [s.decode("utf-8", "replace") for s in attr.strings]
    if t == AttributeProto.TENSORS:
        return [tensor_to_torch(v, f"attribute '{attr.name}' of {what}") for v in attr.tensors]
    return onnx.helper.get_attribute_value(attr)  # graphs, sparse tensors, type protos: kept raw


def _constant_value(node: onnx.NodeProto, attrs: dict, what: str) -> torch.Tensor:
    if "value" in attrs:
        return attrs["value"]
    if "value_float" in attrs:
        return torch.tensor(attrs["value_float"], dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor(attrs["value_floats"], dtype=torch.float32).reshape(-1)
    if "value_int" in attrs:
        return torch.tensor(attrs["value_int"], dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor(attrs["value_ints"], dtype=torch.int64).reshape(-1)
    raise ModelLoadError(f"{what} has no usable value attribute")


# ---------------------------------------------------------------------------------------
# graph construction

def _topological(graph: onnx.GraphProto, available: set[str], label: str) -> list[onnx.NodeProto]:
    """The nodes in a valid order (exporters do not always write them sorted)."""
    produced_by: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in produced_by or out in available:
                raise ModelLoadError(f"value '{out}' of {label} is produced more than once")
            produced_by[out] = i
    for node in graph.node:
        for inp in node.input:
            if inp and inp not in produced_by and inp not in available:
                raise ModelLoadError(f"node '{_node_label(node)}' ({node.op_type}) reads '{inp}', which no node, "
                                     f"initializer or input of {label} produces; "
                                     f"the file may be truncated or corrupt")
    order: list[onnx.NodeProto] = []
    state = [0] * len(graph.node)  # 0 new, 1 on stack, 2 done
    for start in range(len(graph.node)):
        if state[start]:
            continue
        stack = [(start, iter([i for i in graph.node[start].input if i in produced_by]))]
        state[start] = 1
        while stack:
            idx, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                state[idx] = 2
                order.append(graph.node[idx])
                continue
            j = produced_by[dep]
            if state[j] == 1:
                raise ModelLoadError(f"{label} has a cycle through value '{dep}'")
            if state[j] == 0:
                state[j] = 1
                stack.append((j, iter([i for i in graph.node[j].input if i in produced_by])))
    return order


class _Builder:
    def __init__(self, model: onnx.ModelProto, opset: int, label: str) -> None:
        self.model, self.opset, self.label = model, opset, label
        self.nodes: list[Node] = []
        self.index: dict[str, Node] = {}
        self.input_name = ""
        self.input_dtype = torch.float32
        self.dynamic_note = ""   # said when the model fails to evaluate (see _input_node)

    # -- helpers --------------------------------------------------------------------
    def add(self, node: Node) -> None:
        if node.name in self.index:
            raise ModelLoadError(f"value '{node.name}' of {self.label} is produced more than once")
        self.nodes.append(node)
        self.index[node.name] = node

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.index:
            name, k = f"{base}_{k}", k + 1
        return name

    def _evaluate_prefix(self, name: str) -> torch.Tensor:
        """Value of `name` (unbatched) from the nodes built so far, on a zero input."""
        from bounds.graph.interpret import EvaluationError, evaluate

        node = self.index[name]
        if node.is_constant:
            return node.value
        graph = Graph(tuple(self.nodes), (self.input_name,), (name,), "prefix")
        x = torch.zeros((1, *graph.input.shape), dtype=self.input_dtype)
        try:
            return evaluate(graph, x)[name][0]
        except EvaluationError as exc:
            raise ModelLoadError(f"{self.label} cannot be evaluated: {exc}") from exc

    # -- main -----------------------------------------------------------------------
    def build(self) -> Graph:
        g = self.model.graph
        init_names = set()
        for init in g.initializer:
            if init.name in init_names:
                raise ModelLoadError(f"initializer '{init.name}' of {self.label} is defined twice")
            init_names.add(init.name)
        variables = [i for i in g.input if i.name not in init_names]
        if not variables:
            raise ModelLoadError(f"{self.label} has no variable input (every input is an initializer)")
        if len(variables) > 1:
            names = ", ".join(f"'{v.name}'" for v in variables)
            raise ModelLoadError(f"{self.label} has {len(variables)} variable inputs ({names}); "
                                 f"nnverify supports models with exactly one input")
        self.add(self._input_node(variables[0]))
        for init in g.initializer:
            what = f"initializer '{init.name}'"
            value = tensor_to_torch(init, what)
            _check_finite(value, what, self.label)
            self.add(Node(init.name, CONSTANT, (), {"value": value}, tuple(value.shape), init.name, self.opset))
        for node in _topological(g, set(self.index), self.label):
            self._convert(node)
        outputs = tuple(o.name for o in g.output)
        for out in outputs:
            if out not in self.index:
                raise ModelLoadError(f"output '{out}' of {self.label} is produced by no node")
        return Graph(tuple(self.nodes), (self.input_name,), outputs, g.name or "model")

    def _input_node(self, value: onnx.ValueInfoProto) -> Node:
        what = f"input '{value.name}' of {self.label}"
        if not value.type.HasField("tensor_type"):
            raise ModelLoadError(f"{what} is not a tensor")
        tt = value.type.tensor_type
        if tt.elem_type not in _FLOAT_TYPES:
            name = _type_name(tt.elem_type)
            raise ModelLoadError(f"{what} has element type {name}; nnverify verifies floating-point inputs only")
        if not tt.HasField("shape"):
            raise ModelLoadError(f"{what} has no declared shape; nnverify needs the input's rank")
        # symbolic dimensions are taken as 1; beyond the leading (batch) one that may not be
        # the network meant, so it is said in the error when the model then fails to evaluate
        dynamic = [f"{i} ('{d.dim_param}')" if d.dim_param else str(i) for i, d in enumerate(tt.shape.dim)
                   if i > 0 and not (d.HasField("dim_value") and d.dim_value > 0)]
        if dynamic:
            self.dynamic_note = (f"; {what} has dynamic (symbolic or unknown) dimension(s) {', '.join(dynamic)} "
                                 f"in shape {_shape_text(tt.shape)}, taken as 1: give the model a static input shape")
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim)
        self.input_name = value.name
        self.input_dtype = _FLOAT_TYPES[tt.elem_type]
        return Node(value.name, INPUT, (), {}, dims, value.name, self.opset)

    def _convert(self, proto: onnx.NodeProto) -> None:
        op = proto.op_type
        what = f"node '{_node_label(proto)}' ({op})"
        attrs = {a.name: _attribute(a, what) for a in proto.attribute}
        outs = list(proto.output)
        if not outs or not outs[0]:
            return  # nothing of it is used (checked in _check_operators)
        name = outs[0]
        if op == CONSTANT:
            value = _constant_value(proto, attrs, what)
            _check_finite(value, f"constant '{name}'", self.label)
            self.add(Node(name, CONSTANT, (), {"value": value}, tuple(value.shape), proto.name, self.opset))
            return
        inputs = list(proto.input)
        if op == "Dropout":
            inputs = inputs[:1]
        if op == "Split":
            self._split(proto, attrs, inputs, outs)
            return
        while inputs and not inputs[-1]:
            inputs.pop()
        for k, inp in enumerate(inputs):
            if not inp:
                inputs[k] = self._default_input(proto, attrs, inputs, k, what)
        self.add(Node(name, op, tuple(inputs), attrs, (), proto.name, self.opset))

    def _default_input(self, proto, attrs, inputs: list[str], k: int, what: str) -> str:
        """A Constant standing for an omitted optional input in the middle of the list."""
        op = proto.op_type
        value: torch.Tensor | None = None
        if op == "Slice" and k == 3:  # axes omitted, steps given
            n = self._evaluate_prefix(inputs[1]).numel()
            value = torch.arange(n, dtype=torch.int64)
        elif op == "Slice" and k in (1, 2):
            value = None
        elif op == "Pad" and k == 2:  # constant_value omitted, axes given
            value = torch.tensor(0.0)
        elif op == "Clip" and k == 1:  # min omitted, max given
            value = torch.tensor(-math.inf)
        if value is None:
            raise UnsupportedOpError([(op, _node_label(proto), self.opset)],
                                     reasons=[f"its optional input #{k} is omitted while a later one is given"])
        name = self.fresh(f"{proto.output[0]}::default{k}")
        self.add(Node(name, CONSTANT, (), {"value": value}, tuple(value.shape), proto.name, self.opset))
        return name

    def _split(self, proto, attrs: dict, inputs: list[str], outs: list[str]) -> None:
        what = f"Split node '{_node_label(proto)}'"
        x = inputs[0]
        shape = tuple(self._evaluate_prefix(x).shape)
        axis = int(attrs.get("axis", 0))
        rank = len(shape)
        if not -rank <= axis < rank:
            raise ModelLoadError(f"{what} splits axis {axis} of a rank-{rank} value")
        size = shape[axis % rank]
        if "split" in attrs:
            sizes = [int(v) for v in attrs["split"]]
        elif len(inputs) > 1 and inputs[1]:
            sizes = [int(v) for v in self._evaluate_prefix(inputs[1]).reshape(-1).tolist()]
        else:
            parts = int(attrs.get("num_outputs", len(outs)))
            chunk = math.ceil(size / parts) if parts else 0
            sizes = [min(chunk, max(size - i * chunk, 0)) for i in range(parts)]
        if sum(sizes) != size or len(sizes) != len(outs) or any(s < 0 for s in sizes):
            raise ModelLoadError(f"{what} cannot split a dimension of {size} into {sizes} for {len(outs)} outputs")
        start = 0
        for out, length in zip(outs, sizes):
            if out:
                self.add(Node(out, "Split", (x,), {"axis": axis, "start": start, "length": length},
                              (), proto.name, self.opset))
            start += length


def _fill_shapes(graph: Graph, dtype: torch.dtype, label: str, note: str = "") -> Graph:
    """Every Node.shape from one evaluation on a zero input (symbolic dims already 1)."""
    from bounds.graph.interpret import EvaluationError, evaluate

    x = torch.zeros((1, *graph.input.shape), dtype=dtype)
    try:
        with torch.no_grad():
            env = evaluate(graph, x, keep={n.name for n in graph.nodes})
    except EvaluationError as exc:
        raise ModelLoadError(f"{label} cannot be evaluated on its declared input shape "
                             f"{list(graph.input.shape)}: {exc}{note}") from exc
    nodes = []
    for node in graph.nodes:
        value = env[node.name]
        if value.dim() == 0 or value.shape[0] != 1:
            raise ModelLoadError(f"evaluating {node.describe()} of {label} lost the batch dimension")
        nodes.append(replace(node, shape=tuple(value.shape[1:])))
    return graph.replace(nodes)


__all__ = ["load_onnx", "tensor_to_torch", "GZIP_MAGIC"]
