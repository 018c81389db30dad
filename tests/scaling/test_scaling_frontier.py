"""The compute-optimal frontier: closed form, numeric optimum, empirical best runs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from recbole_fork.scaling.frontier import (
    analytic_exponents,
    empirical_frontier,
    estimate_k,
    frontier_indices,
    optimal_allocation,
)
from recbole_fork.scaling.laws import JointLawFit

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
