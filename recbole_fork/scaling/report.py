"""The scaling report: fits, intervals, the frontier and the extrapolation test, as Markdown.

For each group of runs (``group_by`` of the mapping; one group by default) and each metric:

- **cells**: runs of equal N and D (or budget) and shape are seeds of one cell, whose value is
  their mean; where a sweep tuned hyperparameters per size, each cell keeps the setting with the
  best mean validation metric, and the report lists the winners, flagging a winner at the edge
  of its grid;
- **forms** (``laws.FORMS``), each named: a loss as ``L = E + A/N^α + B/D^β``; a ranking metric
  m as ``1 − m`` with the same floor, and as a power law ``m = K·N^a·D^b``;
- the two-variable law of each form, with 95% intervals (a bootstrap over cells, seeds
  resampled within cells, see ``cells``) and its leave-one-cell-out prediction error;
- one-variable laws per data size (in N) and per model size (in D);
- the compute-optimal frontier where the cells determine one (approach 3 from the law;
  approach 2 from IsoFLOP profiles when the runs have budgets), else "not determined";
- the extrapolation test (``--holdout``): the law fitted without the largest runs predicts
  them, with 95% prediction intervals;
- comparisons: width against depth, and each group against the first.

``scaling_report`` reads the runs (this project's store, or any store through a mapping file),
writes ``report.md`` and the figures. For this project's store it also logs them as artifacts
of a run named ``scaling-report`` (tagged so that it is never read back as a data point); a
store given with ``store=`` is only ever read, from a temporary copy.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recbole_fork.errors import UserError
from recbole_fork.scaling import figures
from recbole_fork.scaling.cells import (
    Cell,
    Interval,
    LeaveOneOut,
    Resampler,
    TunedChoice,
    build_cells,
    intervals,
    leave_one_out,
    refit_all,
    tuned_choices,
)
from recbole_fork.scaling.compare import (
    Pair,
    PairedDifference,
    ShapeEffects,
    near_equal_pairs,
    paired_difference,
    shape_effects,
)
from recbole_fork.scaling.extrapolation import HOLDOUTS, ExtrapolationTest, extrapolation_test
from recbole_fork.scaling.frontier import (
    EmpiricalFrontier,
    FrontierExponents,
    IsoFlopFrontier,
    analytic_exponents,
    empirical_frontier,
    estimate_k,
    frontier_determined,
    isoflop_frontier,
)
from recbole_fork.scaling.laws import (
    FORMS,
    FitError,
    FloorLawFit,
    Form,
    JointLawFit,
    PowerLaw2Fit,
    PowerLawFit,
)
from recbole_fork.scaling.mapping import StoreMapping, open_store
from recbole_fork.scaling.runs import REPORT_KIND, REPORT_TAG, RunRecord, load_runs

DEFAULT_METRICS = ("best_test_loss", "best_test_ndcg_at_10", "best_test_hr_at_10")
DATA_AXES = ("auto", "interactions", "tokens")
REPORT_RUN_NAME = "scaling-report"
_HIGHER_IS_BETTER = ("ndcg", "hr", "hit", "mrr", "recall", "precision", "auc", "map")
_PRETTY = {"ndcg": "NDCG", "hr": "HR", "hit": "HR", "mrr": "MRR", "recall": "Recall",
           "precision": "Precision", "auc": "AUC", "map": "MAP"}  # fmt: skip


class ReportError(UserError, ValueError):
    """A user-caused problem with a report request (unknown metric, bad axis)."""


_URI_PREFIXES = ("sqlite:///", "file://")


def portable_command(words: Sequence[str], cwd: str | os.PathLike | None = None) -> str:
    """``words`` as one shell line with every absolute path (plain, ``sqlite:///`` or
    ``file://``) made relative to ``cwd`` (default: the working directory), so a committed
    report's "Made with" line names no folder of the machine it was made on and reruns from
    the same place. Relative paths and other words are kept as they are."""
    import shlex

    base = os.fspath(cwd) if cwd is not None else os.getcwd()

    def portable(word: str) -> str:
        for prefix in _URI_PREFIXES:
            if word.startswith(prefix + "/"):
                return prefix + os.path.relpath(word[len(prefix) :], base)
        return os.path.relpath(word, base) if os.path.isabs(word) else word

    return shlex.join(portable(w) for w in words)


def metric_orientation(metric: str) -> str:
    """'lower' for losses, 'higher' for ranking metrics (by name).

    Raises:
        ReportError: the name says neither (it must contain 'loss' or a ranking metric).
    """
    parts = re.split(r"[_/.]", metric.lower())
    if "loss" in parts:
        return "lower"
    if any(p in _HIGHER_IS_BETTER for p in parts):
        return "higher"
    raise ReportError(
        f"metric {metric!r}: cannot tell whether higher is better; use a name containing "
        f"'loss' or one of {', '.join(_HIGHER_IS_BETTER)}"
    )


def metric_label(metric: str) -> str:
    """``best_test_ndcg_at_10`` -> 'test NDCG@10'; ``test/ndcg_at_5`` -> 'test NDCG@5'."""
    name = re.sub(r"^best_", "", metric)
    match = re.fullmatch(r"(train|valid|test)[_/]([a-z]+)_at_(\d+)", name)
    if match:
        phase, kind, k = match.groups()
        return f"{phase} {_PRETTY.get(kind, kind)}@{k}"
    return re.sub(r"[_/]", " ", name)


def protocol_label(protocol: str) -> str:
    """'full' -> 'full ranking'; 'sampled:10000' -> '10000 sampled negatives'; a fixed sample
    of evaluated users ('full; users<=4096') is named after it; other text as given."""
    users = re.search(r"users<=(\d+)", protocol)
    tail = f", a fixed sample of at most {int(users.group(1)):,} users" if users else ""
    match = re.match(r"sampled:?(\d+)", protocol)
    if match:
        return f"{match.group(1)} sampled negatives{tail}"
    if protocol.startswith("full"):
        return f"full ranking{tail}"
    return protocol or "protocol not logged"


def default_forms(metric: str) -> tuple[str, ...]:
    """A loss gets 'loss'; a ranking metric 'error-floor' and 'metric-power'."""
    return ("loss",) if metric_orientation(metric) == "lower" else ("error-floor", "metric-power")


def slug(text: str) -> str:
    """A file-name fragment: ``test/ndcg_at_5`` -> ``test_ndcg_at_5``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "all"


# -- analysis ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceFit:
    """A one-variable law at one fixed value of the other axis.

    Attributes:
        axis: 'N' (the law in N at a fixed D) or 'D' (in D at a fixed N).
        at: the fixed value; label: how to name it.
        law: the fit; exponent: as printed (α for a floor form, the growth a for a power).
        interval: of the exponent; loo: leave-one-cell-out over the slice's cells.
        points: cells in the slice.
    """

    axis: str
    at: float
    label: str
    law: FloorLawFit | PowerLawFit
    exponent: float
    interval: Interval | None
    loo: LeaveOneOut
    points: int


@dataclass
class FormAnalysis:
    """Every fit of one metric in one form."""

    form: Form
    law: JointLawFit | PowerLaw2Fit | None = None
    note: str = ""
    intervals: dict[str, Interval] = field(default_factory=dict)
    loo: LeaveOneOut | None = None
    method: str = ""
    dof: int = 0
    slices: list[SliceFit] = field(default_factory=list)
    slice_notes: list[str] = field(default_factory=list)
    determined: bool = False
    frontier_reason: str = ""
    analytic: FrontierExponents | None = None
    k: float | None = None
    envelope: EmpiricalFrontier | None = None
    isoflop: IsoFlopFrontier | None = None
    holdouts: list[ExtrapolationTest] = field(default_factory=list)
    holdout_notes: dict[str, str] = field(default_factory=dict)


@dataclass
class MetricAnalysis:
    """One metric of one group: its cells, every form's fits, tuning and shape comparisons."""

    metric: str
    label: str
    group: str
    cells: list[Cell]
    protocol: str = ""
    forms: list[FormAnalysis] = field(default_factory=list)
    tuning: list[TunedChoice] = field(default_factory=list)
    shape: ShapeEffects | None = None
    pairs: list[Pair] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)


