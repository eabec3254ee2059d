"""Parse-time benchmark: 150k one-bound asserts (75k inputs), the shape of big image specs."""

from __future__ import annotations

import time

import numpy as np

from specs import parse_vnnlib_text

N_INPUTS = 75_000  # two asserts each -> 150k input-bound asserts
LIMIT_S = 2.0  # generous for slow CI; expect well under 0.3 s on a desktop


def _big_spec_text() -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(0)
    centre = rng.uniform(-1, 1, N_INPUTS)
    parts = ["; synthetic robustness property\n"]
    parts += [f"(declare-const X_{i} Real)\n" for i in range(N_INPUTS)]
    parts += [f"(declare-const Y_{j} Real)\n" for j in range(10)]
    for i, c in enumerate(centre.tolist()):
        parts.append(f"(assert (<= X_{i} {c + 0.01!r}))\n(assert (>= X_{i} {c - 0.01!r}))\n")
    parts.append("(assert (or\n" + "".join(f"    (and (>= Y_{j} Y_3))\n" for j in range(10) if j != 3) + "))\n")
    return "".join(parts), centre


def test_150k_asserts_parse_fast() -> None:
    text, centre = _big_spec_text()
    best = float("inf")
    for _ in range(3):  # best of three: shared CI machines are noisy
        start = time.perf_counter()
        spec = parse_vnnlib_text(text)
        best = min(best, time.perf_counter() - start)
    print(f"\nparsed {len(text) / 1e6:.1f} MB, 150000 input-bound asserts in {best:.3f} s")
    assert best < LIMIT_S
    (case,) = spec.cases
    np.testing.assert_array_equal(case.upper, centre + 0.01)
    np.testing.assert_array_equal(case.lower, centre - 0.01)
    assert len(case.polytopes) == 9
