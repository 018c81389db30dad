"""Power-law fits: one variable (``L = A x^-alpha``) and the joint law ``L(N, D)``.

Two fits, each done the way its noise model makes sound:

- **One variable**, ``L(x) = A * x**(-alpha)``: a straight line in log-log space, so ordinary
  least squares on ``log L = log A - alpha log x`` is exact (closed form, no initialisation)
  and is the maximum-likelihood fit when the noise is multiplicative (log-normal), which is
  the case for losses and error rates whose spread grows with their size.
- **Joint, saturating**, ``L(N, D) = E + A / N**alpha + B / D**beta`` (Hoffmann et al.,
  2022): not linear in log space because of the sum. We minimise a Huber loss of the log
  residuals ``log L - log L_hat`` with ``scipy.optimize.least_squares``, parameterised as
  ``E = exp(e)``, ``A = exp(a)``, ``B = exp(b)`` so every term stays positive and
  ``log L_hat = logsumexp(e, a - alpha log N, b - beta log D)`` is evaluated without
  overflow. Log residuals are relative errors, so small and large losses weigh alike; the
  Huber loss keeps a diverged or early-stopped run from dragging the exponents; and several
  initialisations guard against the local minima this non-convex problem has.

Uncertainties come from a bootstrap over runs (resample runs with replacement, refit,
read percentiles), with a fixed seed so a report is reproducible.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, nnls
from scipy.special import logsumexp


class FitError(ValueError):
    """The data cannot support the requested fit (too few points, non-positive values)."""


@dataclass(frozen=True)
class PowerLawFit:
    """``L(x) = A * x**(-alpha)`` fitted in log-log space.

    Attributes:
        A: prefactor (units of L at x = 1).
        alpha: exponent (L falls by a factor 2**alpha when x doubles).
        r2: coefficient of determination of ``log L`` (1 = perfect).
        residuals: ``log L - log L_hat`` per point, shape [n].
    """

    A: float
    alpha: float
    r2: float
    residuals: np.ndarray = field(repr=False)

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """Fitted L at ``x`` (any shape)."""
        return self.A * np.asarray(x, dtype=float) ** (-self.alpha)


@dataclass(frozen=True)
class JointLawFit:
    """``L(N, D) = E + A / N**alpha + B / D**beta``.

    Attributes:
        E: irreducible loss (the limit of infinite model and data).
        A, alpha: size term; N in parameters.
        B, beta: data term; D in interactions or tokens (whatever the fit was given).
        r2: coefficient of determination of ``log L``.
        residuals: ``log L - log L_hat`` per point, shape [n].
        huber_delta: the Huber threshold used, in log units (relative error).
        converged: the optimiser met its tolerance (False: it hit ``max_nfev``; the data
            pin the parameters down poorly).
    """

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    r2: float
    residuals: np.ndarray = field(repr=False)
    huber_delta: float = 1e-3
    converged: bool = True

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """Fitted L at model size ``n`` and data size ``d`` (broadcast together)."""
        n = np.asarray(n, dtype=float)
        d = np.asarray(d, dtype=float)
        return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

    def params(self) -> dict[str, float]:
        """The five parameters by name."""
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta}


@dataclass(frozen=True)
class Interval:
    """Bootstrap summary of one quantity.

    Attributes:
        std: standard deviation over the bootstrap refits.
        low, high: 2.5th and 97.5th percentiles (a 95% interval).
        n: refits that succeeded (resamples with too few distinct points are skipped).
    """

    std: float
    low: float
    high: float
    n: int


def _as_positive(name: str, values: np.ndarray | list[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        raise FitError(f"power-law fit: every {name} must be finite and > 0 (got {arr.min():g})")
    return arr


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    """``1 - SS_res / SS_tot`` (NaN when y is constant)."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - y_hat) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def fit_power_law(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> PowerLawFit:
    """Fit ``y = A * x**(-alpha)`` by least squares on ``log y`` against ``log x``.

    Args:
        x: the scaling variable (parameters, interactions, FLOPs), shape [n], > 0.
        y: the loss-like quantity (lower is better), shape [n], > 0.

    Raises:
        FitError: fewer than two distinct x, or a non-positive value.
    """
    lx, ly = np.log(_as_positive("x", x)), np.log(_as_positive("y", y))
    if lx.shape != ly.shape:
        raise FitError(f"power-law fit: x and y differ in length ({lx.size} vs {ly.size})")
    if np.unique(lx).size < 2:
        raise FitError(
            f"power-law fit needs at least 2 distinct x values (got {np.unique(lx).size})"
        )
    slope, intercept = np.polyfit(lx, ly, 1)
    fitted = intercept + slope * lx
    return PowerLawFit(
        A=float(np.exp(intercept)),
        alpha=float(-slope),
        r2=r_squared(ly, fitted),
        residuals=ly - fitted,
    )


