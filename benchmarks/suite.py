"""VNN-COMP suite folders: `instances.csv`, the `.onnx` / `.vnnlib` files (gzipped or not)
and, when present, `truth.csv`.

A suite folder holds `instances.csv` without a header (`onnx,vnnlib,timeout_s`, paths relative
to the folder). Competition folders often list `x.onnx` while shipping `x.onnx.gz` (or the
other way round); both spellings resolve to whichever file exists.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

#: truth.csv words that are a ground truth; anything else (unknown, empty) is none
VERDICTS = ("sat", "unsat")


class SuiteError(Exception):
    """A suite folder that cannot be read (no instances.csv, a missing file, a bad row)."""


@dataclass(frozen=True)
class Instance:
    """One (network, property) pair of a suite.

    category  the suite's name (its folder name), the first column of competition CSVs
    onnx      the network as written in instances.csv (relative to the suite folder)
    vnnlib    the property as written in instances.csv
    timeout   the instance's published time limit, seconds
    root      the suite folder
    expected  "sat" / "unsat" from truth.csv, "" when there is no ground truth
    """

    category: str
    onnx: str
    vnnlib: str
    timeout: float
    root: Path
    expected: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.category, self.onnx, self.vnnlib)

    @property
    def onnx_path(self) -> Path:
        return resolve(self.root, self.onnx)

    @property
    def vnnlib_path(self) -> Path:
        return resolve(self.root, self.vnnlib)


@dataclass(frozen=True)
class Suite:
    name: str
    root: Path
    instances: tuple[Instance, ...]


def resolve(root: Path, rel: str) -> Path:
    """The file `rel` names under `root`, with or without `.gz`; the plain name if neither exists."""
    path = root / rel
    if path.exists():
        return path
    other = path.with_name(path.name[:-3]) if path.name.endswith(".gz") else path.with_name(path.name + ".gz")
    return other if other.exists() else path


def read_truth(root: Path) -> dict[tuple[str, str], str]:
    """(onnx, vnnlib) -> expected verdict from `truth.csv` (header row required); {} without one."""
    path = root / "truth.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"onnx", "vnnlib", "expected"} <= set(reader.fieldnames):
            raise SuiteError(f"{path}: needs a header with the columns onnx, vnnlib, expected")
        return {(r["onnx"].strip(), r["vnnlib"].strip()): r["expected"].strip().lower() for r in reader}


def read_suite(root: str | Path, check_files: bool = True) -> Suite:
    """Read a suite folder; every listed file must exist (in either gzip spelling) when `check_files`."""
    root = Path(root).resolve()
    listing = root / "instances.csv"
    if not listing.is_file():
        raise SuiteError(f"{root}: not a VNN-COMP suite folder (no instances.csv)")
    truth = read_truth(root)
    instances: list[Instance] = []
    missing: list[str] = []
    with open(listing, newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise SuiteError(f"{listing}:{line_no}: expected onnx,vnnlib,timeout, got {','.join(row)!r}")
            onnx, vnnlib, timeout_text = (c.strip() for c in row[:3])
            try:
                timeout = float(timeout_text)
            except ValueError:
                raise SuiteError(f"{listing}:{line_no}: the timeout {timeout_text!r} is not a number") from None
            expected = truth.get((onnx, vnnlib), "")
            inst = Instance(root.name, onnx, vnnlib, timeout, root, expected if expected in VERDICTS else "")
            if check_files:
                missing += [rel for rel, p in ((onnx, inst.onnx_path), (vnnlib, inst.vnnlib_path)) if not p.is_file()]
            instances.append(inst)
    if missing:
        shown = ", ".join(sorted(set(missing))[:5])
        raise SuiteError(f"{root}: {len(set(missing))} listed file(s) missing, e.g. {shown}")
    return Suite(root.name, root, tuple(instances))


def sample(instances: tuple[Instance, ...] | list[Instance], every: int = 1, limit: int = 0) -> list[Instance]:
    """Every `every`-th instance (a fixed, reproducible sample), then at most `limit` (0: all)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    chosen = list(instances)[::every]
    return chosen[:limit] if limit > 0 else chosen
