"""Figures of a scaling study: metric against N and D, the frontier, IsoFLOP profiles, the
extrapolation test, the loss curves.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no display,
no global state), and saved as PNG and SVG under a temporary name, then renamed. SVG ids
are salted with a constant and the date is left out, so the same inputs give the same bytes.
"""

from __future__ import annotations

import functools
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from recbole_fork.scaling.extrapolation import ExtrapolationTest
from recbole_fork.scaling.frontier import EmpiricalFrontier, IsoFlopFrontier, optimal_allocation
from recbole_fork.scaling.laws import JointLawFit, PowerLaw2Fit

FORMATS = ("png", "svg")
_STYLE = {
    "svg.hashsalt": "recbole_fork.scaling",  # fixed ids: identical SVG bytes for identical inputs
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 7,
}


def _styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under the house style (fonts are fixed when text is created)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Figure:
        with mpl.rc_context(_STYLE):
            return fn(*args, **kwargs)

    return wrapper


def si(x: float) -> str:
    """Short SI form of a count: 99424 -> '99.4K', 9.6e6 -> '9.6M', 3e15 -> '3P'."""
    for factor, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def _new_figure(
    ncols: int = 1, width: float = 4.8, height: float = 3.6, caption: str = ""
) -> tuple[Figure, np.ndarray]:
    """A figure on the Agg canvas; ``caption`` (source, protocol, machine) is printed under it."""
    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, ncols))
    if caption:
        # About 18 characters of 6-point text per inch of width; wrapped, the figure grows.
        lines = textwrap.wrap(caption, width=int(18 * width * ncols))
        fig.set_figheight(height + 0.1 * len(lines))
        fig.text(0.005, 0.005, "\n".join(lines), fontsize=6, ha="left", va="bottom", color="0.3")
    return fig, axes


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.png`` and ``.svg`` (atomic rename); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with mpl.rc_context(_STYLE):
        # Laid out once here: constrained layout would redo it on every save, the most
        # expensive step of drawing these log-log axes.
        caption_lines = fig.texts[0].get_text().count("\n") + 1 if fig.texts else 0
        bottom = 0.11 * caption_lines / fig.get_figheight()  # inches of caption over the height
        fig.tight_layout(rect=(0, bottom, 1, 1) if caption_lines else None)
        for fmt in FORMATS:
            path = out_dir / f"{stem}.{fmt}"
            tmp = out_dir / f".{stem}.{fmt}.tmp"
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(tmp, format=fmt, dpi=150, metadata=metadata)
            os.replace(tmp, path)
            paths.append(path)
    return paths


def _log_axes(ax, *, x_si: bool = True, y_si: bool = False) -> None:
    """Log-log axes with plain-text tick labels; call after plotting (reads the y range).

    Plain text (10K, 1M; 0.8, 0.9) instead of matplotlib's default mathtext ``10^4``:
    easier to read, and parsing mathtext was most of the drawing time. Minor ticks of y
    are labelled only when y spans less than a decade (else they would crowd).
    """
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)) if x_si else plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)) if y_si else plain)
    ax.yaxis.set_minor_formatter(plain if high < 10 * low and not y_si else NullFormatter())


def _colours(values: Sequence[float]) -> dict[float, tuple]:
    """One viridis colour per distinct value, ordered by value."""
    uniq = sorted(set(values))
    cmap = mpl.colormaps["viridis"]
    return {v: cmap(i / max(len(uniq) - 1, 1) * 0.9) for i, v in enumerate(uniq)}


