"""The scaling report: fits and figures from the runs of one experiment, as Markdown.

For each metric (default: test loss, test NDCG@10 and HR@10 at the best epoch):

- the fitted quantity is loss-like: a loss as it is, a ranking metric m (higher is better)
  as its complement ``1 - m``, an error rate that falls toward a floor like a loss does, so
  the same laws and the same frontier apply to both;
- power laws in N alone (the best run of each N over the data sizes) and in D alone (the
  best run of each D over the model sizes);
- the joint law ``L(N, D) = E + A/N^alpha + B/D^beta`` with R^2 and per-run residuals;
- the compute-optimal frontier, analytic (from the joint law) and empirical (best runs);
- bootstrap intervals (resampling runs, fixed seed) for every exponent.

``scaling_report`` reads the runs from MLflow, writes ``report.md`` and the figures, and logs
them as artifacts of a run named ``scaling-report`` in the same experiment (tagged so that
it is never read back as a data point, and reused when the report is made again).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recbole_fork.scaling import figures
from recbole_fork.scaling.frontier import (
    EmpiricalFrontier,
    FrontierExponents,
    analytic_exponents,
    empirical_frontier,
    estimate_k,
)
from recbole_fork.scaling.laws import (
    FitError,
    Interval,
    JointLawFit,
    PowerLawFit,
    bootstrap,
    bootstrap_joint_law,
    fit_joint_law,
    fit_power_law,
)
from recbole_fork.scaling.runs import REPORT_KIND, REPORT_TAG, RunRecord, load_runs

DEFAULT_METRICS = ("best_test_loss", "best_test_ndcg_at_10", "best_test_hr_at_10")
DATA_AXES = ("interactions", "tokens")
REPORT_RUN_NAME = "scaling-report"
_HIGHER_IS_BETTER = ("ndcg", "hr", "hit", "mrr", "recall", "precision", "auc", "map")
_PRETTY = {"ndcg": "NDCG", "hr": "HR", "hit": "HR", "mrr": "MRR", "recall": "Recall",
           "precision": "Precision", "auc": "AUC", "map": "MAP"}  # fmt: skip


class ReportError(ValueError):
    """A user-caused problem with a report request (unknown metric, bad axis)."""


def metric_orientation(metric: str) -> str:
    """'lower' for losses, 'higher' for ranking metrics (by name).

    Raises:
        ReportError: the name says neither (it must contain 'loss' or a ranking metric).
    """
    parts = metric.lower().split("_")
    if "loss" in parts:
        return "lower"
    if any(p in _HIGHER_IS_BETTER for p in parts):
        return "higher"
    raise ReportError(
        f"metric {metric!r}: cannot tell whether higher is better; use a name containing "
        f"'loss' or one of {', '.join(_HIGHER_IS_BETTER)}"
    )


def metric_label(metric: str) -> str:
    """``best_test_ndcg_at_10`` -> 'test NDCG@10'; ``best_test_loss`` -> 'test loss'."""
    name = re.sub(r"^best_", "", metric)
    match = re.fullmatch(r"(train|valid|test)_([a-z]+)_at_(\d+)", name)
    if match:
        phase, kind, k = match.groups()
        return f"{phase} {_PRETTY.get(kind, kind)}@{k}"
    return name.replace("_", " ")


def protocol_label(protocol: str) -> str:
    """'full' -> 'full ranking'; 'sampled10000 (...)' or 'sampled:10000' -> '10000 sampled negatives'."""
    match = re.match(r"sampled:?(\d+)", protocol)
    if match:
        return f"{match.group(1)} sampled negatives"
    if protocol.startswith("full"):
        return "full ranking"
    return protocol or "protocol not logged"


@dataclass
class MetricAnalysis:
    """Every fit of one metric, and why a fit is missing when it is.

    Arrays are over the runs used (those with the metric, N and D), shape [r].
    """

    metric: str
    label: str
    fitted_label: str
    transform: str
    names: list[str]
    n: np.ndarray
    d: np.ndarray
    y: np.ndarray
    compute: np.ndarray  # NaN where a run logged no compute
    n_law: PowerLawFit | None = None
    d_law: PowerLawFit | None = None
    joint: JointLawFit | None = None
    frontier: EmpiricalFrontier | None = None
    analytic: FrontierExponents | None = None
    k: float | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _best_per(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct x, the lowest y: shapes [u], x sorted."""
    xs = np.unique(x)
    return xs, np.array([y[x == v].min() for v in xs])


