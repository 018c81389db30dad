"""Power-law fits recover the laws that generated the points."""

from __future__ import annotations

import numpy as np
import pytest

from recbole_fork.scaling.laws import (
    FitError,
    bootstrap,
    bootstrap_joint_law,
    fit_joint_law,
    fit_power_law,
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
    assert fit.residuals.shape == (20,)
    assert np.abs(fit.residuals).max() < 0.04  # 4 sigma of 1% noise


def test_power_law_rejects_bad_input():
    with pytest.raises(FitError, match="at least 2 distinct x"):
        fit_power_law([10.0, 10.0], [1.0, 2.0])
    with pytest.raises(FitError, match="every y must be finite and > 0"):
        fit_power_law([10.0, 100.0], [1.0, 0.0])


def test_joint_law_exact_without_noise():
    n, d, y = joint_points(noise=0.0)
    fit = fit_joint_law(n, d, y)
    for name, value in TRUE.items():
        assert fit.params()[name] == pytest.approx(value, rel=1e-4), name
    assert fit.converged


def test_joint_law_recovers_exponents_and_floor_with_noise():
    n, d, y = joint_points(noise=0.005, seed=0)  # 0.5% noise, fixed seed
    fit = fit_joint_law(n, d, y)
    assert fit.alpha == pytest.approx(TRUE["alpha"], rel=0.02)
    assert fit.beta == pytest.approx(TRUE["beta"], rel=0.02)
    assert pytest.approx(TRUE["E"], rel=0.02) == fit.E
    assert pytest.approx(TRUE["A"], rel=0.10) == fit.A
    assert pytest.approx(TRUE["B"], rel=0.10) == fit.B
    assert fit.r2 > 0.999
    assert fit.residuals.shape == (64,)
    np.testing.assert_allclose(fit.residuals, np.log(y) - np.log(fit.predict(n, d)), atol=1e-12)


def test_joint_law_needs_enough_runs_and_sizes():
    with pytest.raises(FitError, match="at least 6 runs"):
        fit_joint_law([1e4, 1e5, 1e4, 1e5], [1e5, 1e5, 1e6, 1e6], [3.0, 2.5, 2.8, 2.2])
    with pytest.raises(FitError, match="2 model sizes and 2 data sizes"):
        fit_joint_law([1e4] * 6, np.geomspace(1e5, 1e7, 6), np.linspace(3, 2, 6))


def test_bootstrap_joint_law_is_seeded_and_covers_truth():
    n, d, y = joint_points(noise=0.005, seed=0)
    fit = fit_joint_law(n, d, y)
    first = bootstrap_joint_law(n, d, y, fit, n_boot=12, seed=7)
    again = bootstrap_joint_law(n, d, y, fit, n_boot=12, seed=7)
    assert first == again  # same seed, same intervals
    for name in ("alpha", "beta"):
        iv = first[name]
        assert iv.n == 12
        assert iv.low <= fit.params()[name] <= iv.high
        assert 0 < iv.std < 0.05


def test_bootstrap_skips_degenerate_resamples():
    calls = []

    def stat(idx: np.ndarray) -> dict[str, float]:
        calls.append(idx)
        if len(calls) % 2:  # every other resample "cannot be fitted"
            raise FitError("degenerate")
        return {"mean": float(idx.mean())}

    out = bootstrap(5, stat, n_boot=10, seed=0)
    assert len(calls) == 10
    assert out["mean"].n == 5
    assert 0 <= out["mean"].low <= out["mean"].high <= 4
