"""The extrapolation test: fit on the smaller runs, predict the largest, compare.

A scaling law is for saying what a bigger run will get. ``extrapolation_test`` holds out the
cells at the largest N, the largest D or the largest compute, fits the law of a form on the
other cells, and predicts each held-out cell with a 95% prediction interval. The interval
combines the law's uncertainty (the bootstrap over the training cells, refitting each
resampled study) with the noise of the observed cell itself (its seeds' mean, drawn from the
same seed deviations, or from the law's residuals where no cell was replicated); its ends are
expanded percentiles like the parameters' intervals (``cells``). The test passes a cell when
its observed value lies inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recbole_fork.scaling.cells import Cell, Resampler, expanded_percentiles
from recbole_fork.scaling.laws import FitError, Form, JointLawFit

HOLDOUTS = ("largest-N", "largest-D", "largest-C")


@dataclass(frozen=True)
class HeldOutCell:
    """One held-out cell: observed against predicted, in the metric's own units.

    Attributes:
        cell: the cell.
        observed: the cell's mean metric.
        predicted: the law fitted on the other cells, at the cell's N and D.
        low, high: the 95% prediction interval.
        rel_error: ``(predicted - observed) / observed``.
        inside: ``low <= observed <= high``.
    """

    cell: Cell
    observed: float
    predicted: float
    low: float
    high: float
    rel_error: float
    inside: bool


@dataclass(frozen=True)
class ExtrapolationTest:
    """The result of one held-out split.

    Attributes:
        which: 'largest-N', 'largest-D' or 'largest-C'.
        train: the cells the law was fitted on.
        held: the predictions, one per held-out cell.
        law: the law fitted on ``train`` (None when it could not be fitted).
        method: how the prediction interval's noise was drawn.
        refits: bootstrap refits that succeeded.
        note: why there is no prediction, when there is none.
    """

    which: str
    train: list[Cell]
    held: list[HeldOutCell]
    law: object | None
    method: str = ""
    refits: int = 0
    note: str = ""

    @property
    def passed(self) -> bool:
        """Every held-out cell's observation lies inside its interval."""
        return bool(self.held) and all(h.inside for h in self.held)


def holdout_split(cells: Sequence[Cell], which: str) -> tuple[list[int], list[int]]:
    """Indices of the training and held-out cells.

    ``largest-N``: every cell at the largest N. ``largest-D``: every cell at the largest D.
    ``largest-C``: the cells of the largest budget, or without budgets the cell that spent
    the most compute.

    Raises:
        FitError: an unknown ``which``, or ``largest-C`` on cells that logged no compute.
    """
    if which not in HOLDOUTS:
        raise FitError(f"holdout {which!r} unknown; choose one of {', '.join(HOLDOUTS)}")
    idx = np.arange(len(cells))
    if which == "largest-N":
        n = np.array([c.n for c in cells])
        held = idx[n == n.max()]
    elif which == "largest-D":
        d = np.array([c.d for c in cells])
        held = idx[d == d.max()]
    elif all(c.budget is not None for c in cells):
        b = np.array([c.budget for c in cells])
        held = idx[b == b.max()]
    else:
        c = np.array([c.compute for c in cells])
        if not np.isfinite(c).any():
            raise FitError("holdout largest-C: no cell logged its compute")
        held = idx[[int(np.nanargmax(c))]]
    return [int(i) for i in idx if i not in set(held)], [int(i) for i in held]


def extrapolation_test(
    cells: Sequence[Cell],
    form: Form,
    which: str,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> ExtrapolationTest:
    """Fit on all but the held-out cells, predict those, with 95% prediction intervals.

    Args:
        cells: the study's cells (one metric, one group).
        form: the law's form.
        which: see ``holdout_split``.
        n_boot: bootstrap resamples of the training cells.
        seed: resampling seed.

    Raises:
        FitError: see ``holdout_split``.
    """
    train_idx, held_idx = holdout_split(cells, which)
    train = [cells[i] for i in train_idx]
    held_cells = [cells[i] for i in held_idx]
    n = np.array([c.n for c in train])
    d = np.array([c.d for c in train])
    values = [form.quantity(c.values) for c in train]
    y = np.array([v.mean() for v in values])
    try:
        law = form.fit_joint(n, d, y)
    except FitError as e:
        return ExtrapolationTest(which, train, [], None, note=f"no law without them: {e}")
    n_params = 5 if isinstance(law, JointLawFit) else 3
    resampler = Resampler.from_cells(
        values, n_boot=n_boot, seed=seed, fitted=law.predict(n, d), n_params=n_params
    )
    hn = np.array([c.n for c in held_cells])
    hd = np.array([c.d for c in held_cells])
    warm = [np.array([law.alpha, law.beta])] if isinstance(law, JointLawFit) else []
    preds = []
    for row in resampler.draws:
        try:
            refit = (
                form.fit_joint(n, d, row, starts=warm, n_starts=1)
                if warm
                else form.fit_joint(n, d, row)
            )
        except FitError:
            continue
        preds.append(refit.predict(hn, hd))
    preds = np.array(preds)  # [B, h]
    rng = np.random.default_rng(seed + 1)
    noise = np.empty_like(preds)
    residual = resampler.method.startswith("no cell")
    for j, cell in enumerate(held_cells):
        pool = resampler.pooled
        draws = pool[rng.integers(0, pool.size, (preds.shape[0], 1 if residual else cell.seeds))]
        noise[:, j] = np.exp(draws[:, 0]) if residual else 1.0 + draws.mean(axis=1)
    predictive = preds * noise
    point = law.predict(hn, hd)
    out = []
    for j, cell in enumerate(held_cells):
        lo_q, hi_q = expanded_percentiles(predictive[:, j], resampler.dof)
        ends = sorted(float(form.to_metric(v)) for v in (lo_q, hi_q))
        predicted = float(form.to_metric(point[j]))
        observed = cell.mean
        out.append(
            HeldOutCell(
                cell=cell,
                observed=observed,
                predicted=predicted,
                low=ends[0],
                high=ends[1],
                rel_error=(predicted - observed) / observed,
                inside=ends[0] <= observed <= ends[1],
            )
        )
    return ExtrapolationTest(which, train, out, law, resampler.method, int(preds.shape[0]))
