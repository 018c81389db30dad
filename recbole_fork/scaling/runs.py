"""Runs of a scaling study read back from MLflow, with their scaling axes.

Which names mean N, D, C and so on is a ``mapping.StoreMapping``; the default is this
project's names (docs/DESIGN.md, "Metric and parameter names"): params
``params_non_embedding``, ``train_interactions`` (else ``dataset_interactions``), ``epochs``,
``train_flops_budget``, ``seed``, ``dataset``, ``eval_protocol`` (else ``eval_mode``); metrics
``total_flops`` (training FLOPs as spent), ``total_tokens``; histories ``train_loss`` and
``valid_loss`` per epoch.

MLflow is reached only through ``recbole_fork.tracking`` (the one module importing it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from recbole_fork.scaling.mapping import MappingError, StoreMapping, check_mapping, lookup

REPORT_TAG = "recbole_fork.kind"  # tag marking the report's own run, never a data point
REPORT_KIND = "scaling_report"


@dataclass(frozen=True)
class RunRecord:
    """One finished training run and its scaling axes.

    Attributes:
        run_id, run_name: MLflow identity.
        n_params: non-embedding parameters N (None if not logged).
        interactions: training interactions of the dataset (None if not logged).
        tokens: training tokens processed over the run.
        compute: training FLOPs over the run.
        dataset: dataset name ('' if not logged).
        protocol: ranking protocol of the metrics, e.g. 'full' or 'sampled:10000'.
        metrics: final metric values by MLflow name (``best_test_ndcg_at_10``, ...).
        history: per-epoch curves, name -> [(epoch, value), ...] sorted by epoch.
        epochs: epochs trained (param), None if not logged.
        budget: the planned compute budget (FLOPs) of a budgeted run, else None.
        seed: the run's seed as logged ('' if not).
        tuned: values of the tuned hyperparameters, name -> value as logged.
        group: the separate study the run belongs to (``nce_num_negatives=100``), '' if none.
        width, depth: the model's shape (None if not mapped).
        compute_estimated: ``compute`` is ``k N D epochs``, not a logged total.
    """

    run_id: str
    run_name: str
    n_params: float | None
    interactions: float | None
    tokens: float | None
    compute: float | None
    dataset: str = ""
    protocol: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    history: Mapping[str, list[tuple[int, float]]] = field(default_factory=dict)
    epochs: float | None = None
    budget: float | None = None
    seed: str = ""
    tuned: Mapping[str, str] = field(default_factory=dict)
    group: str = ""
    width: float | None = None
    depth: float | None = None
    compute_estimated: bool = False
    params: Mapping[str, str] = field(default_factory=dict, repr=False)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:  # the run name; load_runs adds the run id where names repeat
            object.__setattr__(self, "label", self.run_name or self.run_id[:8])


def _number(value: Any) -> float | None:
    """A positive finite float from an MLflow param or metric, else None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def record_from_mlflow(
    run: Mapping[str, Any],
    history: Mapping[str, list[tuple[int, float]]] | None = None,
    mapping: StoreMapping | None = None,
) -> RunRecord:
    """Build a ``RunRecord`` from one run of ``tracking.search_runs`` (a plain dict).

    Tokens: the mapped tokens if logged, else training interactions times the epochs run
    (the length of the ``train_loss`` history, else the epochs param). Compute: the mapped
    training total if logged, else ``compute_k · N · D · epochs`` when the mapping gives
    ``compute_k`` (marked as estimated), else None.
    """
    m = mapping or StoreMapping()
    params: Mapping[str, str] = run.get("params", {})
    history = {k: sorted(v) for k, v in (history or {}).items()}
    metrics = {k: float(v) for k, v in run.get("metrics", {}).items()}
    n = _number(lookup(run, m.n))
    interactions = _number(lookup(run, m.d))
    epochs = _number(lookup(run, m.epochs))
    tokens = _number(lookup(run, m.tokens))
    if tokens is None and interactions is not None:
        run_epochs = len(history.get("train_loss", [])) or epochs
        tokens = interactions * run_epochs if run_epochs else None
    compute = _number(lookup(run, m.compute))
    estimated = False
    if compute is None and m.compute_k and n and interactions and epochs:
        compute, estimated = m.compute_k * n * interactions * epochs, True
    groups = [f"{key}={params[key]}" for key in m.group_by if key in params]
    return RunRecord(
        run_id=str(run.get("run_id", "")),
        run_name=str(run.get("run_name") or params.get("run_name") or ""),
        n_params=n,
        interactions=interactions,
        tokens=tokens,
        compute=compute,
        dataset=str(lookup(run, m.dataset) or ""),
        protocol=str(lookup(run, m.protocol) or ""),
        metrics=metrics,
        history=history,
        epochs=epochs,
        budget=_number(lookup(run, m.budget)),
        seed=str(lookup(run, m.seed) or ""),
        tuned={key: str(params[key]) for key in m.tune if key in params},
        group=", ".join(groups),
        width=_number(lookup(run, m.width)),
        depth=_number(lookup(run, m.depth)),
        compute_estimated=estimated,
        params=dict(params),
    )


