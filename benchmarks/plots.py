"""Cactus and time-scatter plots (matplotlib, the optional extra `report`).

Both functions return False, drawing nothing, when matplotlib is not installed.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def cactus(series: dict[str, list[float]], path: Path, title: str = "") -> bool:
    """Instances solved (y) within a time (x): one line per tool, from its sorted solve times."""
    if not have_matplotlib():
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, times in series.items():
        times = sorted(max(0.01, t) for t in times)  # a log axis has no 0
        ax.step(times, range(1, len(times) + 1), where="post", label=f"{name} ({len(times)})", marker=".")
    ax.set_xscale("log")
    ax.set_xlabel("time per instance, s (log scale)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("instances solved")
    ax.set_title(title or "Instances solved within a time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def scatter(points: list[tuple[float | None, float | None]], path: Path, ours: str, theirs: str,
            limit: float, title: str = "") -> bool:
    """Per-instance times, ours (y) against theirs (x), log-log, dotted lines at 10x either way;
    an instance one side did not solve sits beyond the `limit` line of that side."""
    if not have_matplotlib():
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    top = limit * 1.15
    solved = [t for pair in points for t in pair if t is not None]
    low = max(0.01, min(solved + [1.0]) / 1.5)  # raw times: warm workers often answer in well under 1 s
    groups: dict[str, list[tuple[float, float]]] = {"both solved": [], f"only {ours}": [], f"only {theirs}": []}
    for y, x in points:
        if x is None and y is None:
            continue
        key = "both solved" if x is not None and y is not None else f"only {ours}" if y is not None else f"only {theirs}"
        groups[key].append((max(low, x) if x is not None else top, max(low, y) if y is not None else top))
    for (name, pts), marker in zip(groups.items(), ("o", "^", "v")):
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"{name} ({len(pts)})", marker=marker, s=18)
    ax.plot([low, top], [low, top], color="grey", linewidth=0.8)
    for f in (0.1, 10):
        ax.plot([low, top], [f * low, f * top], color="grey", linewidth=0.5, linestyle=":")
    ax.axhline(limit, color="red", linewidth=0.6, linestyle="--")
    ax.axvline(limit, color="red", linewidth=0.6, linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low / 1.1, top * 1.1)
    ax.set_ylim(low / 1.1, top * 1.1)
    ax.set_xlabel(f"{theirs}: time, s")
    ax.set_ylabel(f"{ours}: time, s")
    ax.set_title(title or f"{ours} vs {theirs}\n(below the diagonal: {ours} faster; unsolved on the top/right edge)",
                 fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
