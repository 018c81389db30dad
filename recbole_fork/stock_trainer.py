"""RecBole's ``Trainer`` for RecBole's stock models, with the fork's run-level additions.

Added by subclassing, RecBole's training loop untouched: the LR schedule of
``schedulers.py`` stepped after every optimizer step (an optimizer step hook), per-epoch
MLflow logging, plain-dict checkpoints that load with ``weights_only=True`` (RecBole's own
pickle its ``Config``), and the scheduler state in the checkpoint so a resumed run keeps
its LR. RecBole writes its checkpoint at the best epoch only; beside it, the state at the end
of every epoch (``<checkpoint>.last``: weights, optimizer, schedule, counters, best result,
RNG states) lets a cut run resume after its last finished epoch, as it would have gone on, and
a finished run resume without training. The fork's own models use
``recbole_fork.trainer.SeqTrainer`` instead.

Nothing is written to or read from the working directory: RecBole's scratch folder
(``checkpoint_dir``) and its TensorBoard events go to the run's private temporary folder
(``run._train_stock``), and the best model is reloaded with ``weights_only=True``. A NaN
loss and Ctrl-C end with one line saying where the last checkpoint is.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import recbole.trainer.trainer as recbole_trainer
from recbole.trainer import Trainer
from torch.utils.tensorboard import SummaryWriter

from recbole_fork import compat
from recbole_fork.checkpoint import CheckpointError, load_checkpoint, require_keys, save_checkpoint
from recbole_fork.schedulers import SchedulerSettings, build_scheduler
from recbole_fork.tracking import Tracker
from recbole_fork.trainer import (
    TrainingDivergedError,
    capture_rng,
    optimizer_changed,
    param_group_settings,
    restore_rng,
)

compat.apply()  # RecBole's numpy 2 / pandas 3 fixes, before RecBole is used

logger = logging.getLogger(__name__)
RESUME_KEYS = ("epoch", "cur_step", "best_valid_score", "state_dict", "optimizer")


def last_state_path(checkpoint_path: str | Path) -> Path:
    """Where a stock run keeps its end-of-epoch state, beside its best-epoch checkpoint."""
    path = Path(checkpoint_path)
    return path.with_name(path.name + ".last")


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
        # RecBole's Trainer opens a TensorBoard writer under ./log_tensorboard of the working
        # directory; the fork logs to MLflow, so the events go to RecBole's scratch folder.
        make_writer = recbole_trainer.get_tensorboard
        scratch = os.path.join(config["checkpoint_dir"], "log_tensorboard")
        recbole_trainer.get_tensorboard = lambda _logger: SummaryWriter(scratch)
        try:
            super().__init__(config, model)
        finally:
            recbole_trainer.get_tensorboard = make_writer
        self.scheduler_settings = scheduler or SchedulerSettings.from_mapping(config["scheduler"])
        self.saved_model_file = str(checkpoint_path)
        Path(checkpoint_path).parent.mkdir(parents=True, exist_ok=True)
        self.tracker = tracker
        self.lr_scheduler = None
        self._epoch_started = 0.0
        self._resume_state: dict | None = None
        self._resume_rng: dict | None = None
        self._stopped = False  # a resumed run that had already stopped early
        self._epoch = self.start_epoch

    def _init_scheduler(self, steps_per_epoch: int) -> None:
        total = max(1, self.epochs * steps_per_epoch)
        # Build the schedule on the fresh optimizer (peak LR = learning_rate), then restore the
        # saved states on top: the resumed run continues at the saved step's LR.
        self.lr_scheduler = build_scheduler(self.optimizer, self.scheduler_settings, total)
        if self._resume_state is not None:
            fresh = param_group_settings(self.optimizer)
            self.optimizer.load_state_dict(self._resume_state["optimizer"])
            saved = self._resume_state.get("scheduler")
            changed = optimizer_changed(self._resume_state.get("config"), self.config.to_dict())
            if saved and saved.get("total_steps", total) == total and not changed:
                self.lr_scheduler.load_state_dict(saved)
            elif saved:
                # Other epochs or optimizer settings (--allow-change): this run's schedule
                # and hyperparameters, moved on to the step reached.
                for group, settings in zip(self.optimizer.param_groups, fresh, strict=True):
                    group.update(settings)
                done = int(saved.get("last_epoch", 0))
                logger.warning(
                    f"checkpoint {self.saved_model_file}: the LR schedule is re-planned with "
                    f"this run's settings over {total} steps and goes on from step {done}"
                )
                with warnings.catch_warnings():
                    # Stepping a schedule without optimizer steps warns; here it is meant.
                    warnings.simplefilter("ignore", UserWarning)
                    for _ in range(min(done, total)):
                        self.lr_scheduler.step()
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
        generator = getattr(train_data, "generator", None)
        if self._resume_rng is not None and generator is not None:
            restore_rng(self._resume_rng, generator)

        def end_of_epoch(epoch_idx, valid_score):
            if saved:
                self._save_last(epoch_idx, generator)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        if self._stopped:  # early stopping had ended it: nothing more to train
            score, result = self.best_valid_score, self.best_valid_result
        else:
            try:
                score, result = super().fit(
                    train_data, valid_data, verbose, saved, show_progress, end_of_epoch
                )
            except KeyboardInterrupt:
                msg = (
                    f"interrupted during epoch {self._epoch}; the checkpoint "
                    f"{self._last_good()} holds the best epoch so far; continue after the last "
                    "finished epoch with the same command plus --resume"
                )
                logger.warning(msg)
                print(msg)
                raise
        if not result and valid_data is not None and Path(self.saved_model_file).is_file():
            # A resumed run that found no better epoch: RecBole's loop sets the best valid
            # result only when an epoch improves on it, so score the best checkpoint again.
            self._load_best()
            score, result = self._score_valid(valid_data, show_progress)
        return score, result

    def _load_weights(self, state: dict[str, Any]) -> None:
        """The model's weights from a checkpoint's state (``_state``)."""
        self.model.load_state_dict(state["state_dict"])
        self.model.load_other_parameter(state.get("other_parameter"))

    def _load_best(self, model_file: str | None = None) -> None:
        """The best epoch's weights, from the checkpoint RecBole's loop saved."""
        # RecBole reloads it with a plain torch.load; read it as what it is.
        path = model_file or self.saved_model_file
        self._load_weights(load_checkpoint(path, map_location=self.device))

    def _score_valid(self, valid_data, show_progress=False):
        """(score, metrics) on the valid set, logging nothing (RecBole's evaluation)."""
        return super()._valid_epoch(valid_data, show_progress)

    def _last_good(self) -> str:
        path = Path(self.saved_model_file)
        return str(path) if path.is_file() else "(none written yet)"

    def _check_nan(self, loss) -> None:
        if bool(loss.isfinite().all()):
            return
        value = float(loss.detach().sum())
        if Path(self.saved_model_file).is_file():
            hint = (
                f"last good checkpoint: {self.saved_model_file} (resume from it with a lower "
                "learning_rate or a clip_grad_norm: --resume --allow-change KEY --set KEY=...)"
            )
        else:
            hint = "no checkpoint written yet: start again with a lower learning_rate"
        raise TrainingDivergedError(f"loss is {value} at epoch {self._epoch}; {hint}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model:
            self._load_best(model_file)
        return super().evaluate(eval_data, False, None, show_progress)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._epoch = epoch_idx  # also read by the NaN and Ctrl-C messages
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

    def _save_last(self, epoch: int, generator) -> None:
        """The end-of-epoch state (after the epoch's evaluation and early-stopping count)."""
        state = self._state(epoch)
        state["best_valid_result"] = {
            k: float(v) for k, v in (self.best_valid_result or {}).items()
        }
        state["stopped"] = self.cur_step > self.stopping_step
        if generator is not None:
            state["rng"] = capture_rng(generator)
        save_checkpoint(last_state_path(self.saved_model_file), state)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        if epoch == -1 and Path(path).is_file():
            # RecBole's fit saves the current weights as epoch -1 when no epoch is left to
            # train (a resumed run): keep the best epoch's checkpoint instead.
            return
        save_checkpoint(path, self._state(epoch))
        if verbose:
            self.logger.info(f"Saving current: {path}")

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
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
            "mlflow_tracking_uri": self.tracker.uri if self.tracker else None,
        }

    def resume_checkpoint(self, resume_file):
        """Restore a checkpoint ``_save_checkpoint`` wrote.

        Raises:
            CheckpointError: missing or unreadable, lacking a key, or of another model.
        """
        ckpt = load_checkpoint(resume_file, map_location=self.device)
        require_keys(ckpt, RESUME_KEYS, resume_file, "resuming")
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise CheckpointError(
                f"checkpoint {resume_file} does not fit this run's model and data "
                f"({detail[:300]}); resume on the data it was trained on"
            ) from None
        self.saved_model_file = str(resume_file)
        self.start_epoch = ckpt["epoch"] + 1
        self.cur_step = ckpt["cur_step"]
        self.best_valid_score = ckpt["best_valid_score"]
        self.model.load_other_parameter(ckpt.get("other_parameter"))
        self._resume_state = ckpt  # optimizer and schedule are restored once fit() builds them
        last_path = last_state_path(resume_file)
        if not last_path.is_file():
            return
        last = load_checkpoint(last_path, map_location=self.device)
        if last.get("mlflow_run_id") != ckpt.get("mlflow_run_id") or last["epoch"] < ckpt["epoch"]:
            logger.warning(f"{last_path}: not this checkpoint's run; resuming from its best epoch")
            return
        # Go on after the last finished epoch, not the best one.
        self._load_weights(last)
        self.start_epoch = last["epoch"] + 1
        self.cur_step = last["cur_step"]
        self.best_valid_score = last["best_valid_score"]
        self.best_valid_result = last.get("best_valid_result") or None
        self._stopped = bool(last.get("stopped"))
        self._resume_rng = last.get("rng")
        self._resume_state = last
