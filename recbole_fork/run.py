"""Entry points that the scripts and sweeps call: one function, one result dict.

``pre_train`` trains the configured model (a fork model through ``recbole_fork.trainer``,
a stock RecBole model through ``StockTrainer``), logs everything to MLflow and returns the
final metrics. Under torchrun it trains the fork's models data-parallel
(``recbole_fork.distributed``): rank 0 logs to MLflow and writes the checkpoint, the other
ranks log only warnings to the console.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from recbole_fork.checkpoint import CheckpointError, load_checkpoint
from recbole_fork.config import ForkConfig, resolve_config_path
from recbole_fork.distributed import DistEnv, DistributedError, process_group
from recbole_fork.models import get_model_class, is_fork_model
from recbole_fork.params import count_parameters
from recbole_fork.tracking import Tracker, metric_name

logger = logging.getLogger("recbole_fork")


def setup_logging(level: int = logging.INFO) -> None:
    """Plain console logging (RecBole's ``init_logger`` would also write ./log files)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)


def experiment_name(config: ForkConfig, script: str = "pre_train") -> str:
    """One experiment per script and dataset: ``pre_train-amazon-1M`` (or the config's)."""
    return config["experiment"] or f"{script}-{config['dataset']}"


def default_run_name(config: ForkConfig) -> str:
    """A run name from the hyperparameters: ``sasrecx-d64-l2-text-amazon-1M-s42``.

    The same string names the MLflow run, the checkpoint folder and a sweep trial.
    """
    if config["run_name"]:
        return str(config["run_name"])
    parts = [str(config["model"]).lower()]
    if not is_fork_model(config["model"]):
        parts.insert(0, "recbole")
    if config["hidden_size"] is not None:
        parts.append(f"d{config['hidden_size']}")
    if config["n_layers"] is not None:
        parts.append(f"l{config['n_layers']}")
    if config["item_encoder"] and config["item_encoder"] != "id":
        parts.append(str(config["item_encoder"]).replace("+", ""))
    parts += [str(config["dataset"]), f"s{config['seed']}"]
    return "-".join(parts)


def resume_run_id(checkpoint_path: str | Path, resume: bool) -> str | None:
    """The MLflow run id stored in the checkpoint we resume from (None for a new run).

    Raises:
        CheckpointError: ``resume`` asked but the checkpoint is missing or unreadable.
    """
    if not resume:
        return None
    return load_checkpoint(checkpoint_path).get("mlflow_run_id")


def pre_train(
    config: ForkConfig,
    checkpoint_path: str | Path,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    config_file: str | Path | None = None,
    script: str = "pre_train",
    dist: DistEnv | None = None,
) -> dict[str, Any]:
    """Train ``config['model']`` on ``config['dataset']``, tracked in MLflow.

    Args:
        config: from ``recbole_fork.config.build_config``.
        checkpoint_path: the checkpoint to write (and to resume from with ``resume``).
        resume: continue a killed run from its checkpoint, in the same MLflow run.
        tracking_uri: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI`` or sqlite).
        config_file: the config file, stored as an artifact of the run.
        script: names the experiment (``pre_train-<dataset>``).
        dist: this process's place in a data-parallel run; default: torchrun's variables
            (``DistEnv.from_environ``), one process without them. Every rank returns the
            same result; only rank 0 logs it. On CUDA, build each rank's config with its own
            ``gpu_id`` (``distributed.rank_gpu_id``; the command line does so).

    Returns:
        The final metrics (best valid epoch's valid and test metrics, parameter counts).

    Raises:
        CheckpointError: ``resume`` without a readable checkpoint (on any rank: for
            multi-node runs the checkpoint must be on storage every node reads).
        DistributedError: a stock RecBole model under torchrun, or a ``train_batch_size``
            that the world size does not divide.
    """
    dist = dist or DistEnv.from_environ()
    setup_logging(logging.INFO if dist.is_main else logging.WARNING)
    if dist.enabled:
        if not is_fork_model(config["model"]):
            raise DistributedError(
                f"{config['model']} is a stock RecBole model; torchrun data parallelism "
                "covers the fork's models only: run it as one process"
            )
        dist.local_batch_size(int(config["train_batch_size"]))
    run_id = resume_run_id(checkpoint_path, resume)
    with process_group(dist, config["device"]):
        if not dist.is_main:
            from recbole_fork.trainer import fit

            # Trains and evaluates its shard; logs nothing, writes nothing.
            return fit(config, checkpoint_path, None, resume, dist=dist)
        return _pre_train_tracked(
            config, checkpoint_path, resume, tracking_uri, config_file, script, run_id, dist
        )


def _pre_train_tracked(
    config: ForkConfig,
    checkpoint_path: str | Path,
    resume: bool,
    tracking_uri: str | None,
    config_file: str | Path | None,
    script: str,
    run_id: str | None,
    dist: DistEnv,
) -> dict[str, Any]:
    """``pre_train`` of the one process that logs (rank 0): MLflow run, training, result."""
    tracker = Tracker(
        experiment_name(config, script),
        default_run_name(config),
        tracking_uri=tracking_uri,
        run_id=run_id,
        tags={"script": script, "model": str(config["model"]), "dataset": str(config["dataset"])},
    )
    with tracker:
        if config_file is not None:
            tracker.log_artifact(resolve_config_path(config_file))
        tracker.log_dict(config.to_dict(), "resolved_config.json")
        if is_fork_model(config["model"]):
            from recbole_fork.trainer import fit

            result = fit(config, checkpoint_path, tracker, resume, dist=dist)
        else:
            result = _train_stock(config, checkpoint_path, tracker, resume)
        tracker.log_dict(result, "final_metrics.json")
    logger.info(f"MLflow run {tracker.run_id} ({tracker.run_name}) at {tracker.uri}")
    return result


def _train_stock(
    config: ForkConfig, checkpoint_path: str | Path, tracker: Tracker, resume: bool
) -> dict[str, Any]:
    """RecBole's own data pipeline and model, through ``StockTrainer``."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_fork.stock_trainer import StockTrainer

    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model_class(config["model"])(config, train_data._dataset).to(config["device"])
    counts = count_parameters(model)
    tracker.log_params(
        {
            **config.to_dict(),
            **counts.as_dict(),
            "dataset_users": dataset.user_num - 1,
            "dataset_items": dataset.item_num - 1,
            "dataset_interactions": dataset.inter_num,
            "run_name": tracker.run_name,
        }
    )
    logger.info(f"{config['model']}: {counts}")
    trainer = StockTrainer(config, model, checkpoint_path, tracker)
    if resume:
        if not Path(checkpoint_path).is_file():
            raise CheckpointError(f"checkpoint {checkpoint_path} not found; nothing to resume")
        trainer.resume_checkpoint(checkpoint_path)
    best_score, best_valid = trainer.fit(
        train_data, valid_data, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=True, show_progress=config["show_progress"]
    )
    result: dict[str, Any] = {
        metric_name(f"best_valid_{k}"): float(v) for k, v in (best_valid or {}).items()
    }
    result.update({metric_name(f"best_test_{k}"): float(v) for k, v in test_result.items()})
    result.update(counts.as_dict())
    tracker.log_metrics({k: v for k, v in result.items()})
    return result
