"""The compute-optimal frontier: closed form, IsoFLOP profiles, when it is determined."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from recbole_fork.scaling.frontier import (
    analytic_exponents,
    empirical_frontier,
    estimate_k,
    fit_isoflop_profile,
    frontier_determined,
    frontier_indices,
    isoflop_frontier,
    optimal_allocation,
)
from recbole_fork.scaling.laws import FitError, JointLawFit

LAW = JointLawFit(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28, r2=1.0, residuals=np.zeros(0))


def test_analytic_exponents():
    ex = analytic_exponents(LAW)
    assert ex.a == pytest.approx(0.28 / 0.62, rel=1e-12)
    assert ex.b == pytest.approx(0.34 / 0.62, rel=1e-12)
    assert ex.a + ex.b == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("compute", [1e15, 1e18, 1e21])
def test_closed_form_is_the_numeric_optimum(compute):
    k = 6.0
    n_opt, d_opt = optimal_allocation(LAW, compute, k)
    assert k * n_opt * d_opt == pytest.approx(compute, rel=1e-12)

    def loss_at(log_n: float) -> float:
        n = np.exp(log_n)
        return float(LAW.predict(n, compute / (k * n)))

    res = minimize_scalar(loss_at, bounds=(0.0, np.log(compute / k)), method="bounded",
                          options={"xatol": 1e-10})  # fmt: skip
    assert np.exp(res.x) == pytest.approx(n_opt, rel=1e-4)


def test_frontier_indices_on_a_handmade_set():
    compute = [1, 1, 2, 3, 3, 4]
    loss = [5.0, 4.0, 4.5, 3.0, 3.5, 3.2]
    # C=1: the better of the two (index 1); C=2 is worse than C=1's best; C=3: index 3;
    # C=4 is worse than C=3's best.
    assert frontier_indices(compute, loss).tolist() == [1, 3]


def test_empirical_frontier_on_iso_flop_grid_equals_analytic_optimum():
    """Each budget's N grid holds N_opt(C) and 8 sizes either side, 10 per decade."""
    k = 6.0
    budgets = np.geomspace(1e15, 1e21, 7)
    n_opt, d_opt = optimal_allocation(LAW, budgets, k)
    n = np.concatenate([n0 * 10 ** (np.arange(-8, 9) / 10) for n0 in n_opt])
    c = np.repeat(budgets, 17)
    d = c / (k * n)
    loss = LAW.predict(n, d)

    front = empirical_frontier(n, d, c, loss)
    np.testing.assert_allclose(front.compute, budgets, rtol=1e-12)
    np.testing.assert_allclose(front.n, n_opt, rtol=1e-12)
    np.testing.assert_allclose(front.d, d_opt, rtol=1e-9)
    ex, analytic = front.exponents, analytic_exponents(LAW)
    assert ex.a == pytest.approx(analytic.a, rel=1e-9)
    assert ex.b == pytest.approx(analytic.b, rel=1e-9)
    assert estimate_k(n, d, c) == pytest.approx(k, rel=1e-12)


def test_single_budget_has_no_exponents():
    front = empirical_frontier([1e4, 1e5], [1e6, 1e5], [6e10, 6e10], [3.0, 2.0])
    assert front.index.tolist() == [1]
    assert front.exponents is None


def test_optimal_allocation_rejects_non_positive_budget():
    with pytest.raises(ValueError, match="must be > 0"):
        optimal_allocation(LAW, 0.0)


def test_frontier_refuses_one_data_size():
    n = np.array([1e4, 1e5, 1e6, 1e7])
    assert frontier_determined(n, np.full(4, 1e6)) == (
        False,
        "a single data size or budget (1 distinct)",
    )
    # Two data sizes but only one with two model sizes: still not determined.
    ok, why = frontier_determined(np.array([1e4, 1e5, 1e6]), np.array([1e6, 1e6, 1e7]))
    assert not ok and why.startswith("only 1 of 2 data sizes")
    assert frontier_determined(np.array([1e4, 1e5, 1e4, 1e5]), np.array([1e6, 1e6, 1e7, 1e7])) == (
        True,
        "",
    )


