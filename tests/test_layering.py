"""The packages import in one direction only: specs, bounds.graph <- bounds <- branching <- verifier.

benchmarks/ may import anything and nothing imports it; specs knows no torch.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> top-level names it must never import
FORBIDDEN = {
    "specs": {"bounds", "branching", "verifier", "benchmarks", "torch"},
    "bounds": {"branching", "verifier", "benchmarks"},
    "branching": {"verifier", "benchmarks"},
    "verifier": {"benchmarks"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = _imports(path) & FORBIDDEN[package]
        if wrong:
            bad.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(wrong))}")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_bounds_graph_does_not_reach_up_into_the_algorithms() -> None:
    for path in sorted((ROOT / "bounds" / "graph").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[:2] == ["bounds", "crown"]:
                pytest.fail(f"{path.relative_to(ROOT)} imports bounds.crown")
