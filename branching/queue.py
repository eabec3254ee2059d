"""The waiting sub-problems of a branch-and-bound search, worst first.

Sub-problems carry large per-domain tensors (intervals of every layer, slopes, split
decisions). Keeping them as one batch that is re-concatenated and re-sorted every round
costs time in proportion to the whole queue, which on long runs outgrew the bounding itself
(mnist 256x4: 63 of 143 s in cat/take with 60k domains waiting). Here they live in slots of
preallocated tensors: a push writes only the new rows, a pop gathers only the popped rows
and moves as many from the end into the holes, and only the scores are searched.
"""
from __future__ import annotations

import time
from typing import Callable, Generic, Protocol, TypeVar

import torch

#: growths of at least this many bytes are timed (smaller ones say little about the speed)
_TIMED_GROWTH_BYTES = 64 << 20
#: bytes of new storage per second assumed before a large growth was timed (a 2-core box
#: filled 8 GB in 12 s; a guess on the slow side keeps the time limit)
_GUESSED_GROWTH_RATE = 0.5e9


class Flattable(Protocol):
    def fields(self) -> dict[str, torch.Tensor]: ...


D = TypeVar("D", bound=Flattable)


class DomainQueue(Generic[D]):
    """Sub-problems as named tensors (leading dimension: the domain), popped by lowest "score".

    `build` turns a dict of fields back into the domain type. Fields that a pushed batch lacks
    while the queue holds them (or the reverse) are dropped from both, unless `zero_fill(name)`
    says zeros are a valid value for them (e.g. split multipliers of a layer with no split yet);
    such fields may also differ in the size of their last dimension (lists padded with zeros),
    and the narrower side is padded.
    """

    def __init__(self, build: Callable[[dict[str, torch.Tensor]], D],
                 zero_fill: Callable[[str], bool] = lambda name: False, max_bytes: int | None = None) -> None:
        self._build = build
        self._zero_fill = zero_fill
        self._store: dict[str, torch.Tensor] = {}
        self._n = 0
        #: storage beyond which the queue stops doubling; `full` then tells the search to stop
        #: (an `unknown` with a reason beats the process being killed for memory)
        self.max_bytes = max_bytes
        self.full = False
        self._row_bytes = 0
        #: bytes of new storage per second in the last large growth
        self._growth_rate = _GUESSED_GROWTH_RATE

    def __len__(self) -> int:
        return self._n

    @property
    def scores(self) -> torch.Tensor:
        return self._store["score"][: self._n]

    def worst_score(self) -> float | None:
        return float(self.scores.min()) if self._n else None

    def push(self, domains: D) -> None:
        fields = domains.fields()
        m = fields["score"].shape[0]
        if m == 0:
            return
        if self._n == 0:
            # an empty queue takes the batch's fields as they are (storage is reused when it fits)
            self._store = {k: v for k, v in self._store.items() if k in fields
                           and v.shape[1:] == fields[k].shape[1:] and v.dtype == fields[k].dtype}
        else:
            self._reconcile(fields)
        need = self._n + m
        row_bytes = sum(v[:1].numel() * v.element_size() for v in fields.values())
        self._row_bytes = row_bytes
        grown_bytes, began = 0, time.perf_counter()
        for key, value in fields.items():
            store = self._store.get(key)
            if store is None or store.shape[0] < need:
                capacity = self._capacity_for(need, store.shape[0] if store is not None else 0, row_bytes)
                grown = value.new_empty(capacity, *value.shape[1:])
                if store is not None and self._n:
                    grown[: self._n] = store[: self._n]
                self._store[key] = store = grown
                grown_bytes += grown.numel() * grown.element_size()
            store[self._n: need] = value
        self._n = need
        if self.max_bytes is not None and need * row_bytes > self.max_bytes:
            self.full = True
        if grown_bytes >= _TIMED_GROWTH_BYTES:
            self._growth_rate = grown_bytes / max(time.perf_counter() - began, 1e-6)

    def _capacity_for(self, need: int, current: int, row_bytes: int) -> int:
        """Rows to grow a field to: double, but once that passes max_bytes, the whole allowance
        at once (growing to just what is needed would copy the queue on every later push)."""
        capacity = max(need, 2 * current, 64)
        if self.max_bytes is not None and capacity * row_bytes > self.max_bytes:
            capacity = max(need, self.max_bytes // max(1, row_bytes))
        return capacity

    def growth_seconds(self, more: int) -> float:
        """Estimated seconds that pushing `more` domains would spend growing the storage
        (fresh memory is slow to fill: 4 -> 8 GB took 12 s on a 2-core box), 0 when they fit;
        from the speed of the last large growth, or a cautious guess before one."""
        if not self._store or more <= 0:
            return 0.0
        held = min(v.shape[0] for v in self._store.values())
        need = self._n + more
        if need <= held:
            return 0.0
        new_bytes = self._capacity_for(need, held, self._row_bytes) * self._row_bytes
        return new_bytes / self._growth_rate

    def _reconcile(self, fields: dict[str, torch.Tensor]) -> None:
        m = fields["score"].shape[0]
        for key, value in fields.items():
            store = self._store.get(key)
            if store is not None and self._zero_fill(key) and _only_last_differs(store, value):
                width = max(store.shape[-1], value.shape[-1])
                if value.shape[-1] < width:
                    fields[key] = _pad_last(value, width)
                if store.shape[-1] < width:
                    self._store[key] = _pad_last(store[: self._n], width, rows=store.shape[0])
        for key in list(self._store):
            if key in fields:
                continue
            if self._zero_fill(key):
                like = self._store[key]
                fields[key] = like.new_zeros(m, *like.shape[1:])
            else:
                del self._store[key]
        for key in list(fields):
            if key in self._store:
                continue
            if self._zero_fill(key):
                value = fields[key]
                self._store[key] = value.new_zeros(max(self._n, 64), *value.shape[1:])
            else:
                del fields[key]

    def pop_worst(self, k: int) -> D:
        """The (at most) k waiting domains with the lowest score, removed from the queue."""
        n = self._n
        k = min(k, n)
        if k == n:
            idx = torch.arange(n, device=self.scores.device)
        else:
            idx = torch.topk(self.scores, k, largest=False, sorted=False).indices
        out = self._build({key: v[idx] for key, v in self._store.items()})
        # fill the holes below the new end with the survivors above it
        tail = n - k
        removed = torch.zeros(n, dtype=torch.bool, device=idx.device)
        removed[idx] = True
        holes = idx[idx < tail]
        movers = (~removed[tail:]).nonzero().flatten() + tail
        if len(holes):
            for v in self._store.values():
                v[holes] = v[movers]
        self._n = tail
        return out


def _only_last_differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dim() == b.dim() >= 2 and a.shape[1:-1] == b.shape[1:-1] and a.shape[-1] != b.shape[-1]


def _pad_last(t: torch.Tensor, width: int, rows: int | None = None) -> torch.Tensor:
    """`t` zero-padded along its last dimension to `width` (and along the first to `rows`)."""
    out = t.new_zeros(rows if rows is not None else t.shape[0], *t.shape[1:-1], width)
    out[: t.shape[0], ..., : t.shape[-1]] = t
    return out


def put_group(fields: dict[str, torch.Tensor], prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Store a dict of per-domain tensors under `prefix/name` keys."""
    for name, value in tensors.items():
        fields[f"{prefix}/{name}"] = value


def get_group(fields: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors put_group stored under `prefix` (names may contain '/' themselves)."""
    head = prefix + "/"
    return {key[len(head):]: value for key, value in fields.items() if key.startswith(head)}


def put_intervals(fields: dict[str, torch.Tensor], inter: dict) -> None:
    put_group(fields, "lo", {k: v.lower for k, v in inter.items()})
    put_group(fields, "up", {k: v.upper for k, v in inter.items()})


def get_intervals(fields: dict[str, torch.Tensor]) -> dict:
    from bounds.types import Interval

    lower, upper = get_group(fields, "lo"), get_group(fields, "up")
    return {k: Interval(lower[k], upper[k]) for k in lower if k in upper}
