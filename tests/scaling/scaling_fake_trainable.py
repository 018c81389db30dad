"""A stand-in for ``recbole_fork.run.pre_train`` in sweep tests: logs a run, trains nothing.

Named in a sweep file as ``trainable: tests.scaling.scaling_fake_trainable.pre_train`` and
``config_builder: tests.scaling.scaling_fake_trainable.build_config`` (the repository root
must be on the PYTHONPATH of the Ray workers). A ``fail_once.yaml`` beside the base config may
list run names: those trials raise on their first attempt (a marker file beside the
checkpoint remembers it) and succeed after.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from recbole_fork.tracking import Tracker


def build_config(base_config: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The base YAML with the overrides on top (a plain dict; no RecBole), plus the run names
    of ``fail_once.yaml`` beside it under ``fail_once``."""
    config = yaml.safe_load(Path(base_config).read_text(encoding="utf-8")) or {}
    config.update(overrides)
    fail_once = Path(base_config).parent / "fail_once.yaml"
    if fail_once.is_file():
        config["fail_once"] = yaml.safe_load(fail_once.read_text(encoding="utf-8")) or []
    return config


def pre_train(
    config: Mapping[str, Any],
    checkpoint_path: Path,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
) -> dict[str, float]:
    """Log one FINISHED MLflow run named ``config['run_name']`` with scaling params and metrics."""
    name = config["run_name"]
    n = 12 * config["n_layers"] * config["hidden_size"] ** 2
    d = {"tiny-a": 1000, "tiny-b": 4000}[config["dataset"]]
    loss = 2.0 + 50.0 * n**-0.3 + 80.0 * d**-0.35
    with Tracker(config["experiment"], name, tracking_uri=tracking_uri) as tracker:
        tracker.log_params({"params_non_embedding": n, "train_interactions": d, "run_name": name,
                            "dataset": config["dataset"], "epochs": config["epochs"]})  # fmt: skip
        marker = Path(checkpoint_path).parent / "failed-once"
        if name in config.get("fail_once", []) and not marker.exists():
            marker.touch()
            raise RuntimeError(f"planned failure of {name}")  # the Tracker marks the run FAILED
        for epoch in range(config["epochs"]):
            tracker.log_metrics({"train_loss": loss + 1.0 / (epoch + 1)}, step=epoch)
        tracker.log_metrics({"best_test_loss": loss, "total_flops": 6.0 * n * d * config["epochs"]})
    Path(checkpoint_path).write_bytes(b"fake")
    return {"best_test_loss": loss, "resumed": float(resume)}