def _axis_of(cell: Cell) -> float:
    return cell.budget if cell.budget is not None else cell.d


def analyse_form(
    cells: Sequence[Cell],
    form: Form,
    *,
    n_boot: int = 200,
    seed: int = 0,
    holdouts: Sequence[str] = (),
) -> FormAnalysis:
    """Fit one form to the cells: the law, intervals, LOO, slices, frontier, holdouts."""
    fa = FormAnalysis(form)
    n = np.array([c.n for c in cells])
    d = np.array([c.d for c in cells])
    values = [form.quantity(c.values) for c in cells]
    y = np.array([v.mean() for v in values])
    if not np.all(y > 0):
        fa.note = f"the {form.key} form needs positive values of the fitted quantity"
        return fa
    try:
        fa.law = form.fit_joint(n, d, y)
    except FitError as e:
        fa.note = str(e)
    n_params = 5 if form.floored else 3
    axis = np.array([_axis_of(c) for c in cells])
    fa.determined, fa.frontier_reason = frontier_determined(n, axis)
    budgets = [c.budget for c in cells]
    has_budgets = all(b is not None for b in budgets)
    try:
        resampler = Resampler.from_cells(
            values, n_boot=n_boot, seed=seed,
            fitted=fa.law.predict(n, d) if fa.law is not None else None, n_params=n_params,
        )  # fmt: skip
    except FitError as e:
        resampler = None
        fa.method = f"no intervals: {e}"
    if resampler is not None:
        fa.method, fa.dof = resampler.method, resampler.dof

    # The joint law: intervals from refits of every resampled study, and LOO.
    if fa.law is not None:
        law = fa.law
        warm = [np.array([law.alpha, law.beta])] if isinstance(law, JointLawFit) else []
        frontier_on = (
            form.floored and fa.determined and isinstance(law, JointLawFit) and law.converged
        )

        def fit(rows: np.ndarray, values_: np.ndarray):
            if warm:
                return form.fit_joint(n[rows], d[rows], values_, starts=warm, n_starts=1)
            return form.fit_joint(n[rows], d[rows], values_)

        def named(f) -> dict[str, float]:
            out = dict(f.params())
            if frontier_on and f.alpha + f.beta > 0:
                ex = analytic_exponents(f)
                out.update({"frontier.a": ex.a, "frontier.b": ex.b})
            return out

        everything = np.arange(len(cells))
        estimates = named(law)
        if resampler is not None and n_boot > 0:
            refits = refit_all(resampler.draws, lambda row: named(fit(everything, row)))
            fa.intervals = intervals(refits, estimates, resampler.dof)

        def loo_fit(keep: np.ndarray):
            f = fit(keep, y[keep])
            return (lambda i: float(f.predict(n[i], d[i]))), named(f)

        fa.loo = leave_one_out(len(cells), loo_fit, y)
        if frontier_on:
            fa.analytic = analytic_exponents(law)
            has_c = np.array([math.isfinite(c.compute) for c in cells])
            if has_c.sum() >= 2:
                c = np.array([cl.compute for cl in cells])
                fa.k = estimate_k(n[has_c], d[has_c], c[has_c])
                fa.envelope = empirical_frontier(n[has_c], d[has_c], c[has_c], y[has_c])

    # IsoFLOP profiles (approach 2) when every cell has a budget.
    if has_budgets and form.floored:
        b = np.array(budgets, dtype=float)
        fa.isoflop = isoflop_frontier(b, n, d, y)
        if resampler is not None and n_boot > 0 and fa.isoflop.exponents is not None:

            def iso(row: np.ndarray) -> dict[str, float]:
                f = isoflop_frontier(b, n, d, row)
                out = {f"n_opt@{p.budget:g}": p.n_opt for p in f.profiles}
                if f.exponents is not None:
                    out.update({"a": f.exponents.a, "b": f.exponents.b})
                return out

            est = {f"n_opt@{p.budget:g}": p.n_opt for p in fa.isoflop.profiles}
            est.update({"a": fa.isoflop.exponents.a, "b": fa.isoflop.exponents.b})
            iso_iv = intervals(refit_all(resampler.draws, iso), est, resampler.dof)
            fa.intervals.update({f"iso.{k}": v for k, v in iso_iv.items()})

    # One-variable laws: in N at each data size, in D at each model size and shape.
    if not has_budgets:
        for axis_name, fixed, x in (("N", d, n), ("D", n, d)):
            keys = sorted(set(fixed.tolist()))
            for value in keys:
                rows = np.flatnonzero(fixed == value)
                if np.unique(x[rows]).size < form.min_points:
                    continue
                label = (
                    f"D = {figures.si(value)}" if axis_name == "N" else f"N = {figures.si(value)}"
                )
                try:
                    law1 = form.fit_one(x[rows], y[rows])
                except FitError as e:
                    fa.slice_notes.append(f"{axis_name} at {label}: {e}")
                    continue
                iv = None
                if resampler is not None and n_boot > 0:

                    def one(row: np.ndarray, rows=rows, x=x) -> dict[str, float]:
                        return {"e": form.exponent(form.fit_one(x[rows], row[rows]))}

                    res = intervals(
                        refit_all(resampler.draws, one), {"e": form.exponent(law1)}, resampler.dof
                    )
                    iv = res.get("e")

                def loo1(keep: np.ndarray, rows=rows, x=x):
                    f = form.fit_one(x[rows][keep], y[rows][keep])
                    return (lambda i: float(f.predict(x[rows][i]))), {}

                fa.slices.append(
                    SliceFit(
                        axis_name,
                        float(value),
                        label,
                        law1,
                        form.exponent(law1),
                        iv,
                        leave_one_out(rows.size, loo1, y[rows]),
                        int(rows.size),
                    )  # fmt: skip
                )

    for which in holdouts:
        try:
            fa.holdouts.append(extrapolation_test(cells, form, which, n_boot=n_boot, seed=seed))
        except FitError as e:
            fa.holdout_notes[which] = str(e)
    return fa