def _joint_log_model(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray) -> np.ndarray:
    """``log L_hat`` for theta = (e, a, alpha, b, beta), shape [n]."""
    e, a, alpha, b, beta = theta
    terms = np.stack([np.full_like(ln, e), a - alpha * ln, b - beta * ld])  # [3, n]
    return logsumexp(terms, axis=0)


def _joint_log_jacobian(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray) -> np.ndarray:
    """d log L_hat / d theta, shape [n, 5]: each term's softmax weight times its own gradient."""
    e, a, alpha, b, beta = theta
    terms = np.stack([np.full_like(ln, e), a - alpha * ln, b - beta * ld])  # [3, n]
    w = np.exp(terms - logsumexp(terms, axis=0))  # [3, n], softmax over the three terms
    return np.stack([w[0], w[1], -w[1] * ln, w[2], -w[2] * ld], axis=1)


def _initial_points(n: np.ndarray, d: np.ndarray, y: np.ndarray, k: int = 4) -> list[np.ndarray]:
    """Starting points from a grid over the exponents, the linear parameters solved exactly.

    For fixed (alpha, beta) the law is linear in (E, A, B); a non-negative least-squares
    solve of ``(E + A n^-alpha + B d^-beta) / y = 1`` (relative errors, like the log loss)
    gives them in microseconds. The ``k`` grid cells with the lowest error start the
    non-linear fit, which then needs a few dozen evaluations instead of hundreds.
    """
    grid = np.geomspace(0.02, 3.0, 20)  # exponents of published laws lie well inside
    ones = np.ones_like(y)
    scored = []
    for alpha, beta in itertools.product(grid, grid):
        design = np.stack([ones, n ** (-alpha), d ** (-beta)], axis=1) / y[:, None]  # [k, 3]
        coef, rnorm = nnls(design, ones)
        scored.append((rnorm, alpha, beta, coef))
    scored.sort(key=lambda item: item[0])
    floor = 1e-3 * float(y.min())  # NNLS may zero a term; log needs it positive
    return [
        np.array(
            [
                np.log(max(c[0], floor)),
                np.log(max(c[1], floor)),
                alpha,
                np.log(max(c[2], floor)),
                beta,
            ]
        )  # fmt: skip
        for _, alpha, beta, c in scored[:k]
    ]


# Exponents are kept in [1e-4, 5]: outside that range a "power law" is a constant or a cliff,
# and an unbounded exponent lets the optimiser trade it against a huge prefactor forever.
_LOWER = np.array([-np.inf, -np.inf, 1e-4, -np.inf, 1e-4])
_UPPER = np.array([np.inf, np.inf, 5.0, np.inf, 5.0])