def latest_per_name(runs: Iterable[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[str]]:
    """Keep the first run of each name (``search_runs`` lists the newest first).

    Returns:
        The kept runs, and the names that had more than one finished run.
    """
    kept: dict[str, Mapping[str, Any]] = {}
    duplicates: list[str] = []
    for run in runs:
        name = str(run.get("run_name") or run.get("run_id"))
        if name in kept:
            if name not in duplicates:
                duplicates.append(name)
            continue
        kept[name] = run
    return list(kept.values()), duplicates


def load_runs(
    experiment: str | None,
    tracking_uri: str | None = None,
    mapping: StoreMapping | None = None,
    *,
    store_label: str | None = None,
) -> tuple[list[RunRecord], list[str]]:
    """Finished runs of ``experiment`` as ``RunRecord``s, sorted by (group, name, run id).

    Args:
        experiment: MLflow experiment name (default: the mapping's).
        tracking_uri: MLflow tracking URI (default: ``tracking.resolve_tracking_uri``).
        mapping: the store's names (default: this project's).
        store_label: how errors name the store (default: the URI).

    Returns:
        The records, and the run names that had several finished runs when the mapping keeps
        one run per name (the newest is used).

    Raises:
        MappingError: no experiment given, the experiment does not exist or holds no finished
            training run, or a mapped key is missing from the store.
    """
    from recbole_fork import tracking

    m = mapping or StoreMapping()
    experiment = experiment or m.experiment
    uri = tracking.resolve_tracking_uri(tracking_uri)
    label = store_label or uri
    if not experiment:
        raise MappingError("no experiment: give --experiment or 'experiment' in the mapping file")
    runs = tracking.search_runs(experiment, uri, filter_string="attributes.status = 'FINISHED'")
    runs = [r for r in runs if r.get("tags", {}).get(REPORT_TAG) != REPORT_KIND]
    if not runs:
        names = tracking.experiment_names(uri)
        raise MappingError(
            f"experiment {experiment!r} in {label} has no finished runs; the store's "
            f"experiments: {', '.join(names) or 'none'}"
        )
    check_mapping(m, runs, f"experiment {experiment!r} of {label}")
    duplicates: list[str] = []
    if m.one_run_per_name:
        runs, duplicates = latest_per_name(runs)
    records = []
    for run in runs:
        hist = {
            key: tracking.metric_history(run["run_id"], name, uri)
            for key, name in m.history.items()
        }
        records.append(record_from_mlflow(run, {k: v for k, v in hist.items() if v}, m))
    names = [r.run_name for r in records]
    records = [
        replace(r, label=f"{r.run_name}-{r.run_id[:8]}") if names.count(r.run_name) > 1 else r
        for r in records
    ]
    return sorted(records, key=lambda r: (r.group, r.label)), duplicates
