"""Comparisons a reader asks of a grid: width against depth, one group of runs against another.

- ``shape_effects``: within one data size, how the metric moves when the width or the depth
  doubles: least squares of the cell means on ``log2 width`` and ``log2 depth`` with one
  intercept per data size (or budget). With ``N ~ depth · width²``, trading depth for width
  at equal N (width x2, depth /4) moves the metric by ``b_width - 2 b_depth``.
- ``near_equal_pairs``: cells of one data size whose N differ by at most 25% but whose shapes
  differ: the direct evidence for the same question.
- ``paired_difference``: two groups (e.g. 100 against 300 training negatives) over the cells
  run in both: the mean difference, its relative size, how many cells moved which way.

Intervals are expanded percentiles of a bootstrap (``cells.intervals``): over cells with their
seeds for the shape regression, over matched cells for the paired difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recbole_fork.scaling.cells import Cell, Interval, Resampler, intervals, refit_all
from recbole_fork.scaling.laws import FitError


@dataclass(frozen=True)
class ShapeEffects:
    """Per doubling of width and of depth, the change of the metric (its own units).

    Attributes:
        width, depth: coefficients of ``log2 width`` and ``log2 depth``.
        trade: ``width - 2 depth``, the change from width x2 and depth /4 (equal N).
        cells: cells used; r2: R² of the regression.
        intervals: 'width', 'depth', 'trade' -> 95% interval.
        method: how the bootstrap drew the cells' values.
    """

    width: float
    depth: float
    trade: float
    cells: int
    r2: float
    intervals: dict[str, Interval]
    method: str


def _shape_design(cells: Sequence[Cell]) -> np.ndarray:
    axis = [c.budget if c.budget is not None else c.d for c in cells]
    levels = sorted(set(axis))
    dummies = np.array([[1.0 if a == lv else 0.0 for lv in levels] for a in axis])
    logs = np.array([[np.log2(c.width), np.log2(c.depth)] for c in cells])
    return np.concatenate([logs, dummies], axis=1)  # [k, 2 + levels]


def shape_effects(cells: Sequence[Cell], *, n_boot: int = 200, seed: int = 0) -> ShapeEffects:
    """Fit the metric's cell means on log2 width, log2 depth and one intercept per data size.

    Raises:
        FitError: cells without a shape, fewer than 2 widths or 2 depths, or no degree of
            freedom left.
    """
    cells = [c for c in cells if c.width and c.depth]
    widths = {c.width for c in cells}
    depths = {c.depth for c in cells}
    if len(widths) < 2 or len(depths) < 2:
        raise FitError(f"needs 2 widths and 2 depths (got {len(widths)} and {len(depths)})")
    x = _shape_design(cells)
    if len(cells) <= x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
        raise FitError(f"{len(cells)} cells do not determine {x.shape[1]} coefficients")
    y = np.array([c.mean for c in cells])

    def fit(rows: np.ndarray, values: np.ndarray) -> dict[str, float]:
        coef, *_ = np.linalg.lstsq(x[rows], values, rcond=None)
        return {
            "width": float(coef[0]),
            "depth": float(coef[1]),
            "trade": float(coef[0] - 2 * coef[1]),
        }

    everything = np.arange(len(cells))
    est = fit(everything, y)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fitted = x @ coef
    # The regression is linear: its residuals may be negative; the residual fallback works on
    # ratios, so the metric is shifted to be positive (ratios then resample the misfit).
    shift = max(0.0, 1e-9 - float(min(fitted.min(), y.min())))
    resampler = Resampler.from_cells(
        [c.values + shift for c in cells], n_boot=n_boot, seed=seed, fitted=fitted + shift,
        n_params=x.shape[1],
    )  # fmt: skip
    refits = refit_all(resampler.draws - shift, lambda row: fit(everything, row))

    ss_res = float(np.sum((y - fitted) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return ShapeEffects(
        est["width"], est["depth"], est["trade"], len(cells),
        1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        intervals(refits, est, resampler.dof), resampler.method,
    )  # fmt: skip


@dataclass(frozen=True)
class Pair:
    """Two cells of one data size with near-equal N and different shapes."""

    small: Cell
    large: Cell

    @property
    def difference(self) -> float:
        """``large.mean - small.mean``, the larger-N cell minus the smaller."""
        return self.large.mean - self.small.mean


def near_equal_pairs(cells: Sequence[Cell], ratio: float = 1.25) -> list[Pair]:
    """Pairs of cells at the same D (or budget) with N within ``ratio`` and different shapes."""
    out = []
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            same_axis = (a.budget, a.d if a.budget is None else 0) == (
                b.budget,
                b.d if b.budget is None else 0,
            )
            if not same_axis or (a.width, a.depth) == (b.width, b.depth) or not a.width:
                continue
            small, large = (a, b) if a.n <= b.n else (b, a)
            if large.n <= ratio * small.n:
                out.append(Pair(small, large))
    return sorted(out, key=lambda p: (p.small.budget or p.small.d, p.small.n))


@dataclass(frozen=True)
class PairedDifference:
    """Group B against group A over the cells both ran (same N, D and shape).

    Attributes:
        matched: (cell of A, cell of B) pairs.
        mean, relative: mean of ``B - A`` and of ``(B - A) / A``.
        higher: cells where B is higher; lower: where it is lower.
        intervals: 'mean', 'relative' -> 95% interval (bootstrap over matched cells).
    """

    matched: list[tuple[Cell, Cell]]
    mean: float
    relative: float
    higher: int
    lower: int
    intervals: dict[str, Interval]


def _cell_key(c: Cell) -> tuple:
    return (c.n, c.budget if c.budget is not None else c.d, c.width, c.depth)


def paired_difference(
    a: Sequence[Cell], b: Sequence[Cell], *, n_boot: int = 200, seed: int = 0
) -> PairedDifference:
    """Compare two groups over their common cells.

    Raises:
        FitError: fewer than 2 common cells.
    """
    index = {_cell_key(c): c for c in a}
    matched = [(index[_cell_key(c)], c) for c in b if _cell_key(c) in index]
    if len(matched) < 2:
        raise FitError(f"the groups share {len(matched)} cells; need at least 2")
    diff = np.array([cb.mean - ca.mean for ca, cb in matched])
    rel = diff / np.array([ca.mean for ca, _ in matched])

    def stat(rows: np.ndarray) -> dict[str, float]:
        return {"mean": float(diff[rows].mean()), "relative": float(rel[rows].mean())}

    everything = np.arange(diff.size)
    est = stat(everything)
    rng = np.random.default_rng(seed)
    refits = [stat(rng.integers(0, diff.size, diff.size)) for _ in range(n_boot)]
    return PairedDifference(
        matched, est["mean"], est["relative"], int((diff > 0).sum()), int((diff < 0).sum()),
        intervals(refits, est, diff.size - 1),
    )  # fmt: skip
