"""One run assembly, used by pre-training, fine-tuning and sweeps alike.

Check, seed, load data, build the model, move it; then open the tracked run and log its
params and artifacts. ``recbole_fork.run.pre_train`` and the fine-tuning recipe
(``recbole_fork.finetune``) are thin sequences of these steps, so a run is assembled in one
place only:

    settings = RunSettings.from_config(config)       # every key checked, nothing loaded yet
    built = assemble(config, settings, dist)         # seed, data, model on its device
    with open_tracked_run(settings, ...) as tracker: # MLflow run, params, artifacts
        trainer = SeqTrainer(built.model, built.data, ...)
        result = trainer.fit()

Seeding order (it fixes every random number of a run, so it never changes silently):
``init_seed`` before loading the data, again before building the model (the weights must
not depend on how much randomness loading consumed), then per-rank dropout streams in a
data-parallel run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recbole_fork.distributed import SINGLE, DistEnv
from recbole_fork.settings import ModelSpec, RunSettings

logger = logging.getLogger("recbole_fork")


@dataclass
class Built:
    """What ``assemble`` returns: the data, the model on its device, and where it runs."""

    data: Any  # SeqData
    model: torch.nn.Module  # ForkSeqModel
    device: torch.device


def seed(settings: RunSettings) -> None:
    """Seed python, numpy and torch (RecBole's ``init_seed``: also cuDNN determinism).

    With ``reproducibility`` on the CPU, torch's deterministic kernels too: some CPU backward
    kernels (the one behind WukongSeq's sliding windows among them) add their parts in
    thread order, so with two or more threads two runs of the same seed differed in the
    last bits of the item table's gradient, and then in their metrics.
    """
    from recbole.utils import init_seed

    init_seed(settings.seed, settings.training.reproducibility)
    if settings.training.reproducibility and torch.device(settings.device).type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_model(spec: ModelSpec, data) -> torch.nn.Module:
    """A fork model over ``data``'s catalog, its negatives drawn from the training counts."""
    from recbole_fork.data import catalog_from_dataset
    from recbole_fork.models import get_model_class

    fields = spec.encoder.text_fields if spec.encoder.uses_text else ()
    catalog = catalog_from_dataset(data.dataset, fields)
    return get_model_class(spec.model)(spec, catalog, item_counts=data.item_counts)


def assemble(config: Any, settings: RunSettings, dist: DistEnv | None = None) -> Built:
    """Seed, load the data, build the model and move it to its device.

    Args:
        config: the run's RecBole ``Config`` (the data loader's edge: where the files are).
        settings: ``RunSettings.from_config(config)``, already checked.
        dist: this process's place in a data-parallel run (default: one process).

    Raises:
        DataError: no usable dataset; ConfigError: settings that do not fit the data (more
            negatives than items, missing text fields); DistributedError: a batch the world
            size does not divide.
    """
    from recbole_fork.data import build_seq_data
    from recbole_fork.trainer import RANK_SEED

    dist = dist or SINGLE
    dist.local_batch_size(settings.training.train_batch_size)  # raises before any data loads
    seed(settings)
    data = build_seq_data(config, settings.data)  # names the dataset when it is unusable
    device = torch.device(settings.device)
    if data.pin_memory and device.type != "cuda":
        data.pin_memory = False  # pinned pages only help host-to-GPU copies
    seed(settings)
    model = build_model(settings.spec, data).to(device)
    if dist.enabled:
        # Same initial weights on every rank (DDP broadcasts rank 0's anyway); then each
        # rank its own dropout stream.
        torch.manual_seed(settings.seed + RANK_SEED * dist.rank)
    return Built(data=data, model=model, device=device)


def run_params(settings: RunSettings, model, data, run_name: str | None) -> dict[str, Any]:
    """The params every run of a fork model logs: the resolved config, the parameter and
    FLOPs counts, the dataset's sizes and the evaluation protocol.

    ``dataset_users`` / ``dataset_items`` count real users and items: ``SeqData``'s
    ``n_users`` / ``n_items`` include the padding id 0, which is subtracted here.
    """
    from recbole_fork.evaluation import parse_eval_mode
    from recbole_fork.params import count_parameters

    kind, n = parse_eval_mode(settings.evaluation.eval_mode)
    return {
        **settings.resolved,
        **count_parameters(model).as_dict(),
        # The old per-token count at max_seq_length, without scoring: an estimate only; the
        # FLOPs a run really spends are the metrics flops / total_flops.
        "flops_per_token_estimate": model.flops_per_token(),
        "dataset_users": data.n_users - 1,
        "dataset_items": data.n_items - 1,
        "dataset_interactions": int(data.dataset.inter_num),
        "train_interactions": data.num_train_interactions(),
        "run_name": run_name,
        "model_description": model.describe(),
        "eval_protocol": _eval_protocol(kind, n, settings.data.eval_max_users),
    }


def _eval_protocol(kind: str, n: int | None, max_users: int | None) -> str:
    """The logged protocol: ``full`` or ``sampled<N> (...)``, plus ``; users<=M`` when valid
    and test score a fixed sample of at most M users (``eval_max_users``)."""
    text = "full" if kind == "full" else f"sampled{n} (not comparable with full)"
    return text if max_users is None else f"{text}; users<={max_users}"


@contextmanager
def open_tracked_run(
    settings: RunSettings,
    *,
    script: str,
    run_name: str,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    previous_uri: str | None = None,
    tags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> Iterator[Any]:
    """The run's MLflow run (a new one, or ``run_id`` continued), with the config file and
    the resolved config as artifacts; FINISHED, FAILED or KILLED on exit.

    Experiment: the config's ``experiment``, else ``<script>-<dataset>``. ``run_id`` and
    ``previous_uri`` come from the checkpoint of a resumed run (see ``tracking.Tracker``).

    Raises:
        TrackingError: neither the tracking store nor the local fallback can be written.
    """
    from recbole_fork.config import resolve_config_path
    from recbole_fork.naming import experiment_name
    from recbole_fork.tracking import Tracker

    tracker = Tracker(
        experiment_name(settings, script),
        run_name,
        tracking_uri=tracking_uri,
        run_id=run_id,
        previous_uri=previous_uri,
        tags={
            "script": script,
            "model": settings.model,
            "dataset": settings.dataset,
            **(tags or {}),
        },
    )
    with tracker:
        if config_file is not None:
            tracker.log_artifact(resolve_config_path(config_file))
        tracker.log_dict(dict(settings.resolved), "resolved_config.json")
        yield tracker
    logger.info(f"MLflow run {tracker.run_id} ({tracker.run_name}) at {tracker.uri}")


def train(
    config: Any,
    checkpoint_path: str | Path,
    *,
    settings: RunSettings | None = None,
    tracker=None,
    resume: bool = False,
    dist: DistEnv | None = None,
) -> dict[str, float]:
    """Assemble a fork model's run and train it; the final ``best_*`` metrics.

    Logs the run's params to ``tracker`` (give it on rank 0 only), on a resume too: a
    continued MLflow run keeps the values it holds and gains only keys it lacks, and a run
    that replaces one the tracking store lost gets them all.

    Raises:
        ConfigError, DataError, DistributedError: see ``assemble``;
        CheckpointError, TrainingDivergedError: see ``SeqTrainer.fit``.
    """
    from recbole_fork.trainer import SeqTrainer

    dist = dist or SINGLE
    settings = settings or RunSettings.from_config(config)
    built = assemble(config, settings, dist)
    trainer = SeqTrainer(
        built.model,
        built.data,
        training=settings.training,
        evaluation=settings.evaluation,
        checkpoint_path=checkpoint_path,
        device=built.device,
        tracker=tracker,
        dist=dist,
        meta=checkpoint_meta(settings),
    )
    if tracker is not None:
        params = run_params(settings, built.model, built.data, getattr(tracker, "run_name", None))
        params["world_size"] = dist.world_size
        params["train_batch_size_per_rank"] = trainer.batch_size
        tracker.log_params(params)
    return trainer.fit(resume=resume)


# The final checkpoint goes into the run's artifacts up to this size; a larger one (a
# million-item ID table with its Adam state is GBs) is recorded by its path alone, so that
# the tracking store does not hold a second copy of every large model.
CHECKPOINT_ARTIFACT_MAX_BYTES = 256 * 2**20
CHECKPOINT_ARTIFACT_DIR = "checkpoint"


def log_checkpoint(tracker, checkpoint_path: str | Path) -> None:
    """Record a finished run's checkpoint in its tracked run, for ``serve.py --run RUN_ID``.

    Tags ``checkpoint_path`` (absolute) and ``checkpoint_bytes`` always; the file itself
    becomes the artifact ``checkpoint/<file name>`` (tag ``checkpoint_artifact``) when it is
    at most ``CHECKPOINT_ARTIFACT_MAX_BYTES``. Nothing is logged when no checkpoint was
    written.
    """
    path = Path(checkpoint_path).resolve()
    if not path.is_file():
        return
    size = path.stat().st_size
    tags: dict[str, Any] = {"checkpoint_path": str(path), "checkpoint_bytes": size}
    if size <= CHECKPOINT_ARTIFACT_MAX_BYTES:
        tracker.log_artifact(path, CHECKPOINT_ARTIFACT_DIR)
        tags["checkpoint_artifact"] = f"{CHECKPOINT_ARTIFACT_DIR}/{path.name}"
    tracker.set_tags(tags)


def checkpoint_meta(settings: RunSettings) -> dict[str, Any]:
    """What every checkpoint of the run records besides the trainer's state."""
    return {"config": dict(settings.resolved), "model": settings.model}


__all__ = [
    "Built",
    "assemble",
    "build_model",
    "CHECKPOINT_ARTIFACT_MAX_BYTES",
    "checkpoint_meta",
    "log_checkpoint",
    "open_tracked_run",
    "run_params",
    "seed",
    "train",
]
