"""Entry points that the scripts and sweeps call: one function, one result dict.

``pre_train`` trains the configured model (a fork model through ``recbole_fork.trainer``,
a stock RecBole model through ``StockTrainer``), logs everything to MLflow and returns the
final metrics. Under torchrun it trains the fork's models data-parallel
(``recbole_fork.distributed``): rank 0 logs to MLflow and writes the checkpoint, the other
ranks log only warnings to the console.

Before anything loads: every setting (``RunSettings``), the checkpoint path, the data path,
and for ``resume`` the checkpoint's resolved config against this run's
(``checkpoint.check_resume``: a change that alters training is refused unless named in
``allow_changes``, and then recorded in the MLflow run).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recbole_fork.checkpoint import (
    CheckpointError,
    check_checkpoint_path,
    check_resume,
    load_checkpoint,
)
from recbole_fork.config import PICKLE_KEYS, ForkConfig
from recbole_fork.distributed import DistEnv, DistributedError, process_group
from recbole_fork.naming import run_name
from recbole_fork.settings import RunSettings, check_range, coerce
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


@dataclass(frozen=True)
class Resumed:
    """What a resumed run takes from its checkpoint before anything loads.

    Attributes:
        run_id, tracking_uri: the MLflow run the checkpoint was logged to, and where.
        from_epoch: the first epoch this run trains.
        changes: keys changed deliberately (``allow_changes``): ``{key: (saved, now)}``.
    """

    run_id: str | None = None
    tracking_uri: str | None = None
    from_epoch: int = 0
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def read_resume(
    checkpoint_path: str | Path, settings: RunSettings, allow_changes: Iterable[str] = ()
) -> Resumed:
    """Check a checkpoint to resume against this run's settings, before anything loads.

    Raises:
        CheckpointError: missing or unreadable checkpoint, one of another kind, or one whose
            resolved config differs from this run's in a key not in ``allow_changes``
            (see ``checkpoint.check_resume``).
    """
    ckpt = load_checkpoint(checkpoint_path)
    changes = check_resume(ckpt, settings.resolved, checkpoint_path, allow_changes)
    if settings.is_fork_model:
        done = ckpt.get("state", {}).get("epoch_done", -1)
    else:
        done = ckpt.get("epoch", -1)
    return Resumed(
        run_id=ckpt.get("mlflow_run_id"),
        tracking_uri=ckpt.get("mlflow_tracking_uri"),
        from_epoch=int(done) + 1,
        changes=changes,
    )


def record_changes(tracker, resumed: Resumed) -> None:
    """Record a resumed run's deliberate config changes in its MLflow run: a tag
    ``resume_change.<key>`` each (``old -> new from epoch N``) and an artifact
    ``resume_changes/from_epoch_<N>.json``. The run's params keep the values it started
    with (MLflow never changes a param)."""
    if not resumed.changes:
        return
    n = resumed.from_epoch
    for key, (old, new) in resumed.changes.items():
        logger.warning(f"resuming with {key} changed: {old!r} -> {new!r} from epoch {n}")
    tracker.set_tags(
        {
            f"resume_change.{key}": f"{old!r} -> {new!r} from epoch {n}"[:5000]
            for key, (old, new) in resumed.changes.items()
        }
    )
    tracker.log_dict(
        {
            "from_epoch": n,
            "changes": {k: {"checkpoint": o, "now": v} for k, (o, v) in resumed.changes.items()},
        },
        f"resume_changes/from_epoch_{n}.json",
    )


def check_stock_settings(config: ForkConfig) -> None:
    """The keys a stock RecBole model reads that no settings slice checks.

    Raises:
        ConfigError: ``eval_batch_size`` that is not a positive integer.
    """
    check_range("eval_batch_size", coerce("eval_batch_size", config["eval_batch_size"], int), low=1)


def pre_train(
    config: ForkConfig,
    checkpoint_path: str | Path,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    config_file: str | Path | None = None,
    script: str = "pre_train",
    dist: DistEnv | None = None,
    allow_changes: Iterable[str] = (),
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
        allow_changes: with ``resume``, config keys this run may change from the
            checkpoint's (``--allow-change``); recorded in the MLflow run.

    Returns:
        The final metrics (best valid epoch's valid and test metrics, parameter counts).

    Raises:
        ConfigError: a bad setting.
        CheckpointError: ``checkpoint_path`` cannot be written; ``resume`` without a readable
            checkpoint (on any rank: for multi-node runs the checkpoint must be on storage
            every node reads), or with a config that changes a key not allowed.
        DataError: no such data path or dataset, or an unreadable atomic file.
        DistributedError: a stock RecBole model under torchrun, or a ``train_batch_size``
            that the world size does not divide.
        TrackingError: neither the tracking store nor the local fallback can be written.
        TrainingDivergedError: the loss became NaN or infinite.
    """
    from recbole_fork.data.seq_data import inter_file
    from recbole_fork.session import log_checkpoint, open_tracked_run, train

    dist = dist or DistEnv.from_environ()
    setup_logging(logging.INFO if dist.is_main else logging.WARNING)
    settings = RunSettings.from_config(config)  # every key checked before anything loads
    if not settings.is_fork_model:
        check_stock_settings(config)
    check_checkpoint_path(checkpoint_path)
    inter_file(config)  # the data path wins over any copy RecBole bundles, and must exist
    if dist.enabled:
        if not settings.is_fork_model:
            raise DistributedError(
                f"{settings.model} is a stock RecBole model; torchrun data parallelism "
                "covers the fork's models only: run it as one process"
            )
        dist.local_batch_size(settings.training.train_batch_size)
    resumed = read_resume(checkpoint_path, settings, allow_changes) if resume else None
    with process_group(dist, settings.device):
        if not dist.is_main:  # trains and evaluates its shard; logs nothing, writes nothing
            return train(
                config, checkpoint_path, settings=settings, resume=resumed is not None, dist=dist
            )
        with open_tracked_run(
            settings,
            script=script,
            run_name=run_name(settings),
            tracking_uri=tracking_uri,
            run_id=resumed.run_id if resumed else None,
            previous_uri=resumed.tracking_uri if resumed else None,
            config_file=config_file,
        ) as tracker:
            if resumed is not None:
                record_changes(tracker, resumed)
            if settings.is_fork_model:
                result = train(
                    config,
                    checkpoint_path,
                    settings=settings,
                    tracker=tracker,
                    resume=resumed is not None,
                    dist=dist,
                )
                log_checkpoint(tracker, checkpoint_path)  # for serve.py --run RUN_ID
            else:
                result = _train_stock(
                    config, settings, checkpoint_path, tracker, resumed is not None
                )
            tracker.log_dict(result, "final_metrics.json")
        return result


