"""Scaling-law fits, in forms whose exponents can be compared.

Three forms (``FORMS``), each named in the report:

- ``loss``: a loss L (lower is better) with an irreducible floor,
  ``L(N, D) = E + A / N**alpha + B / D**beta`` (Hoffmann et al., 2022); in one variable
  ``L(x) = E + A x**-alpha``.
- ``error-floor``: a ranking metric m (higher is better) through its error ``1 - m``, with the
  same floored law. Without the floor, a power law on ``1 - m`` near 0.9 has exponents of 0.01
  that are really ``Δm / Δlog N``; the floor E absorbs the part no model reaches.
- ``metric-power``: the metric itself as a power law, ``m = K N**a D**b`` (one variable
  ``m = K x**a``): a straight line in log-log space, fitted by ordinary least squares, its
  exponents the growth of m per decade of N or D.

Floored laws are fitted by least squares on relative errors ``(L_hat - L) / L`` (close to log
residuals; small and large values weigh alike) by variable projection: for fixed exponents
the law is linear in its non-negative coefficients ``(E, A, B)``, solved exactly by
non-negative least squares, so the optimiser searches the exponents alone, from the best
cells of an exponent grid. That is about ten times faster than a five-parameter search and
finds the same optimum, which makes bootstraps of hundreds of refits cheap.

Exponents are kept in [1e-4, 5]: outside that range a "power law" is a constant or a cliff.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, minimize_scalar, nnls


class FitError(ValueError):
    """The data cannot support the requested fit (too few points, non-positive values)."""


EXPONENT_BOUNDS = (1e-4, 5.0)
_GRID = np.geomspace(0.02, 3.0, 20)  # starting exponents; published laws lie well inside
_GRID_1D = np.geomspace(0.01, 4.0, 48)


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    """``1 - SS_res / SS_tot`` (NaN when y is constant)."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - y_hat) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _as_positive(name: str, values: np.ndarray | list[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        raise FitError(f"power-law fit: every {name} must be finite and > 0 (got {arr.min():g})")
    return arr


def _log_fit_stats(y: np.ndarray, y_hat: np.ndarray) -> tuple[float, np.ndarray]:
    """R² of log y and the log residuals ``log y - log y_hat`` (a relative error)."""
    y_hat = np.maximum(y_hat, np.finfo(float).tiny)
    ly, lf = np.log(y), np.log(y_hat)
    return r_squared(ly, lf), ly - lf


# -- power law, one variable ------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """``y = A * x**(-alpha)`` fitted in log-log space (``alpha < 0``: y grows with x).

    Attributes:
        A: prefactor (units of y at x = 1).
        alpha: exponent (y falls by a factor 2**alpha when x doubles).
        r2: coefficient of determination of ``log y`` (1 = perfect).
        residuals: ``log y - log y_hat`` per point, shape [n].
    """

    A: float
    alpha: float
    r2: float
    residuals: np.ndarray = field(repr=False)

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """Fitted y at ``x`` (any shape)."""
        return self.A * np.asarray(x, dtype=float) ** (-self.alpha)


def fit_power_law(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> PowerLawFit:
    """Fit ``y = A * x**(-alpha)`` by least squares on ``log y`` against ``log x``.

    Args:
        x: the scaling variable (parameters, interactions, FLOPs), shape [n], > 0.
        y: the fitted quantity, shape [n], > 0.

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


# -- floored law, one variable ----------------------------------------------------------------


@dataclass(frozen=True)
class FloorLawFit:
    """``y = E + A * x**(-alpha)``: a power law falling to the floor E.

    Attributes:
        E: the floor (y as x grows without bound), >= 0.
        A, alpha: the reducible part, A >= 0.
        r2: R² of ``log y``; residuals: ``log y - log y_hat``, shape [n].
    """

    E: float
    A: float
    alpha: float
    r2: float
    residuals: np.ndarray = field(repr=False)

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """Fitted y at ``x`` (any shape)."""
        return self.E + self.A * np.asarray(x, dtype=float) ** (-self.alpha)


