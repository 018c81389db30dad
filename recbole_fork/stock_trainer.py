"""RecBole's ``Trainer`` for RecBole's stock models, with the fork's run-level additions.

Added by subclassing, RecBole's training loop untouched: the LR schedule of
``schedulers.py`` stepped after every optimizer step (an optimizer step hook), per-epoch
MLflow logging, plain-dict checkpoints that load with ``weights_only=True`` (RecBole's own
pickle its ``Config``), and the scheduler state in the checkpoint so a resumed run keeps
its LR. The fork's own models use ``recbole_fork.trainer.SeqTrainer`` instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recbole.trainer import Trainer

from recbole_fork import compat
from recbole_fork.checkpoint import load_checkpoint, save_checkpoint
from recbole_fork.schedulers import SchedulerSettings, build_scheduler
from recbole_fork.tracking import Tracker

compat.apply()  # RecBole's numpy 2 / pandas 3 fixes, before RecBole is used


class StockTrainer(Trainer):
    """Trainer for stock RecBole models: schedule, MLflow, safe checkpoints.

    Args:
        config: the run's ``ForkConfig``.
        model: a RecBole model.
        checkpoint_path: where the best model's checkpoint goes.
        tracker: the MLflow run, or None to log nothing.
        scheduler: the LR schedule's settings (default: read from ``config``).
    """

    def __init__(
        self,
        config,
        model,
        checkpoint_path: str | Path,
        tracker: Tracker | None = None,
        scheduler: SchedulerSettings | None = None,
    ):
        super().__init__(config, model)
        self.scheduler_settings = scheduler or SchedulerSettings.from_mapping(config["scheduler"])
        self.saved_model_file = str(checkpoint_path)
        Path(checkpoint_path).parent.mkdir(parents=True, exist_ok=True)
        self.tracker = tracker
        self.lr_scheduler = None
        self._epoch_started = 0.0
        self._resume_state: dict | None = None

    def _init_scheduler(self, steps_per_epoch: int) -> None:
        total = max(1, self.epochs * steps_per_epoch)
        # Build the schedule on the fresh optimizer (peak LR = learning_rate), then restore the
        # saved states on top: the resumed run continues at the saved step's LR.
        self.lr_scheduler = build_scheduler(self.optimizer, self.scheduler_settings, total)
        if self._resume_state is not None:
            self.optimizer.load_state_dict(self._resume_state["optimizer"])
            if self._resume_state.get("scheduler"):
                self.lr_scheduler.load_state_dict(self._resume_state["scheduler"])
        # RecBole's loop calls optimizer.step() itself: step the schedule right after it.
        self.optimizer.register_step_post_hook(lambda *_: self.lr_scheduler.step())

    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        self._init_scheduler(len(train_data))
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._epoch = epoch_idx
        self._epoch_started = time.time()
        lr = self.optimizer.param_groups[0]["lr"]
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        total = sum(loss) if isinstance(loss, tuple) else loss
        seconds = time.time() - self._epoch_started
        self._log({"train_loss": float(total), "lr": lr, "epoch_time_s": seconds}, epoch_idx)
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress)
        self._log({f"valid_{k}": v for k, v in result.items()}, self._epoch)
        return score, result

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "kind": "recbole_stock",
            "config": self.config.to_dict(),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "mlflow_run_id": self.tracker.run_id if self.tracker else None,
        }
        save_checkpoint(path, state)
        if verbose:
            self.logger.info(f"Saving current: {path}")

    def resume_checkpoint(self, resume_file):
        ckpt = load_checkpoint(resume_file, map_location=self.device)
        self.saved_model_file = str(resume_file)
        self.start_epoch = ckpt["epoch"] + 1
        self.cur_step = ckpt["cur_step"]
        self.best_valid_score = ckpt["best_valid_score"]
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.load_other_parameter(ckpt.get("other_parameter"))
        self._resume_state = ckpt  # optimizer and schedule are restored once fit() builds them
