"""Runs of a scaling study read back from MLflow, with their scaling axes.

Names read (docs/DESIGN.md, "Metric and parameter names"): params ``params_non_embedding``,
``train_interactions`` (else ``dataset_interactions``), ``flops_per_token``, ``epochs``,
``dataset``, ``eval_protocol`` (else ``eval_mode``); metrics ``total_flops`` and optionally
``total_tokens``; metric histories ``train_loss`` / ``valid_loss`` per epoch.

MLflow is reached only through ``recbole_fork.tracking`` (the one module importing it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The param flops_per_token is forward FLOPs per position (DESIGN.md, backbones); training
# costs about 3 x forward (the backward pass twice the forward), and the metric total_flops
# is 3 x flops_per_token x tokens trained (recbole_fork.trainer).
TRAIN_FLOPS_PER_FORWARD = 3.0
REPORT_TAG = "recbole_fork.kind"  # tag marking the report's own run, never a data point
REPORT_KIND = "scaling_report"
HISTORY_KEYS = ("train_loss", "valid_loss")


@dataclass(frozen=True)
class RunRecord:
    """One finished training run and its scaling axes.

    Attributes:
        run_id, run_name: MLflow identity.
        n_params: non-embedding parameters N (None if not logged).
        interactions: training interactions of the dataset (None if not logged).
        tokens: training tokens processed over the run (positions that got a loss).
        compute: training FLOPs over the run.
        dataset: dataset name ('' if not logged).
        protocol: ranking protocol of the metrics, e.g. 'full' or 'sampled:10000'.
        metrics: final metric values by MLflow name (``best_test_ndcg_at_10``, ...).
        history: per-epoch curves, name -> [(epoch, value), ...] sorted by epoch.
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


def _number(value: Any) -> float | None:
    """A positive finite float from an MLflow param or metric, else None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def record_from_mlflow(
    run: Mapping[str, Any], history: Mapping[str, list[tuple[int, float]]] | None = None
) -> RunRecord:
    """Build a ``RunRecord`` from one run of ``tracking.search_runs`` (a plain dict).

    Tokens: the metric ``total_tokens`` if logged; else ``total_flops / (3 flops_per_token)``
    (training FLOPs over forward FLOPs per token, see ``TRAIN_FLOPS_PER_FORWARD``); else
    training interactions times the epochs run (the length of the ``train_loss`` history,
    else the ``epochs`` param). Compute: the metric ``total_flops``; else
    ``3 flops_per_token`` times tokens.
    """
    params: Mapping[str, str] = run.get("params", {})
    metrics = {k: float(v) for k, v in run.get("metrics", {}).items()}
    history = {k: sorted(v) for k, v in (history or {}).items()}
    interactions = _number(params.get("train_interactions")) or _number(
        params.get("dataset_interactions")
    )
    fpt = _number(params.get("flops_per_token"))
    total_flops = _number(metrics.get("total_flops"))
    tokens = _number(metrics.get("total_tokens"))
    if tokens is None and total_flops is not None and fpt is not None:
        tokens = total_flops / (TRAIN_FLOPS_PER_FORWARD * fpt)
    if tokens is None and interactions is not None:
        epochs = len(history.get("train_loss", [])) or _number(params.get("epochs"))
        tokens = interactions * epochs if epochs else None
    if total_flops is not None:
        compute = total_flops
    else:
        compute = TRAIN_FLOPS_PER_FORWARD * fpt * tokens if fpt and tokens else None
    return RunRecord(
        run_id=str(run.get("run_id", "")),
        run_name=str(run.get("run_name") or params.get("run_name") or ""),
        n_params=_number(params.get("params_non_embedding")),
        interactions=interactions,
        tokens=tokens,
        compute=compute,
        dataset=str(params.get("dataset", "")),
        protocol=str(params.get("eval_protocol") or params.get("eval_mode") or ""),
        metrics=metrics,
        history=history,
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
    experiment: str,
    tracking_uri: str | None = None,
    history_keys: Iterable[str] = HISTORY_KEYS,
) -> tuple[list[RunRecord], list[str]]:
    """Finished runs of ``experiment`` as ``RunRecord``s, one per run name, sorted by name.

    Args:
        experiment: MLflow experiment name.
        tracking_uri: MLflow tracking URI (default: ``tracking.resolve_tracking_uri``).
        history_keys: metric histories to fetch (one request per run and key).

    Returns:
        The records, and the run names that had several finished runs (the newest is used).

    Raises:
        ValueError: the experiment does not exist or holds no finished training run.
    """
    from recbole_fork import tracking

    runs = tracking.search_runs(
        experiment, tracking_uri, filter_string="attributes.status = 'FINISHED'"
    )
    runs = [r for r in runs if r.get("tags", {}).get(REPORT_TAG) != REPORT_KIND]
    if not runs:
        uri = tracking.resolve_tracking_uri(tracking_uri)
        raise ValueError(
            f"experiment {experiment!r} at {uri} has no finished runs; check --experiment and --tracking-uri"
        )
    runs, duplicates = latest_per_name(runs)
    records = []
    for run in runs:
        hist = {k: tracking.metric_history(run["run_id"], k, tracking_uri) for k in history_keys}
        records.append(record_from_mlflow(run, {k: v for k, v in hist.items() if v}))
    return sorted(records, key=lambda r: r.run_name), duplicates