def _try(notes: dict[str, str], key: str, fn: Callable[[], object]) -> object | None:
    """Run a fit; on FitError record why it is missing and return None."""
    try:
        return fn()
    except FitError as e:
        notes[key] = str(e)
        return None


def analyse_metric(
    records: Sequence[RunRecord],
    metric: str,
    *,
    data_axis: str = "interactions",
    n_boot: int = 200,
    seed: int = 0,
) -> MetricAnalysis:
    """Fit the laws and the frontier of one metric over the runs.

    Args:
        records: the runs.
        metric: MLflow metric name (``best_test_loss``, ``best_test_ndcg_at_10``...).
        data_axis: D is the training 'interactions' of the dataset or the 'tokens' processed.
        n_boot: bootstrap resamples for the intervals (0: no intervals).
        seed: bootstrap seed.

    Raises:
        ReportError: unknown ``data_axis`` or a metric of unknown orientation.
    """
    if data_axis not in DATA_AXES:
        raise ReportError(f"data axis {data_axis!r} unknown; choose one of {', '.join(DATA_AXES)}")
    higher = metric_orientation(metric) == "higher"
    label = metric_label(metric)
    protocols = sorted({r.protocol for r in records if metric in r.metrics})
    if higher:
        label = (
            f"{label} ({'; '.join(protocol_label(p) for p in protocols) or 'protocol not logged'})"
        )
    used = [r for r in records if metric in r.metrics and r.n_params and getattr(r, data_axis)]
    a = MetricAnalysis(
        metric=metric,
        label=label,
        fitted_label=f"1 − {label}" if higher else label,
        transform="1 - value" if higher else "value",
        names=[r.run_name for r in used],
        n=np.array([r.n_params for r in used], dtype=float),
        d=np.array([getattr(r, data_axis) for r in used], dtype=float),
        y=np.array([r.metrics[metric] for r in used], dtype=float),
        compute=np.array([r.compute or np.nan for r in used], dtype=float),
    )
    if higher:
        a.y = 1.0 - a.y
    if len(protocols) > 1:
        a.notes["protocol"] = f"runs mix ranking protocols {protocols}: values are not comparable"
    skipped = len([r for r in records if metric in r.metrics]) - len(used)
    if skipped:
        a.notes["runs"] = (
            f"{skipped} run(s) with this metric lack params_non_embedding or {data_axis}"
        )
    if not used:
        a.notes["all"] = "no run logged this metric together with N and D"
        return a

    a.n_law = _try(a.notes, "n_law", lambda: fit_power_law(*_best_per(a.n, a.y)))
    a.d_law = _try(a.notes, "d_law", lambda: fit_power_law(*_best_per(a.d, a.y)))
    a.joint = _try(a.notes, "joint", lambda: fit_joint_law(a.n, a.d, a.y))
    if a.joint is not None:
        a.analytic = analytic_exponents(a.joint)
        if not a.joint.converged:
            a.notes["joint"] = (
                "the joint fit hit its evaluation limit: the runs pin the law down poorly"
            )

    has_c = np.isfinite(a.compute)
    if has_c.sum() >= 2:
        c, n, d, y = a.compute[has_c], a.n[has_c], a.d[has_c], a.y[has_c]
        a.k = estimate_k(n, d, c)
        a.frontier = empirical_frontier(n, d, c, y)
        if a.frontier.exponents is None:
            a.notes["frontier"] = (
                "the best runs cover a single compute budget: no frontier exponents"
            )
    else:
        a.notes["frontier"] = (
            "fewer than 2 runs logged compute (metric total_flops or param flops_per_token)"
        )
    if n_boot > 0:
        a.intervals = _intervals(a, has_c, n_boot=n_boot, seed=seed)
    return a


