"""Progress on stderr: one updating line on a terminal, one plain line per instance otherwise.

    [#######.............]  35/100  unsat 20  sat 8  timeout 5  unknown 1  error 1  wrong 0  ETA 3m12s
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

WORDS = ("unsat", "sat", "timeout", "unknown", "error")


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts finished instances and estimates the time left from the pace so far."""

    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None,
                 previously: dict[str, int] | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.counts = {w: 0 for w in WORDS}
        self.wrong = 0
        self.done = 0
        self.start = time.monotonic()
        self.previously = previously or {}

    def line(self) -> str:
        counts = "  ".join(f"{w} {self.counts[w]}" for w in WORDS)
        eta = ""
        if 0 < self.done < self.total:
            eta = f"  ETA {_clock((time.monotonic() - self.start) / self.done * (self.total - self.done))}"
        elif self.done == self.total:
            eta = f"  done in {_clock(time.monotonic() - self.start)}"
        solved = self.counts["sat"] + self.counts["unsat"]
        return f"{self.done}/{self.total}  solved {solved}  {counts}  wrong {self.wrong}{eta}"

    def begin(self) -> None:
        skipped = sum(self.previously.values())
        if skipped:
            self.stream.write(f"resuming: {skipped} instance(s) already in the results file\n")
        if self.tty:
            self._draw()
        else:
            self.stream.write(f"{self.total} instance(s) to run\n")
        self.stream.flush()

    def update(self, word: str, wrong: bool, label: str, seconds: float) -> None:
        self.done += 1
        self.counts[word if word in self.counts else "error"] += 1
        self.wrong += int(wrong)
        if self.tty:
            if wrong:  # a wrong answer is worth a line of its own, above the bar
                self.stream.write("\r\033[K" + f"WRONG {label}: {word}\n")
            self._draw()
        else:
            flag = "  WRONG" if wrong else ""
            self.stream.write(f"{word:8s} {seconds:8.2f} s  {label}{flag}  [{self.line()}]\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        text = self.line()
        bar_len = max(0, min(30, width - len(text) - 4))
        filled = int(bar_len * self.done / self.total) if self.total else bar_len
        bar = f"[{'#' * filled}{'.' * (bar_len - filled)}] " if bar_len >= 5 else ""
        self.stream.write("\r\033[K" + (bar + text)[: width - 1])
