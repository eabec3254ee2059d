"""PyTorch frontend: an `nn.Module` -> the Graph IR (ONNX op vocabulary), via torch.fx.

    graph = from_torch(model, (1, 1, 28, 28))

`input_shape` is the shape of ONE input as the module takes it, batch dimension included
(normally 1). That full shape is the IR input's shape, exactly as for an ONNX model whose
input is [1, 1, 28, 28]: at run time the graph reads tensors (B, 1, 1, 28, 28) (see
bounds.types), the module's own batch dimension staying a static 1 inside every value.

How it works
------------
1. The module is put in eval mode (the training flag of every submodule is remembered and
   restored afterwards, also on error) and traced with `torch.fx.symbolic_trace`; forward
   arguments after the first that have defaults are fixed to those defaults.
2. The traced graph is run once on a random input with `torch.fx.Interpreter`, keeping every
   value. Everything that does not depend on the input value (parameters, buffers, tensors
   built from them, `x.size(0)`, `x.shape[1] // 2`, ...) is thereby known concretely and
   enters the IR as a Constant; all shapes are static, so `view`/`reshape`/`flatten` become a
   `Reshape` to the traced output shape.
3. Each input-dependent fx node is translated into ONNX-style IR nodes (opset-17 conventions:
   shapes, axes, pads and slice bounds are constant int64 inputs; ReduceMean keeps its axes
   attribute). Calls without a translation are collected and reported all at once as
   `bounds.errors.UnsupportedOpError` (only those the outputs actually depend on).
4. Dead nodes are dropped, every Node.shape is filled in by evaluating the graph once
   (bounds.graph.shapes.infer_shapes) and checked against the traced shapes,
   `bounds.graph.passes.canonicalise` and `check_supported` are applied (as load_onnx does;
   skipped with canonical=False, or when that module is absent), and finally the
   graph is compared with `module(x)` on a random input (`check=True`): a disagreement
   raises ModelLoadError instead of handing out a graph that computes something else.

Parameters and buffers are COPIED: constants hold detached, CPU, float32 clones taken when
from_torch runs. Training or editing the module afterwards does not change a built graph;
import again to see new weights. The graph lives on the CPU in float32 whatever the module's
device/dtype (use bounds.graph.ir.graph_to to move it).

Limitations: one tensor input (later forward arguments need defaults); no data-dependent
control flow (an fx restriction); random ops and tensors created in forward are frozen at
their traced value; whole-tensor reductions (`x.sum()`) see the module's batch dimension of
`input_shape`, not the verifier's sub-problem batch; in-place elementwise updates rebind the
overwritten tensor and every alias that is the same tensor object, but not views of it (the
final check reports such modules). Unsupported calls are reported with opset TORCH_OPSET (0):
torch calls have no ONNX opset.
"""
from __future__ import annotations

import builtins
import importlib
import inspect
import operator
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from bounds.errors import ModelLoadError, UnsupportedOpError
from bounds.graph.interpret import evaluate
from bounds.graph.ir import CONSTANT, INPUT, Graph, Node
from bounds.graph.shapes import infer_shapes
from bounds.ops import RULES

#: the ONNX opset whose attribute/input conventions the emitted nodes follow
OPSET = 17

#: opset recorded in UnsupportedOpError entries for torch calls (they have no ONNX opset)
TORCH_OPSET = 0

#: torch's SELU constants (its own double values; ONNX's defaults are their float32 roundings)
TORCH_SELU_ALPHA = 1.6732632423543772848170429916717
TORCH_SELU_SCALE = 1.0507009873554804934193349852946

__all__ = ["from_torch", "OPSET"]


def from_torch(module: nn.Module, input_shape: tuple[int, ...] | torch.Size, *,
               name: str | None = None, canonical: bool = True, check: bool = True) -> Graph:
    """Translate `module` into a Graph whose input has the full shape `input_shape`.

    `input_shape` includes the module's batch dimension (normally 1). Raises
    UnsupportedOpError naming every untranslatable call, ModelLoadError when the module
    cannot be traced or the translation disagrees with the module (`check`).
    `canonical=False` skips bounds.graph.passes (the graph then mirrors the fx calls; tests).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    shape = tuple(int(d) for d in input_shape)
    if any(d <= 0 for d in shape):
        raise ModelLoadError(f"input_shape must have positive dimensions, got {shape}")
    label = name or type(module).__name__
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            return _import(module, shape, label, canonical, check)
    finally:
        for m, flag in flags:
            m.training = flag


# ----------------------------------------------------------------------------------------
# driver

def _import(module: nn.Module, shape: tuple[int, ...], label: str, canonical: bool, check: bool) -> Graph:
    gm = _trace(module, label)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise ModelLoadError(f"{label}: forward takes no input")
    device, dtype = _device_dtype(module)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    interp = fx.Interpreter(gm, garbage_collect_values=False)
    try:
        interp.run(x.to(device=device, dtype=dtype, copy=True))
    except Exception as exc:
        raise ModelLoadError(f"{label}: running the traced module on an input of shape {shape} "
                             f"failed: {type(exc).__name__}: {exc}") from exc
    imp = _Importer(gm, interp.env, placeholders[0], shape)
    graph = imp.build(label)
    graph = _fill_shapes(graph, label)
    imp.check_shapes(graph)
    if canonical:
        graph = _canonicalise(graph, label)
    if check:
        _validate(module, graph, x.to(device=device, dtype=dtype), label)
    return graph


def _trace(module: nn.Module, label: str) -> fx.GraphModule:
    concrete: dict[str, Any] = {}
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    for i, p in enumerate(params):
        if i == 0 or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise ModelLoadError(f"{label}: forward needs the arguments "
                                 f"{[q.name for q in params]}; from_torch supports one tensor input")
        concrete[p.name] = p.default
    try:
        return fx.symbolic_trace(module, concrete_args=concrete or None)
    except Exception as exc:
        raise ModelLoadError(
            f"torch.fx cannot trace {label} ({type(module).__module__}.{type(module).__qualname__}): "
            f"{type(exc).__name__}: {exc}. from_torch needs a forward without data-dependent control "
            "flow (if/for on tensor values) or non-traceable Python calls.") from exc


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _fill_shapes(graph: Graph, label: str) -> Graph:
    try:
        return infer_shapes(graph)
    except Exception as exc:
        raise ModelLoadError(f"the graph imported from {label} cannot be evaluated "
                             f"(an importer bug): {exc}") from exc


def _canonicalise(graph: Graph, label: str) -> Graph:
    try:
        passes = importlib.import_module("bounds.graph.passes")
    except ModuleNotFoundError as exc:
        if exc.name == "bounds.graph.passes":
            return graph
        raise
    canonicalise = getattr(passes, "canonicalise", None)
    if canonicalise is not None:
        result = canonicalise(graph)
        graph = result[0] if isinstance(result, tuple) else result
    check_supported = getattr(passes, "check_supported", None)
    if check_supported is not None:
        check_supported(graph)
    return graph


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat_tensors(v)]
    return []


def _validate(module: nn.Module, graph: Graph, x: torch.Tensor, label: str) -> None:
    got = evaluate(graph, x.detach().cpu().to(torch.float32).unsqueeze(0))
    refs = [r.detach().cpu().to(torch.float32) for r in _flat_tensors(module(x.clone()))]
    if len(refs) != len(graph.outputs):
        raise ModelLoadError(f"{label}: the module returns {len(refs)} tensors but the imported "
                             f"graph has {len(graph.outputs)} outputs (an importer bug)")
    for i, (out, ref) in enumerate(zip(graph.outputs, refs)):
        y = got[out][0]
        if tuple(y.shape) != tuple(ref.shape):
            raise ModelLoadError(f"{label}: output {i} of the imported graph has shape {tuple(y.shape)}, "
                                 f"the module's has {tuple(ref.shape)} (an importer bug)")
        finite = ref[torch.isfinite(ref)]
        scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
        if not torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * scale, equal_nan=True):
            dev = float((y - ref).abs().nan_to_num(float("inf")).max())
            raise ModelLoadError(
                f"the graph imported from {label} disagrees with the module on a random input "
                f"(output {i}, max deviation {dev:.3g}). Either the importer has a bug or the "
                "forward does something torch.fx does not capture (in-place updates of aliased "
                "tensors, hooks, behaviour depending on the input values).")


# ----------------------------------------------------------------------------------------
# translation of one fx graph

class _Skip(Exception):
    """This call cannot be translated; the message is the reason shown to the user.

    `op_level`: the operator itself is unsupported (not merely these arguments), so it is
    worth reporting even when its inputs already come from unsupported calls.
    """

    def __init__(self, reason: str, op_level: bool = False) -> None:
        super().__init__(reason)
        self.op_level = op_level


class _Poison:
    """Stands for the value of an untranslated call (and everything computed from it).

    `entries` index the unsupported calls it depends on; `name` is a dummy IR name that lets
    the calls downstream still be checked (the graph is never built while one is live).
    """

    def __init__(self, entries: set[int], name: str) -> None:
        self.entries = entries
        self.name = name


def _fx_nodes(obj: Any) -> Iterator[fx.Node]:
    if isinstance(obj, fx.Node):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _fx_nodes(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _fx_nodes(o)
    elif isinstance(obj, slice):
        for o in (obj.start, obj.stop, obj.step):
            yield from _fx_nodes(o)


def _to_const(value: Any) -> torch.Tensor:
    """A detached CPU copy; floating tensors and Python numbers become float32."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)
        return t.clone().contiguous()
    if isinstance(value, (bool, int, float)):
        return torch.tensor(float(value), dtype=torch.float32)
    if isinstance(value, (list, tuple)):
        return torch.tensor(value, dtype=torch.float32)
    raise _Skip(f"cannot use {type(value).__name__} {value!r} as a tensor")