def _intervals(
    a: MetricAnalysis, has_c: np.ndarray, *, n_boot: int, seed: int
) -> dict[str, Interval]:
    """Bootstrap intervals of every exponent, keyed '<fit>.<param>' (e.g. 'joint.alpha')."""
    out: dict[str, Interval] = {}

    def one_variable(x: np.ndarray) -> Callable[[np.ndarray], dict[str, float]]:
        def stat(idx: np.ndarray) -> dict[str, float]:
            f = fit_power_law(*_best_per(x[idx], a.y[idx]))
            return {"alpha": f.alpha, "A": f.A}

        return stat

    for key, x, fit in (("n_law", a.n, a.n_law), ("d_law", a.d, a.d_law)):
        if fit is not None:
            res = bootstrap(a.y.size, one_variable(x), n_boot=n_boot, seed=seed)
            out.update({f"{key}.{k}": v for k, v in res.items()})
    if a.joint is not None:

        def extra(f: JointLawFit) -> dict[str, float]:
            ex = analytic_exponents(f)
            return {"a": ex.a, "b": ex.b}

        res = bootstrap_joint_law(a.n, a.d, a.y, a.joint, n_boot=n_boot, seed=seed, extra=extra)
        out.update({f"joint.{k}": v for k, v in res.items() if k not in ("a", "b")})
        out.update({f"analytic.{k}": res[k] for k in ("a", "b") if k in res})
    if a.frontier is not None and a.frontier.exponents is not None:
        c, n, d, y = a.compute[has_c], a.n[has_c], a.d[has_c], a.y[has_c]

        def frontier_stat(idx: np.ndarray) -> dict[str, float]:
            ex = empirical_frontier(n[idx], d[idx], c[idx], y[idx]).exponents
            if ex is None:
                raise FitError("resample has a single compute budget")
            return {"a": ex.a, "b": ex.b}

        res = bootstrap(c.size, frontier_stat, n_boot=n_boot, seed=seed)
        out.update({f"empirical.{k}": v for k, v in res.items()})
    return out


# -- Markdown ------------------------------------------------------------------------------


