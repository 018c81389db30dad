"""The compute-optimal frontier: the best model size N and data size D for each budget C.

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
