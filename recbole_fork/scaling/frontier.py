"""The compute-optimal frontier: the best model size N and data size D for each budget C.

Two estimates, as in Hoffmann et al. (2022):

- **Approach 3** (``optimal_allocation``): from the joint law ``L(N, D)``, in closed form.
- **Approach 2** (``isoflop_profiles``, ``isoflop_frontier``): runs trained at shared compute
  budgets; per budget a parabola of the loss in ``log N`` (an IsoFLOP profile), its minimum
  ``N*(C)``; power laws ``N* ~ C^a`` and ``D* ~ C^b`` through the minima.

Neither is determined by a single data size: ``frontier_determined`` asks for at least 2
distinct D (or budgets) with at least 2 distinct N each, else the report prints no number.

Compute model: ``C = k N D`` FLOPs, with N the non-embedding parameters and D the training
tokens. ``k = 6`` for a transformer trained on each token once (2 FLOPs per parameter per
token forward, 4 backward; Kaplan et al., 2020). When D counts dataset interactions and the
runs make several epochs, k absorbs the epochs; ``estimate_k`` reads it off the runs.

Analytic frontier: minimising ``L = E + A N^-alpha + B D^-beta`` subject to ``k N D = C``
(Lagrange, or substitute ``D = C / (k N)`` and set dL/dN = 0) gives
``alpha A N^-alpha = beta B D^-beta``, hence

    N_opt = G (C/k)^a,   D_opt = G^-1 (C/k)^b,
    a = beta / (alpha + beta),   b = alpha / (alpha + beta),   G = (alpha A / (beta B))^(1/(alpha+beta)).

Empirical frontier: the runs that were best for their compute, i.e. the lower envelope of
loss against compute (each kept run beats every run that cost no more), and power laws
``N* ~ C^a``, ``D* ~ C^b`` fitted to them by least squares in log-log space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbole_fork.scaling.laws import FitError, JointLawFit, PowerLawFit, fit_power_law

MIN_PROFILE_SIZES = 3  # a parabola needs three sizes

KAPLAN_K = 6.0  # training FLOPs per parameter per token (forward 2 + backward 4)


@dataclass(frozen=True)
class FrontierExponents:
    """``N_opt ~ C^a`` and ``D_opt ~ C^b``; for the analytic frontier ``a + b = 1``."""

    a: float
    b: float


def analytic_exponents(fit: JointLawFit) -> FrontierExponents:
    """Frontier exponents of a joint law: ``a = beta/(alpha+beta)``, ``b = alpha/(alpha+beta)``."""
    total = fit.alpha + fit.beta
    return FrontierExponents(a=fit.beta / total, b=fit.alpha / total)


def optimal_allocation(
    fit: JointLawFit, compute: np.ndarray | float, k: float = KAPLAN_K
) -> tuple[np.ndarray, np.ndarray]:
    """The compute-optimal (N, D) of a joint law, in closed form.

    Args:
        fit: the fitted law (N in parameters, D in the unit ``k`` refers to).
        compute: budgets C in FLOPs, any shape.
        k: FLOPs per parameter per unit of D (``C = k N D``).

    Returns:
        ``(N_opt, D_opt)``, each the shape of ``compute``; ``k N_opt D_opt == C``.

    Raises:
        ValueError: a non-positive budget or k.
    """
    c = np.asarray(compute, dtype=float)
    if k <= 0 or np.any(c <= 0):
        raise ValueError(
            f"optimal_allocation: compute and k must be > 0 (got k={k}, min C={c.min():g})"
        )
    ex = analytic_exponents(fit)
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1.0 / (fit.alpha + fit.beta))
    return g * (c / k) ** ex.a, (c / k) ** ex.b / g


def estimate_k(n: np.ndarray, d: np.ndarray, compute: np.ndarray) -> float:
    """FLOPs per parameter per unit of D measured on the runs: median of ``C / (N D)``.

    The median, because runs that stopped early or evaluated more often sit off the line.
    """
    n, d, c = (np.asarray(v, dtype=float) for v in (n, d, compute))
    if n.size == 0:
        raise FitError("estimate_k: no runs with compute, N and D")
    return float(np.median(c / (n * d)))


@dataclass(frozen=True)
class EmpiricalFrontier:
    """Runs on the lower envelope of loss against compute, and power laws through them.

    Attributes:
        index: positions of the frontier runs in the input arrays, by increasing compute.
        compute, n, d, loss: their values, shape [m].
        n_law, d_law: ``N* = A_n C^(-alpha)`` and ``D* = A_d C^(-alpha)`` fits, so
            ``a = -n_law.alpha`` and ``b = -d_law.alpha``; None with fewer than 2 points.
    """

    index: np.ndarray
    compute: np.ndarray
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    n_law: PowerLawFit | None
    d_law: PowerLawFit | None

    @property
    def exponents(self) -> FrontierExponents | None:
        """Fitted ``a`` and ``b``, or None when the frontier has fewer than 2 budgets."""
        if self.n_law is None or self.d_law is None:
            return None
        return FrontierExponents(a=-self.n_law.alpha, b=-self.d_law.alpha)


def frontier_indices(compute: np.ndarray, loss: np.ndarray, rel_tol: float = 1e-9) -> np.ndarray:
    """Indices of the runs best for their compute: lower than every run that cost no more.

    Runs whose compute agrees within ``rel_tol`` share one budget and only the best of them
    is kept, so on an iso-FLOP grid this returns exactly the best run of each budget. Ties
    in loss are broken by the lower index (deterministic).

    Args:
        compute: FLOPs per run, shape [n], > 0.
        loss: loss-like quantity per run (lower is better), shape [n].
    """
    c = np.asarray(compute, dtype=float)
    y = np.asarray(loss, dtype=float)
    order = np.lexsort((np.arange(c.size), y, c))  # by compute, then loss, then index
    kept: list[int] = []
    best = np.inf
    i = 0
    while i < order.size:
        # One budget: every run within rel_tol of the cheapest not yet seen.
        j = i
        while j + 1 < order.size and c[order[j + 1]] <= c[order[i]] * (1 + rel_tol):
            j += 1
        group = order[i : j + 1]
        winner = group[np.argmin(y[group])]  # first minimum = lowest index among ties
        if y[winner] < best:
            kept.append(int(winner))
            best = y[winner]
        i = j + 1
    return np.asarray(kept, dtype=int)


def empirical_frontier(
    n: np.ndarray, d: np.ndarray, compute: np.ndarray, loss: np.ndarray
) -> EmpiricalFrontier:
    """The empirical compute-optimal frontier of a set of runs (see ``frontier_indices``).

    Args:
        n: non-embedding parameters per run, shape [r].
        d: data size per run (interactions or tokens), shape [r].
        compute: training FLOPs per run, shape [r].
        loss: loss-like quantity per run (lower is better), shape [r].
    """
    n, d, c, y = (np.asarray(v, dtype=float) for v in (n, d, compute, loss))
    idx = frontier_indices(c, y)
    n_law = d_law = None
    if np.unique(c[idx]).size >= 2:
        # fit_power_law fits y = A x^-alpha, so a growth exponent comes out as -alpha.
        n_law = fit_power_law(c[idx], n[idx])
        d_law = fit_power_law(c[idx], d[idx])
    return EmpiricalFrontier(idx, c[idx], n[idx], d[idx], y[idx], n_law, d_law)


def frontier_determined(n: np.ndarray, axis: np.ndarray) -> tuple[bool, str]:
    """Whether the cells can determine a compute-optimal frontier, and why not.

    Args:
        n: N per cell, shape [k].
        axis: D per cell (grid study) or the budget per cell (budget study), shape [k].

    Returns:
        (True, '') when at least 2 distinct values of ``axis`` each hold at least 2 distinct
        N; else (False, the reason in words).
    """
    n, axis = np.asarray(n, dtype=float), np.asarray(axis, dtype=float)
    rich = [v for v in np.unique(axis) if np.unique(n[axis == v]).size >= 2]
    if np.unique(axis).size < 2:
        return False, f"a single data size or budget ({np.unique(axis).size} distinct)"
    if len(rich) < 2:
        return False, (
            f"only {len(rich)} of {np.unique(axis).size} data sizes or budgets hold 2 or more "
            "model sizes"
        )
    return True, ""


@dataclass(frozen=True)
class IsoFlopProfile:
    """One budget's runs and the parabola ``y = p2 u² + p1 u + p0`` in ``u = ln N``.

    Attributes:
        budget: the compute budget C (FLOPs).
        n, d, y: per cell of the budget, shape [m] (D: the data the runs processed).
        coef: (p2, p1, p0).
        n_opt, d_opt, y_opt: the minimum (N*, the D interpolated there, the fitted y).
        inside: N* lies within the sizes run (outside, it is an extrapolation).
    """

    budget: float
    n: np.ndarray
    d: np.ndarray
    y: np.ndarray
    coef: tuple[float, float, float]
    n_opt: float
    d_opt: float
    y_opt: float
    inside: bool

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        """The parabola at model sizes ``n``."""
        u = np.log(np.asarray(n, dtype=float))
        return self.coef[0] * u**2 + self.coef[1] * u + self.coef[2]


def fit_isoflop_profile(
    budget: float, n: np.ndarray, d: np.ndarray, y: np.ndarray
) -> IsoFlopProfile:
    """Fit one IsoFLOP profile: a parabola of y in ln N and its minimum.

    D* is read off a straight line of ln D against ln N through the profile's runs (at a
    fixed budget D falls as N grows, ``D ~ C / (k N)``), evaluated at N*.

    Args:
        budget: the profile's compute budget.
        n, d, y: per cell, shape [m]: N, the data processed, the loss-like quantity.

    Raises:
        FitError: fewer than 3 distinct N, or a parabola that opens downward (no minimum).
    """
    n, d, y = (np.asarray(v, dtype=float) for v in (n, d, y))
    if np.unique(n).size < MIN_PROFILE_SIZES:
        raise FitError(
            f"IsoFLOP profile at C={budget:g} needs at least {MIN_PROFILE_SIZES} model sizes "
            f"(got {np.unique(n).size})"
        )
    u = np.log(n)
    p2, p1, p0 = np.polyfit(u, y, 2)
    if not p2 > 0:
        raise FitError(f"IsoFLOP profile at C={budget:g} has no minimum (the parabola opens down)")
    u_opt = -p1 / (2 * p2)
    slope, intercept = np.polyfit(u, np.log(d), 1)
    return IsoFlopProfile(
        budget=float(budget),
        n=n,
        d=d,
        y=y,
        coef=(float(p2), float(p1), float(p0)),
        n_opt=float(np.exp(u_opt)),
        d_opt=float(np.exp(intercept + slope * u_opt)),
        y_opt=float(p0 - p1**2 / (4 * p2)),
        inside=bool(u.min() <= u_opt <= u.max()),
    )


@dataclass(frozen=True)
class IsoFlopFrontier:
    """Approach 2: the profiles and the power laws through their minima.

    Attributes:
        profiles: one per budget that could be fitted, by increasing budget.
        failed: budget -> why no profile.
        n_law, d_law: ``N* = A C^-alpha`` and ``D*`` likewise, fitted to the minima inside
            their sizes (None with fewer than 2 such budgets); ``a = -n_law.alpha``.
    """

    profiles: list[IsoFlopProfile]
    failed: dict[float, str]
    n_law: PowerLawFit | None
    d_law: PowerLawFit | None

    @property
    def exponents(self) -> FrontierExponents | None:
        """``a`` and ``b`` of ``N* ~ C^a``, ``D* ~ C^b`` (None when not determined)."""
        if self.n_law is None or self.d_law is None:
            return None
        return FrontierExponents(a=-self.n_law.alpha, b=-self.d_law.alpha)


def isoflop_frontier(
    budget: np.ndarray, n: np.ndarray, d: np.ndarray, y: np.ndarray
) -> IsoFlopFrontier:
    """IsoFLOP profiles per budget and the compute-optimal power laws through their minima.

    Args:
        budget, n, d, y: per cell, shape [k] (the planned budget, N, data processed, the
            loss-like quantity).
    """
    budget, n, d, y = (np.asarray(v, dtype=float) for v in (budget, n, d, y))
    profiles, failed = [], {}
    for c in np.unique(budget):
        sel = budget == c
        try:
            profiles.append(fit_isoflop_profile(c, n[sel], d[sel], y[sel]))
        except FitError as e:
            failed[float(c)] = str(e)
    inside = [p for p in profiles if p.inside]
    n_law = d_law = None
    if len(inside) >= 2:
        cs = np.array([p.budget for p in inside])
        n_law = fit_power_law(cs, np.array([p.n_opt for p in inside]))
        d_law = fit_power_law(cs, np.array([p.d_opt for p in inside]))
    return IsoFlopFrontier(profiles, failed, n_law, d_law)
