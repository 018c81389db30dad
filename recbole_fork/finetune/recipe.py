"""The fine-tuning recipe: ``setup`` (every check, data, model, transfer, stages, EWC, the
tracked run), ``train`` and ``cleanup``, on the same run assembly as pre-training
(``recbole_fork.session``).

``fine_tune(config, checkpoint_path, pretrained=...)`` is the library entry that
``scripts/fine_tune.py`` calls, the counterpart of ``recbole_fork.run.pre_train``. Every
check (checkpoint, datasets, model, sizes, strategy) runs before the MLflow run is opened
and before any training.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from recbole_fork.checkpoint import check_checkpoint_path, same_file
from recbole_fork.finetune.config import check_dataset, read_pretrained
from recbole_fork.finetune.ewc import EWCTrainer, build_ewc
from recbole_fork.finetune.settings import STRATEGIES, FineTuneError
from recbole_fork.finetune.stages import StagedTrainer, StageHook, plan_stages
from recbole_fork.finetune.transfer import transfer_weights
from recbole_fork.settings import ConfigError, RunSettings, check_choice

logger = logging.getLogger(__name__)


class FineTuneRecipe:
    """One fine-tuning run: ``setup(config)``, ``train()``, ``cleanup()``.

    Args:
        checkpoint_path: the fine-tuned checkpoint to write.
        pretrained: the pre-trained checkpoint; needed by every strategy but
            ``from_scratch`` (which ignores its weights).
        strategy: a name of ``STRATEGIES``; None = the config's ``fine_tune_strategy``.
        pretrain_dataset: the pre-training dataset (EWC's Fisher; logged); None = the
            checkpoint's own ``dataset``.
        tracking_uri: MLflow tracking URI (see ``recbole_fork.tracking``).
        config_file: stored as an artifact of the run.
        stage_hook: see ``StagedTrainer``.
    """

    def __init__(
        self,
        checkpoint_path: str | Path,
        *,
        pretrained: str | Path | None = None,
        strategy: str | None = None,
        pretrain_dataset: str | None = None,
        tracking_uri: str | None = None,
        config_file: str | Path | None = None,
        stage_hook: StageHook | None = None,
    ) -> None:
        self.checkpoint_path = checkpoint_path
        self.pretrained = pretrained
        self.strategy = strategy
        self.pretrain_dataset = pretrain_dataset
        self.tracking_uri = tracking_uri
        self.config_file = config_file
        self.stage_hook = stage_hook
        self._run = None  # the open tracked run's context manager
        self.tracker = None
        self.trainer: StagedTrainer | None = None
        self.transfer_metrics: dict[str, float] = {}

    def setup(self, config: Any) -> None:
        """Check everything, build data and model, load the weights, plan the stages, fit
        EWC's Fisher, open the tracked run and build the trainer.

        Raises:
            FineTuneError: missing checkpoint argument, missing dataset (the datasets found
                are listed), a stock RecBole model, too few epochs for the stages, the
                output the pre-trained checkpoint itself.
            CheckpointError: missing or foreign checkpoint; an output that cannot be written.
            ConfigError: the checkpoint holds another model than the config.
            TransferError: a checkpoint whose sizes do not fit the config.
        """
        from recbole_fork.models import is_fork_model
        from recbole_fork.naming import run_name
        from recbole_fork.session import assemble, checkpoint_meta, open_tracked_run, run_params

        # The checkpoint is checked against the config's model before the model's own keys
        # are read, so a config of another model gets this message, not a missing key.
        model = str(config["model"])
        if not is_fork_model(model):
            raise FineTuneError(f"fine-tuning supports the fork's models, not RecBole's {model!r}")
        check_checkpoint_path(self.checkpoint_path)
        if self.pretrained is not None and same_file(self.checkpoint_path, self.pretrained):
            raise FineTuneError(
                f"the fine-tuned checkpoint {self.checkpoint_path} is the pre-trained one it "
                "starts from; write it to another file"
            )
        strategy = self.strategy or str(config["fine_tune_strategy"])
        check_choice("fine_tune_strategy", strategy, STRATEGIES)
        ckpt = None
        if strategy != "from_scratch":
            if self.pretrained is None:
                raise FineTuneError(
                    f"strategy {strategy!r} starts from a pre-trained checkpoint: pass -i CHECKPOINT"
                )
            ckpt = read_pretrained(self.pretrained)
            if ckpt.get("model") != model:
                raise ConfigError(
                    f"checkpoint {self.pretrained} holds a {ckpt.get('model')} "
                    f"({ckpt.get('model_description')}), but the config builds "
                    f"{model}; fine-tune with the checkpoint's model"
                )
        settings = RunSettings.from_config(config)  # every other key checked here
        check_dataset(config)
        pre_name = self.pretrain_dataset or (str(ckpt["config"].get("dataset")) if ckpt else None)
        if strategy == "ewc":
            check_dataset(config, pre_name)

        built = assemble(config, settings)
        report = None
        if ckpt is not None:
            report = transfer_weights(
                built.model, ckpt, dataset=settings.dataset, where=self.pretrained
            )
        stages = plan_stages(
            built.model,
            strategy,
            epochs=settings.training.epochs,
            epochs_per_stage=settings.finetune.progressive_epochs_per_stage,
            loaded=report.loaded if report else (),
        )
        ewc = None
        if strategy == "ewc":
            ewc = build_ewc(
                config, settings, ckpt, pre_name, built.model, report.loaded, str(self.pretrained)
            )
        info = {
            "strategy": strategy,
            "pretrained_checkpoint": str(self.pretrained) if ckpt is not None else None,
            "pretrain_dataset": pre_name,
        }

        self._run = open_tracked_run(
            settings,
            script="fine_tune",
            run_name=run_name(settings, strategy=strategy),
            tracking_uri=self.tracking_uri,
            tags={"strategy": strategy, "pretrain_dataset": str(pre_name)},
            config_file=self.config_file,
        )
        self.tracker = tracker = self._run.__enter__()
        params = run_params(settings, built.model, built.data, tracker.run_name)
        params.update({f"fine_tune.{k}": v for k, v in info.items()})
        if report is not None:
            self.transfer_metrics = report.metrics()
            params.update(self.transfer_metrics)
            params["transfer_id_rows"] = report.id_rows
            params["transfer_id_init_std"] = report.id_init_std
            tracker.log_dict(report.as_dict(), "transfer.json")
            tracker.log_metrics(self.transfer_metrics)
        tracker.log_params(params)
        trainer_cls, extra = (EWCTrainer, {"ewc": ewc}) if ewc is not None else (StagedTrainer, {})
        self.trainer = trainer_cls(
            built.model,
            built.data,
            training=settings.training,
            evaluation=settings.evaluation,
            checkpoint_path=self.checkpoint_path,
            device=built.device,
            tracker=tracker,
            meta=checkpoint_meta(settings),
            stages=stages,
            stage_hook=self.stage_hook,
            info=info,
            **extra,
        )

    def train(self) -> dict[str, Any]:
        """Train to the end; the best valid epoch's metrics plus ``transfer_*``; the final
        checkpoint is recorded in the tracked run (``session.log_checkpoint``)."""
        from recbole_fork.session import log_checkpoint

        result: dict[str, Any] = dict(self.trainer.fit())
        result.update(self.transfer_metrics)
        self.tracker.log_dict(result, "final_metrics.json")
        log_checkpoint(self.tracker, self.checkpoint_path)
        return result

    def cleanup(self, error: BaseException | None = None) -> None:
        """Close the tracked run: FINISHED, or FAILED / KILLED after ``error``."""
        if self._run is None:
            return
        run, self._run = self._run, None
        if error is None:
            run.__exit__(None, None, None)
        else:
            run.__exit__(type(error), error, error.__traceback__)


def fine_tune(
    config: Any,
    checkpoint_path: str | Path,
    *,
    pretrained: str | Path | None = None,
    strategy: str | None = None,
    pretrain_dataset: str | None = None,
    tracking_uri: str | None = None,
    config_file: str | Path | None = None,
    stage_hook: StageHook | None = None,
) -> dict[str, Any]:
    """Fine-tune on the config's dataset from ``pretrained``, tracked in MLflow.

    The MLflow experiment is ``fine_tune-<dataset>``; the run name adds the strategy
    (``recbole_fork.naming.run_name``). Arguments as ``FineTuneRecipe``; ``config`` from
    ``fine_tune_config`` (architecture keys equal to the checkpoint's).

    Returns:
        The final metrics (best valid epoch's valid and test metrics), plus ``transfer_*``.
    """
    from recbole_fork.run import setup_logging

    setup_logging()
    recipe = FineTuneRecipe(
        checkpoint_path,
        pretrained=pretrained,
        strategy=strategy,
        pretrain_dataset=pretrain_dataset,
        tracking_uri=tracking_uri,
        config_file=config_file,
        stage_hook=stage_hook,
    )
    try:
        recipe.setup(config)
        result = recipe.train()
    except BaseException:
        recipe.cleanup(sys.exc_info()[1])
        raise
    recipe.cleanup()
    return result


__all__ = ["FineTuneRecipe", "fine_tune"]
