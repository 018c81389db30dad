"""Cells of a scaling study, per-size tuning, and the statistics over cells.

A **cell** is one point of the design: a model size N and a data size D (or a compute budget
C), and the shape when the mapping names one. Its runs differ only by seed; the cell's value is
their mean. Where a sweep tuned a hyperparameter per size, the cell keeps the setting whose
runs have the best mean validation metric, and its replicates are that setting's seeds.

Laws are identified by distinct cells, never by run counts. Uncertainty comes from a
bootstrap over cells that keeps the design (which cells) fixed, so no resample duplicates a
run or loses a size: every resample redraws each cell's value as its mean times one plus the
mean of s resampled seed deviations, s the cell's own seed count. A seed deviation is a run's
relative distance from its cell's mean, scaled by ``sqrt(s / (s - 1))`` so that it carries the
unbiased variance; the deviations are pooled over the study's replicated cells, because two or
three seeds say little about one cell's own spread (drawing each cell from its own deviations
alone covered the true exponent in 83 to 91% of simulated studies). A cell run with one seed
draws from the same pool. When the law misses the cells by more than their seeds explain (the
classical lack-of-fit F test of the cell residuals against the seeds' pure error, p < 0.05), or
when no cell is replicated, the seeds are not the noise that matters: the resamples multiply
the law's value at each cell by one of its cell residuals instead (a residual bootstrap, the
residuals scaled by ``sqrt(k / (k - p))``; misfit then counts as noise).

Intervals are expanded percentiles of the refits (Hesterberg, 2015): the 95% interval runs
between the percentiles at ``Phi(-t)`` and ``Phi(t)``, t the 97.5% point of Student's t with the
noise's degrees of freedom (seeds minus one, summed over cells; or cells minus the law's
parameters). Plain percentiles of a bootstrap over a dozen cells cover too rarely (88 to 92% in
studies shaped like the CPU study); the expansion is what a t interval does for a mean.
Every fit also reports its leave-one-cell-out prediction error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import f as f_dist
from scipy.stats import norm
from scipy.stats import t as student_t

from recbole_fork.scaling.laws import FitError


@dataclass(frozen=True)
class Interval:
    """Bootstrap summary of one quantity.

    Attributes:
        std: standard deviation over the bootstrap refits.
        low, high: the 95% interval (expanded percentiles of the refits).
        n: refits that succeeded (a resample the fit cannot support is skipped).
    """

    std: float
    low: float
    high: float
    n: int

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in [low, high]."""
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Candidate:
    """One tuned setting tried in a cell: its values, mean validation metric and run count."""

    values: tuple[tuple[str, str], ...]
    select: float
    runs: int