def _ntuple(value: Any, n: int) -> list[int]:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return [int(value[0])] * n
        return [int(v) for v in value]
    return [int(value)] * n


def _label_function(target: Callable) -> str:
    mod = getattr(target, "__module__", None) or ""
    mod = {"torch._C._nn": "torch.nn.functional", "_operator": "operator", "torch._C": "torch",
           "torch._C._VariableFunctions": "torch"}.get(mod, mod)
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod else name


def _label_module(mod: nn.Module) -> str:
    cls = type(mod)
    if cls.__module__.startswith("torch.nn"):
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


#: methods/attributes of a variable tensor whose results depend on its shape only
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "get_device", "is_contiguous",
                  "new_zeros", "new_ones", "new_full", "new_tensor"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout"}
_SHAPE_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.numel}


class _Importer:
    def __init__(self, gm: fx.GraphModule, env: dict[fx.Node, Any], input_node: fx.Node,
                 input_shape: tuple[int, ...]) -> None:
        self.gm = gm
        self.env = env
        self.input_node = input_node
        self.input_shape = input_shape
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.taken: set[str] = set()
        self.var: dict[fx.Node, Any] = {}       # fx node -> IR name | list of names | _Poison
        self.consts: dict[Any, str] = {}
        self.entries: list[tuple[str, str, str]] = []  # (op label, node name, reason)
        self.current: fx.Node | None = None
        self.source = ""
        self.inplace = False
        self.input_name = ""

    # ---- emission helpers ---------------------------------------------------------------

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def emit(self, op: str, inputs: list[str], tag: str = "", **attrs: Any) -> str:
        base = self.current.name if self.current is not None else op.lower()
        name = self.fresh(f"{base}.{tag}" if tag else base)
        self.nodes.append(Node(name, op, tuple(inputs), attrs, source=self.source, opset=OPSET))
        return name

    def add_const(self, value: Any, base: str) -> str:
        t = _to_const(value)
        name = self.fresh(base)
        self.nodes.append(Node(name, CONSTANT, (), {"value": t}, tuple(t.shape), self.source, OPSET))
        return name

    def ints(self, values: list[int] | tuple[int, ...], tag: str) -> str:
        base = f"{self.current.name}.{tag}" if self.current is not None else tag
        t = torch.tensor([int(v) for v in values], dtype=torch.int64)
        name = self.fresh(base)
        self.nodes.append(Node(name, CONSTANT, (), {"value": t}, tuple(t.shape), self.source, OPSET))
        return name

    def param(self, path: str, attr: str, value: torch.Tensor, transform: str = "") -> str:
        key = ("param", path, attr, transform)
        if key not in self.consts:
            if transform == "T":
                value = value.detach().transpose(-1, -2)
            self.consts[key] = self.add_const(value, f"{path}.{attr}{'.T' if transform else ''}")
        return self.consts[key]

    def static_const(self, node: fx.Node) -> str:
        key = ("fx", node)
        if key not in self.consts:
            base = str(node.target) if node.op == "get_attr" else node.name
            self.consts[key] = self.add_const(self.env[node], base)
        return self.consts[key]

    # ---- argument access ----------------------------------------------------------------

    def is_var(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and arg in self.var

    def tensor(self, arg: Any, tag: str = "c") -> str:
        """IR name of a tensor operand; input-independent values become Constants."""
        if isinstance(arg, fx.Node):
            if arg in self.var:
                v = self.var[arg]
                if isinstance(v, _Poison):
                    return v.name
                if not isinstance(v, str):
                    raise _Skip(f"'{arg.name}' is a tuple of tensors where a tensor is expected")
                return v
            return self.static_const(arg)
        base = f"{self.current.name}.{tag}" if self.current is not None else tag
        return self.add_const(arg, base)

    def static(self, arg: Any) -> Any:
        """The concrete value of an input-independent argument (fx nodes resolved)."""
        if isinstance(arg, fx.Node):
            if arg in self.var:
                raise _Skip(f"'{arg.name}' depends on the input value but is used as a fixed argument")
            return self.env[arg]
        if isinstance(arg, tuple) and not isinstance(arg, torch.Size):
            return tuple(self.static(a) for a in arg)
        if isinstance(arg, list):
            return [self.static(a) for a in arg]
        if isinstance(arg, dict):
            return {k: self.static(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self.static(arg.start), self.static(arg.stop), self.static(arg.step))
        return arg

    def shape(self, arg: Any) -> tuple[int, ...]:
        if isinstance(arg, fx.Node):
            value = self.env[arg]
            if isinstance(value, torch.Tensor):
                return tuple(value.shape)
        if isinstance(arg, torch.Tensor):
            return tuple(arg.shape)
        if isinstance(arg, (int, float, bool)):
            return ()
        raise _Skip(f"expected a tensor, got {arg!r}")

    def out_shape(self) -> tuple[int, ...]:
        value = self.env[self.current]
        if not isinstance(value, torch.Tensor):
            raise _Skip("the call does not return a tensor")
        return tuple(value.shape)

    def mark_inplace(self, flag: Any) -> None:
        if flag is True:
            self.inplace = True

    # ---- the walk -------------------------------------------------------------------------

    def build(self, label: str) -> Graph:
        output_args: Any = None
        for node in self.gm.graph.nodes:
            self.current = node
            if node.op == "placeholder":
                if node is self.input_node:
                    name = self.input_name = self.fresh(node.name)
                    self.nodes.append(Node(name, INPUT, shape=self.input_shape, source=node.name, opset=OPSET))
                    self.var[node] = name
                continue
            if node.op == "output":
                output_args = node.args[0]
                continue
            if node.op == "get_attr":
                continue
            deps = [n for n in _fx_nodes((node.args, node.kwargs)) if n in self.var]
            if not deps or self._shape_only(node):
                continue  # input-independent: known concretely from the traced run
            poison = [self.var[n] for n in deps if isinstance(self.var[n], _Poison)]
            self.var[node] = self._translate(node, set().union(*(p.entries for p in poison)) if poison else None)
        self.current = None
        outputs, live_entries = self._outputs(output_args, label)
        if live_entries:
            picked = [self.entries[i] for i in sorted(live_entries)]
            raise UnsupportedOpError([(op, where, TORCH_OPSET) for op, where, _ in picked],
                                     reasons=[why for _, _, why in picked])
        return Graph(tuple(self._live(outputs)), (self.input_name,), tuple(outputs), label)

    def _shape_only(self, node: fx.Node) -> bool:
        if node.op == "call_method" and node.target in _SHAPE_METHODS:
            return True
        if node.op == "call_function":
            if node.target is builtins.getattr and len(node.args) > 1 and node.args[1] in _SHAPE_ATTRS:
                return True
            if node.target in _SHAPE_FUNCTIONS:
                return True
        return False

    def _translate(self, node: fx.Node, poisoned: set[int] | None) -> Any:
        """IR value of one input-dependent call; a _Poison when it (or an input) is unsupported.

        With `poisoned` inputs only operator-level gaps are reported: argument problems there
        may be artefacts of the unsupported producer.
        """
        self.inplace = False
        handler, label, where = self._lookup(node)
        self.source = f"{where} ({label})"
        try:
            if handler is None:
                raise _Skip("", op_level=True)
            if node.op == "call_module":
                result = handler(self, self.modules[node.target], *node.args, **node.kwargs)
            else:
                result = handler(self, *node.args, **node.kwargs)
        except (_Skip, TypeError, ValueError, IndexError) as exc:  # the latter: unexpected arguments
            entries = set(poisoned or ())
            if poisoned is None or (isinstance(exc, _Skip) and exc.op_level):
                reason = str(exc) if isinstance(exc, _Skip) else f"arguments not understood ({exc})"
                self.entries.append((label, where, reason))
                entries.add(len(self.entries) - 1)
            return _Poison(entries, self.fresh(f"{node.name}.unsupported"))
        if poisoned is not None:
            return _Poison(poisoned, self.fresh(f"{node.name}.unsupported"))
        if node.op == "call_module" and getattr(self.modules[node.target], "inplace", False) is True:
            self.inplace = True
        if self.inplace and node.args and self.is_var(node.args[0]) and isinstance(result, str):
            # later readers of the overwritten tensor see the result: the argument itself and
            # every value that is the very same tensor object in the traced run (aliases)
            target = self.env[node.args[0]]
            for other, v in self.var.items():
                if isinstance(v, str) and (other is node.args[0] or self.env.get(other) is target):
                    self.var[other] = result
        return result

    def _lookup(self, node: fx.Node) -> tuple[Callable | None, str, str]:
        if node.op == "call_module":
            mod = self.modules[node.target]
            handler = None
            for cls in type(mod).__mro__:
                handler = _MODULES.get(cls)
                if handler is not None:
                    break
            return handler, _label_module(mod), str(node.target)
        if node.op == "call_method":
            name = str(node.target)
            handler = _METHODS.get(name)
            if handler is None and name.endswith("_") and not name.startswith("_") and name[:-1] in _INPLACE_OK:
                handler = _METHODS.get(name[:-1])
                self.inplace = True
            return handler, f"Tensor.{name}", node.name
        handler = _FUNCTIONS.get(node.target)
        if node.target in _INPLACE_FUNCTIONS:
            self.inplace = True
        return handler, _label_function(node.target), node.name

    def _outputs(self, args: Any, label: str) -> tuple[list[str], set[int]]:
        names: list[str] = []
        live: set[int] = set()

        def visit(obj: Any) -> None:
            if isinstance(obj, fx.Node):
                if obj in self.var:
                    v = self.var[obj]
                    if isinstance(v, _Poison):
                        live.update(v.entries)
                    elif isinstance(v, list):
                        names.extend(v)
                    else:
                        names.append(v)
                else:
                    for t in _flat_tensors(self.env[obj]):
                        names.append(self.add_const(t, f"{obj.name}.const"))
            elif isinstance(obj, (tuple, list)):
                for o in obj:
                    visit(o)
            elif isinstance(obj, dict):
                for o in obj.values():
                    visit(o)
            elif isinstance(obj, torch.Tensor):
                names.append(self.add_const(obj, "output.const"))

        visit(args)
        if not names and not live:
            raise ModelLoadError(f"{label}: forward returns no tensor")
        return names, live

    def _live(self, outputs: list[str]) -> list[Node]:
        index = {n.name: n for n in self.nodes}
        todo, keep = list(outputs), set()
        while todo:
            cur = todo.pop()
            if cur not in keep:
                keep.add(cur)
                todo.extend(index[cur].inputs)
        keep.add(self.input_name)
        return [n for n in self.nodes if n.name in keep]

    def check_shapes(self, graph: Graph) -> None:
        for node, v in self.var.items():
            if isinstance(v, str) and v in graph and isinstance(self.env.get(node), torch.Tensor):
                want = tuple(self.env[node].shape)
                if graph[v].shape != want and v not in graph.inputs:
                    raise ModelLoadError(f"imported value '{v}' has shape {graph[v].shape} but torch "
                                         f"computes {want} (an importer bug)")

    # ---- shared translations -------------------------------------------------------------

    def unary(self, op: str, x: Any, **attrs: Any) -> str:
        if op not in RULES:
            raise _Skip(f"nnverify has no bound rule for the ONNX op {op} yet", op_level=True)
        return self.emit(op, [self.tensor(x)], **attrs)

    def binary(self, op: str, a: Any, b: Any) -> str:
        return self.emit(op, [self.tensor(a, "a"), self.tensor(b, "b")])

    def scaled(self, b: Any, alpha: Any) -> Any:
        alpha = self.static(alpha)
        if alpha == 1:
            return b
        return self.emit("Mul", [self.tensor(b, "b"), self.tensor(alpha, "alpha")], tag="alpha")

    def reshape_to(self, x: Any, target: tuple[int, ...] | None = None) -> str:
        target = self.out_shape() if target is None else target
        name = self.tensor(x)
        if self.shape(x) == tuple(target):
            return name
        return self.emit("Reshape", [name, self.ints(target, "shape")])

    def clamp(self, x: Any, lo: Any, hi: Any) -> str:
        """min(max(x, lo), hi) = lo + relu(x - lo) - relu(x - hi), exactly (lo <= hi)."""
        lo, hi = self.static(lo), self.static(hi)
        name = self.tensor(x)
        if lo is None and hi is None:
            return name
        if lo is not None and hi is not None:
            if not bool(torch.as_tensor(lo) <= torch.as_tensor(hi)):
                raise _Skip("clamp with min > max")
        zero = lambda v: isinstance(v, (int, float)) and v == 0  # noqa: E731
        lo_c = None if lo is None or zero(lo) else self.tensor(lo, "min")
        hi_c = None if hi is None else self.tensor(hi, "max")
        if hi is None:
            if lo_c is None:
                return self.emit("Relu", [name])
            r = self.emit("Relu", [self.emit("Sub", [name, lo_c], tag="shift")], tag="relu")
            return self.emit("Add", [r, lo_c])
        if lo is None:
            r = self.emit("Relu", [self.emit("Sub", [hi_c, name], tag="shift")], tag="relu")
            return self.emit("Sub", [hi_c, r])
        low = self.emit("Relu", [name] if lo_c is None else
                        [self.emit("Sub", [name, lo_c], tag="shift_min")], tag="relu_min")
        high = self.emit("Relu", [self.emit("Sub", [name, hi_c], tag="shift_max")], tag="relu_max")
        if lo_c is None:
            return self.emit("Sub", [low, high])
        return self.emit("Add", [self.emit("Sub", [low, high], tag="diff"), lo_c])

    def linear(self, x: Any, w: str, b: str | None, w_t: str | None = None) -> str:
        """y = x W^T + b: Gemm(transB=1) on 2-D inputs, MatMul (+ Add) otherwise."""
        name = self.tensor(x)
        if len(self.shape(x)) == 2:
            return self.emit("Gemm", [name, w] + ([b] if b is not None else []), transB=1)
        if w_t is None:
            w_t = self.emit("Transpose", [w], tag="weight_T", perm=[1, 0])
        y = self.emit("MatMul", [name, w_t], tag="matmul" if b is not None else "")
        return self.emit("Add", [y, b]) if b is not None else y

    def conv(self, x: Any, weight: torch.Tensor, w: str, b: str | None, stride: Any, padding: Any,
             dilation: Any, groups: int, padding_mode: str = "zeros") -> str:
        n = weight.dim() - 2
        if n not in (1, 2, 3):
            raise _Skip(f"{n}-d convolution")
        if len(self.shape(x)) != n + 2:
            raise _Skip(f"input of rank {len(self.shape(x))}; Conv needs (N, C, spatial...)")
        strides, dils = _ntuple(stride, n), _ntuple(dilation, n)
        kernel = list(weight.shape[2:])
        if isinstance(padding, str):
            if padding == "valid":
                begin, end = [0] * n, [0] * n
            elif padding == "same":
                total = [d * (k - 1) for d, k in zip(dils, kernel)]
                begin, end = [t // 2 for t in total], [t - t // 2 for t in total]
            else:
                raise _Skip(f"padding={padding!r}")
        else:
            begin = _ntuple(padding, n)
            end = list(begin)
        name = self.tensor(x)
        if padding_mode != "zeros":
            mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}.get(padding_mode)
            if mode is None:
                raise _Skip(f"padding_mode={padding_mode!r}")
            if any(begin) or any(end):
                pads = [0, 0] + begin + [0, 0] + end
                name = self.emit("Pad", [name, self.ints(pads, "pads")], tag="pad", mode=mode)
            begin, end = [0] * n, [0] * n
        return self.emit("Conv", [name, w] + ([b] if b is not None else []), kernel_shape=kernel,
                         strides=strides, pads=begin + end, dilations=dils, group=int(groups))

    def conv_transpose(self, x: Any, weight: torch.Tensor, w: str, b: str | None, stride: Any, padding: Any,
                       dilation: Any, groups: int) -> str:
        """ONNX ConvTranspose; output_padding is read off the traced output size, so an
        `output_size` argument to the module is honoured too."""
        n = weight.dim() - 2
        shape = self.shape(x)
        if n not in (1, 2, 3) or len(shape) != n + 2:
            raise _Skip(f"{n}-d transposed convolution of a rank-{len(shape)} input")
        strides, dils, pads = _ntuple(stride, n), _ntuple(dilation, n), _ntuple(padding, n)
        kernel = list(weight.shape[2:])
        out = self.out_shape()[2:]
        full = [s * (i - 1) + d * (k - 1) + 1 - 2 * p
                for i, s, d, k, p in zip(shape[2:], strides, dils, kernel, pads)]
        out_pad = [o - f for o, f in zip(out, full)]
        if any(op < 0 for op in out_pad):
            raise _Skip(f"output size {list(out)} smaller than the transposed convolution's {full}")
        attrs: dict[str, Any] = dict(kernel_shape=kernel, strides=strides, pads=pads + pads, dilations=dils,
                                     group=int(groups))
        if any(out_pad):
            attrs["output_padding"] = out_pad
        return self.emit("ConvTranspose", [self.tensor(x), w] + ([b] if b is not None else []), **attrs)

    def layer_norm(self, x: Any, path: str, normalized_shape: tuple[int, ...], weight: Any, bias: Any,
                   eps: float) -> str:
        """ONNX LayerNormalization over the trailing `normalized_shape` (scale 1 when the
        module has no affine weight: the ONNX op needs one)."""
        shape = self.shape(x)
        k = len(normalized_shape)
        if k == 0 or k > len(shape) or tuple(shape[len(shape) - k:]) != tuple(normalized_shape):
            raise _Skip(f"normalized_shape {list(normalized_shape)} for an input of shape {list(shape)}")
        if self.is_var(weight) or self.is_var(bias):
            raise _Skip("a scale or bias computed from the input")
        weight, bias = self.static(weight), self.static(bias)
        scale = (self.param(path, "weight", weight) if isinstance(weight, torch.Tensor)
                 else self.add_const(torch.ones(normalized_shape), f"{path}.scale"))
        ins = [self.tensor(x), scale]
        if isinstance(bias, torch.Tensor):
            ins.append(self.param(path, "bias", bias))
        return self.emit("LayerNormalization", ins, axis=len(shape) - k, epsilon=float(eps))

    def batchnorm(self, x: Any, path: str, mean: Any, var: Any, weight: Any, bias: Any, eps: float) -> str:
        if mean is None or var is None:
            raise _Skip("no running statistics (track_running_stats=False normalises with batch statistics)")
        shape = self.shape(x)
        c = mean.numel()
        if len(shape) < 2 or shape[1] != c:
            raise _Skip(f"input shape {shape} does not have {c} channels in dimension 1")
        weight = torch.ones(c) if weight is None else weight
        bias = torch.zeros(c) if bias is None else bias
        ins = [self.tensor(x)] + [self.param(path, a, v) for a, v in
                                  (("weight", weight), ("bias", bias), ("running_mean", mean), ("running_var", var))]
        return self.emit("BatchNormalization", ins, epsilon=float(eps))

    def pool(self, kind: str, n: int, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
             dilation: Any = 1, ceil_mode: Any = False, count_include_pad: Any = True,
             divisor_override: Any = None, return_indices: Any = False) -> str:
        if len(self.shape(x)) != n + 2:
            raise _Skip(f"input of rank {len(self.shape(x))}; pooling needs (N, C, spatial...)")
        kernel = _ntuple(self.static(kernel_size), n)
        stride = self.static(stride)
        strides = kernel if stride is None or stride == [] or stride == () else _ntuple(stride, n)
        pads = _ntuple(self.static(padding), n)
        attrs: dict[str, Any] = dict(kernel_shape=kernel, strides=strides, pads=pads + pads,
                                     ceil_mode=int(bool(self.static(ceil_mode))))
        if kind == "AveragePool":
            if self.static(divisor_override) is not None:
                raise _Skip("divisor_override")
            attrs["count_include_pad"] = int(bool(self.static(count_include_pad)))
        else:
            if self.static(return_indices):
                raise _Skip("return_indices=True")
            attrs["dilations"] = _ntuple(self.static(dilation), n)
        return self.emit(kind, [self.tensor(x)], **attrs)

    def adaptive(self, kind: str, n: int, x: Any, output_size: Any) -> str:
        shape = self.shape(x)
        if len(shape) != n + 2:
            raise _Skip(f"input of rank {len(shape)}; pooling needs (N, C, spatial...)")
        size = self.static(output_size)
        size = list(size) if isinstance(size, (tuple, list)) else [size] * n
        spatial = list(shape[2:])
        size = [s if o is None else int(o) for o, s in zip(size, spatial)]
        if all(o == 1 for o in size):
            return self.emit("GlobalAveragePool" if kind == "AveragePool" else "GlobalMaxPool", [self.tensor(x)])
        if any(s % o for s, o in zip(spatial, size)):
            raise _Skip(f"output size {size} does not divide the input size {spatial}")
        kernel = [s // o for s, o in zip(spatial, size)]
        return self.emit(kind, [self.tensor(x)], kernel_shape=kernel, strides=kernel, pads=[0] * (2 * n))

    def pad(self, x: Any, pad: Any, mode: Any = "constant", value: Any = None) -> str:
        pad = [int(p) for p in self.static(pad)]
        mode, value = self.static(mode), self.static(value)
        rank = len(self.shape(x))
        if len(pad) % 2 or len(pad) // 2 > rank:
            raise _Skip(f"pad {pad} for a rank-{rank} input")
        begin, end = [0] * rank, [0] * rank
        for i in range(len(pad) // 2):
            begin[rank - 1 - i], end[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
        onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}.get(mode)
        if onnx_mode is None:
            raise _Skip(f"mode={mode!r}")
        name = self.tensor(x)
        if not any(begin) and not any(end):
            return name
        inputs = [name, self.ints(begin + end, "pads")]
        if onnx_mode == "constant":
            inputs.append(self.tensor(float(value or 0.0), "value"))
        return self.emit("Pad", inputs, mode=onnx_mode)

    def reduce(self, op: str, x: Any, dim: Any, keepdim: Any) -> str:
        rank = len(self.shape(x))
        dim, keep = self.static(dim), int(bool(self.static(keepdim)))
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            axes = list(range(rank))
        else:
            dims = dim if isinstance(dim, (list, tuple)) else [dim]
            axes = sorted({int(d) % rank for d in dims}) if rank else []
        name = self.tensor(x)
        if op == "ReduceMean":
            return self.emit(op, [name], axes=axes, keepdims=keep)
        return self.emit(op, [name, self.ints(axes, "axes")], keepdims=keep)

    def axis(self, dim: Any, rank: int) -> int:
        d = int(self.static(dim))
        if not -rank <= d < max(rank, 1):
            raise _Skip(f"dimension {d} out of range for rank {rank}")
        return d % rank if rank else 0

    def transpose(self, x: Any, perm: list[int]) -> str:
        name = self.tensor(x)
        if perm == sorted(perm):
            return name
        return self.emit("Transpose", [name], perm=perm)

    def slice_(self, x: str, starts: list[int], ends: list[int], axes: list[int], steps: list[int],
               tag: str = "") -> str:
        return self.emit("Slice", [x, self.ints(starts, f"{tag}starts"), self.ints(ends, f"{tag}ends"),
                                   self.ints(axes, f"{tag}axes"), self.ints(steps, f"{tag}steps")], tag=tag.rstrip("."))

    def pieces(self, x: Any, dim: Any, squeeze: bool = False) -> list[str]:
        """Consecutive Slices of x along dim with the sizes torch produced (split/chunk/unbind)."""
        rank = len(self.shape(x))
        d = self.axis(dim, rank)
        outs = self.env[self.current]
        names, start = [], 0
        for k, t in enumerate(outs):
            length = 1 if squeeze else t.shape[d]
            if length == self.shape(x)[d]:
                piece = self.tensor(x)
            else:
                piece = self.slice_(self.tensor(x), [start], [start + length], [d], [1], tag=f"{k}.")
            if squeeze:
                piece = self.emit("Squeeze", [piece, self.ints([d], f"{k}.axes")], tag=str(k))
            names.append(piece)
            start += length
        return names

    def index(self, x: Any, idx: Any) -> str:
        shape = self.shape(x)
        rank = len(shape)
        idx = self.static(idx)
        items = list(idx) if isinstance(idx, tuple) else [idx]
        for it in items:
            if isinstance(it, bool) or not (it is None or it is Ellipsis or isinstance(it, (int, slice))):
                raise _Skip(f"indexing with {type(it).__name__} (only ints, slices, None and ... are supported)")
        consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
        if consumed > rank or items.count(Ellipsis) > 1:
            raise _Skip(f"index {idx!r} for a rank-{rank} tensor")
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items[at:at + 1] = [slice(None)] * (rank - consumed)
        else:
            items += [slice(None)] * (rank - consumed)
        starts, ends, axes, steps, squeeze, kinds = [], [], [], [], [], []
        d = 0
        for it in items:
            if it is None:
                kinds.append("new")
                continue
            size = shape[d]
            if isinstance(it, slice):
                if it.step is not None and it.step <= 0:
                    raise _Skip("slice with a non-positive step")
                r = range(size)[it]
                if not (r.start == 0 and r.stop == size and r.step == 1):
                    starts.append(r.start), ends.append(max(r.stop, r.start)), axes.append(d), steps.append(r.step)
                kinds.append("dim")
            else:
                i = it + size if it < 0 else it
                if not 0 <= i < size:
                    raise _Skip(f"index {it} out of range for size {size}")
                starts.append(i), ends.append(i + 1), axes.append(d), steps.append(1)
                squeeze.append(d)
            d += 1
        name = self.tensor(x)
        if starts:
            name = self.slice_(name, starts, ends, axes, steps, tag="slice." if squeeze or "new" in kinds else "")
        if squeeze:
            name = self.emit("Squeeze", [name, self.ints(squeeze, "squeeze_axes")],
                             tag="squeeze" if "new" in kinds else "")
        new = [i for i, k in enumerate(kinds) if k == "new"]
        if new:
            name = self.emit("Unsqueeze", [name, self.ints(new, "unsqueeze_axes")])
        return name

    def concat(self, tensors: Any, dim: Any) -> str:
        tensors = list(tensors)
        rank = len(self.out_shape())
        names = [self.tensor(t, f"part{i}") for i, t in enumerate(tensors)]
        return self.emit("Concat", names, axis=self.axis(dim, rank))


# ----------------------------------------------------------------------------------------
# translation tables: torch.nn modules, torch functions, Tensor methods

def _m_linear(imp: _Importer, mod: nn.Linear, x: Any) -> str:
    path = str(imp.current.target)
    w = imp.param(path, "weight", mod.weight)
    b = imp.param(path, "bias", mod.bias) if mod.bias is not None else None
    w_t = None if len(imp.shape(x)) == 2 else imp.param(path, "weight", mod.weight, "T")
    return imp.linear(x, w, b, w_t)


def _m_conv(imp: _Importer, mod: nn.Module, x: Any, output_size: Any = None) -> str:
    path = str(imp.current.target)
    w = imp.param(path, "weight", mod.weight)
    b = imp.param(path, "bias", mod.bias) if mod.bias is not None else None
    if mod.transposed:
        if mod.padding_mode != "zeros":
            raise _Skip(f"padding_mode={mod.padding_mode!r}")
        return imp.conv_transpose(x, mod.weight, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)
    return imp.conv(x, mod.weight, w, b, mod.stride, mod.padding, mod.dilation, mod.groups, mod.padding_mode)


def _m_layer_norm(imp: _Importer, mod: nn.LayerNorm, x: Any) -> str:
    return imp.layer_norm(x, str(imp.current.target), tuple(mod.normalized_shape), mod.weight,
                          getattr(mod, "bias", None), float(mod.eps))


def _m_batchnorm(imp: _Importer, mod: nn.Module, x: Any) -> str:
    return imp.batchnorm(x, str(imp.current.target), mod.running_mean, mod.running_var,
                         mod.weight if mod.affine else None, mod.bias if mod.affine else None, mod.eps)


def _m_alias(imp: _Importer, mod: nn.Module, x: Any, *args: Any, **kwargs: Any) -> str:
    return imp.tensor(x)


def _m_pool(kind: str) -> Callable:
    def handler(imp: _Importer, mod: nn.Module, x: Any) -> str:
        n = len(imp.shape(x)) - 2
        if kind == "AveragePool":
            return imp.pool(kind, n, x, mod.kernel_size, mod.stride, mod.padding, ceil_mode=mod.ceil_mode,
                            count_include_pad=mod.count_include_pad,
                            divisor_override=getattr(mod, "divisor_override", None))
        return imp.pool(kind, n, x, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                        return_indices=mod.return_indices)
    return handler


def _m_adaptive(kind: str) -> Callable:
    def handler(imp: _Importer, mod: nn.Module, x: Any) -> str:
        if getattr(mod, "return_indices", False):
            raise _Skip("return_indices=True")
        return imp.adaptive(kind, len(imp.shape(x)) - 2, x, mod.output_size)
    return handler


def _m_pad(mode: str) -> Callable:
    def handler(imp: _Importer, mod: nn.Module, x: Any) -> str:
        return imp.pad(x, mod.padding, mode, getattr(mod, "value", 0.0))
    return handler


def _m_gelu(imp: _Importer, mod: nn.GELU, x: Any) -> str:
    if mod.approximate not in ("none", "tanh"):
        raise _Skip(f"approximate={mod.approximate!r}")
    return imp.unary("Gelu", x, approximate=mod.approximate)


def _m_softplus(imp: _Importer, mod: nn.Softplus, x: Any) -> str:
    if mod.beta != 1:
        raise _Skip("beta != 1")
    return imp.unary("Softplus", x)


def _m_softmax(imp: _Importer, mod: nn.Softmax, x: Any) -> str:
    if mod.dim is None:
        raise _Skip("implicit softmax dimension")
    return imp.unary("Softmax", x, axis=imp.axis(mod.dim, len(imp.shape(x))))


_MODULES: dict[type, Callable] = {
    nn.Linear: _m_linear,
    nn.modules.conv._ConvNd: _m_conv,
    nn.modules.batchnorm._BatchNorm: _m_batchnorm,
    nn.ReLU: lambda imp, mod, x: imp.emit("Relu", [imp.tensor(x)]),
    nn.LeakyReLU: lambda imp, mod, x: imp.emit("LeakyRelu", [imp.tensor(x)], alpha=float(mod.negative_slope)),
    nn.Sigmoid: lambda imp, mod, x: imp.emit("Sigmoid", [imp.tensor(x)]),
    nn.Tanh: lambda imp, mod, x: imp.emit("Tanh", [imp.tensor(x)]),
    nn.Hardtanh: lambda imp, mod, x: imp.clamp(x, float(mod.min_val), float(mod.max_val)),  # ReLU6 too
    nn.GELU: _m_gelu,
    nn.ELU: lambda imp, mod, x: imp.unary("Elu", x, alpha=float(mod.alpha)),
    # h4: exponential linear units, Mish (bounds.ops.elu / silu), layer normalisation
    nn.SELU: lambda imp, mod, x: imp.unary("Selu", x, alpha=TORCH_SELU_ALPHA, gamma=TORCH_SELU_SCALE),
    nn.CELU: lambda imp, mod, x: imp.unary("Celu", x, alpha=float(mod.alpha)),
    nn.Mish: lambda imp, mod, x: imp.unary("Mish", x),
    nn.LayerNorm: _m_layer_norm,
    nn.Softplus: _m_softplus,
    nn.Softsign: lambda imp, mod, x: imp.unary("Softsign", x),
    # h1: unary ops of bounds.ops.silu / piecewise
    nn.SiLU: lambda imp, mod, x: imp.unary("nnverify.SiLU", x),
    nn.Hardsigmoid: lambda imp, mod, x: imp.unary("HardSigmoid", x, alpha=1 / 6, beta=0.5),
    nn.Hardswish: lambda imp, mod, x: imp.unary("HardSwish", x),
    nn.Softmax: _m_softmax,
    nn.Flatten: lambda imp, mod, x: imp.reshape_to(x),
    nn.Unflatten: lambda imp, mod, x: imp.reshape_to(x),
    nn.Identity: _m_alias,
    nn.modules.dropout._DropoutNd: _m_alias,
    nn.modules.pooling._AvgPoolNd: _m_pool("AveragePool"),
    nn.modules.pooling._MaxPoolNd: _m_pool("MaxPool"),
    nn.modules.pooling._AdaptiveAvgPoolNd: _m_adaptive("AveragePool"),
    nn.modules.pooling._AdaptiveMaxPoolNd: _m_adaptive("MaxPool"),
    nn.modules.padding._ConstantPadNd: _m_pad("constant"),
    nn.modules.padding._ReflectionPadNd: _m_pad("reflect"),
    nn.modules.padding._ReplicationPadNd: _m_pad("replicate"),
}
if hasattr(nn.modules.padding, "_CircularPadNd"):
    _MODULES[nn.modules.padding._CircularPadNd] = _m_pad("circular")


# ---- functions and methods (a method receives the tensor as its first argument) --------

def _f_add(imp, input, other, *, alpha=1, out=None):
    return imp.binary("Add", input, imp.scaled(other, alpha))


def _f_sub(imp, input, other, *, alpha=1, out=None):
    return imp.binary("Sub", input, imp.scaled(other, alpha))


def _f_mul(imp, input, other, *, out=None):
    return imp.binary("Mul", input, other)


def _f_div(imp, input, other, *, rounding_mode=None, out=None):
    if imp.static(rounding_mode) is not None:
        raise _Skip(f"rounding_mode={imp.static(rounding_mode)!r}")
    return imp.binary("Div", input, other)


def _f_neg(imp, input, *, out=None):
    return imp.emit("Neg", [imp.tensor(input)])


def _f_matmul(imp, input, other, *, out=None):
    return imp.binary("MatMul", input, other)


def _f_linear(imp, input, weight, bias=None):
    if imp.is_var(weight) or imp.is_var(bias):
        raise _Skip("a weight computed from the input")
    w = imp.tensor(weight, "weight")
    b = imp.tensor(bias, "bias") if bias is not None else None
    w_t = None
    if len(imp.shape(input)) != 2:
        w_t = imp.add_const(imp.static(weight).transpose(-1, -2), f"{imp.current.name}.weight_T")
    return imp.linear(input, w, b, w_t)


def _f_conv(imp, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if imp.is_var(weight) or imp.is_var(bias):
        raise _Skip("a weight computed from the input")
    wv = imp.static(weight)
    w = imp.tensor(weight, "weight")
    b = imp.tensor(bias, "bias") if bias is not None else None
    return imp.conv(input, wv, w, b, imp.static(stride), imp.static(padding), imp.static(dilation),
                    int(imp.static(groups)))


def _f_batch_norm(imp, input, running_mean, running_var, weight=None, bias=None, training=False,
                  momentum=0.1, eps=1e-5):
    if any(imp.is_var(a) for a in (running_mean, running_var, weight, bias)):
        raise _Skip("statistics computed from the input")
    if imp.static(training):
        raise _Skip("training=True normalises with batch statistics")
    return imp.batchnorm(input, imp.current.name, imp.static(running_mean), imp.static(running_var),
                         imp.static(weight), imp.static(bias), float(imp.static(eps)))


def _f_relu(imp, input, inplace=False):
    imp.mark_inplace(imp.static(inplace))
    return imp.emit("Relu", [imp.tensor(input)])


def _f_leaky_relu(imp, input, negative_slope=0.01, inplace=False):
    imp.mark_inplace(imp.static(inplace))
    return imp.emit("LeakyRelu", [imp.tensor(input)], alpha=float(imp.static(negative_slope)))


def _f_sigmoid(imp, input, *, out=None):
    return imp.emit("Sigmoid", [imp.tensor(input)])


def _f_tanh(imp, input, *, out=None):
    return imp.emit("Tanh", [imp.tensor(input)])


def _f_clamp(imp, input, min=None, max=None, *, out=None):
    return imp.clamp(input, min, max)


def _f_hardtanh(imp, input, min_val=-1.0, max_val=1.0, inplace=False):
    imp.mark_inplace(imp.static(inplace))
    return imp.clamp(input, float(imp.static(min_val)), float(imp.static(max_val)))


def _f_relu6(imp, input, inplace=False):
    imp.mark_inplace(imp.static(inplace))
    return imp.clamp(input, 0.0, 6.0)


def _f_gelu(imp, input, approximate="none"):
    if imp.static(approximate) not in ("none", "tanh"):
        raise _Skip(f"approximate={imp.static(approximate)!r}")
    return imp.unary("Gelu", input, approximate=imp.static(approximate))


def _f_elu(imp, input, alpha=1.0, inplace=False):
    imp.mark_inplace(imp.static(inplace))
    return imp.unary("Elu", input, alpha=float(imp.static(alpha)))


def _f_selu(imp, input, inplace=False):
    imp.mark_inplace(imp.static(inplace))
    return imp.unary("Selu", input, alpha=TORCH_SELU_ALPHA, gamma=TORCH_SELU_SCALE)


def _f_celu(imp, input, alpha=1.0, inplace=False):
    imp.mark_inplace(imp.static(inplace))
    return imp.unary("Celu", input, alpha=float(imp.static(alpha)))


def _f_mish(imp, input, inplace=False):
    imp.mark_inplace(imp.static(inplace))
    return imp.unary("Mish", input)


def _f_layer_norm(imp, input, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = imp.static(normalized_shape)
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(v) for v in shape)
    return imp.layer_norm(input, imp.current.name, shape, weight, bias, float(imp.static(eps)))


def _f_conv_transpose(imp, input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    if imp.is_var(weight) or imp.is_var(bias):
        raise _Skip("a weight computed from the input")
    w = imp.tensor(weight, "weight")
    b = imp.tensor(bias, "bias") if bias is not None else None
    return imp.conv_transpose(input, imp.static(weight), w, b, imp.static(stride), imp.static(padding),
                              imp.static(dilation), int(imp.static(groups)))


def _f_softplus(imp, input, beta=1.0, threshold=20.0):
    if imp.static(beta) != 1:
        raise _Skip("beta != 1")
    return imp.unary("Softplus", input)


def _f_softmax(imp, input, dim=None, _stacklevel=3, dtype=None):
    if imp.static(dim) is None:
        raise _Skip("implicit softmax dimension")
    return imp.unary("Softmax", input, axis=imp.axis(dim, len(imp.shape(input))))


def _f_unary(op: str) -> Callable:
    def handler(imp, input, *args, **kwargs):
        return imp.unary(op, input)
    return handler


def _f_pow(imp, input, exponent):
    if "Pow" not in RULES:
        raise _Skip("nnverify has no bound rule for the ONNX op Pow yet", op_level=True)
    if imp.is_var(exponent):
        raise _Skip("an exponent computed from the input")
    return imp.binary("Pow", input, exponent)


def _f_dropout(imp, input, p=0.5, training=True, inplace=False):
    if imp.static(training):
        raise _Skip("dropout with training=True")
    return imp.tensor(input)


def _f_alias(imp, input, *args, **kwargs):
    return imp.tensor(input)


def _f_cast(imp, input, *args, **kwargs):
    value = imp.env[imp.current]
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        raise _Skip("conversion to a non-floating dtype")
    return imp.tensor(input)


def _f_reshape(imp, input, *args, **kwargs):
    value = imp.env[imp.current]
    src = imp.env[input] if isinstance(input, fx.Node) else None
    if isinstance(src, torch.Tensor) and isinstance(value, torch.Tensor) and value.dtype != src.dtype:
        raise _Skip("reinterpreting the dtype")
    return imp.reshape_to(input)


def _f_squeeze(imp, input, dim=None):
    shape = imp.shape(input)
    rank = len(shape)
    dim = imp.static(dim)
    if dim is None:
        axes = [i for i, s in enumerate(shape) if s == 1]
    else:
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        axes = sorted({int(d) % rank for d in dims if shape[int(d) % rank] == 1}) if rank else []
    if not axes:
        return imp.tensor(input)
    return imp.emit("Squeeze", [imp.tensor(input), imp.ints(axes, "axes")])


def _f_unsqueeze(imp, input, dim):
    axis = imp.axis(dim, len(imp.shape(input)) + 1)
    return imp.emit("Unsqueeze", [imp.tensor(input), imp.ints([axis], "axes")])


def _perm_args(dims: tuple) -> list:
    return list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else list(dims)


def _f_permute(imp, input, *dims, **kwargs):
    dims = _perm_args(tuple(imp.static(d) for d in dims) if dims else (imp.static(kwargs["dims"]),))
    rank = len(imp.shape(input))
    return imp.transpose(input, [int(d) % rank for d in dims])


def _f_transpose(imp, input, dim0, dim1):
    rank = len(imp.shape(input))
    perm = list(range(rank))
    a, b = imp.axis(dim0, rank), imp.axis(dim1, rank)
    perm[a], perm[b] = perm[b], perm[a]
    return imp.transpose(input, perm)


def _f_t(imp, input):
    rank = len(imp.shape(input))
    return imp.transpose(input, list(reversed(range(rank))))


def _f_getattr(imp, obj, name):
    rank = len(imp.shape(obj))
    if name == "T":
        return imp.transpose(obj, list(reversed(range(rank))))
    if name == "mT" and rank >= 2:
        return imp.transpose(obj, list(range(rank - 2)) + [rank - 1, rank - 2])
    if name == "data":
        return imp.tensor(obj)
    raise _Skip(f"attribute {name!r}")


def _f_getitem(imp, obj, idx):
    if imp.is_var(obj) and isinstance(imp.var[obj], list):
        return imp.var[obj][imp.static(idx)]
    if any(n in imp.var for n in _fx_nodes(idx)):
        raise _Skip("indexing with a tensor computed from the input")
    return imp.index(obj, idx)


def _f_flatten(imp, input, start_dim=0, end_dim=-1):
    return imp.reshape_to(input)


def _f_expand(imp, input, *args, **kwargs):
    target = imp.out_shape()
    name = imp.tensor(input)
    if imp.shape(input) == target:
        return name
    return imp.emit("Expand", [name, imp.ints(target, "shape")])


def _f_cat(imp, tensors, dim=0, *, axis=None, out=None):
    return imp.concat(tensors, dim if axis is None else axis)


def _f_stack(imp, tensors, dim=0, *, out=None):
    tensors = list(tensors)
    rank = len(imp.out_shape())
    axis = imp.axis(dim, rank)
    parts = [imp.emit("Unsqueeze", [imp.tensor(t, f"part{i}"), imp.ints([axis], f"axes{i}")], tag=f"part{i}")
             for i, t in enumerate(tensors)]
    return imp.emit("Concat", parts, axis=axis)


def _f_split(imp, tensor, split_size_or_sections, dim=0):
    return imp.pieces(tensor, dim)


def _f_chunk(imp, input, chunks, dim=0):
    return imp.pieces(input, dim)


def _f_unbind(imp, input, dim=0):
    return imp.pieces(input, dim, squeeze=True)


def _f_mean(imp, input, dim=None, keepdim=False, *, dtype=None, axis=None, out=None):
    return imp.reduce("ReduceMean", input, dim if axis is None else axis, keepdim)


def _f_sum(imp, input, dim=None, keepdim=False, *, dtype=None, axis=None, out=None):
    return imp.reduce("ReduceSum", input, dim if axis is None else axis, keepdim)


def _f_pool(kind: str, n: int) -> Callable:
    def handler(imp, input, kernel_size, stride=None, padding=0, *args, **kwargs):
        if kind == "AveragePool":
            names = ["ceil_mode", "count_include_pad", "divisor_override"]
        else:
            names = ["dilation", "ceil_mode", "return_indices"]
        extra = dict(zip(names, args))
        extra.update(kwargs)
        return imp.pool(kind, n, input, kernel_size, stride, padding, **extra)
    return handler


def _f_adaptive(kind: str, n: int) -> Callable:
    def handler(imp, input, output_size, return_indices=False):
        if imp.static(return_indices):
            raise _Skip("return_indices=True")
        return imp.adaptive(kind, n, input, output_size)
    return handler


def _f_pad(imp, input, pad, mode="constant", value=None):
    return imp.pad(input, pad, mode, value)


_FUNCTIONS: dict[Any, Callable] = {
    operator.add: _f_add, torch.add: _f_add,
    operator.sub: _f_sub, torch.sub: _f_sub, torch.subtract: _f_sub,
    operator.mul: _f_mul, torch.mul: _f_mul, torch.multiply: _f_mul,
    operator.truediv: _f_div, torch.div: _f_div, torch.divide: _f_div, torch.true_divide: _f_div,
    operator.neg: _f_neg, torch.neg: _f_neg, torch.negative: _f_neg,
    operator.pos: _f_alias,
    operator.matmul: _f_matmul, torch.matmul: _f_matmul, torch.mm: _f_matmul, torch.bmm: _f_matmul,
    F.linear: _f_linear,
    F.conv1d: _f_conv, F.conv2d: _f_conv, F.conv3d: _f_conv,
    F.batch_norm: _f_batch_norm,
    torch.relu: _f_relu, F.relu: _f_relu, torch.relu_: _f_relu, F.relu_: _f_relu,
    F.leaky_relu: _f_leaky_relu, F.leaky_relu_: _f_leaky_relu,
    torch.sigmoid: _f_sigmoid, F.sigmoid: _f_sigmoid,
    torch.tanh: _f_tanh, F.tanh: _f_tanh,
    torch.clamp: _f_clamp, torch.clip: _f_clamp,
    torch.clamp_min: lambda imp, input, min: imp.clamp(input, min, None),
    torch.clamp_max: lambda imp, input, max: imp.clamp(input, None, max),
    F.hardtanh: _f_hardtanh, F.relu6: _f_relu6,
    F.gelu: _f_gelu, F.elu: _f_elu, F.softplus: _f_softplus, F.softsign: _f_unary("Softsign"),
    F.selu: _f_selu, torch.selu: _f_selu, F.celu: _f_celu, torch.celu: _f_celu, F.mish: _f_mish,
    F.layer_norm: _f_layer_norm,
    F.conv_transpose1d: _f_conv_transpose, F.conv_transpose2d: _f_conv_transpose,
    F.conv_transpose3d: _f_conv_transpose,
    F.softmax: _f_softmax, torch.softmax: _f_softmax,
    torch.exp: _f_unary("Exp"), torch.log: _f_unary("Log"), torch.sqrt: _f_unary("Sqrt"),
    torch.abs: _f_unary("Abs"), torch.sin: _f_unary("Sin"), torch.cos: _f_unary("Cos"),
    torch.erf: _f_unary("Erf"), torch.reciprocal: _f_unary("Reciprocal"),
    # h1: unary ops of bounds.ops.s_shaped / silu / piecewise
    torch.atan: _f_unary("Atan"), torch.arctan: _f_unary("Atan"), torch.sign: _f_unary("Sign"),
    torch.tan: _f_unary("Tan"), torch.asin: _f_unary("Asin"), torch.arcsin: _f_unary("Asin"),
    torch.acos: _f_unary("Acos"), torch.arccos: _f_unary("Acos"), torch.sinh: _f_unary("Sinh"),
    torch.cosh: _f_unary("Cosh"), torch.asinh: _f_unary("Asinh"), torch.arcsinh: _f_unary("Asinh"),
    torch.atanh: _f_unary("Atanh"), torch.arctanh: _f_unary("Atanh"), torch.acosh: _f_unary("Acosh"),
    torch.arccosh: _f_unary("Acosh"),
    F.softsign: _f_unary("Softsign"),
    F.silu: _f_unary("nnverify.SiLU"), F.hardsigmoid: lambda imp, input, inplace=False: imp.unary(
        "HardSigmoid", input, alpha=1 / 6, beta=0.5), F.hardswish: _f_unary("HardSwish"),
    operator.pow: _f_pow, torch.pow: _f_pow,
    F.dropout: _f_dropout, F.dropout1d: _f_dropout, F.dropout2d: _f_dropout, F.dropout3d: _f_dropout,
    F.alpha_dropout: _f_dropout,
    torch.flatten: _f_flatten, torch.reshape: _f_reshape, torch.unflatten: _f_reshape,
    torch.squeeze: _f_squeeze, torch.unsqueeze: _f_unsqueeze,
    torch.permute: _f_permute, torch.transpose: _f_transpose, torch.swapaxes: _f_transpose,
    torch.swapdims: _f_transpose, torch.t: _f_t,
    torch.cat: _f_cat, torch.concat: _f_cat, torch.concatenate: _f_cat, torch.stack: _f_stack,
    torch.split: _f_split, torch.chunk: _f_chunk, torch.unbind: _f_unbind,
    torch.mean: _f_mean, torch.sum: _f_sum,
    torch.broadcast_to: _f_expand,
    builtins.getattr: _f_getattr, operator.getitem: _f_getitem,
    F.avg_pool1d: _f_pool("AveragePool", 1), F.avg_pool2d: _f_pool("AveragePool", 2),
    F.avg_pool3d: _f_pool("AveragePool", 3),
    F.max_pool1d: _f_pool("MaxPool", 1), F.max_pool2d: _f_pool("MaxPool", 2), F.max_pool3d: _f_pool("MaxPool", 3),
    F.adaptive_avg_pool1d: _f_adaptive("AveragePool", 1), F.adaptive_avg_pool2d: _f_adaptive("AveragePool", 2),
    F.adaptive_avg_pool3d: _f_adaptive("AveragePool", 3),
    F.adaptive_max_pool1d: _f_adaptive("MaxPool", 1), F.adaptive_max_pool2d: _f_adaptive("MaxPool", 2),
    F.pad: _f_pad,
}

#: functions that overwrite their first argument
_INPLACE_FUNCTIONS = {torch.relu_, F.relu_, F.leaky_relu_}

_METHODS: dict[str, Callable] = {
    "add": _f_add, "sub": _f_sub, "subtract": _f_sub, "mul": _f_mul, "multiply": _f_mul,
    "div": _f_div, "divide": _f_div, "true_divide": _f_div, "neg": _f_neg, "negative": _f_neg,
    "matmul": _f_matmul, "mm": _f_matmul, "bmm": _f_matmul,
    "relu": _f_relu, "sigmoid": _f_sigmoid, "tanh": _f_tanh,
    "clamp": _f_clamp, "clip": _f_clamp,
    "clamp_min": lambda imp, input, min: imp.clamp(input, min, None),
    "clamp_max": lambda imp, input, max: imp.clamp(input, None, max),
    "softmax": _f_softmax, "exp": _f_unary("Exp"), "log": _f_unary("Log"), "sqrt": _f_unary("Sqrt"),
    "abs": _f_unary("Abs"), "sin": _f_unary("Sin"), "cos": _f_unary("Cos"), "pow": _f_pow,
    "view": _f_reshape, "reshape": _f_reshape, "view_as": _f_reshape, "reshape_as": _f_reshape,
    "flatten": _f_flatten, "unflatten": _f_reshape,
    "squeeze": _f_squeeze, "unsqueeze": _f_unsqueeze,
    "permute": _f_permute, "transpose": _f_transpose, "swapaxes": _f_transpose, "swapdims": _f_transpose,
    "t": _f_t,
    "split": _f_split, "chunk": _f_chunk, "unbind": _f_unbind,
    "mean": _f_mean, "sum": _f_sum,
    "expand": _f_expand, "expand_as": _f_expand,
    "contiguous": _f_alias, "clone": _f_alias, "detach": _f_alias,
    "float": _f_cast, "to": _f_cast, "type_as": _f_cast, "type": _f_cast,
}

#: elementwise methods whose in-place form `name_` is modelled by rebinding the tensor
_INPLACE_OK = {"add", "sub", "mul", "div", "neg", "relu", "sigmoid", "tanh", "clamp", "clip",
               "clamp_min", "clamp_max", "exp", "abs"}
