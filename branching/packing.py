"""Compact storage of ReLU sub-problems' split decisions and warm starts while they wait.

A waiting sub-problem of a conv net held an int8 decision, a float32 slope and a float32
split multiplier for every ReLU (oval21 cifar_deep: 6,756 ReLUs, ~61 KB), though it has at
most a few dozen splits and its multipliers are zero everywhere else. Here the decisions and
their multipliers are kept as a short list per sub-problem (flat neuron index with the sign,
multipliers beside them), and the slopes in bfloat16: they only warm-start the next search,
which projects them back into their valid range first (any valid slope gives a sound bound).
Unpacking gives back the dense tensors the bounding code reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: field names of the packed decisions and multipliers (zero is "no split" / "zero multiplier")
CODES = "splits/codes"
BETAS = "splits/betas"
#: the split list's width grows in steps of this many entries (the queue pads narrower pushes)
_WIDTH_STEP = 16
_BETA_PREFIX = "beta:"
_WARM_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class SplitLayout:
    """The splittable pre-activations in a fixed order, each flattened to `width` neurons."""
    names: tuple[str, ...]
    widths: tuple[int, ...]

    @staticmethod
    def of(splits: dict[str, torch.Tensor]) -> "SplitLayout":
        return SplitLayout(tuple(splits), tuple(int(v.shape[1]) for v in splits.values()))

    @property
    def total(self) -> int:
        return sum(self.widths)

    def pack(self, splits: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fields for a queue: the decisions as signed codes ±(flat index + 1), padded with
        zeros to a multiple of 16 per sub-problem; the multipliers at those decisions
        (N, rows, width) when any are given; every other parameter in bfloat16."""
        dense = torch.cat([splits[name].reshape(splits[name].shape[0], -1) for name in self.names], 1)
        n = dense.shape[0]
        chosen = dense != 0
        counts = chosen.sum(1)
        count = int(counts.max()) if n else 0
        width = max(_WIDTH_STEP, -(-count // _WIDTH_STEP) * _WIDTH_STEP)
        # nonzero lists row by row, so an entry's slot is its rank after its row's first entry
        # (no running count over every neuron of every sub-problem)
        rows, cols = chosen.nonzero(as_tuple=True)
        slot = torch.arange(len(rows), device=dense.device) - (counts.cumsum(0) - counts)[rows]
        codes = torch.zeros(n, width, dtype=torch.int32, device=dense.device)
        codes[rows, slot] = (cols.to(torch.int32) + 1) * dense[rows, cols].to(torch.int32)
        out = {CODES: codes}
        betas = {k[len(_BETA_PREFIX):]: v for k, v in params.items() if k.startswith(_BETA_PREFIX)}
        if betas:
            like = next(iter(betas.values()))
            packed = like.new_zeros(n, like.shape[1], width)
            offset = 0
            for name, w in zip(self.names, self.widths):
                beta = betas.get(name)
                here = (cols >= offset) & (cols < offset + w)
                if beta is not None and bool(here.any()):
                    r, c = rows[here], cols[here] - offset
                    packed[r, :, slot[here]] = beta.reshape(n, beta.shape[1], -1)[r, :, c]
                offset += w
            out[BETAS] = packed
        for key, value in params.items():
            if not key.startswith(_BETA_PREFIX):
                out[f"param/{key}"] = value.to(_WARM_DTYPE)
        return out

    def unpack(self, fields: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(splits, params) as `pack` took them: dense int8 decisions per pre-activation,
        float32 slopes, and multipliers (N, rows, width) for every layer with a split."""
        codes = fields[CODES]
        n = codes.shape[0]
        rows, slot = (codes != 0).nonzero(as_tuple=True)
        code = codes[rows, slot]
        cols = code.abs().long() - 1
        dense = torch.zeros(n, self.total, dtype=torch.int8, device=codes.device)
        dense[rows, cols] = code.sign().to(torch.int8)
        splits, params = {}, {}
        betas = fields.get(BETAS)
        offset = 0
        for name, w in zip(self.names, self.widths):
            splits[name] = dense[:, offset: offset + w].contiguous()
            here = (cols >= offset) & (cols < offset + w)
            if betas is not None and bool(here.any()):
                beta = betas.new_zeros(n, betas.shape[1], w)
                beta[rows[here], :, cols[here] - offset] = betas[rows[here], :, slot[here]]
                params[_BETA_PREFIX + name] = beta
            offset += w
        head = "param/"
        for key, value in fields.items():
            if key.startswith(head):
                params[key[len(head):]] = value.float()
        return splits, params
