"""The results CSV: one row per finished instance, written and synced as soon as it finishes.

Columns: the six of the competition's results files (`category, onnx, vnnlib, prepare_time,
result, run_time`) and ours: `timeout` (the limit it ran under), `overrun` (seconds past that
limit), `stage` (what decided), `bound` (best certified margin, or the violation of a
witness), `witness` (the counterexample file, relative to the CSV's folder), `expected`
(truth.csv's verdict, if any) and `message`.

A run killed half-way leaves every finished row intact (each is flushed and fsynced, and a
witness file is complete before its row is written); a cut-off last line is dropped when the
file is opened again. Other tools' competition CSVs (no header, six columns) read as rows too.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

FIELDS = ("category", "onnx", "vnnlib", "prepare_time", "result", "run_time",
          "timeout", "overrun", "stage", "bound", "witness", "expected", "message")
COMPETITION_FIELDS = FIELDS[:6]

#: words of older competitions and other tools, mapped to today's
_SYNONYMS = {"holds": "unsat", "violated": "sat", "timed-out": "timeout", "timed_out": "timeout"}


class ResultsError(Exception):
    """A file that is not a results CSV of ours nor a competition results CSV."""


@dataclass(frozen=True)
class Row:
    category: str
    onnx: str
    vnnlib: str
    prepare_time: float = 0.0
    result: str = "unknown"
    run_time: float = 0.0
    timeout: float | None = None
    overrun: float = 0.0
    stage: str = ""
    bound: float | None = None
    witness: str = ""
    expected: str = ""
    message: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.category, self.onnx, self.vnnlib)

    def to_csv(self) -> list[str]:
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out.append("")
            elif isinstance(value, float):
                out.append(f"{value:.6g}" if f.name == "bound" else f"{value:.3f}")
            else:
                out.append(str(value))
        return out


def normalise_word(word: str) -> str:
    word = word.strip().lower()
    return _SYNONYMS.get(word, word)


def match_key(onnx: str, vnnlib: str) -> tuple[str, str]:
    """Names that identify an instance across tools: file names without folders or `.gz`."""
    def base(p: str) -> str:
        name = p.strip().replace("\\", "/").rsplit("/", 1)[-1]
        return name[:-3] if name.endswith(".gz") else name
    return base(onnx), base(vnnlib)


def _number(text: str, default: float | None) -> float | None:
    text = text.strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        return default
    return value if math.isfinite(value) or default is None else default


def read_results(path: str | Path) -> list[Row]:
    """Rows of one of our results CSVs or of a competition results CSV (auto-detected).

    When an instance appears twice the later row wins (as a resumed run would have it)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read: {exc}") from exc
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a line cut off by a crash
    records = [r for r in csv.reader(io.StringIO(text)) if r and "".join(r).strip()]
    if not records:
        return []
    by_key: dict[tuple[str, str, str], Row] = {}
    if records[0][: len(COMPETITION_FIELDS)] == list(COMPETITION_FIELDS):
        header = records[0]
        for rec in records[1:]:
            row = _ours(dict(zip(header, rec)))
            by_key[row.key] = row
    else:
        for line_no, rec in enumerate(records, start=1):
            if len(rec) < 6:
                raise ResultsError(f"{path}:{line_no}: expected the competition's six columns "
                                   f"{','.join(COMPETITION_FIELDS)}, got {len(rec)}")
            row = Row(category=rec[0].strip(), onnx=rec[1].strip(), vnnlib=rec[2].strip(),
                      prepare_time=_number(rec[3], 0.0) or 0.0, result=normalise_word(rec[4]),
                      run_time=_number(rec[5], 0.0) or 0.0)
            by_key[row.key] = row
    return list(by_key.values())


def _ours(d: dict[str, str]) -> Row:
    return Row(category=d.get("category", ""), onnx=d.get("onnx", ""), vnnlib=d.get("vnnlib", ""),
               prepare_time=_number(d.get("prepare_time", ""), 0.0) or 0.0,
               result=normalise_word(d.get("result", "") or "unknown"),
               run_time=_number(d.get("run_time", ""), 0.0) or 0.0,
               timeout=_number(d.get("timeout", ""), None), overrun=_number(d.get("overrun", ""), 0.0) or 0.0,
               stage=d.get("stage", ""), bound=_number(d.get("bound", ""), None), witness=d.get("witness", ""),
               expected=d.get("expected", ""), message=d.get("message", ""))


class ResultsFile:
    """Appends rows to a results CSV; knows which instances it holds already (resume)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.witness_dir = self.path.with_name(self.path.stem + ".witnesses")
        self._repair()
        self.rows = {r.key: r for r in read_results(self.path)} if self.path.stat().st_size else {}

    def _repair(self) -> None:
        """Create the file with its header, or check an existing one and drop a cut-off last line."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerow(FIELDS)
                _sync(fh)
            return
        with open(self.path, "r+", newline="") as fh:
            first = fh.readline()
            if next(csv.reader([first]), [])[: len(FIELDS)] != list(FIELDS):
                raise ResultsError(f"{self.path}: not a results file of this runner (its header is {first.strip()!r}); "
                                   "choose another --out")
            data = fh.read()
            if data and not data.endswith("\n"):
                fh.truncate(len(first.encode()) + len(data[: data.rfind("\n") + 1].encode()))
                _sync(fh)

    def done(self) -> set[tuple[str, str, str]]:
        return set(self.rows)

    def write_witness(self, category: str, onnx: str, vnnlib: str, text: str) -> str:
        """Save a result-file text next to the CSV; returns its path relative to the CSV's folder."""
        onnx_name, spec_name = (_stem(n) for n in match_key(onnx, vnnlib))
        target = self.witness_dir / _safe(category) / f"{_safe(onnx_name)}__{_safe(spec_name)}.counterexample"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
            _sync(fh)
        os.replace(tmp, target)
        return os.path.relpath(target, self.path.parent)

    def append(self, row: Row) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow(row.to_csv())
            _sync(fh)
        self.rows[row.key] = row


def _sync(fh: io.TextIOBase) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _stem(name: str) -> str:
    for suffix in (".onnx", ".vnnlib"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
