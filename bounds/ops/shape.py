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


class Reshape(LinearRule):
    constant_inputs = (1,)

    def forward(self, node, xs):
        x = xs[0]
        target = int_list(xs[1]) if len(xs) > 1 else list(node.attrs["shape"])
        shape = resolve_reshape(tuple(x.shape[1:]), target, bool(node.attrs.get("allowzero", 0)))
        return x.reshape(x.shape[0], *shape)


class Flatten(LinearRule):
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

