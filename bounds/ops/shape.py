"""Shape plumbing: linear selections/rearrangements of elements, and constant producers."""
from __future__ import annotations

import math

import torch

from bounds.ops.base import LinearRule, OpRule, align_ranks, batch_size, expand_batch, int_list, sample_axis, sample_rank


def resolve_reshape(in_shape: tuple[int, ...], target: list[int], allowzero: bool) -> list[int]:
    out = [in_shape[i] if (t == 0 and not allowzero) else t for i, t in enumerate(target)]
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(in_shape) // known if known else 0
    return out


class _Regroup(LinearRule):
    """Ops that only regroup the elements in order (reshape): the transposed map is the
    inverse reshape of the coefficients."""

    def backward(self, node, A, xs, is_const):
        if is_const[0]:
            return super().backward(node, A, xs, is_const)
        coeff = A.reshape(A.shape[0], A.shape[1], *xs[0].lower.shape[1:])
        return [coeff] + [None] * (len(xs) - 1), A.new_zeros(A.shape[:2])


class Reshape(_Regroup):
    constant_inputs = (1,)

    def forward(self, node, xs):
        x = xs[0]
        target = int_list(xs[1]) if len(xs) > 1 else list(node.attrs["shape"])
        shape = resolve_reshape(tuple(x.shape[1:]), target, bool(node.attrs.get("allowzero", 0)))
        return x.reshape(x.shape[0], *shape)


class Flatten(_Regroup):
    def forward(self, node, xs):
        x = xs[0]
        rank = sample_rank(x)
        axis = node.attrs.get("axis", 1)
        axis = axis + rank if axis < 0 else axis
        s = x.shape[1:]
        return x.reshape(x.shape[0], math.prod(s[:axis]), math.prod(s[axis:]))


class Transpose(LinearRule):
    def forward(self, node, xs):
        x = xs[0]
        rank = sample_rank(x)
        perm = node.attrs.get("perm") or list(reversed(range(rank)))
        return x.permute(0, *[p + 1 for p in perm])


