"""A wall-clock budget that the stages of a run consult between (and inside) their steps."""
from __future__ import annotations

import math
import time


class DeadlineExceeded(TimeoutError):
    """Raised by Deadline.check() once the budget is spent."""


class Deadline:
    """`seconds` from now on the monotonic clock (math.inf: never expires).

    Immutable after construction; `within(seconds)` makes a tighter child deadline.
    """

    __slots__ = ("_start", "_end")

    def __init__(self, seconds: float, *, start: float | None = None) -> None:
        if math.isnan(seconds):
            raise ValueError("Deadline seconds must be a number")
        self._start = time.monotonic() if start is None else start
        self._end = self._start + max(0.0, seconds)

    @property
    def start(self) -> float:
        return self._start

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def remaining(self) -> float:
        """Seconds left, never negative (math.inf for an unlimited deadline)."""
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def check(self) -> None:
        """Raise DeadlineExceeded when the budget is spent."""
        if self.expired():
            raise DeadlineExceeded(f"time limit of {self._end - self._start:.3g} s reached")

    def within(self, seconds: float | None) -> "Deadline":
        """A deadline that ends after `seconds` from now or with this one, whichever is first
        (exactly with this one when that is first, so both expire together)."""
        now = time.monotonic()
        child = Deadline(0.0, start=now)
        child._end = self._end if seconds is None else min(self._end, now + max(0.0, seconds))
        return child

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"