def _rows(records: Sequence[RunRecord], metric: str, data_axis: str, select: str | None):
    rows = []
    for r in records:
        value = r.metrics.get(metric)
        d = getattr(r, data_axis)
        if value is None or not r.n_params or not d or not math.isfinite(value):
            continue
        rows.append(
            {
                "n": r.n_params,
                "d": d,
                "compute": r.compute if r.compute else math.nan,
                "budget": r.budget,
                "value": value,
                "label": r.label,
                "dataset": r.dataset,
                "width": r.width,
                "depth": r.depth,
                "tuned": dict(r.tuned),
                "select": r.metrics.get(select, math.nan) if select else math.nan,
                "params": r.params,
            }  # fmt: skip
        )
    return rows


def analyse_metric(
    records: Sequence[RunRecord],
    metric: str,
    *,
    group: str = "",
    forms: Sequence[str] | None = None,
    data_axis: str = "interactions",
    select: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
    holdouts: Sequence[str] = (),
) -> MetricAnalysis:
    """Cells and every form's fits of one metric over the runs (of one group).

    Args:
        records: the runs (of one group).
        metric: MLflow metric name (``best_test_loss``, ``test/ndcg_at_5``...).
        group: the group's label (for the report).
        forms: form keys (default: ``default_forms``).
        data_axis: D is the training 'interactions' or the 'tokens' processed.
        select: validation metric choosing between tuned settings of a cell.
        n_boot: bootstrap resamples (0: no intervals).
        seed: bootstrap seed.
        holdouts: extrapolation tests to run (``largest-N``, ``largest-D``, ``largest-C``).

    Raises:
        ReportError: unknown data axis, form or holdout, or a metric of unknown orientation.
    """
    if data_axis not in DATA_AXES[1:]:
        raise ReportError(f"data axis {data_axis!r} unknown; choose one of {', '.join(DATA_AXES)}")
    bad = [h for h in holdouts if h not in HOLDOUTS]
    if bad:
        raise ReportError(f"holdout {bad[0]!r} unknown; choose one of {', '.join(HOLDOUTS)}")
    forms = tuple(forms or default_forms(metric))
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        raise ReportError(f"form {unknown[0]!r} unknown; choose one of {', '.join(FORMS)}")
    higher = metric_orientation(metric) == "higher"
    label = metric_label(metric)
    protocols = sorted({r.protocol for r in records if metric in r.metrics})
    protocol = "; ".join(protocol_label(p) for p in protocols) or "protocol not logged"
    if higher:
        label = f"{label} ({protocol})"
    rows = _rows(records, metric, data_axis, select)
    select_higher = metric_orientation(select) == "higher" if select else True
    try:
        cells = build_cells(rows, select_higher=select_higher)
    except FitError as e:
        raise ReportError(str(e)) from None
    a = MetricAnalysis(metric, label, group, cells, protocol)
    if len(protocols) > 1:
        a.notes["protocol"] = f"runs mix ranking protocols {protocols}: values are not comparable"
    skipped = len([r for r in records if metric in r.metrics]) - len(rows)
    if skipped:
        a.notes["runs"] = f"{skipped} run(s) with this metric lack N or {data_axis}"
    if not cells:
        a.notes["all"] = "no run logged this metric together with N and D"
        return a
    a.tuning = tuned_choices(cells)
    mixed = sorted({k for c in cells for k in c.mixed})
    if mixed:
        count = sum(bool(c.mixed) for c in cells)
        a.notes["mixed"] = (
            f"{count} cells hold runs that differ in {', '.join(mixed[:8])}"
            f"{' ...' if len(mixed) > 8 else ''}; they are averaged as seeds: if these are "
            "treatments, map them to group_by or tune"
        )
    for key in forms:
        a.forms.append(analyse_form(cells, FORMS[key], n_boot=n_boot, seed=seed, holdouts=holdouts))
    try:
        a.shape = shape_effects(cells, n_boot=n_boot, seed=seed)
    except FitError as e:
        if any(c.width for c in cells):
            a.notes["shape"] = f"width against depth not fitted: {e}"
    a.pairs = near_equal_pairs(cells)
    return a


# -- Markdown ---------------------------------------------------------------------------------


