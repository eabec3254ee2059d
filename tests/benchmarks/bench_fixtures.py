"""Small generated suites for the runner tests."""
from __future__ import annotations

import sys
from pathlib import Path

FAKE_WORKER = (sys.executable, str(Path(__file__).with_name("fake_worker.py")))
TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny"


def make_suite(root: Path, specs: list[str], timeout: float = 5.0, truth: dict[str, str] | None = None,
               onnx: str = "onnx/net.onnx") -> Path:
    """A suite folder whose files are placeholders (the fake worker only reads the names)."""
    (root / "onnx").mkdir(parents=True, exist_ok=True)
    (root / "vnnlib").mkdir(exist_ok=True)
    (root / onnx).write_bytes(b"placeholder")
    lines = []
    for name in specs:
        (root / "vnnlib" / name).write_text("; placeholder\n")
        lines.append(f"{onnx},vnnlib/{name},{timeout}")
    (root / "instances.csv").write_text("\n".join(lines) + "\n")
    if truth is not None:
        rows = ["onnx,vnnlib,timeout,expected"] + [f"{onnx},vnnlib/{k},{timeout},{v}" for k, v in truth.items()]
        (root / "truth.csv").write_text("\n".join(rows) + "\n")
    return root


def tiny_suite(root: Path, timeout: float = 20.0) -> Path:
    """The shipped tiny network with its two properties: robust (unsat) and border (sat)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "net.onnx").write_bytes((TINY / "net.onnx").read_bytes())
    for name in ("robust.vnnlib", "border.vnnlib"):
        (root / name).write_text((TINY / name).read_text())
    (root / "instances.csv").write_text(f"net.onnx,robust.vnnlib,{timeout}\nnet.onnx,border.vnnlib,{timeout}\n")
    (root / "truth.csv").write_text(f"onnx,vnnlib,timeout,expected\nnet.onnx,robust.vnnlib,{timeout},unsat\n"
                                    f"net.onnx,border.vnnlib,{timeout},sat\n")
    return root