@dataclass(frozen=True)
class Cell:
    """One design point and the replicates (seeds) of its chosen setting.

    Attributes:
        n: non-embedding parameters N.
        d: data size D (mean over the replicates; equal for a grid study).
        compute: training FLOPs, mean over the replicates (NaN when not logged).
        budget: the planned compute budget of the runs (None without budgets).
        values: the metric per replicate, shape [s].
        runs: run labels of the replicates.
        dataset: dataset name ('' if not logged).
        width, depth: model shape (None when the mapping names none).
        tuned: the winning tuned values, key -> value.
        candidates: every tuned setting tried here (best first); empty without tuning.
        mixed: params that differ between the replicates (beyond identity-like ones such as
            the seed or the run name): a sign that the cell mixes treatments.
    """

    n: float
    d: float
    compute: float
    budget: float | None
    values: np.ndarray
    runs: tuple[str, ...]
    dataset: str = ""
    width: float | None = None
    depth: float | None = None
    tuned: Mapping[str, str] = field(default_factory=dict)
    candidates: tuple[Candidate, ...] = ()
    mixed: tuple[str, ...] = ()

    @property
    def mean(self) -> float:
        """The cell's value: the mean over its replicates."""
        return float(np.mean(self.values))

    @property
    def seeds(self) -> int:
        """Replicates of the chosen setting."""
        return int(np.size(self.values))


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _sort_key(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order, then strings."""
    x = _num(value)
    return (0, x, "") if math.isfinite(x) else (1, 0.0, str(value))


def build_cells(
    rows: Sequence[Mapping[str, Any]],
    *,
    select_higher: bool = True,
) -> list[Cell]:
    """Group runs into cells and keep, per cell, the tuned setting with the best validation metric.

    Args:
        rows: one mapping per run with keys ``n``, ``d``, ``compute`` (float or NaN),
            ``budget`` (float or None), ``value`` (the metric), ``label``, ``dataset``,
            ``width``, ``depth``, ``tuned`` (key -> value, {} without tuning), ``select``
            (the validation metric choosing between settings; NaN if not logged) and
            optionally ``params`` (all logged params, to detect cells that mix treatments).
        select_higher: higher validation metric is better.

    Returns:
        Cells sorted by (budget or D, N, shape). A cell's key is (N, D) for a grid study and
        (N, budget) when the runs have budgets (D then varies a little between seeds).

    Raises:
        FitError: settings of one cell cannot be ranked (no validation metric logged).
    """
    identity = _identity_keys(rows)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        axis = ("C", row["budget"]) if row.get("budget") is not None else ("D", row["d"])
        key = (axis, row["n"], row.get("width"), row.get("depth"))
        groups.setdefault(key, []).append(row)
    cells = []
    for (axis, n, width, depth), members in groups.items():
        settings: dict[tuple, list[Mapping[str, Any]]] = {}
        for row in members:
            settings.setdefault(tuple(sorted(row.get("tuned", {}).items())), []).append(row)
        candidates = []
        for values, runs in settings.items():
            select = np.array([_num(r.get("select")) for r in runs])
            score = (
                float(np.mean(select[np.isfinite(select)]))
                if np.isfinite(select).any()
                else math.nan
            )
            candidates.append(Candidate(values, score, len(runs)))
        if len(candidates) > 1:
            if any(not math.isfinite(c.select) for c in candidates):
                raise FitError(
                    f"cell N={n:g} has {len(candidates)} tuned settings but no validation "
                    "metric to choose between them; map 'select' to a logged validation metric"
                )
            candidates.sort(key=lambda c: -c.select if select_higher else c.select)
        chosen = settings[candidates[0].values]
        chosen = sorted(chosen, key=lambda r: str(r["label"]))
        cells.append(
            Cell(
                n=float(n),
                d=float(np.mean([r["d"] for r in chosen])),
                compute=float(np.mean([_num(r.get("compute")) for r in chosen])),
                budget=float(axis[1]) if axis[0] == "C" else None,
                values=np.array([float(r["value"]) for r in chosen]),
                runs=tuple(str(r["label"]) for r in chosen),
                dataset=str(chosen[0].get("dataset") or ""),
                width=width,
                depth=depth,
                tuned=dict(candidates[0].values),
                candidates=tuple(candidates) if len(candidates) > 1 else (),
                mixed=_differing(chosen, identity),
            )
        )
    return sorted(
        cells,
        key=lambda c: (c.budget if c.budget is not None else c.d, c.n, c.width or 0, c.depth or 0),
    )


def _identity_keys(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Params whose value differs in every run (run names, paths, seeds): not treatments."""
    keys = {k for r in rows for k in r.get("params", {})}
    return {
        k for k in keys
        if len({str(r.get("params", {}).get(k)) for r in rows}) == len(rows)
    } | {"seed", "run_name"}  # fmt: skip


def _differing(runs: Sequence[Mapping[str, Any]], ignore: set[str]) -> tuple[str, ...]:
    """Params (outside ``ignore``) that do not agree across ``runs``."""
    if len(runs) < 2:
        return ()
    keys = {k for r in runs for k in r.get("params", {})} - ignore
    return tuple(
        sorted(k for k in keys if len({str(r.get("params", {}).get(k)) for r in runs}) > 1)
    )


@dataclass(frozen=True)
class TunedChoice:
    """The winning value of one tuned key in one cell, and whether it sits at its grid's edge."""

    n: float
    axis_value: float
    key: str
    value: str
    grid: tuple[str, ...]
    edge: bool


def tuned_choices(cells: Sequence[Cell]) -> list[TunedChoice]:
    """Per cell and tuned key: the winner, the values tried, and an edge flag.

    A winner at the smallest or largest value tried may be beaten beyond the grid: the law
    then describes the grid, not the optimum. A grid of two values has no interior, so its
    winner is never flagged (the report says so once).
    """
    out = []
    for cell in cells:
        if not cell.candidates:
            continue
        for key, value in cell.tuned.items():
            grid = sorted({dict(c.values)[key] for c in cell.candidates}, key=_sort_key)
            edge = len(grid) > 2 and value in (grid[0], grid[-1])
            axis = cell.budget if cell.budget is not None else cell.d
            out.append(TunedChoice(cell.n, axis, key, value, tuple(grid), edge))
    return out


# -- the bootstrap over cells ---------------------------------------------------------------


@dataclass(frozen=True)
class Resampler:
    """Draws whole alternative studies: one value per cell per resample.

    Build with ``Resampler.from_cells``; ``draws`` is [n_boot, k] and its row b is the b-th
    resampled study (in the fitted quantity's units, the cells in the input order).
    """

    draws: np.ndarray
    method: str
    pooled: np.ndarray = field(repr=False)
    dof: int = 0

    @staticmethod
    def from_cells(
        values: Sequence[np.ndarray],
        *,
        n_boot: int,
        seed: int,
        fitted: np.ndarray | None = None,
        n_params: int = 0,
    ) -> Resampler:
        """Resample every cell's seeds (see the module docstring).

        Args:
            values: per cell, the fitted quantity of each replicate, shapes [s_i].
            n_boot: resamples.
            seed: seed of the resampling (the same seed gives the same draws).
            fitted: the law's value at each cell, shape [k]: for the lack-of-fit test, and
                the residual bootstrap (used when no cell has two replicates or the law
                misses the cells by more than their seeds explain).
            n_params: the law's parameter count (scales the residuals by sqrt(k / (k - p))).

        Raises:
            FitError: no cell has replicates and no ``fitted`` was given, or too few cells.
        """
        rng = np.random.default_rng(seed)
        means = np.array([np.mean(v) for v in values])
        k = means.size
        deviations = [
            (np.asarray(v) / m - 1.0) * np.sqrt(v.size / (v.size - 1))
            for v, m in zip(values, means, strict=True)
            if np.size(v) > 1
        ]
        draws = np.empty((n_boot, k))
        lof = _lack_of_fit(values, means, fitted, n_params) if deviations else None
        if deviations and (lof is None or lof[2] >= LACK_OF_FIT_P):
            pooled = np.concatenate(deviations)
            for i, v in enumerate(values):
                picks = rng.integers(0, pooled.size, (n_boot, np.size(v)))  # [B, s_i]
                draws[:, i] = means[i] * (1.0 + pooled[picks].mean(axis=1))
            replicated = len(deviations)
            method = (
                f"seeds resampled per cell from the pooled seed deviations ({replicated} of {k} "
                f"cells replicated, {pooled.size} deviations)"
            )
            if lof is not None:
                method += f"; no lack of fit beyond the seeds (F = {lof[0]:.3g}, p = {lof[2]:.2g})"
            dof = sum(np.size(v) - 1 for v in values)
            return Resampler(draws, method, pooled, dof)
        if fitted is None:
            raise FitError("no cell has two seeds and no fitted law to take residuals from")
        if k - n_params < 1:
            raise FitError(
                f"{k} cells leave no residual degree of freedom for {n_params} parameters"
            )
        res = np.log(means) - np.log(fitted)
        res = (res - res.mean()) * np.sqrt(k / (k - n_params))
        for b in range(n_boot):
            draws[b] = fitted * np.exp(res[rng.integers(0, k, k)])
        if lof is not None:
            method = (
                f"the law misses the cells by more than their seeds explain (cell residual RMS "
                f"{100 * lof[1]:.2g}%, lack-of-fit F = {lof[0]:.3g}, p = {lof[2]:.2g}): the "
                "law's cell residuals resampled (a residual bootstrap; misfit counts as noise)"
            )
        else:
            method = (
                "no cell has two seeds: the law's cell residuals resampled (a residual "
                "bootstrap; misfit counts as noise)"
            )
        return Resampler(draws, method, res, k - n_params)


LACK_OF_FIT_P = 0.05  # below it the law's misfit, not the seeds, sets the intervals


def _lack_of_fit(
    values: Sequence[np.ndarray], means: np.ndarray, fitted: np.ndarray | None, n_params: int
) -> tuple[float, float, float] | None:
    """The classical lack-of-fit F test of a law against its replicated cells.

    Pure error: the runs' relative deviations from their cell means (``sum (s_c - 1)``
    degrees of freedom). Lack of fit: the cell means' log residuals from the law, each
    weighted by its seed count (``k - p`` degrees of freedom). Under a law that fits, their
    mean squares agree (F ~ 1).

    Returns:
        (F, RMS of the cell residuals, p-value), or None without a law or degrees of freedom.
    """
    k = means.size
    pe_dof = sum(np.size(v) - 1 for v in values)
    if fitted is None or k - n_params < 1 or pe_dof < 1 or np.any(fitted <= 0):
        return None
    pure = sum(
        float(np.sum((np.asarray(v) / m - 1.0) ** 2)) for v, m in zip(values, means, strict=True)
    )
    res = np.log(means) - np.log(fitted)
    seeds = np.array([np.size(v) for v in values])
    ms_lof = float(np.sum(seeds * res**2)) / (k - n_params)
    ms_pe = pure / pe_dof
    if ms_pe <= 0:
        return (math.inf, float(np.sqrt(np.mean(res**2))), 0.0)
    f = ms_lof / ms_pe
    return f, float(np.sqrt(np.mean(res**2))), float(f_dist.sf(f, k - n_params, pe_dof))


def expanded_percentiles(samples: np.ndarray, dof: int, level: float = 0.95) -> tuple[float, float]:
    """The expanded percentile interval: percentiles at ``Phi(-+t)``, t from Student's t.

    Args:
        samples: bootstrap refits of the quantity, shape [B].
        dof: degrees of freedom of the noise (<= 0: no expansion, plain percentiles).
        level: coverage.
    """
    z = float(student_t.ppf((1 + level) / 2, dof)) if dof > 0 else float(norm.ppf((1 + level) / 2))
    tail = float(norm.cdf(-z))
    low, high = np.percentile(np.asarray(samples, dtype=float), [100 * tail, 100 * (1 - tail)])
    return float(low), float(high)


def intervals(
    refits: Sequence[Mapping[str, float] | None], estimates: Mapping[str, float], dof: int
) -> dict[str, Interval]:
    """Summarise bootstrap refits into 95% intervals, one per named value.

    Args:
        refits: per resample the named values, None where the refit failed.
        estimates: the full-data values (the keys to summarise).
        dof: the noise's degrees of freedom (``Resampler.dof``).
    """
    ok = [r for r in refits if r is not None]
    out = {}
    for key, est in estimates.items():
        samples = np.array([r[key] for r in ok if key in r and np.isfinite(r[key])])
        if samples.size < 2 or not np.isfinite(est):
            continue
        low, high = expanded_percentiles(samples, dof)
        out[key] = Interval(float(samples.std(ddof=1)), low, high, int(samples.size))
    return out


def refit_all(
    draws: np.ndarray, statistic: Callable[[np.ndarray], Mapping[str, float]]
) -> list[Mapping[str, float] | None]:
    """``statistic`` on every resampled study (a row of ``draws``); None where it cannot fit."""
    out: list[Mapping[str, float] | None] = []
    for row in draws:
        try:
            out.append(statistic(row))
        except FitError:
            out.append(None)
    return out


@dataclass(frozen=True)
class LeaveOneOut:
    """Leave-one-cell-out: refit without each cell, predict it.

    Attributes:
        errors: ``log y - log y_hat`` of each left-out cell, shape [k] (NaN: refit failed).
        values: the refit's named values per left-out cell (None: refit failed).
    """

    errors: np.ndarray
    values: list[Mapping[str, float] | None]

    @property
    def rms(self) -> float:
        """Root mean square of the finite errors (a relative error), NaN if none."""
        e = self.errors[np.isfinite(self.errors)]
        return float(np.sqrt(np.mean(e**2))) if e.size else math.nan

    @property
    def worst(self) -> float:
        """The largest absolute error (NaN if none)."""
        e = self.errors[np.isfinite(self.errors)]
        return float(np.max(np.abs(e))) if e.size else math.nan


def leave_one_out(
    k: int,
    fit: Callable[[np.ndarray], tuple[Callable[[int], float], Mapping[str, float]]],
    y: np.ndarray,
) -> LeaveOneOut:
    """Refit on every subset missing one cell.

    Args:
        k: number of cells.
        fit: given the kept indices, returns (a predictor of the cell at an index, the
            named values of the refit); may raise ``FitError``.
        y: the fitted quantity per cell, shape [k].
    """
    errors = np.full(k, np.nan)
    values: list[Mapping[str, float] | None] = []
    for i in range(k):
        keep = np.delete(np.arange(k), i)
        try:
            predict, named = fit(keep)
        except FitError:
            values.append(None)
            continue
        pred = predict(i)
        if np.isfinite(pred) and pred > 0:
            errors[i] = math.log(y[i]) - math.log(pred)
        values.append(named)
    return LeaveOneOut(errors, values)