@_styled
def metric_vs_size(
    x: np.ndarray,
    group: np.ndarray,
    y: np.ndarray,
    *,
    axis: str,
    y_label: str,
    group_labels: Mapping[float, str],
    law: JointLawFit | PowerLaw2Fit | None,
    caption: str = "",
) -> Figure:
    """The fitted quantity against model size (``axis='N'``) or data size (``axis='D'``), log-log.

    Args:
        x: the x axis per cell (N or D), shape [k].
        group: the other size per cell (D or N), one colour per distinct value, shape [k].
        y: the fitted quantity per cell (a cell mean), shape [k].
        axis: 'N' or 'D' (names the x axis and orders the law's arguments).
        y_label: the y axis label (metric, fitted form, protocol).
        group_labels: legend text per group value.
        law: if given, its curve at each group value (solid, the group's colour).
        caption: source, protocol and machine, under the figure.
    """
    fig, (ax,) = _new_figure(caption=caption)
    colours = _colours(group.tolist())
    grid = np.geomspace(x.min() / 1.3, x.max() * 1.3, 100)
    for g, colour in colours.items():
        sel = group == g
        order = np.argsort(x[sel])
        ax.plot(
            x[sel][order], y[sel][order], "o", color=colour, ms=4, label=group_labels.get(g, si(g))
        )
        if law is not None:
            curve = law.predict(grid, g) if axis == "N" else law.predict(g, grid)
            ax.plot(grid, curve, "-", color=colour, lw=1)
    if law is not None:
        ax.plot([], [], "k-", lw=1, label=f"law (R²={law.r2:.3f})")
    _log_axes(ax)
    ax.set_xlabel("non-embedding parameters N" if axis == "N" else "training data D")
    ax.set_ylabel(y_label)
    ax.legend(title="D" if axis == "N" else "N", loc="best")
    return fig


@_styled
def frontier_figure(
    n: np.ndarray,
    d: np.ndarray,
    compute: np.ndarray,
    y: np.ndarray,
    frontier: EmpiricalFrontier,
    *,
    y_label: str,
    joint: JointLawFit | None,
    k: float | None,
    caption: str = "",
) -> Figure:
    """Three panels against compute C: the metric (frontier runs ringed), N*, D*.

    Ringed points are the cells best for their compute (each beats every cell that cost no
    more); with a joint law, the red lines are its analytic optimum (approach 3).
    """
    fig, axes = _new_figure(ncols=3, width=4.0, caption=caption)
    c_grid = np.geomspace(compute.min() / 1.5, compute.max() * 1.5, 100)
    ax = axes[0]
    points = ax.scatter(compute, y, c=n, norm=LogNorm(), cmap="viridis", s=14)
    bar = fig.colorbar(points, ax=ax, label="N", format=FuncFormatter(lambda v, _: si(v)))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    ax.plot(
        frontier.compute,
        frontier.loss,
        "o-",
        mfc="none",
        color="k",
        ms=8,
        lw=1,
        label="best per budget",
    )
    opt = optimal_allocation(joint, c_grid, k) if joint is not None and k else None
    if opt is not None:
        ax.plot(c_grid, joint.predict(*opt), "r-", lw=1, label=f"joint law optimum (k={k:.3g})")
    ax.set_ylabel(y_label)
    for ax, values, name, opt_values in (
        (axes[1], frontier.n, "N", None if opt is None else opt[0]),
        (axes[2], frontier.d, "D", None if opt is None else opt[1]),
    ):
        ax.plot(frontier.compute, values, "ko", ms=4, label=f"{name} of the best cells")
        if opt_values is not None:
            ax.plot(c_grid, opt_values, "r-", lw=1, label=f"analytic {name}_opt(C)")
        ax.set_ylabel(f"compute-optimal {name}")
    for i, ax in enumerate(axes):
        _log_axes(ax, y_si=i > 0)  # panels 2 and 3 show sizes N and D
        ax.set_xlabel("training compute C (FLOPs)")
        ax.legend(loc="best")
    return fig


@_styled
def loss_curves(
    curves: Sequence[tuple[str, float, float, Mapping[str, list[tuple[int, float]]]]],
    group_labels: Mapping[float, str],
    caption: str = "",
) -> Figure:
    """Train (solid) and valid (dashed) loss per epoch, one panel per data size.

    Args:
        curves: per run ``(run_name, N, D, history)``, history as in ``RunRecord``.
        group_labels: panel title per D.
    """
    sizes = sorted({d for _, _, d, _ in curves})
    fig, axes = _new_figure(ncols=max(len(sizes), 1), width=3.6, caption=caption)
    if not curves:
        axes[0].text(0.5, 0.5, "no train_loss / valid_loss history logged", ha="center",
                     transform=axes[0].transAxes)  # fmt: skip
        return fig
    colours = _colours([n for _, n, _, _ in curves])
    for ax, size in zip(axes, sizes, strict=True):
        for _, n, d, history in sorted(curves, key=lambda c: c[1]):
            if d != size:
                continue
            for key, style in (("train_loss", "-"), ("valid_loss", "--")):
                if history.get(key):
                    steps, values = zip(*history[key], strict=True)
                    ax.plot(steps, values, style, color=colours[n], lw=1, marker=".", ms=3)
        ax.set_title(group_labels.get(size, f"D = {si(size)}"))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
    for n, colour in colours.items():
        axes[-1].plot([], [], "-", color=colour, label=f"N = {si(n)}")
    axes[-1].plot([], [], "k-", label="train")
    axes[-1].plot([], [], "k--", label="valid")
    axes[-1].legend(loc="best")
    return fig