def fit_joint_law(
    n: np.ndarray | list[float],
    d: np.ndarray | list[float],
    y: np.ndarray | list[float],
    *,
    huber_delta: float = 1e-3,
    starts: list[np.ndarray] | None = None,
    max_nfev: int = 200,
) -> JointLawFit:
    """Fit ``y = E + A / n**alpha + B / d**beta`` (Huber loss on log residuals).

    Args:
        n: model sizes (non-embedding parameters), shape [k], > 0.
        d: data sizes (interactions or tokens), shape [k], > 0.
        y: the loss-like quantity (lower is better), shape [k], > 0.
        huber_delta: residuals (in log units, i.e. relative errors) beyond this count
            linearly; 1e-3 as in Hoffmann et al. (2022).
        starts: initial parameter vectors ``(log E, log A, alpha, log B, beta)``; default
            the four best cells of an exponent grid (see ``_initial_points``).
        max_nfev: evaluations per start. From a grid start a well-posed fit converges in
            tens; the cap bounds the time spent on a degenerate one (``converged`` False).

    Returns:
        The best fit over all starting points (lowest Huber cost).

    Raises:
        FitError: fewer than 6 points (five parameters need more than five points), fewer
            than 2 distinct n or d, or a non-positive value.
    """
    n_arr, d_arr, y_arr = (_as_positive(k, v) for k, v in (("n", n), ("d", d), ("y", y)))
    if not (n_arr.size == d_arr.size == y_arr.size):
        raise FitError(
            f"joint fit: n, d and y differ in length ({n_arr.size}, {d_arr.size}, {y_arr.size})"
        )
    if y_arr.size < 6:
        raise FitError(f"joint fit needs at least 6 runs for its 5 parameters (got {y_arr.size})")
    if np.unique(n_arr).size < 2 or np.unique(d_arr).size < 2:
        raise FitError(
            f"joint fit needs at least 2 model sizes and 2 data sizes "
            f"(got {np.unique(n_arr).size} and {np.unique(d_arr).size})"
        )
    ln, ld, ly = np.log(n_arr), np.log(d_arr), np.log(y_arr)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return ly - _joint_log_model(theta, ln, ld)

    def jacobian(theta: np.ndarray) -> np.ndarray:
        return -_joint_log_jacobian(theta, ln, ld)

    best = None
    for x0 in starts if starts is not None else _initial_points(n_arr, d_arr, y_arr):
        x0 = np.clip(x0, _LOWER + 1e-9, _UPPER - 1e-9)
        sol = least_squares(
            residuals, x0, jac=jacobian, loss="huber", f_scale=huber_delta,
            bounds=(_LOWER, _UPPER), max_nfev=max_nfev,
        )  # fmt: skip
        if np.all(np.isfinite(sol.x)) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None:
        raise FitError("joint fit: no starting point converged to finite parameters")
    e, a, alpha, b, beta = best.x
    fitted = _joint_log_model(best.x, ln, ld)
    return JointLawFit(
        E=float(np.exp(e)),
        A=float(np.exp(a)),
        alpha=float(alpha),
        B=float(np.exp(b)),
        beta=float(beta),
        r2=r_squared(ly, fitted),
        residuals=ly - fitted,
        huber_delta=huber_delta,
        converged=bool(best.status > 0),
    )


def joint_law_start(fit: JointLawFit) -> np.ndarray:
    """A fit's parameters as a starting vector for ``fit_joint_law(starts=...)``."""
    return np.array([np.log(fit.E), np.log(fit.A), fit.alpha, np.log(fit.B), fit.beta])


def bootstrap(
    n_points: int,
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Interval]:
    """Bootstrap over points: resample indices with replacement, recompute, summarise.

    Args:
        n_points: number of runs to resample from.
        statistic: maps an index array, shape [n_points], to named values; it may raise
            ``FitError`` for a degenerate resample, which is then skipped.
        n_boot: resamples.
        seed: seed of the resampling (the same seed gives the same intervals).

    Returns:
        Name -> ``Interval``; empty when every resample failed.
    """
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, n_points, size=n_points)
        try:
            values = statistic(idx)
        except FitError:
            continue
        for key, value in values.items():
            samples.setdefault(key, []).append(float(value))
    out = {}
    for key, vals in samples.items():
        arr = np.asarray(vals)
        low, high = np.percentile(arr, [2.5, 97.5])
        out[key] = Interval(std=float(arr.std(ddof=1)) if arr.size > 1 else 0.0, low=float(low),
                            high=float(high), n=int(arr.size))  # fmt: skip
    return out


def bootstrap_joint_law(
    n: np.ndarray,
    d: np.ndarray,
    y: np.ndarray,
    fit: JointLawFit,
    *,
    n_boot: int = 200,
    seed: int = 0,
    extra: Callable[[JointLawFit], Mapping[str, float]] | None = None,
) -> dict[str, Interval]:
    """Bootstrap intervals of E, A, alpha, B, beta (and of ``extra(fit)`` values).

    Each refit starts from the full-data optimum and from the resample's own best grid
    cell: a resample is close to the full data, so the full-data optimum is almost always
    in the right basin, and the grid cell catches the cases where it is not.

    Args:
        n, d, y: as for ``fit_joint_law``, shape [k].
        fit: the full-data fit.
        n_boot, seed: see ``bootstrap``.
        extra: derived quantities to bootstrap too (e.g. frontier exponents).
    """
    n, d, y = (np.asarray(v, dtype=float) for v in (n, d, y))
    warm = joint_law_start(fit)

    def statistic(idx: np.ndarray) -> dict[str, float]:
        starts = [warm] + _initial_points(n[idx], d[idx], y[idx], k=1)
        refit = fit_joint_law(n[idx], d[idx], y[idx], huber_delta=fit.huber_delta, starts=starts)
        values = refit.params()
        if extra is not None:
            values.update(extra(refit))
        return values

    return bootstrap(n.size, statistic, n_boot=n_boot, seed=seed)
