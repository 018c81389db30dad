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
from recbole_fork.config import ForkConfig
from recbole_fork.distributed import DistEnv, DistributedError, process_group
from recbole_fork.naming import run_name
from recbole_fork.settings import RunSettings
from recbole_fork.tracking import metric_name

logger = logging.getLogger("recbole_fork")


def setup_logging(level: int = logging.INFO) -> None:
    """Plain console logging (RecBole's ``init_logger`` would also write ./log files)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)


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
    from recbole_fork.session import log_checkpoint, open_tracked_run, train

    dist = dist or DistEnv.from_environ()
    setup_logging(logging.INFO if dist.is_main else logging.WARNING)
    settings = RunSettings.from_config(config)  # every key checked before anything loads
    if dist.enabled:
        if not settings.is_fork_model:
            raise DistributedError(
                f"{settings.model} is a stock RecBole model; torchrun data parallelism "
                "covers the fork's models only: run it as one process"
            )
        dist.local_batch_size(settings.training.train_batch_size)
    run_id = resume_run_id(checkpoint_path, resume)
    with process_group(dist, settings.device):
        if not dist.is_main:  # trains and evaluates its shard; logs nothing, writes nothing
            return train(config, checkpoint_path, settings=settings, resume=resume, dist=dist)
        with open_tracked_run(
            settings,
            script=script,
            run_name=run_name(settings),
            tracking_uri=tracking_uri,
            run_id=run_id,
            config_file=config_file,
        ) as tracker:
            if settings.is_fork_model:
                result = train(
                    config,
                    checkpoint_path,
                    settings=settings,
                    tracker=tracker,
                    resume=resume,
                    dist=dist,
                )
                log_checkpoint(tracker, checkpoint_path)  # for serve.py --run RUN_ID
            else:
                result = _train_stock(config, settings, checkpoint_path, tracker, resume)
            tracker.log_dict(result, "final_metrics.json")
        return result


def _train_stock(
    config: ForkConfig, settings: RunSettings, checkpoint_path: str | Path, tracker, resume: bool
) -> dict[str, Any]:
    """RecBole's own data pipeline and model, through ``StockTrainer`` (the RecBole edge:
    RecBole's model and trainer read its ``Config`` themselves)."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_fork.models import get_model_class
    from recbole_fork.params import count_parameters

    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model_class(config["model"])(config, train_data._dataset).to(config["device"])
    counts = count_parameters(model)
    tracker.log_params(
        {
            **settings.resolved,
            **counts.as_dict(),
            "dataset_users": dataset.user_num - 1,
            "dataset_items": dataset.item_num - 1,
            "dataset_interactions": dataset.inter_num,
            "run_name": tracker.run_name,
        }
    )
    logger.info(f"{config['model']}: {counts}")
    trainer = _stock_trainer(config, settings, model, dataset, checkpoint_path, tracker)
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


def _stock_trainer(config, settings, model, dataset, checkpoint_path, tracker):
    """The stock model's trainer: scored by the fork's evaluator (``stock_evaluator: fork``,
    the default: same split, candidates and history exclusion as the fork's models) or by
    RecBole's own; logs the protocol (``eval_protocol``, ``stock_evaluator``)."""
    from recbole_fork.settings import ConfigError
    from recbole_fork.stock_eval import ForkEvalStockTrainer, StockEvaluator, eval_protocol
    from recbole_fork.stock_trainer import StockTrainer

    evaluation = settings.evaluation
    if settings.data.split.type != "leave_one_out":
        # RecBole trains its stock models on its own leave-one-out split (eval_args).
        raise ConfigError(
            f"split type {settings.data.split.type!r} applies to the fork's models; "
            f"{settings.model} trains on RecBole's leave-one-out split"
        )
    schedule = settings.training.scheduler
    params = {"eval_protocol": eval_protocol(evaluation, evaluation.stock_evaluator)}
    if evaluation.stock_evaluator == "recbole":
        trainer = StockTrainer(config, model, checkpoint_path, tracker, scheduler=schedule)
    else:
        evaluator = StockEvaluator(
            config,
            dataset,
            evaluation,
            settings.data,
            seed=settings.seed,
            device=config["device"],
        )
        params["eval_split_differs_users"] = evaluator.split_differs
        trainer = ForkEvalStockTrainer(
            config, model, checkpoint_path, tracker, scheduler=schedule, evaluator=evaluator
        )
    tracker.log_params(params)
    return trainer
