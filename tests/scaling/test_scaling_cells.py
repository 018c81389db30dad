"""Cells, per-size tuning, and the bootstrap over cells (its coverage in simulated studies)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recbole_fork.scaling.cells import (
    Resampler,
    build_cells,
    expanded_percentiles,
    intervals,
    leave_one_out,
    refit_all,
    tuned_choices,
)
from recbole_fork.scaling.laws import FitError, fit_joint_law

# A study shaped like the CPU study (docs/scaling): 4 widths x 3 data sizes, its N and D, a
# loss of about 4.0 to 4.4 with a floor, 0.5% seed noise (its runs' residuals were 0.5-1%).
CPU_N = np.array([5.26e3, 1.67e4, 5.79e4, 2.14e5])
CPU_D = np.array([8.76e4, 4.39e5, 8.78e5])
CPU_LAW = {"E": 3.5, "A": 6.0, "alpha": 0.3, "B": 15.0, "beta": 0.3}


def cpu_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d = (a.ravel() for a in np.meshgrid(CPU_N, CPU_D, indexing="ij"))
    law = (
        CPU_LAW["E"] + CPU_LAW["A"] * n ** -CPU_LAW["alpha"] + CPU_LAW["B"] * d ** -CPU_LAW["beta"]
    )
    return n, d, law


def row(n, d, value, label, *, tuned=None, select=math.nan, params=None, budget=None):
    return {"n": n, "d": d, "compute": 6 * n * d, "budget": budget, "value": value,
            "label": label, "dataset": "x", "width": None, "depth": None,
            "tuned": tuned or {}, "select": select, "params": params or {}}  # fmt: skip


def test_cells_average_seeds_and_keep_the_best_tuned_setting():
    rows = [
        # N=100 at D=10: lr 0.001 wins on the validation metric (mean of two seeds).
        row(100, 10, 0.30, "a1", tuned={"lr": "0.001"}, select=0.50),
        row(100, 10, 0.34, "a2", tuned={"lr": "0.001"}, select=0.52),
        row(100, 10, 0.20, "b1", tuned={"lr": "0.01"}, select=0.40),
        row(100, 10, 0.99, "c1", tuned={"lr": "0.0001"}, select=0.45),
        # N=200 at D=10: lr 0.01, the largest value tried, wins: at the edge.
        row(200, 10, 0.40, "d1", tuned={"lr": "0.001"}, select=0.50),
        row(200, 10, 0.45, "e1", tuned={"lr": "0.01"}, select=0.60),
        row(200, 10, 0.30, "f1", tuned={"lr": "0.0001"}, select=0.30),
        # N=300: two values only, no interior: never flagged.
        row(300, 10, 0.50, "g1", tuned={"lr": "0.001"}, select=0.50),
        row(300, 10, 0.55, "h1", tuned={"lr": "0.01"}, select=0.70),
    ]
    cells = build_cells(rows)
    assert [(c.n, c.tuned["lr"], c.runs) for c in cells] == [
        (100, "0.001", ("a1", "a2")),
        (200, "0.01", ("e1",)),
        (300, "0.01", ("h1",)),
    ]
    assert cells[0].mean == pytest.approx(0.32) and cells[0].seeds == 2
    assert [c.select for c in cells[0].candidates] == pytest.approx([0.51, 0.45, 0.40])
    choices = tuned_choices(cells)
    assert [(t.n, t.value, t.grid, t.edge) for t in choices] == [
        (100, "0.001", ("0.0001", "0.001", "0.01"), False),
        (200, "0.01", ("0.0001", "0.001", "0.01"), True),
        (300, "0.01", ("0.001", "0.01"), False),
    ]
    # Lower is better for a loss as the validation metric.
    assert build_cells(rows, select_higher=False)[0].tuned == {"lr": "0.01"}


def test_cells_need_a_validation_metric_to_choose_and_flag_mixed_treatments():
    rows = [row(100, 10, 0.3, "a", tuned={"lr": "1"}), row(100, 10, 0.2, "b", tuned={"lr": "2"})]
    with pytest.raises(FitError, match="no validation metric"):
        build_cells(rows)
    rows = [row(100, 10, 0.3, "a", params={"heads": "2", "seed": "1", "path": "p1"}),
            row(100, 10, 0.2, "b", params={"heads": "4", "seed": "2", "path": "p2"}),
            row(200, 10, 0.2, "c", params={"heads": "4", "seed": "3", "path": "p3"})]  # fmt: skip
    cells = build_cells(rows)
    assert cells[0].mixed == ("heads",)  # seed and path differ in every run: identity-like
    assert cells[1].mixed == ()


def test_budget_cells_are_keyed_by_budget():
    rows = [row(100, 10.0, 0.3, "a", budget=1e9), row(100, 11.0, 0.5, "b", budget=1e9)]
    (cell,) = build_cells(rows)
    assert (cell.budget, cell.d, cell.mean, cell.seeds) == (1e9, 10.5, 0.4, 2)


def test_resampler_draws_seed_deviations_and_is_seeded():
    values = [np.array([1.0, 1.2]), np.array([2.0]), np.array([3.0, 3.0, 3.3])]
    r = Resampler.from_cells(values, n_boot=500, seed=3)
    again = Resampler.from_cells(values, n_boot=500, seed=3)
    np.testing.assert_array_equal(r.draws, again.draws)
    assert r.draws.shape == (500, 3)
    assert r.dof == 1 + 0 + 2
    assert r.method.startswith("seeds resampled per cell from the pooled seed deviations (2 of 3")
    # Each draw is the cell mean times 1 + a mean of pooled deviations: centred on the mean.
    means = np.array([1.1, 2.0, 3.1])
    np.testing.assert_allclose(r.draws.mean(axis=0) / means, 1.0, atol=0.02)
    assert np.all(r.draws.std(axis=0) > 0)  # single-seed cells get pooled noise too


def test_resampler_falls_back_to_residuals_without_seeds_or_under_misfit():
    fitted = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    values = [
        np.array([f * (1 + e)])
        for f, e in zip(fitted, [0.01, -0.01, 0.02, 0, -0.02, 0.01, -0.01], strict=True)
    ]
    r = Resampler.from_cells(values, n_boot=50, seed=0, fitted=fitted, n_params=3)
    assert r.method.startswith("no cell has two seeds") and r.dof == 4
    with pytest.raises(FitError, match="no fitted law"):
        Resampler.from_cells(values, n_boot=5, seed=0)
    # Replicated cells whose seeds agree to 0.1% while the law misses by 2%: lack of fit.
    values = [np.array([v[0], v[0] * 1.001]) for v in values]
    r = Resampler.from_cells(values, n_boot=50, seed=0, fitted=fitted, n_params=3)
    assert r.method.startswith("the law misses the cells by more than their seeds explain")
    # The same seeds around a law that fits: the seeds set the noise.
    values = [np.array([f * 0.999, f * 1.001]) for f in fitted]
    r = Resampler.from_cells(values, n_boot=50, seed=0, fitted=fitted, n_params=3)
    assert r.method.startswith("seeds resampled") and "no lack of fit" in r.method


def test_expanded_percentiles_widen_with_few_degrees_of_freedom():
    samples = np.random.default_rng(0).normal(0.0, 1.0, 20000)
    low, high = expanded_percentiles(samples, dof=0)
    assert (low, high) == pytest.approx((-1.96, 1.96), abs=0.05)
    low, high = expanded_percentiles(samples, dof=5)  # t(5) 97.5% point: 2.571
    assert (low, high) == pytest.approx((-2.571, 2.571), abs=0.08)
    iv = intervals([{"x": v} for v in samples[:100]] + [None], {"x": 0.0}, dof=10)
    assert iv["x"].n == 100 and iv["x"].low < 0 < iv["x"].high


def test_leave_one_out_predicts_each_cell_from_the_others():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = 2.0 * x  # a line through the origin: every left-out point is predicted exactly

    def fit(keep):
        slope = float(np.sum(x[keep] * y[keep]) / np.sum(x[keep] ** 2))
        return (lambda i: slope * x[i]), {"slope": slope}

    loo = leave_one_out(4, fit, y)
    np.testing.assert_allclose(loo.errors, 0.0, atol=1e-12)
    assert loo.rms == pytest.approx(0.0, abs=1e-12)
    assert [v["slope"] for v in loo.values] == pytest.approx([2.0] * 4)


def study_intervals(seed: int, n_boot: int, seeds: int = 2, noise: float = 0.005) -> dict:
    """One simulated CPU-shaped study through the report's path: cells, law, bootstrap."""
    n, d, law = cpu_grid()
    rng = np.random.default_rng(seed)
    runs = law[:, None] * np.exp(rng.normal(0.0, noise, (law.size, seeds)))  # [cells, seeds]
    fit = fit_joint_law(n, d, runs.mean(axis=1))
    resampler = Resampler.from_cells(
        list(runs), n_boot=n_boot, seed=seed, fitted=fit.predict(n, d), n_params=5
    )
    warm = [np.array([fit.alpha, fit.beta])]
    refits = refit_all(
        resampler.draws, lambda y: fit_joint_law(n, d, y, starts=warm, n_starts=1).params()
    )
    return intervals(refits, fit.params(), resampler.dof)


def test_one_cpu_shaped_study_interval_covers_the_truth():
    iv = study_intervals(seed=2, n_boot=60)  # one study; the slow test below checks the rate
    for name in ("alpha", "beta"):
        assert iv[name].covers(CPU_LAW[name]), (name, iv[name])
        assert iv[name].n >= 55
        assert iv[name].high - iv[name].low < 1.0


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_true_exponents_in_90_to_99_percent():
    """200 simulated CPU-shaped studies (12 cells, 2 seeds, 0.5% noise): 95% intervals."""
    hits = {"alpha": 0, "beta": 0}
    for study in range(200):
        iv = study_intervals(seed=1000 + study, n_boot=100)
        for name in hits:
            hits[name] += iv[name].covers(CPU_LAW[name])
    for name, count in hits.items():
        assert 180 <= count <= 198, (name, count / 200)