def _g(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _with_interval(value: float, iv: Interval | None) -> tuple[str, str, str]:
    if iv is None:
        return _g(value), "–", "–"
    return _g(value), _g(iv.std, 2), f"[{_g(iv.low)}, {_g(iv.high)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _metric_section(a: MetricAnalysis, d_name: str, figure_stems: Sequence[str]) -> list[str]:
    iv = a.intervals
    lines = [f"## {a.label}", ""]
    if a.transform == "1 - value":
        lines.append(
            f"Higher is better, so the laws are fitted to **1 − {metric_label(a.metric)}**, the "
            "ranking error, which like a loss falls toward an irreducible floor E."
        )
    else:
        lines.append("Lower is better: the laws are fitted to the value as logged.")
    lines.append(f"Runs used: {len(a.names)}.")
    lines += [f"- note ({k}): {v}" for k, v in a.notes.items()] + [""]
    if not a.names:
        return lines

    lines += ["### Power laws in one variable", ""]
    rows = []
    for key, fit, form in (
        ("n_law", a.n_law, "y = A·N^−α over the best run of each N"),
        ("d_law", a.d_law, f"y = A·D^−α over the best run of each D ({d_name})"),
    ):
        if fit is None:
            rows.append([form, "–", "–", "–", "–", "–", "–"])
            continue
        value, std, ci = _with_interval(fit.alpha, iv.get(f"{key}.alpha"))
        rows.append([form, value, std, ci, _g(fit.A), _g(fit.r2, 5), str(fit.residuals.size)])
    header = ["law", "exponent α", "bootstrap std", "95% interval", "A", "R² (log y)", "points"]
    lines += _table(header, rows)
    lines.append("")

    lines += ["### Joint law L(N, D) = E + A / N^α + B / D^β", ""]
    if a.joint is None:
        lines += [f"Not fitted: {a.notes.get('joint', 'no data')}.", ""]
    else:
        rows = [
            [name, *_with_interval(value, iv.get(f"joint.{name}"))]
            for name, value in a.joint.params().items()
        ]
        lines += _table(["parameter", "value", "bootstrap std", "95% interval"], rows)
        lines += [
            "",
            f"R² (log L) = {a.joint.r2:.5f}; Huber loss on log residuals, δ = {a.joint.huber_delta:g}; "
            f"D = {d_name}.",
            "",
            "Residuals, log y − log ŷ (a relative error):",
            "",
        ]
        fitted = a.joint.predict(a.n, a.d)
        rows = [
            [name, figures.si(n), figures.si(d), _g(y), _g(f), f"{100 * r:+.2f}%"]
            for name, n, d, y, f, r in zip(
                a.names, a.n, a.d, a.y, fitted, a.joint.residuals, strict=True
            )
        ]
        lines += _table(["run", "N", "D", "observed", "fitted", "residual"], rows) + [""]

    lines += ["### Compute-optimal frontier", ""]
    if a.frontier is None:
        lines += [f"Not computed: {a.notes.get('frontier', 'no compute logged')}.", ""]
    else:
        lines += [
            f"Compute C = k·N·D with k = {_g(a.k)} FLOPs per parameter per unit of D, the median "
            "of C / (N·D) over the runs (6 for one pass over each token; more when D counts "
            "interactions and the runs make several epochs).",
            "",
        ]
        rows = []
        if a.analytic is not None:
            ra = _with_interval(a.analytic.a, iv.get("analytic.a"))
            rb = _with_interval(a.analytic.b, iv.get("analytic.b"))
            rows.append(["analytic, from the joint law: a = β/(α+β), b = α/(α+β)", *ra, *rb])
        ex = a.frontier.exponents
        if ex is not None:
            ra = _with_interval(ex.a, iv.get("empirical.a"))
            rb = _with_interval(ex.b, iv.get("empirical.b"))
            rows.append(["empirical, fit through the best runs", *ra, *rb])
        if rows:
            header = [
                "N_opt ∝ C^a, D_opt ∝ C^b",
                "a",
                "std",
                "95% interval",
                "b",
                "std",
                "95% interval",
            ]
            lines += [*_table(header, rows), ""]
        lines += ["Runs best for their compute (lower than every run that cost no more):", ""]
        names = np.asarray(a.names)[np.isfinite(a.compute)]
        rows = [
            [names[i], figures.si(c), figures.si(n), figures.si(d), _g(y)]
            for i, c, n, d, y in zip(
                a.frontier.index,
                a.frontier.compute,
                a.frontier.n,
                a.frontier.d,
                a.frontier.loss,
                strict=True,
            )
        ]
        lines += _table(["run", "C (FLOPs)", "N", "D", "y"], rows) + [""]
    lines += [f"![{stem}]({stem}.png) ([SVG]({stem}.svg))" for stem in figure_stems] + [""]
    return lines


def _runs_table(records: Sequence[RunRecord], metrics: Sequence[str]) -> list[str]:
    rows = []
    for r in records:
        cells = [r.run_name, r.dataset or "–"]
        cells += [
            figures.si(v) if v else "–" for v in (r.n_params, r.interactions, r.tokens, r.compute)
        ]
        cells += [_g(r.metrics.get(m)) for m in metrics]
        rows.append(cells)
    header = ["run", "dataset", "N", "interactions", "tokens", "C (FLOPs)", *metrics]
    return _table(header, rows)


@dataclass(frozen=True)
class ReportResult:
    """What ``write_report`` produced."""

    report: Path
    figures: list[Path]
    analyses: dict[str, MetricAnalysis]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(
    records: Sequence[RunRecord],
    out_dir: str | Path,
    *,
    experiment: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    data_axis: str = "interactions",
    n_boot: int = 200,
    seed: int = 0,
    duplicates: Sequence[str] = (),
    command: str | None = None,
) -> ReportResult:
    """Fit every metric, draw the figures, write ``out_dir/report.md``.

    Args:
        records: the runs (see ``runs.load_runs``).
        out_dir: output folder (created).
        experiment: the MLflow experiment, named in the report.
        metrics: MLflow metric names to analyse.
        data_axis: 'interactions' or 'tokens' (the D of the laws).
        n_boot, seed: bootstrap resamples and seed.
        duplicates: run names that had several finished runs (listed in the report).
        command: the command line that made the report (written at the top).

    Raises:
        ReportError: unknown metric orientation or data axis (before any work is done).
    """
    for metric in metrics:
        metric_orientation(metric)
    if data_axis not in DATA_AXES:
        raise ReportError(f"data axis {data_axis!r} unknown; choose one of {', '.join(DATA_AXES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d_name = "training interactions" if data_axis == "interactions" else "training tokens processed"
    d_labels = {}
    for r in records:
        value = getattr(r, data_axis)
        if value:
            d_labels[value] = (
                f"{r.dataset} ({figures.si(value)})" if r.dataset else figures.si(value)
            )

    lines = [f"# Scaling report: {experiment}", ""]
    if command:
        lines += ["Made with:", "", f"    {command}", ""]
    lines += [
        f"{len(records)} finished runs. N = non-embedding parameters; D = {d_name}; "
        f"C = training FLOPs. Intervals: bootstrap over runs, {n_boot} resamples, seed {seed}, "
        "2.5th to 97.5th percentile.",
        "",
    ]
    if duplicates:
        lines += [
            f"Several finished runs share these names; the newest of each is used: {', '.join(duplicates)}.",
            "",
        ]
    lines += ["## Runs", "", *_runs_table(records, metrics), ""]

    written: list[Path] = []
    analyses = {}
    for metric in metrics:
        a = analyse_metric(records, metric, data_axis=data_axis, n_boot=n_boot, seed=seed)
        analyses[metric] = a
        stems = []
        if a.names:
            for axis, x, group, single in (("N", a.n, a.d, a.n_law), ("D", a.d, a.n, a.d_law)):
                labels = d_labels if axis == "N" else {v: f"N = {figures.si(v)}" for v in group}
                fig = figures.metric_vs_size(
                    x, group, a.y, axis=axis, y_label=a.fitted_label, group_labels=labels,
                    joint=a.joint, single=single,
                )  # fmt: skip
                stems.append(f"{metric}_vs_{axis}")
                written += figures.save_figure(fig, out, stems[-1])
        if a.frontier is not None:
            has_c = np.isfinite(a.compute)
            fig = figures.frontier_figure(
                a.n[has_c], a.d[has_c], a.compute[has_c], a.y[has_c], a.frontier,
                y_label=a.fitted_label, joint=a.joint, k=a.k,
            )  # fmt: skip
            stems.append(f"{metric}_frontier")
            written += figures.save_figure(fig, out, stems[-1])
        lines += _metric_section(a, d_name, stems)

    curves = [
        (r.run_name, r.n_params, getattr(r, data_axis), r.history)
        for r in records
        if r.history and r.n_params and getattr(r, data_axis)
    ]
    written += figures.save_figure(figures.loss_curves(curves, d_labels), out, "loss_curves")
    lines += [
        "## Loss curves",
        "",
        "Train (solid) and valid (dashed) loss per epoch, colour by N.",
        "",
    ]
    lines += ["![loss_curves](loss_curves.png) ([SVG](loss_curves.svg))", ""]

    report = out / "report.md"
    _atomic_write_text(report, "\n".join(lines))
    return ReportResult(report=report, figures=written, analyses=analyses)


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
    experiment: str,
    out_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    data_axis: str = "interactions",
    n_boot: int = 200,
    seed: int = 0,
    log_artifacts: bool = True,
    command: str | None = None,
) -> ReportResult:
    """Read the finished runs of ``experiment``, write the report, log it to MLflow.

    Raises:
        ReportError: bad metric or axis. ValueError: no finished runs in the experiment.
    """
    for metric in metrics:
        metric_orientation(metric)
    records, duplicates = load_runs(experiment, tracking_uri)
    result = write_report(
        records, out_dir, experiment=experiment, metrics=metrics, data_axis=data_axis,
        n_boot=n_boot, seed=seed, duplicates=duplicates, command=command,
    )  # fmt: skip
    if log_artifacts:
        log_report(experiment, [result.report, *result.figures], tracking_uri)
    return result