def test_isoflop_minimum_recovers_a_planted_optimum_exactly():
    """Each budget's loss is a parabola in ln N around a planted N*(C) = 0.1 C^0.5."""
    budgets = np.array([1e12, 1e13, 1e14, 1e15])
    planted = 0.1 * budgets**0.5
    rows = []
    for c, n_star in zip(budgets, planted, strict=True):
        for n in n_star * np.geomspace(0.1, 10, 7):
            rows.append((c, n, c / (6 * n), 3.0 + 0.05 * np.log(n / n_star) ** 2 + 1e-13 * c))
    c, n, d, y = (np.array(col) for col in zip(*rows, strict=True))
    iso = isoflop_frontier(c, n, d, y)
    assert [p.budget for p in iso.profiles] == budgets.tolist() and not iso.failed
    np.testing.assert_allclose([p.n_opt for p in iso.profiles], planted, rtol=1e-9)
    np.testing.assert_allclose([p.d_opt for p in iso.profiles], budgets / (6 * planted), rtol=1e-9)
    assert all(p.inside for p in iso.profiles)
    assert iso.exponents.a == pytest.approx(0.5, rel=1e-9)
    assert iso.exponents.b == pytest.approx(0.5, rel=1e-9)


def test_isoflop_minimum_recovers_the_optimum_of_a_joint_law():
    """Profiles drawn from L(N, D) with D = C / (6 N): minima near the closed-form N_opt."""
    budgets = np.geomspace(1e15, 1e19, 5)
    n_opt, _ = optimal_allocation(LAW, budgets, 6.0)
    rows = [(c, n, c / (6 * n), float(LAW.predict(n, c / (6 * n))))
            for c, n0 in zip(budgets, n_opt, strict=True) for n in n0 * np.geomspace(0.25, 4, 9)]  # fmt: skip
    c, n, d, y = (np.array(col) for col in zip(*rows, strict=True))
    iso = isoflop_frontier(c, n, d, y)
    np.testing.assert_allclose([p.n_opt for p in iso.profiles], n_opt, rtol=0.05)
    assert iso.exponents.a == pytest.approx(analytic_exponents(LAW).a, abs=0.01)


def test_isoflop_profile_needs_three_sizes_and_a_minimum():
    with pytest.raises(FitError, match="at least 3 model sizes"):
        fit_isoflop_profile(1e12, np.array([1e4, 1e5]), np.array([1e6, 1e5]), np.array([3.0, 2.9]))
    with pytest.raises(FitError, match="no minimum"):
        fit_isoflop_profile(1e12, np.array([1e4, 1e5, 1e6]), np.ones(3), np.array([2.0, 3.0, 2.0]))
    iso = isoflop_frontier(
        np.full(3, 1e12), np.array([1e4, 1e5, 1e6]), np.ones(3), np.array([2.0, 3.0, 2.0])
    )
    assert iso.profiles == [] and "no minimum" in iso.failed[1e12] and iso.exponents is None


def test_isoflop_figure_with_every_minimum_outside_its_sizes(tmp_path):
    """Profiles whose minima all lie beyond the largest size run: the left panel is drawn,
    the right one says N*(C) is not determined (no log axis over nothing)."""
    from recbole_fork.scaling import figures

    rows = [(c, n, c / (6 * n), 3.0 + 0.05 * np.log(n / 1e7) ** 2)
            for c in (1e12, 1e13) for n in (1e4, 1e5, 1e6)]  # fmt: skip
    c, n, d, y = (np.array(col) for col in zip(*rows, strict=True))
    iso = isoflop_frontier(c, n, d, y)
    assert len(iso.profiles) == 2 and not any(p.inside for p in iso.profiles)
    fig = figures.isoflop_figure(iso, y_label="test loss")
    written = figures.save_figure(fig, tmp_path, "iso")
    assert {p.suffix for p in written} == {".png", ".svg"}