def _train_stock(
    config: ForkConfig, settings: RunSettings, checkpoint_path: str | Path, tracker, resume: bool
) -> dict[str, Any]:
    """RecBole's own data pipeline and model (the RecBole edge: RecBole's model and trainer
    read its ``Config`` themselves), scored by the fork's evaluator unless
    ``stock_evaluator: recbole``.

    RecBole gets a private, empty scratch folder as ``checkpoint_dir``, removed afterwards:
    it looks for pickled datasets and dataloaders there (``<dataset>-*.pth``) and would
    unpickle, that is run, whatever file it found; ``PICKLE_KEYS`` stay off.
    """
    with tempfile.TemporaryDirectory(prefix="recbole-scratch-") as scratch:
        config["checkpoint_dir"] = scratch
        for key, off in PICKLE_KEYS.items():
            config[key] = off
        return _train_stock_in(config, settings, checkpoint_path, tracker, resume)


def _train_stock_in(
    config: ForkConfig, settings: RunSettings, checkpoint_path: str | Path, tracker, resume: bool
) -> dict[str, Any]:
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_fork.data.dataset import atomic_file_errors
    from recbole_fork.data.seq_data import DataError
    from recbole_fork.models import get_model_class
    from recbole_fork.params import count_parameters
    from recbole_fork.stock_trainer import last_state_path

    init_seed(config["seed"], config["reproducibility"])
    with atomic_file_errors(config):
        dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    if not (len(valid_data) and len(test_data)):
        raise DataError(
            f"dataset {settings.dataset!r}: no user has the 3 interactions needed for a "
            "valid and a test item; nothing to evaluate"
        )
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
    else:  # a new run here: an earlier run's end-of-epoch state must not be resumed later
        last_state_path(checkpoint_path).unlink(missing_ok=True)
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