@_styled
def isoflop_figure(iso: IsoFlopFrontier, *, y_label: str, caption: str = "") -> Figure:
    """Left: each budget's cells and parabola in ln N, minima marked. Right: N*(C)."""
    fig, axes = _new_figure(ncols=2, width=4.4, caption=caption)
    colours = _colours([p.budget for p in iso.profiles])
    ax = axes[0]
    for p in iso.profiles:
        grid = np.geomspace(p.n.min() / 1.2, p.n.max() * 1.2, 100)
        ax.plot(p.n, p.y, "o", color=colours[p.budget], ms=4, label=f"C = {si(p.budget)}")
        ax.plot(grid, p.predict(grid), "-", color=colours[p.budget], lw=1)
        ax.plot([p.n_opt], [p.y_opt], "*" if p.inside else "x", color=colours[p.budget], ms=9)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel(y_label)
    ax.legend(loc="best")
    ax = axes[1]
    inside = [p for p in iso.profiles if p.inside]
    if not inside:  # every minimum is an extrapolation: nothing to draw on log axes
        ax.text(0.5, 0.5, "no budget's minimum lies\ninside the sizes run:\nN*(C) not determined",
                ha="center", va="center", transform=ax.transAxes, fontsize=8)  # fmt: skip
        ax.set_axis_off()
        return fig
    ax.plot(
        [p.budget for p in inside], [p.n_opt for p in inside], "ko", ms=4, label="N* per budget"
    )
    if iso.n_law is not None:
        cs = np.array([p.budget for p in inside])
        grid = np.geomspace(cs.min() / 1.5, cs.max() * 1.5, 50)
        ax.plot(grid, iso.n_law.predict(grid), "k--", lw=1, label=f"N* ∝ C^{-iso.n_law.alpha:.3f}")
    _log_axes(ax, y_si=True)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("compute-optimal N*")
    ax.legend(loc="best")
    return fig


@_styled
def holdout_figure(test: ExtrapolationTest, metric_label: str, *, caption: str = "") -> Figure:
    """Predicted against observed for the held-out cells, with 95% prediction intervals."""
    fig, (ax,) = _new_figure(caption=caption)
    obs = np.array([h.observed for h in test.held])
    pred = np.array([h.predicted for h in test.held])
    low = np.array([h.low for h in test.held])
    high = np.array([h.high for h in test.held])
    colours = ["tab:green" if h.inside else "tab:red" for h in test.held]
    for i, h in enumerate(test.held):
        ax.errorbar(obs[i], pred[i], yerr=[[pred[i] - low[i]], [high[i] - pred[i]]], fmt="o",
                    color=colours[i], ms=4, capsize=3)  # fmt: skip
        # Name what varies among the held-out cells: D when they share the largest N.
        tag = f"D={si(h.cell.d)}" if test.which == "largest-N" else f"N={si(h.cell.n)}"
        ax.annotate(tag, (obs[i], pred[i]), fontsize=6, xytext=(4, 2),
                    textcoords="offset points")  # fmt: skip
    span = np.concatenate([obs, low, high])
    lo, hi = span.min(), span.max()
    pad = 0.05 * (hi - lo or abs(hi) or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k:", lw=1, label="predicted = observed")
    ax.plot([], [], "o", color="tab:green", label="inside its 95% interval")
    ax.plot([], [], "o", color="tab:red", label="outside")
    ax.set_xlabel(f"observed {metric_label}")
    ax.set_ylabel(f"predicted (law fitted without {test.which})")
    ax.legend(loc="best")
    return fig