def _nnls_relative(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative coefficients minimising the relative error; returns (coef, rel. residuals)."""
    scaled = design / y[:, None]
    coef, _ = nnls(scaled, np.ones_like(y))
    return coef, scaled @ coef - 1.0


def fit_floor_law(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> FloorLawFit:
    """Fit ``y = E + A x**-alpha`` (least squares on relative errors, E and A >= 0).

    Args:
        x: the scaling variable, shape [n], > 0.
        y: the loss-like quantity (lower is better), shape [n], > 0.

    Raises:
        FitError: fewer than 4 distinct x (three parameters need a point to spare).
    """
    x_arr, y_arr = _as_positive("x", x), _as_positive("y", y)
    if x_arr.shape != y_arr.shape:
        raise FitError(f"floor-law fit: x and y differ in length ({x_arr.size} vs {y_arr.size})")
    if np.unique(x_arr).size < 4:
        raise FitError(
            f"a law with a floor needs at least 4 distinct x values (got {np.unique(x_arr).size})"
        )
    ones = np.ones_like(y_arr)

    def cost(alpha: float) -> float:
        _, res = _nnls_relative(np.stack([ones, x_arr**-alpha], axis=1), y_arr)
        return float(res @ res)

    costs = np.array([cost(a) for a in _GRID_1D])
    i = int(np.argmin(costs))
    low = _GRID_1D[i - 1] if i > 0 else EXPONENT_BOUNDS[0]
    high = _GRID_1D[i + 1] if i + 1 < _GRID_1D.size else EXPONENT_BOUNDS[1]
    best = minimize_scalar(cost, bounds=(low, high), method="bounded", options={"xatol": 1e-7})
    alpha = float(best.x) if best.fun <= costs[i] else float(_GRID_1D[i])
    coef, _ = _nnls_relative(np.stack([ones, x_arr**-alpha], axis=1), y_arr)
    law = FloorLawFit(E=float(coef[0]), A=float(coef[1]), alpha=alpha, r2=0.0, residuals=ones)
    r2, residuals = _log_fit_stats(y_arr, law.predict(x_arr))
    return FloorLawFit(law.E, law.A, law.alpha, r2, residuals)


# -- floored law, two variables ---------------------------------------------------------------


@dataclass(frozen=True)
class JointLawFit:
    """``L(N, D) = E + A / N**alpha + B / D**beta``.

    Attributes:
        E: irreducible loss (the limit of infinite model and data).
        A, alpha: size term; N in parameters.
        B, beta: data term; D in interactions or tokens (whatever the fit was given).
        r2: coefficient of determination of ``log L``.
        residuals: ``log L - log L_hat`` per point, shape [n].
        converged: the optimiser met its tolerance and no coefficient is zero (a zero A or B
            leaves its exponent undetermined).
    """

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    r2: float
    residuals: np.ndarray = field(repr=False)
    converged: bool = True

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """Fitted L at model size ``n`` and data size ``d`` (broadcast together)."""
        n = np.asarray(n, dtype=float)
        d = np.asarray(d, dtype=float)
        return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

    def params(self) -> dict[str, float]:
        """The five parameters by name."""
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta}


def distinct_cells(n: np.ndarray, d: np.ndarray) -> int:
    """Distinct (N, D) pairs: what identifies a two-variable law (not the run count)."""
    return len(set(zip(np.asarray(n).tolist(), np.asarray(d).tolist(), strict=True)))


def _grid_starts(ln: np.ndarray, ld: np.ndarray, y: np.ndarray, k: int) -> list[np.ndarray]:
    """The ``k`` exponent pairs of the grid with the lowest relative error.

    For every (alpha, beta) of the grid at once, the unconstrained linear least squares of
    ``(E + A n^-alpha + B d^-beta) / y = 1`` by its normal equations (a [20, 20, 3, 3] batch);
    cells whose solution has a negative coefficient are skipped. Microseconds per cell.
    """
    xn = np.exp(-_GRID[:, None, None] * ln)  # [G, 1, k]
    xd = np.exp(-_GRID[None, :, None] * ld)  # [1, G, k]
    xn, xd = np.broadcast_arrays(xn, xd)
    design = np.stack([np.ones_like(xn), xn, xd], axis=-1) / y[:, None]  # [G, G, k, 3]
    gram = np.einsum("abki,abkj->abij", design, design)
    rhs = design.sum(axis=2)
    with np.errstate(all="ignore"):
        try:
            coef = np.linalg.solve(gram, rhs[..., None])[..., 0]  # [G, G, 3]
        except np.linalg.LinAlgError:
            coef = np.full(rhs.shape, np.nan)
        res = np.einsum("abki,abi->abk", design, coef) - 1.0
        cost = np.sum(res**2, axis=-1)
    cost[~np.all(np.isfinite(coef) & (coef >= 0), axis=-1)] = np.inf
    order = np.argsort(cost, axis=None, kind="stable")[:k]
    starts = [
        np.array([_GRID[i], _GRID[j]])
        for i, j in zip(*np.unravel_index(order, cost.shape), strict=True)
        if np.isfinite(cost[i, j])
    ]
    return starts or [np.array([0.3, 0.3])]


def fit_joint_law(
    n: np.ndarray | list[float],
    d: np.ndarray | list[float],
    y: np.ndarray | list[float],
    *,
    starts: list[np.ndarray] | None = None,
    n_starts: int = 3,
) -> JointLawFit:
    """Fit ``y = E + A / n**alpha + B / d**beta`` (relative least squares, E, A, B >= 0).

    Args:
        n: model sizes (non-embedding parameters), shape [k], > 0.
        d: data sizes (interactions or tokens), shape [k], > 0.
        y: the loss-like quantity (lower is better), shape [k], > 0; one value per cell.
        starts: extra starting exponent pairs ``(alpha, beta)`` (e.g. a previous fit's),
            tried beside the ``n_starts`` best cells of the exponent grid.
        n_starts: grid cells to start from.

    Returns:
        The best fit over all starting points.

    Raises:
        FitError: fewer than 6 distinct (N, D) cells (five parameters need more than five),
            fewer than 2 distinct n or d, or a non-positive value.
    """
    n_arr, d_arr, y_arr = (_as_positive(k, v) for k, v in (("n", n), ("d", d), ("y", y)))
    if not (n_arr.size == d_arr.size == y_arr.size):
        raise FitError(
            f"joint fit: n, d and y differ in length ({n_arr.size}, {d_arr.size}, {y_arr.size})"
        )
    cells = distinct_cells(n_arr, d_arr)
    if cells < 6:
        raise FitError(
            f"joint fit needs at least 6 distinct (N, D) cells for its 5 parameters (got {cells})"
        )
    if np.unique(n_arr).size < 2 or np.unique(d_arr).size < 2:
        raise FitError(
            f"joint fit needs at least 2 model sizes and 2 data sizes "
            f"(got {np.unique(n_arr).size} and {np.unique(d_arr).size})"
        )
    ln, ld = np.log(n_arr), np.log(d_arr)
    ones = np.ones_like(y_arr)

    def design(theta: np.ndarray) -> np.ndarray:
        return np.stack([ones, np.exp(-theta[0] * ln), np.exp(-theta[1] * ld)], axis=1)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return _nnls_relative(design(theta), y_arr)[1]

    lower, upper = np.full(2, EXPONENT_BOUNDS[0]), np.full(2, EXPONENT_BOUNDS[1])
    best = None
    for x0 in [*(starts or []), *_grid_starts(ln, ld, y_arr, n_starts)]:
        x0 = np.clip(np.asarray(x0, dtype=float), lower + 1e-9, upper - 1e-9)
        sol = least_squares(residuals, x0, bounds=(lower, upper), diff_step=1e-6, max_nfev=200)
        if np.all(np.isfinite(sol.x)) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None:
        raise FitError("joint fit: no starting point converged to finite parameters")
    coef, _ = _nnls_relative(design(best.x), y_arr)
    alpha, beta = (float(v) for v in best.x)
    law = JointLawFit(float(coef[0]), float(coef[1]), alpha, float(coef[2]), beta, 0.0, ones)
    r2, res = _log_fit_stats(y_arr, law.predict(n_arr, d_arr))
    return JointLawFit(
        law.E, law.A, alpha, law.B, beta, r2, res,
        converged=bool(best.status > 0 and coef[1] > 0 and coef[2] > 0),
    )  # fmt: skip


# -- the metric as a power law in two variables ------------------------------------------------


@dataclass(frozen=True)
class PowerLaw2Fit:
    """``m = K * N**a * D**b``: a growing metric as a power law (ordinary least squares in logs).

    Attributes:
        K: prefactor; a, b: growth exponents (m grows by a factor 2**a when N doubles).
        r2: R² of ``log m``; residuals: ``log m - log m_hat``, shape [k].
    """

    K: float
    a: float
    b: float
    r2: float
    residuals: np.ndarray = field(repr=False)

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """Fitted m at ``n`` and ``d`` (broadcast together)."""
        return self.K * np.asarray(n, dtype=float) ** self.a * np.asarray(d, dtype=float) ** self.b

    def params(self) -> dict[str, float]:
        """The three parameters by name."""
        return {"K": self.K, "a": self.a, "b": self.b}


def fit_power_law2(
    n: np.ndarray | list[float], d: np.ndarray | list[float], y: np.ndarray | list[float]
) -> PowerLaw2Fit:
    """Fit ``y = K n**a d**b`` by least squares on ``log y``.

    Raises:
        FitError: fewer than 4 distinct (N, D) cells, fewer than 2 distinct n or d, or a
            non-positive value.
    """
    n_arr, d_arr, y_arr = (_as_positive(k, v) for k, v in (("n", n), ("d", d), ("y", y)))
    cells = distinct_cells(n_arr, d_arr)
    if cells < 4 or np.unique(n_arr).size < 2 or np.unique(d_arr).size < 2:
        raise FitError(
            f"a two-variable power law needs at least 4 distinct (N, D) cells over 2 model "
            f"and 2 data sizes (got {cells} cells)"
        )
    design = np.stack([np.ones_like(n_arr), np.log(n_arr), np.log(d_arr)], axis=1)
    ly = np.log(y_arr)
    coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
    fitted = design @ coef
    return PowerLaw2Fit(
        float(np.exp(coef[0])), float(coef[1]), float(coef[2]), r_squared(ly, fitted), ly - fitted
    )


# -- forms ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    """How a metric is turned into a fitted quantity and which law it gets.

    Attributes:
        key: 'loss', 'error-floor' or 'metric-power'.
        floored: the law has a floor E (and so a compute-optimal frontier).
        min_points: distinct x a one-variable law needs.
    """

    key: str
    floored: bool
    min_points: int

    def quantity(self, values: np.ndarray) -> np.ndarray:
        """Metric values -> the fitted quantity (``1 - m`` for 'error-floor')."""
        values = np.asarray(values, dtype=float)
        return 1.0 - values if self.key == "error-floor" else values

    def to_metric(self, quantity: np.ndarray | float) -> np.ndarray:
        """The inverse of ``quantity``."""
        return self.quantity(quantity)

    def describe(self, metric: str, x: str = "N, D") -> str:
        """The law in words, for the report."""
        if self.key == "metric-power":
            return f"{metric} = K·N^a·D^b (the metric itself as a power law)"
        lhs = metric if self.key == "loss" else f"1 − {metric}"
        return f"{lhs} = E + A/N^α + B/D^β (a power law with a fitted floor E)"

    def fit_joint(
        self, n: np.ndarray, d: np.ndarray, y: np.ndarray, **kw
    ) -> JointLawFit | PowerLaw2Fit:
        """The two-variable law of this form (keywords go to ``fit_joint_law``)."""
        return fit_joint_law(n, d, y, **kw) if self.floored else fit_power_law2(n, d, y)

    def fit_one(self, x: np.ndarray, y: np.ndarray) -> FloorLawFit | PowerLawFit:
        """The one-variable law of this form."""
        if np.unique(x).size < self.min_points:
            raise FitError(
                f"needs at least {self.min_points} distinct sizes (got {np.unique(x).size})"
            )
        return fit_floor_law(x, y) if self.floored else fit_power_law(x, y)

    def exponent(self, law: FloorLawFit | PowerLawFit) -> float:
        """A one-variable law's exponent, signed as the report prints it (growth for power)."""
        return law.alpha if self.floored else -law.alpha


FORMS = {
    "loss": Form("loss", floored=True, min_points=4),
    "error-floor": Form("error-floor", floored=True, min_points=4),
    "metric-power": Form("metric-power", floored=False, min_points=3),
}
