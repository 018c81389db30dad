"""Width against depth, and one group of runs against another."""

from __future__ import annotations

import numpy as np
import pytest

from recbole_fork.scaling.cells import Cell
from recbole_fork.scaling.compare import near_equal_pairs, paired_difference, shape_effects
from recbole_fork.scaling.laws import FitError


def cell(width: int, depth: int, d: float, value: float | list[float]) -> Cell:
    n = 12.0 * depth * width**2
    values = np.atleast_1d(np.asarray(value, dtype=float))
    return Cell(n, d, np.nan, None, values, tuple(f"r{i}" for i in range(values.size)),
                width=width, depth=depth)  # fmt: skip


def planted(width: int, depth: int, d: float) -> float:
    """+0.02 per doubling of width, -0.003 per doubling of depth, +0.01 per data size step."""
    return 0.05 + 0.02 * np.log2(width / 32) - 0.003 * np.log2(depth) + (0.01 if d > 1e5 else 0.0)


def test_shape_effects_recover_planted_coefficients():
    rng = np.random.default_rng(0)
    cells = [cell(w, dep, d, planted(w, dep, d) + rng.normal(0, 1e-4, 2))
             for d in (1e5, 1e6) for w in (32, 64, 128) for dep in (1, 2, 4, 8)]  # fmt: skip
    s = shape_effects(cells, n_boot=100, seed=0)
    assert s.cells == 24
    assert s.width == pytest.approx(0.02, abs=2e-4)
    assert s.depth == pytest.approx(-0.003, abs=2e-4)
    assert s.trade == pytest.approx(0.026, abs=5e-4)  # width x2, depth /4 at equal N
    for key, truth in (("width", 0.02), ("depth", -0.003), ("trade", 0.026)):
        assert s.intervals[key].covers(truth), (key, s.intervals[key])
    with pytest.raises(FitError, match="2 widths and 2 depths"):
        shape_effects([c for c in cells if c.depth == 1], n_boot=10)


def test_near_equal_pairs_compare_shapes_at_the_same_data_size():
    cells = [cell(64, 8, 1e5, 0.050), cell(128, 2, 1e5, 0.075), cell(128, 2, 1e6, 0.08),
             cell(32, 1, 1e5, 0.01)]  # fmt: skip
    (pair,) = near_equal_pairs(cells)  # 8x64 (393K) and 2x128 (393K) at D = 1e5
    assert (pair.small.depth, pair.large.depth) == (8, 2)
    assert pair.difference == pytest.approx(0.025)


def test_paired_difference_over_common_cells():
    a = [
        cell(w, 2, d, 0.05 + 0.01 * i) for i, (w, d) in enumerate([(32, 1e5), (64, 1e5), (64, 1e6)])
    ]
    b = [
        cell(w, 2, d, 1.04 * (0.05 + 0.01 * i))
        for i, (w, d) in enumerate([(32, 1e5), (64, 1e5), (64, 1e6)])
    ]
    b.append(cell(128, 2, 1e6, 0.5))  # only in b: not compared
    p = paired_difference(a, b, n_boot=50)
    assert len(p.matched) == 3 and (p.higher, p.lower) == (3, 0)
    assert p.relative == pytest.approx(0.04)
    assert p.mean == pytest.approx(0.04 * np.mean([0.05, 0.06, 0.07]))
    with pytest.raises(FitError, match="share 1 cells"):
        paired_difference(a[:1], b, n_boot=5)