def _g(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def _ci(iv: Interval | None) -> str:
    return "–" if iv is None else f"[{_g(iv.low)}, {_g(iv.high)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _shape(cell: Cell) -> str:
    if cell.width and cell.depth:
        return f"{cell.depth:g}×{cell.width:g}"
    return "–"


def _loo_text(loo: LeaveOneOut | None) -> str:
    if loo is None or not np.isfinite(loo.rms):
        return "leave-one-cell-out error: not computable"
    ok = int(np.isfinite(loo.errors).sum())
    return (
        f"leave-one-cell-out error (log, a relative error): RMS {_pct(loo.rms)}, worst "
        f"{_pct(loo.worst)} over {ok} cells"
    )


def _form_section(a: MetricAnalysis, fa: FormAnalysis, d_name: str, stems: list[str]) -> list[str]:
    form = fa.form
    lines = [f"### {form.describe(metric_label(a.metric))}", ""]
    iv = fa.intervals
    if fa.law is None:
        lines += [f"Not fitted: {fa.note}.", ""]
    else:
        rows = [[name, _g(value), _g(iv[name].std, 2) if name in iv else "–", _ci(iv.get(name))]
                for name, value in fa.law.params().items()]  # fmt: skip
        lines += _table(["parameter", "value", "bootstrap std", "95% interval"], rows)
        lines += [
            "",
            f"R² (log) = {fa.law.r2:.4f} over {len(a.cells)} cells; {_loo_text(fa.loo)}.",
            f"Intervals: {fa.method}; expanded percentiles, {fa.dof} degrees of freedom.",
        ]
        if isinstance(fa.law, JointLawFit) and not fa.law.converged:
            lines.append(
                "Note: a coefficient is zero or the search hit its limit: the cells pin this "
                "law down poorly, and its exponents are not to be read."
            )
        lines.append("")

    if fa.slices:
        lines += [
            f"One-variable laws ({'floor' if form.floored else 'power'} form), each at one fixed size:",
            "",
        ]
        rows = []
        for s in fa.slices:
            name = "α" if form.floored else "a (growth)"
            rows.append([f"in {s.axis} at {s.label}", f"{name} = {_g(s.exponent)}", _ci(s.interval),
                         str(s.points), _pct(s.loo.rms)])  # fmt: skip
        lines += _table(["law", "exponent", "95% interval", "cells", "LOO RMS"], rows) + [""]
    for note in fa.slice_notes:
        lines.append(f"- not fitted: {note}")
    if fa.slice_notes:
        lines.append("")

    if form.floored:
        lines += ["#### Compute-optimal frontier", ""]
        if not fa.determined:
            lines += [f"Not determined: {fa.frontier_reason} (a frontier needs at least 2 data "
                      "sizes, each with at least 2 model sizes).", ""]  # fmt: skip
        elif fa.analytic is None:
            lines += ["Not determined: the joint law could not be fitted or pins an exponent "
                      "to zero.", ""]  # fmt: skip
        else:
            k_text = (
                f"k = {_g(fa.k)} FLOPs per parameter per unit of D (median of C/(N·D))"
                if fa.k
                else "k not known (no compute logged)"
            )
            lines += [
                "Approach 3, from the joint law: N_opt ∝ C^a, D_opt ∝ C^b with a = β/(α+β), "
                f"b = α/(α+β); C = k·N·D, {k_text}.",
                "",
                *_table(["", "value", "95% interval"], [
                    ["a", _g(fa.analytic.a), _ci(iv.get("frontier.a"))],
                    ["b", _g(fa.analytic.b), _ci(iv.get("frontier.b"))],
                ]),
                "",
            ]  # fmt: skip
        if fa.isoflop is not None:
            lines += _isoflop_lines(fa)
    for t in fa.holdouts:
        lines += _holdout_lines(a, fa, t)
    for which, note in fa.holdout_notes.items():
        lines += [f"Extrapolation test {which}: not run ({note}).", ""]
    lines += [f"![{s}]({s}.png) ([SVG]({s}.svg))" for s in stems] + [""]
    return lines


def _isoflop_lines(fa: FormAnalysis) -> list[str]:
    iso = fa.isoflop
    iv = fa.intervals
    lines = ["Approach 2, IsoFLOP profiles: per budget a parabola of the fitted quantity in ln N, "
             "its minimum N*:", ""]  # fmt: skip
    rows = [[figures.si(p.budget), str(np.unique(p.n).size), figures.si(p.n_opt),
             _ci(iv.get(f"iso.n_opt@{p.budget:g}")), figures.si(p.d_opt), _g(p.y_opt),
             "yes" if p.inside else "no: outside the sizes run"] for p in iso.profiles]  # fmt: skip
    rows += [
        [figures.si(c), "–", "–", "–", "–", "–", f"no profile: {why}"]
        for c, why in iso.failed.items()
    ]
    lines += _table(["budget C", "sizes", "N*", "95% interval", "D*", "minimum", "used"], rows)
    ex = iso.exponents
    if ex is None:
        lines += [
            "",
            "N*(C) not determined: fewer than 2 budgets have a minimum inside their sizes.",
            "",
        ]
    else:
        lines += ["", *_table(["N* ∝ C^a, D* ∝ C^b", "value", "95% interval"], [
            ["a", _g(ex.a), _ci(iv.get("iso.a"))], ["b", _g(ex.b), _ci(iv.get("iso.b"))]]), ""]  # fmt: skip
    return lines


def _holdout_lines(a: MetricAnalysis, fa: FormAnalysis, t: ExtrapolationTest) -> list[str]:
    lines = [f"#### Extrapolation test: {t.which} held out", ""]
    if not t.held:
        return lines + [f"Not run: {t.note}.", ""]
    inside = sum(h.inside for h in t.held)
    lines += [
        f"Fitted on {len(t.train)} cells, predicting {len(t.held)}: {inside} of {len(t.held)} "
        f"observations inside their 95% prediction interval ({t.refits} refits; {t.method}).",
        "",
    ]
    rows = [[figures.si(h.cell.n), _shape(h.cell), figures.si(_axis_of(h.cell)), _g(h.observed),
             _g(h.predicted), f"[{_g(h.low)}, {_g(h.high)}]", f"{100 * h.rel_error:+.1f}%",
             "yes" if h.inside else "**no**"] for h in t.held]  # fmt: skip
    axis = "C" if t.held[0].cell.budget is not None else "D"
    lines += _table(["N", "shape", axis, "observed", "predicted", "95% prediction interval",
                     "relative error", "inside"], rows) + [""]  # fmt: skip
    return lines


def _cells_table(a: MetricAnalysis) -> list[str]:
    budget = any(c.budget is not None for c in a.cells)
    rows = []
    for c in a.cells:
        sd = float(np.std(c.values, ddof=1)) if c.seeds > 1 else math.nan
        row = [figures.si(c.n), _shape(c), c.dataset or "–", figures.si(c.d)]
        if budget:
            row.append(figures.si(c.budget))
        row += [figures.si(c.compute) if math.isfinite(c.compute) else "–", str(c.seeds),
                _g(c.mean), _g(sd, 2)]  # fmt: skip
        if c.tuned:
            row.append(", ".join(f"{k}={v}" for k, v in c.tuned.items()))
        rows.append(row)
    header = ["N", "shape", "dataset", "D"] + (["budget"] if budget else [])
    header += ["C (FLOPs)", "seeds", "mean", "seed std"]
    if any(c.tuned for c in a.cells):
        header.append("tuned (winner)")
    return _table(header, rows)


def _tuning_lines(a: MetricAnalysis, select: str | None) -> list[str]:
    if not a.tuning:
        return []
    lines = [f"Tuned per size (the setting with the best mean {select}):", ""]
    rows = [[figures.si(t.n), figures.si(t.axis_value), t.key, t.value, ", ".join(t.grid),
             "**at the edge of its grid**" if t.edge else ""] for t in a.tuning]  # fmt: skip
    lines += _table(["N", "D or C", "key", "winner", "grid", ""], rows) + [""]
    edges = [t for t in a.tuning if t.edge]
    if edges:
        lines += [f"Warning: {len(edges)} of {len(a.tuning)} winners sit at the edge of their grid; "
                  "the optimum may lie outside it, and the law then describes the grid.", ""]  # fmt: skip
    pairs = [t for t in a.tuning if len(t.grid) == 2]
    if pairs:
        lines += [f"{len(pairs)} of {len(a.tuning)} choices were between two values only: such a grid "
                  "has no interior, so it cannot show whether the optimum lies inside it.", ""]  # fmt: skip
    return lines


def _shape_lines(a: MetricAnalysis) -> list[str]:
    lines = []
    if a.shape is not None:
        s = a.shape
        unit = metric_label(a.metric)
        lines += [
            f"Width against depth ({unit}, least squares on log2 width and log2 depth with one "
            f"intercept per data size, {s.cells} cells, R² = {s.r2:.3f}; {s.method}):",
            "",
            *_table(["change", f"Δ {unit}", "95% interval"], [
                ["width ×2", f"{s.width:+.4g}", _ci(s.intervals.get("width"))],
                ["depth ×2", f"{s.depth:+.4g}", _ci(s.intervals.get("depth"))],
                ["width ×2, depth ÷4 (equal N)", f"{s.trade:+.4g}", _ci(s.intervals.get("trade"))],
            ]),
            "",
        ]  # fmt: skip
    if a.pairs:
        lines += ["Cells of one data size with near-equal N (within 25%) and different shapes:", ""]
        rows = [[figures.si(_axis_of(p.small)), f"{_shape(p.small)} ({figures.si(p.small.n)})",
                 _g(p.small.mean), f"{_shape(p.large)} ({figures.si(p.large.n)})",
                 _g(p.large.mean), f"{p.difference:+.4g}"] for p in a.pairs]  # fmt: skip
        lines += _table(["D", "smaller N", "value", "larger N", "value", "larger − smaller"], rows)
        lines.append("")
    return lines


@dataclass
class StudyAnalysis:
    """Everything the report prints: per group and metric, and group comparisons."""

    groups: list[str]
    metrics: list[str]
    analyses: dict[tuple[str, str], MetricAnalysis]
    comparisons: dict[tuple[str, str], PairedDifference]
    comparison_notes: dict[tuple[str, str], str]


def analyse_study(
    records: Sequence[RunRecord],
    metrics: Sequence[str],
    *,
    forms: dict[str, tuple[str, ...]] | None = None,
    data_axis: str = "interactions",
    select: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
    holdouts: Sequence[str] = (),
) -> StudyAnalysis:
    """Analyse every metric in every group, and compare each group with the first."""
    groups = sorted({r.group for r in records}, key=_group_sort_key)
    analyses, comparisons, notes = {}, {}, {}
    for group in groups:
        members = [r for r in records if r.group == group]
        for metric in metrics:
            analyses[(group, metric)] = analyse_metric(
                members, metric, group=group, forms=(forms or {}).get(metric),
                data_axis=data_axis, select=select, n_boot=n_boot, seed=seed, holdouts=holdouts,
            )  # fmt: skip
    for group in groups[1:]:
        for metric in metrics:
            try:
                comparisons[(group, metric)] = paired_difference(
                    analyses[(groups[0], metric)].cells, analyses[(group, metric)].cells,
                    n_boot=n_boot, seed=seed,
                )  # fmt: skip
            except FitError as e:
                notes[(group, metric)] = str(e)
    return StudyAnalysis(groups, list(metrics), analyses, comparisons, notes)


def _group_sort_key(group: str) -> tuple:
    """Groups like 'nce_num_negatives=100' in numeric order of their values."""
    parts = []
    for item in group.split(", "):
        key, _, value = item.partition("=")
        try:
            parts.append((key, 0, float(value), ""))
        except ValueError:
            parts.append((key, 1, 0.0, value))
    return tuple(parts)


def _group_title(group: str) -> str:
    return group if group else "all runs"


OVERFIT_RISE = 0.05  # a last valid loss this far above the run's minimum counts as overfitting


def overfitting(records: Sequence[RunRecord]) -> tuple[int, int, float]:
    """Runs whose last valid loss lies more than 5% above their minimum valid loss.

    Returns:
        (such runs, runs with a valid-loss history, median epoch of those runs' minimum).
    """
    rising, minima, total = 0, [], 0
    for r in records:
        curve = r.history.get("valid_loss") or []
        if len(curve) < 2:
            continue
        total += 1
        steps, values = zip(*curve, strict=True)
        best = int(np.argmin(values))
        if values[-1] > (1 + OVERFIT_RISE) * values[best]:
            rising += 1
            minima.append(steps[best])
    return rising, total, float(np.median(minima)) if minima else math.nan


def _headline_form(a: MetricAnalysis) -> FormAnalysis | None:
    """The form a summary quotes: the first fitted one whose law converged, else the first
    fitted one (forms come in the mapping's order: floored laws first by default)."""
    fitted = [fa for fa in a.forms if fa.law is not None]
    good = [fa for fa in fitted if not isinstance(fa.law, JointLawFit) or fa.law.converged]
    return (good or fitted or [None])[0]


def _range(values: Sequence[float]) -> str:
    vals = [v for v in values if v and math.isfinite(v)]
    if not vals:
        return "–"
    low, high = figures.si(min(vals)), figures.si(max(vals))
    return low if low == high else f"{low} to {high}"


def _summary(study: StudyAnalysis, records: Sequence[RunRecord], d_name: str) -> list[str]:
    """The report's opening: per metric the exponents with their 95% intervals, the
    compute-optimal split, the held-out predictions against what the runs got, then what
    the study's range, protocol and data leave open. Every number is one the sections
    below compute."""
    lines = ["## Summary", ""]
    for (group, metric), a in study.analyses.items():
        where = f" ({group})" if group else ""
        label = metric_label(metric)
        fa = _headline_form(a)
        if not a.cells or fa is None:
            lines.append(f"- **{label}**{where}: no law fitted ({len(a.cells)} cells).")
            continue
        iv = fa.intervals
        loo = f"leave-one-cell-out error {_pct(fa.loo.rms if fa.loo else None)} RMS"
        if isinstance(fa.law, JointLawFit):
            if fa.law.converged:
                law = (
                    f"{fa.form.key} form, size exponent α = {_g(fa.law.alpha, 3)} "
                    f"{_ci(iv.get('alpha'))}, data exponent β = {_g(fa.law.beta, 3)} "
                    f"{_ci(iv.get('beta'))}, floor E = {_g(fa.law.E, 3)}"
                )
            else:
                law = f"{fa.form.key} form: the exponents are not pinned down (a zero coefficient)"
        else:
            law = (
                f"{label} ∝ N^{_g(fa.law.a, 3)} {_ci(iv.get('a'))} · "
                f"D^{_g(fa.law.b, 3)} {_ci(iv.get('b'))}"
            )
        lines.append(f"- **{label}**{where}, {len(a.cells)} cells: {law}; {loo}.")
        split = []
        if fa.analytic is not None:
            split.append(
                f"from the law N_opt ∝ C^{_g(fa.analytic.a, 3)} {_ci(iv.get('frontier.a'))}, "
                f"D_opt ∝ C^{_g(fa.analytic.b, 3)} {_ci(iv.get('frontier.b'))}"
            )
        if fa.isoflop is not None and fa.isoflop.exponents is not None:
            ex = fa.isoflop.exponents
            split.append(
                f"from the IsoFLOP profiles N* ∝ C^{_g(ex.a, 3)} {_ci(iv.get('iso.a'))}, "
                f"D* ∝ C^{_g(ex.b, 3)} {_ci(iv.get('iso.b'))}"
            )
        if split:
            lines.append("  Compute-optimal split: " + "; ".join(split) + ".")
        elif fa.form.floored and fa.frontier_reason:
            lines.append(f"  Compute-optimal split: not determined ({fa.frontier_reason}).")
        for t in fa.holdouts:
            if not t.held:
                note = fa.holdout_notes.get(t.which) or t.note
                lines.append(f"  Held out ({t.which}): no prediction ({note}).")
                continue
            pairs = ", ".join(
                f"N {figures.si(h.cell.n)}: {_g(h.predicted)} against {_g(h.observed)} "
                f"({100 * h.rel_error:+.1f}%)"
                for h in sorted(t.held, key=lambda h: h.cell.n)
            )
            worst = max(abs(h.rel_error) for h in t.held)
            inside = sum(h.inside for h in t.held)
            lines.append(
                f"  Held out ({t.which}), predicted against observed: {pairs}; largest error "
                f"{100 * worst:.1f}%, {inside} of {len(t.held)} inside their 95% prediction "
                "intervals."
            )
    budgets = sorted({r.budget for r in records if r.budget})
    seeds = sorted({len(c.values) for a in study.analyses.values() for c in a.cells})
    protocols = sorted({protocol_label(r.protocol) for r in records})
    datasets = sorted({r.dataset for r in records if r.dataset})
    lines += [
        "",
        "What the study cannot tell: the laws hold over the range measured, N = "
        f"{_range([r.n_params for r in records])} non-embedding parameters, D = "
        f"{_range([getattr(r, 'tokens' if 'tokens' in d_name else 'interactions') for r in records])} "
        f"{d_name}, C = {_range([r.compute for r in records])} training FLOPs"
        + (f" ({len(budgets)} budgets)" if budgets else "")
        + f"; beyond it they are extrapolations. Metrics: {'; '.join(protocols)}. Data: "
        f"{', '.join(datasets) or 'not logged'}. Seeds per cell: "
        f"{', '.join(str(s) for s in seeds) or '–'}.",
        "",
    ]
    return lines


def _reading(study: StudyAnalysis, records: Sequence[RunRecord] = ()) -> list[str]:
    """A short reading of what the data show: sentences around numbers the tool computed."""
    lines = ["## Reading", ""]
    for group in study.groups:
        rising, total, epoch = overfitting([r for r in records if r.group == group])
        if total:
            where = f" ({group})" if group else ""
            tail = f"; their valid loss was lowest at epoch {epoch:g} (median)" if rising else ""
            lines.append(
                f"- Overfitting{where}: the last valid loss lies more than "
                f"{100 * OVERFIT_RISE:.0f}% above the run's minimum in {rising} of {total} runs{tail}."
            )
    for (group, metric), a in study.analyses.items():
        where = f" ({group})" if group else ""
        label = metric_label(metric)
        for fa in a.forms:
            if fa.law is None:
                continue
            iv = fa.intervals
            if isinstance(fa.law, JointLawFit):
                if not fa.law.converged:
                    lines.append(f"- {label}{where}, {fa.form.key} form: the law does not pin its "
                                 f"exponents down (a zero coefficient); LOO RMS {_pct(fa.loo.rms if fa.loo else None)}.")  # fmt: skip
                    continue
                lines.append(
                    f"- {label}{where}, {fa.form.key} form: size exponent α = {_g(fa.law.alpha, 3)} "
                    f"{_ci(iv.get('alpha'))}, data exponent β = {_g(fa.law.beta, 3)} "
                    f"{_ci(iv.get('beta'))}, floor E = {_g(fa.law.E, 3)}; LOO RMS "
                    f"{_pct(fa.loo.rms if fa.loo else None)}."
                )
            else:
                lines.append(
                    f"- {label}{where}, as a power law: {label} ∝ N^{_g(fa.law.a, 3)} "
                    f"{_ci(iv.get('a'))} · D^{_g(fa.law.b, 3)} {_ci(iv.get('b'))}; LOO RMS "
                    f"{_pct(fa.loo.rms if fa.loo else None)}."
                )
            if fa.form.floored:
                if fa.analytic is not None:
                    lines.append(
                        f"  Compute-optimal frontier (from this law): N_opt ∝ C^{_g(fa.analytic.a, 3)} "
                        f"{_ci(iv.get('frontier.a'))}, D_opt ∝ C^{_g(fa.analytic.b, 3)} "
                        f"{_ci(iv.get('frontier.b'))}."
                    )
                elif not fa.determined:
                    lines.append(
                        f"  Compute-optimal frontier: not determined ({fa.frontier_reason})."
                    )
                if fa.isoflop is not None and fa.isoflop.exponents is not None:
                    ex = fa.isoflop.exponents
                    lines.append(
                        f"  IsoFLOP profiles: N* ∝ C^{_g(ex.a, 3)} {_ci(iv.get('iso.a'))}, "
                        f"D* ∝ C^{_g(ex.b, 3)} {_ci(iv.get('iso.b'))}."
                    )
            d_slices = [s for s in fa.slices if s.axis == "D"]
            if d_slices:
                ex = [s.exponent for s in d_slices]
                lines.append(
                    f"  Data exponent at fixed N ({len(d_slices)} model sizes): from "
                    f"{_g(min(ex), 3)} to {_g(max(ex), 3)}."
                )
            for t in fa.holdouts:
                if t.held:
                    errs = [100 * h.rel_error for h in t.held]
                    lines.append(
                        f"  Extrapolation, {t.which} held out: {sum(h.inside for h in t.held)} of "
                        f"{len(t.held)} inside their 95% intervals; relative errors "
                        f"{min(errs):+.1f}% to {max(errs):+.1f}%."
                    )
        if a.shape is not None:
            s = a.shape
            better = (s.trade > 0) == (metric_orientation(metric) == "higher")
            lines.append(
                f"- Width against depth, {label}{where}: doubling the width moves it by "
                f"{s.width:+.3g} {_ci(s.intervals.get('width'))}, doubling the depth by "
                f"{s.depth:+.3g} {_ci(s.intervals.get('depth'))}; at equal N (width ×2, "
                f"depth ÷4) by {s.trade:+.3g} {_ci(s.intervals.get('trade'))} "
                f"({'better' if better else 'worse'})."
            )
        edges = [t for t in a.tuning if t.edge]
        if edges:
            lines.append(
                f"- Tuning, {label}{where}: {len(edges)} of {len(a.tuning)} winners at the edge of their grid."
            )
    for (group, metric), p in study.comparisons.items():
        label = metric_label(metric)
        lines.append(
            f"- {_group_title(group)} against {_group_title(study.groups[0])}, {label}: "
            f"{p.mean:+.3g} on average {_ci(p.intervals.get('mean'))} "
            f"({100 * p.relative:+.1f}% relative {_ci_pct(p.intervals.get('relative'))}); higher in "
            f"{p.higher} of {len(p.matched)} common cells, lower in {p.lower}."
        )
    return lines + [""]


def _ci_pct(iv: Interval | None) -> str:
    return "–" if iv is None else f"[{100 * iv.low:+.1f}%, {100 * iv.high:+.1f}%]"


def _runs_table(records: Sequence[RunRecord], metrics: Sequence[str], data_axis: str) -> list[str]:
    rows = []
    tuned_keys = sorted({k for r in records for k in r.tuned})
    for r in records:
        cells = [r.label, r.group or "–", r.dataset or "–"]
        shape = f"{r.depth:g}×{r.width:g}" if r.width and r.depth else "–"
        cells += [figures.si(r.n_params) if r.n_params else "–", shape]
        d = getattr(r, data_axis)
        cells += [
            figures.si(d) if d else "–",
            figures.si(r.compute) if r.compute else "–",
            r.seed or "–",
        ]
        cells += [r.tuned.get(k, "–") for k in tuned_keys]
        cells += [_g(r.metrics.get(m)) for m in metrics]
        rows.append(cells)
    header = [
        "run",
        "group",
        "dataset",
        "N",
        "shape",
        "D",
        "C (FLOPs)",
        "seed",
        *tuned_keys,
        *metrics,
    ]
    return _table(header, rows)


@dataclass(frozen=True)
class ReportResult:
    """What ``write_report`` produced."""

    report: Path
    figures: list[Path]
    study: StudyAnalysis


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def resolve_data_axis(records: Sequence[RunRecord], data_axis: str) -> str:
    """'auto' -> 'tokens' when the runs have compute budgets, else 'interactions'."""
    if data_axis not in DATA_AXES:
        raise ReportError(f"data axis {data_axis!r} unknown; choose one of {', '.join(DATA_AXES)}")
    if data_axis != "auto":
        return data_axis
    return "tokens" if any(r.budget is not None for r in records) else "interactions"


def _form_figures(
    a: MetricAnalysis,
    fa: FormAnalysis,
    out: Path,
    stem_base: str,
    caption: str,
    d_labels: dict[float, str],
) -> tuple[list[str], list[Path]]:
    """Draw one form's figures: against N and D, the frontier, IsoFLOP, the holdouts.

    Returns:
        The figure stems (for the Markdown) and the files written.
    """
    stems: list[str] = []
    written: list[Path] = []
    if not np.all(fa.form.quantity([c.mean for c in a.cells]) > 0):
        return stems, written
    name = metric_label(a.metric)
    y_label = f"1 − {name}" if fa.form.key == "error-floor" else name
    n = np.array([c.n for c in a.cells])
    d = np.array([c.d for c in a.cells])
    y = np.array([fa.form.quantity(c.mean) for c in a.cells])

    def save(fig, suffix: str) -> None:
        stems.append(f"{stem_base}_{fa.form.key}_{suffix}")
        written.extend(figures.save_figure(fig, out, stems[-1]))

    for ax_name, x, grp in (("N", n, d), ("D", d, n)):
        labels = d_labels if ax_name == "N" else {v: f"N = {figures.si(v)}" for v in grp}
        fig = figures.metric_vs_size(
            x, grp, y, axis=ax_name, y_label=y_label, group_labels=labels, law=fa.law,
            caption=caption,
        )  # fmt: skip
        save(fig, f"vs_{ax_name}")
    if fa.envelope is not None and isinstance(fa.law, JointLawFit):
        has_c = np.array([math.isfinite(c.compute) for c in a.cells])
        c = np.array([cl.compute for cl in a.cells])
        fig = figures.frontier_figure(
            n[has_c], d[has_c], c[has_c], y[has_c], fa.envelope, y_label=y_label,
            joint=fa.law, k=fa.k, caption=caption,
        )  # fmt: skip
        save(fig, "frontier")
    if fa.isoflop is not None and fa.isoflop.profiles:
        save(figures.isoflop_figure(fa.isoflop, y_label=y_label, caption=caption), "isoflop")
    for t in fa.holdouts:
        if t.held:
            save(figures.holdout_figure(t, name, caption=caption), f"extrapolation_{t.which}")
    return stems, written


def write_report(
    records: Sequence[RunRecord],
    out_dir: str | Path,
    *,
    experiment: str,
    mapping: StoreMapping | None = None,
    data_axis: str = "auto",
    n_boot: int = 200,
    seed: int = 0,
    holdouts: Sequence[str] = (),
    duplicates: Sequence[str] = (),
    command: str | None = None,
    source: str | None = None,
) -> ReportResult:
    """Analyse every metric, draw the figures, write ``out_dir/report.md``.

    Args:
        records: the runs (see ``runs.load_runs``).
        out_dir: output folder (created).
        experiment: the MLflow experiment, named in the report.
        mapping: the metrics, forms, validation metric (default: this project's names).
        data_axis: 'auto', 'interactions' or 'tokens' (the D of the laws).
        n_boot, seed: bootstrap resamples and seed.
        holdouts: extrapolation tests to run.
        duplicates: run names that had several finished runs (listed in the report).
        command: the command line that made the report (written at the top).
        source: one sentence on where the runs were read from.

    Raises:
        ReportError: unknown metric orientation, data axis, form or holdout (before any work).
    """
    m = mapping or StoreMapping()
    for metric in m.metrics:
        metric_orientation(metric)
    bad = [h for h in holdouts if h not in HOLDOUTS]
    if bad:
        raise ReportError(f"holdout {bad[0]!r} unknown; choose one of {', '.join(HOLDOUTS)}")
    axis = resolve_data_axis(records, data_axis)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d_name = "training interactions" if axis == "interactions" else "training tokens processed"
    estimated = any(r.compute_estimated for r in records)
    if estimated:
        c_name = (f"C = {_g(m.compute_k)}·N·D·epochs, an estimate (the store logs no training "
                  "total)")  # fmt: skip
    else:
        c_name = "C = training FLOPs as logged (total_flops: forward + backward, 3x forward)"
    study = analyse_study(
        records, m.metrics, forms=dict(m.forms), data_axis=axis, select=m.select,
        n_boot=n_boot, seed=seed, holdouts=holdouts,
    )  # fmt: skip

    lines = [f"# Scaling report: {experiment}", ""]
    if command:
        lines += ["Made with:", "", f"    {command}", ""]
    if source:
        lines += [source, ""]
    groups = [g for g in study.groups if g]
    lines += [
        f"{len(records)} finished runs" + (f" in {len(groups)} groups ({'; '.join(groups)})" if groups else "")
        + f". N = non-embedding parameters; D = {d_name}; {c_name}.",
        "",
        "Method: runs of equal N, D (or budget) and shape are the seeds of one **cell**; laws are "
        "fitted to cell means and identified by distinct cells. Intervals: a bootstrap over cells "
        f"with the design fixed ({n_boot} resamples, seed {seed}): each resample redraws every "
        "cell from resampled seed deviations, or, where the law misses the cells by more than "
        "their seeds explain or no cell has two seeds, from the law's cell residuals (the method "
        "of each fit is named under it); 95% expanded percentiles (Student t). Every fit reports "
        "its leave-one-cell-out (LOO) prediction error.",
        "",
    ]  # fmt: skip
    if duplicates:
        lines += [f"Several finished runs share these names; the newest of each is used: "
                  f"{', '.join(duplicates)}.", ""]  # fmt: skip
    lines += _summary(study, records, d_name)
    lines += _reading(study, records)

    written: list[Path] = []
    d_labels = {}
    for r in records:
        value = getattr(r, axis)
        if value:
            d_labels[value] = (
                f"{r.dataset} ({figures.si(value)})" if r.dataset else figures.si(value)
            )
    for group in study.groups:
        if group:
            lines += [f"# {group}", ""]
        for metric in study.metrics:
            a = study.analyses[(group, metric)]
            lines += [f"## {a.label}" + (f", {group}" if group else ""), ""]
            lines += [f"- note ({k}): {v}" for k, v in a.notes.items()]
            if a.notes:
                lines.append("")
            if not a.cells:
                continue
            lines += ["Cells:", "", *_cells_table(a), ""]
            lines += _tuning_lines(a, m.select)
            stem_base = slug(f"{group}_{metric}" if group else metric)
            parts = (experiment, group, a.protocol, m.caption)
            caption = " · ".join(p for p in parts if p)
            for fa in a.forms:
                stems, files = _form_figures(a, fa, out, stem_base, caption, d_labels)
                written += files
                lines += _form_section(a, fa, d_name, stems)
            lines += _shape_lines(a)
    if study.comparisons or study.comparison_notes:
        lines += [f"# Groups compared with {_group_title(study.groups[0])}", ""]
        for (group, metric), p in study.comparisons.items():
            lines += [f"{_group_title(group)}, {metric_label(metric)}: over {len(p.matched)} common "
                      "cells (same N, D and shape):", ""]  # fmt: skip
            lines += _table(["", "value", "95% interval"], [
                ["mean difference", f"{p.mean:+.4g}", _ci(p.intervals.get("mean"))],
                ["mean relative difference", f"{100 * p.relative:+.2f}%", _ci_pct(p.intervals.get("relative"))],
                ["cells higher / lower", f"{p.higher} / {p.lower}", ""],
            ]) + [""]  # fmt: skip
        for (group, metric), note in study.comparison_notes.items():
            lines += [f"{_group_title(group)}, {metric_label(metric)}: not compared ({note}).", ""]

    for group in study.groups:
        members = [
            r for r in records if r.group == group and r.history and r.n_params and getattr(r, axis)
        ]
        curves = [(r.label, r.n_params, getattr(r, axis), r.history) for r in members]
        if not curves:
            continue
        stem = slug(f"{group}_loss_curves") if group else "loss_curves"
        caption = " · ".join(p for p in (experiment, group, m.caption) if p)
        written += figures.save_figure(
            figures.loss_curves(curves, d_labels, caption=caption), out, stem
        )
        lines += [f"## Loss curves{', ' + group if group else ''}", "",
                  "Train (solid) and valid (dashed) loss per epoch, colour by N.", "",
                  f"![{stem}]({stem}.png) ([SVG]({stem}.svg))", ""]  # fmt: skip
    lines += ["## Runs", "", *_runs_table(records, m.metrics, axis), ""]

    report = out / "report.md"
    _atomic_write_text(report, "\n".join(lines))
    return ReportResult(report=report, figures=written, study=study)


def log_report(experiment: str, files: Sequence[Path], tracking_uri: str | None = None) -> str:
    """Attach the report's files to the experiment's ``scaling-report`` run; return its id.

    The run is found by its tag and reused, so making the report again replaces the files
    instead of adding a run.
    """
    from recbole_fork import tracking

    existing = [
        r
        for r in tracking.search_runs(experiment, tracking_uri)
        if r["tags"].get(REPORT_TAG) == REPORT_KIND
    ]
    tracker = tracking.Tracker(
        experiment,
        REPORT_RUN_NAME,
        tracking_uri=tracking_uri,
        run_id=existing[0]["run_id"] if existing else None,
        tags={REPORT_TAG: REPORT_KIND},
    )
    try:
        for path in files:
            tracker.log_artifact(path, "scaling_report")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return tracker.run_id


def scaling_report(
    experiment: str | None,
    out_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    store: str | None = None,
    mapping: StoreMapping | None = None,
    data_axis: str = "auto",
    n_boot: int = 200,
    seed: int = 0,
    holdouts: Sequence[str] = (),
    log_artifacts: bool = True,
    command: str | None = None,
) -> ReportResult:
    """Read the finished runs, write the report, and (own store only) log it to MLflow.

    Args:
        experiment: the experiment (default: the mapping's).
        out_dir: output folder.
        tracking_uri: this project's store (read in place; the report is logged back to it).
        store: any MLflow store (a path, also .bz2/.gz, or a URI), read from a temporary copy
            upgraded to the running MLflow's schema; nothing is written to it.
        mapping: the store's names (default: this project's).
        data_axis, n_boot, seed, holdouts, command: see ``write_report``.
        log_artifacts: log the report to ``tracking_uri`` (ignored with ``store``).

    Raises:
        ReportError, MappingError: bad request or store (one line, before any fit).
    """
    m = mapping or StoreMapping()
    for metric in m.metrics:
        metric_orientation(metric)
    experiment = experiment or m.experiment
    if store is not None:
        with open_store(store) as opened:
            records, duplicates = load_runs(experiment, opened.uri, m, store_label=opened.label)
        source = f"Runs read from the MLflow store `{opened.label}`"
        if opened.revision:
            source += (f", on a temporary copy upgraded from schema revision {opened.revision} to the "
                       "running MLflow's (the store itself is never changed)")  # fmt: skip
        source += "."
        log_artifacts = False
    else:
        records, duplicates = load_runs(experiment, tracking_uri, m)
        source = None
    result = write_report(
        records, out_dir, experiment=str(experiment), mapping=m, data_axis=data_axis,
        n_boot=n_boot, seed=seed, holdouts=holdouts, duplicates=duplicates, command=command,
        source=source,
    )  # fmt: skip
    if log_artifacts:
        log_report(str(experiment), [result.report, *result.figures], tracking_uri)
    return result
