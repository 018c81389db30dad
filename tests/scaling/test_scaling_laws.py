"""Scaling-law fits recover the laws that generated the points, in each form."""

from __future__ import annotations

import numpy as np
import pytest

from recbole_fork.scaling.laws import (
    FORMS,
    FitError,
    distinct_cells,
    fit_floor_law,
    fit_joint_law,
    fit_power_law,
    fit_power_law2,
)

# Hoffmann et al.'s (2022) fitted values: a realistic, well-separated pair of exponents.
TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def joint_points(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An 8 x 8 grid, N 1e4..1e9, D 1e5..1e10, multiplicative log-normal noise."""
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e4, 1e9, 8), np.geomspace(1e5, 1e10, 8)))
    loss = TRUE["E"] + TRUE["A"] * n ** -TRUE["alpha"] + TRUE["B"] * d ** -TRUE["beta"]
    return n, d, loss * np.exp(np.random.default_rng(seed).normal(0.0, noise, n.size))


def test_power_law_exact_without_noise():
    x = np.geomspace(1e3, 1e7, 9)
    fit = fit_power_law(x, 3.0 * x**-0.25)
    assert fit.alpha == pytest.approx(0.25, rel=1e-12)
    assert pytest.approx(3.0, rel=1e-10) == fit.A
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(fit.predict(x), 3.0 * x**-0.25, rtol=1e-10)


def test_power_law_recovers_exponent_with_noise():
    x = np.geomspace(1e4, 1e8, 20)
    y = 3.0 * x**-0.25 * np.exp(np.random.default_rng(1).normal(0.0, 0.01, x.size))
    fit = fit_power_law(x, y)
    assert fit.alpha == pytest.approx(0.25, rel=0.02)
    assert fit.r2 > 0.99
    assert np.abs(fit.residuals).max() < 0.04  # 4 sigma of 1% noise


def test_power_law_rejects_bad_input():
    with pytest.raises(FitError, match="at least 2 distinct x"):
        fit_power_law([10.0, 10.0], [1.0, 2.0])
    with pytest.raises(FitError, match="every y must be finite and > 0"):
        fit_power_law([10.0, 100.0], [1.0, 0.0])


def test_floor_law_exact_and_needs_four_sizes():
    x = np.geomspace(1e4, 1e7, 6)
    fit = fit_floor_law(x, 0.8 + 2.0 * x**-0.3)
    assert (fit.E, fit.A, fit.alpha) == pytest.approx((0.8, 2.0, 0.3), rel=1e-5)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(FitError, match="at least 4 distinct x"):
        fit_floor_law(x[:3], (0.8 + 2.0 * x**-0.3)[:3])


def test_joint_law_exact_without_noise():
    n, d, y = joint_points(noise=0.0)
    fit = fit_joint_law(n, d, y)
    for name, value in TRUE.items():
        assert fit.params()[name] == pytest.approx(value, rel=1e-4), name
    assert fit.converged


def test_joint_law_recovers_exponents_and_floor_with_noise():
    n, d, y = joint_points(noise=0.005, seed=0)  # 0.5% noise, fixed seed
    fit = fit_joint_law(n, d, y)
    assert fit.alpha == pytest.approx(TRUE["alpha"], rel=0.03)
    assert fit.beta == pytest.approx(TRUE["beta"], rel=0.03)
    assert pytest.approx(TRUE["E"], rel=0.02) == fit.E
    assert fit.r2 > 0.999
    assert fit.residuals.shape == (64,)
    np.testing.assert_allclose(fit.residuals, np.log(y) - np.log(fit.predict(n, d)), atol=1e-12)


def test_joint_law_is_identified_by_distinct_cells_not_runs():
    n = np.array([1e4, 1e5, 1e6, 1e4, 1e5, 1e6])
    d = np.array([1e5, 1e5, 1e5, 1e6, 1e6, 1e6])
    y = 2.0 + 40 * n**-0.3 + 60 * d**-0.3
    assert distinct_cells(n, d) == 6
    fit_joint_law(n, d, y)  # six distinct cells: enough
    # Twelve runs, but duplicates of five cells: not enough.
    n5, d5, y5 = np.tile(n[:5], 2), np.tile(d[:5], 2), np.tile(y[:5], 2)
    with pytest.raises(FitError, match=r"at least 6 distinct \(N, D\) cells .* \(got 5\)"):
        fit_joint_law(n5, d5, y5)
    with pytest.raises(FitError, match="2 model sizes and 2 data sizes"):
        fit_joint_law([1e4] * 6, np.geomspace(1e5, 1e7, 6), np.linspace(3, 2, 6))


def test_two_variable_power_law_of_a_metric():
    n, d = (a.ravel() for a in np.meshgrid([1e4, 1e5, 1e6], [1e5, 1e6]))
    m = 1e-3 * n**0.2 * d**0.1
    fit = fit_power_law2(n, d, m)
    assert (fit.K, fit.a, fit.b) == pytest.approx((1e-3, 0.2, 0.1), rel=1e-9)
    with pytest.raises(FitError, match="at least 4 distinct"):
        fit_power_law2(n[:3], d[:3], m[:3])


def test_forms_transform_and_fit():
    ndcg = np.array([0.05, 0.1])
    np.testing.assert_allclose(FORMS["error-floor"].quantity(ndcg), [0.95, 0.9])
    np.testing.assert_allclose(FORMS["error-floor"].to_metric([0.95, 0.9]), ndcg)
    np.testing.assert_allclose(FORMS["metric-power"].quantity(ndcg), ndcg)
    assert "1 − test NDCG@5 = E + A/N^α" in FORMS["error-floor"].describe("test NDCG@5")
    assert "K·N^a·D^b" in FORMS["metric-power"].describe("test NDCG@5")
    x = np.geomspace(1e4, 1e6, 5)
    power = FORMS["metric-power"].fit_one(x, 0.01 * x**0.2)
    assert FORMS["metric-power"].exponent(power) == pytest.approx(0.2, rel=1e-9)  # growth
    floor = FORMS["loss"].fit_one(x, 3.0 + 10 * x**-0.4)
    assert FORMS["loss"].exponent(floor) == pytest.approx(0.4, rel=1e-4)
    with pytest.raises(FitError, match="at least 4 distinct sizes"):
        FORMS["loss"].fit_one(x[:3], (3.0 + 10 * x**-0.4)[:3])