def _axes(node, xs, rank: int) -> list[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(xs) > 1 and xs[1] is not None:
        axes = int_list(xs[1])
    if axes is None:
        return None
    return sorted(a + rank if a < 0 else a for a in axes)


class Squeeze(LinearRule):
    constant_inputs = (1,)

    def forward(self, node, xs):
        x = xs[0]
        rank = sample_rank(x)
        axes = _axes(node, xs, rank)
        if axes is None:
            axes = [i for i, d in enumerate(x.shape[1:]) if d == 1]
        keep = [d for i, d in enumerate(x.shape[1:]) if i not in axes]
        return x.reshape(x.shape[0], *keep)


class Unsqueeze(LinearRule):
    constant_inputs = (1,)

    def forward(self, node, xs):
        x = xs[0]
        axes = _axes(node, xs, sample_rank(x) + len(node.attrs.get("axes") or int_list(xs[1])))
        shape = list(x.shape[1:])
        for a in axes:
            shape.insert(a, 1)
        return x.reshape(x.shape[0], *shape)


class Concat(LinearRule):
    def forward(self, node, xs):
        b = batch_size(*xs)
        axis = sample_axis(node.attrs["axis"], sample_rank(xs[0]))
        return torch.cat([expand_batch(x, b) for x in xs], dim=axis)


class Split(LinearRule):
    """Only the first output is produced here; multi-output splits are rewritten on import."""

    constant_inputs = (1,)

    def forward(self, node, xs):
        x = xs[0]
        axis = sample_axis(node.attrs.get("axis", 0), sample_rank(x))
        start, length = node.attrs["start"], node.attrs["length"]
        return x.narrow(axis, start, length)


class Slice(LinearRule):
    constant_inputs = (1, 2, 3, 4)

    def forward(self, node, xs):
        x = xs[0]
        rank = sample_rank(x)
        if len(xs) > 1:
            starts, ends = int_list(xs[1]), int_list(xs[2])
            axes = int_list(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
            steps = int_list(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
        else:
            starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
            axes = list(node.attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        for start, end, axis, step in zip(starts, ends, axes, steps):
            dim = sample_axis(axis, rank)
            size = x.shape[dim]
            idx = range(size)[slice(*_clamp_slice(start, end, step, size))]
            if len(idx) == size and step == 1:
                continue
            if step == 1:
                x = x.narrow(dim, idx.start, len(idx))
            else:
                x = x.index_select(dim, torch.tensor(list(idx), dtype=torch.long, device=x.device))
        return x


def _clamp_slice(start: int, end: int, step: int, size: int) -> tuple[int | None, int | None, int]:
    """ONNX Slice bounds (may be huge or negative) -> Python slice arguments."""
    big = 2 ** 62
    if start < 0:
        start += size
    if end < -big:
        end_v: int | None = None if step < 0 else 0
    else:
        end_v = end + size if end < 0 else end
    if step > 0:
        start = min(max(start, 0), size)
        end_v = min(max(end_v if end_v is not None else 0, 0), size)
    else:
        start = min(max(start, 0), size - 1)  # ONNX clamps to [0, dim - 1] for negative steps
        if end_v is not None:
            end_v = max(end_v, -1)
            end_v = None if end_v == -1 else min(end_v, size - 1)
    return start, end_v, step


class Gather(LinearRule):
    constant_inputs = (1,)

    def forward(self, node, xs):
        data, idx = xs
        rank = sample_rank(data)
        dim = sample_axis(node.attrs.get("axis", 0), rank)
        index = idx[0].long()
        index = torch.where(index < 0, index + data.shape[dim], index)
        out = data.index_select(dim, index.reshape(-1))
        return out.reshape(*data.shape[:dim], *index.shape, *data.shape[dim + 1:])


class Identity(LinearRule):
    def forward(self, node, xs):
        return xs[0]


class Expand(LinearRule):
    constant_inputs = (1,)

    def forward(self, node, xs):
        x = xs[0]
        shape = int_list(xs[1])
        rank = max(sample_rank(x), len(shape))
        x = x.reshape(x.shape[0], *([1] * (rank - sample_rank(x))), *x.shape[1:])
        shape = [1] * (rank - len(shape)) + shape
        return x.expand(x.shape[0], *[a if b == 1 else b for a, b in zip(x.shape[1:], shape)])


class Where(LinearRule):
    """Selection with a constant condition: linear and monotone in both branches."""

    constant_inputs = (0,)

    def forward(self, node, xs):
        c, a, b = align_ranks(*xs)
        return torch.where(c.bool(), a, b)


class Cast(LinearRule):
    def forward(self, node, xs):
        to = node.attrs.get("to", 1)
        dtype = _ONNX_DTYPES.get(to)
        if dtype is None:
            raise NotImplementedError(f"Cast to ONNX type {to}")
        x = xs[0]
        return x if x.dtype == dtype or (x.is_floating_point() and dtype.is_floating_point) else x.to(dtype)


_ONNX_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64, 10: torch.float16}


# ---- constant producers: folded away on import, evaluated only during folding ----------

class Shape(OpRule):
    def forward(self, node, xs):
        dims = list(xs[0].shape[1:])
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        dims = dims[start:end]
        return torch.tensor(dims, dtype=torch.int64).unsqueeze(0)


class ConstantOfShape(OpRule):
    def forward(self, node, xs):
        value = node.attrs.get("value")
        value = torch.zeros(1) if value is None else value
        shape = int_list(xs[0])
        return torch.full((1, *shape), value.reshape(-1)[0].item(), dtype=value.dtype)


class Range(OpRule):
    def forward(self, node, xs):
        start, limit, delta = (x.reshape(-1)[0].item() for x in xs)
        return torch.arange(start, limit, delta, dtype=xs[0].dtype).unsqueeze(0)


class Equal(OpRule):
    def forward(self, node, xs):
        a, b = align_ranks(*xs)
        return a == b



# ---- resizing (h2b): nearest and linear interpolation with constant scales / sizes ------

def _source_coordinate(i: torch.Tensor, mode: str, scale: float, n_in: int, n_out: int) -> torch.Tensor:
    """ONNX coordinate_transformation_mode: output index -> (fractional) input coordinate."""
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if n_out > 1 else torch.zeros_like(i)
    if mode == "asymmetric":
        return i / scale
    if mode == "align_corners":
        return i * (n_in - 1) / (n_out - 1) if n_out > 1 else torch.zeros_like(i)
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    raise NotImplementedError(f"Resize coordinate_transformation_mode '{mode}'")


def _nearest(coord: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "floor":
        return torch.floor(coord)
    if mode == "ceil":
        return torch.ceil(coord)
    frac = coord - torch.floor(coord)
    tie = frac == 0.5
    if mode == "round_prefer_floor":
        return torch.where(tie, torch.floor(coord), torch.round(coord))
    if mode == "round_prefer_ceil":
        return torch.where(tie, torch.ceil(coord), torch.round(coord))
    raise NotImplementedError(f"Resize nearest_mode '{mode}'")


def _attr(node, key: str, default: str) -> str:
    v = node.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _interpolation_matrix(node, n_in: int, n_out: int, scale: float, legacy: bool,
                          dtype: torch.dtype, device) -> torch.Tensor:
    """(n_out, n_in) weights of one axis (one-hot rows for nearest)."""
    mode = _attr(node, "mode", "nearest")
    i = torch.arange(n_out, dtype=torch.float64)
    coord_mode = "asymmetric" if legacy else _attr(node, "coordinate_transformation_mode", "half_pixel")
    coord = _source_coordinate(i, coord_mode, scale, n_in, n_out)
    M = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    if mode == "nearest":
        near_mode = "floor" if legacy else _attr(node, "nearest_mode", "round_prefer_floor")
        idx = _nearest(coord, near_mode).long().clamp(0, n_in - 1)
        M[rows, idx] = 1.0
    elif mode == "linear":
        lo = torch.floor(coord)
        frac = coord - lo
        lo = lo.long()
        M.index_put_((rows, lo.clamp(0, n_in - 1)), 1.0 - frac, accumulate=True)
        M.index_put_((rows, (lo + 1).clamp(0, n_in - 1)), frac, accumulate=True)
    else:
        raise NotImplementedError(f"Resize mode '{mode}' (nearest and linear are supported)")
    return M.to(dtype=dtype, device=device)


class Resize(LinearRule):
    """ONNX Resize / Upsample with constant scales or sizes, modes nearest and linear
    (separable per axis; each output is a convex combination of inputs, so the rule is
    linear and monotone: IBP evaluates the ends, backward is the generic transpose)."""

    constant_inputs = (1, 2, 3)

    def _targets(self, node, xs) -> tuple[list[float | None], list[int | None], bool]:
        rank = sample_rank(xs[0])
        legacy = node.op == "Upsample" or (0 < node.opset < 11)
        present = lambda k: len(xs) > k and xs[k] is not None and xs[k].numel() > 0   # noqa: E731
        scales: list[float | None] = [None] * rank
        sizes: list[int | None] = [None] * rank
        if legacy:
            raw = [float(v) for v in xs[1].reshape(-1).tolist()] if present(1) else list(node.attrs["scales"])
            return raw, sizes, True
        if _attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
            raise NotImplementedError("Resize with tf_crop_and_resize")
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            raise NotImplementedError("Resize keep_aspect_ratio_policy other than stretch")
        if node.attrs.get("antialias", 0):
            raise NotImplementedError("Resize with antialias")
        axes = [a % rank for a in node.attrs.get("axes", range(rank))]
        if present(3):
            for a, v in zip(axes, int_list(xs[3])):
                sizes[a] = v
        elif present(2):
            for a, v in zip(axes, xs[2].reshape(-1).tolist()):
                scales[a] = float(v)
        return scales, sizes, False

    def forward(self, node, xs):
        x = xs[0]
        scales, sizes, legacy = self._targets(node, xs)
        for axis in range(sample_rank(x)):
            n_in = x.shape[axis + 1]
            if sizes[axis] is not None:
                n_out = sizes[axis]
                scale = n_out / n_in
            elif scales[axis] is not None:
                scale = scales[axis]
                n_out = int(math.floor(n_in * scale))
            else:
                continue
            if n_out == n_in and scale == 1.0:
                continue
            M = _interpolation_matrix(node, n_in, n_out, scale, legacy, x.dtype if x.is_floating_point()
                                      else torch.float32, x.device)
            x = torch.matmul(x.movedim(axis + 1, -1), M.T).movedim(-1, axis + 1)
        return x


class Upsample(Resize):
    constant_inputs = (1,)
