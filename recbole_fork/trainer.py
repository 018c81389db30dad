"""``SeqTrainer``: training, evaluation, checkpoints and resume for the fork's models.

One epoch is a pass over ``SeqData.train_loader``; every ``eval_step`` epochs (and after the
last) HR/NDCG/MRR at ``topk`` and the loss are computed on valid, test and a fixed sample of
train users, and a checkpoint holding everything needed to continue is written atomically.
The weights of the best validation epoch are kept and the final test uses them.

Determinism: ``recbole.utils.init_seed`` seeds python, numpy and torch; negatives are drawn
from a torch generator owned by the trainer; each evaluation phase draws from its own
generator seeded from (seed, phase) only, so an evaluation is a pure function of the
weights. Every RNG state is saved in the checkpoint, so a resumed run continues bit for bit
(on CPU; CUDA kernels may not be deterministic).

Data parallelism (``recbole_fork.distributed``, under torchrun): each rank trains on its
shard of users with ``train_batch_size / world_size`` sequences per batch, through
DistributedDataParallel; its negatives and evaluation draws come from generators seeded
with a per-rank offset (rank 0's equal the one-process ones). DDP averages the ranks'
gradients, so each rank's batch mean weighs the same. Evaluation sums per-user
metrics and counts over the shards (all-reduce), so it equals the one-process evaluation
of the same weights. Only rank 0 logs and writes the checkpoint (which holds every rank's
RNG state), the others wait for it; the checkpoint holds the bare model's state dict, so a
data-parallel run resumes in one process and the other way round.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.trainer.trainer import AbstractTrainer
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_fork.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from recbole_fork.distributed import (
    SINGLE,
    DistEnv,
    all_gather_object,
    all_reduce_sum,
    barrier,
    data_parallel,
)
from recbole_fork.evaluation import evaluate_ranking, metric_key, parse_eval_mode
from recbole_fork.hardware import check_peak_flops, compile_backbone, resolve_peak_flops
from recbole_fork.params import count_parameters
from recbole_fork.schedulers import build_scheduler

logger = logging.getLogger(__name__)

LEARNERS = ("adam", "adamw")
EVAL_PHASES = ("train", "valid", "test")
CHECKPOINT_FORMAT = "recbole_fork.seq_trainer/1"
# Offsets that give each evaluation phase its own generator stream (any distinct constants).
_PHASE_SEED = {"train": 101, "valid": 202, "test": 303}
_SAMPLING_SEED = 404
# Rank r of a data-parallel run adds r x this to every generator seed (rank 0: the
# one-process seeds); larger than the offsets above, so no two streams of a run coincide.
_RANK_SEED = 1000


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and last good checkpoint."""


def _to_tensor(value: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value).to(device, non_blocking=True)


def _as_list(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


class SeqTrainer(Trainer):
    """Trainer of a ``ForkSeqModel`` over a ``SeqData``.

    Subclasses RecBole's ``Trainer`` for its optimizer factory and hooks, but not its
    ``__init__`` (which creates log folders, TensorBoard writers and RecBole's evaluator, none
    of which the fork uses). ``fit`` takes no loaders: the data object is given here.

    Args:
        config: resolved run config.
        model: a ``ForkSeqModel`` already on ``config['device']``.
        data: the ``SeqData`` (loaders and sizes).
        checkpoint_path: where the per-epoch checkpoint is written (atomically).
        tracker: a ``recbole_fork.tracking.Tracker`` or None (no logging).
        show_progress: tqdm bar per epoch (rank 0 only).
        dist: this process's place in a data-parallel run (default: one process). With
            several processes the process group must exist (``distributed.process_group``).

    Raises:
        ValueError: unknown learner, eval mode or valid metric, bad accumulation steps, or a
            ``train_batch_size`` that the world size does not divide.
    """

    def __init__(
        self,
        config,
        model: torch.nn.Module,
        data,
        checkpoint_path: str | Path,
        tracker=None,
        show_progress: bool = True,
        dist: DistEnv | None = None,
    ) -> None:
        AbstractTrainer.__init__(self, config, model)
        self.data = data
        self.checkpoint_path = Path(checkpoint_path)
        self.tracker = tracker
        self.dist = dist or SINGLE
        self._shard = self.dist.shard()  # loader kwargs: {} for one process
        self.show_progress = show_progress and self.dist.is_main
        self.device = torch.device(config["device"]) if config["device"] else torch.device("cpu")
        self.learner = str(config["learner"]).lower()
        if self.learner not in LEARNERS:
            raise ValueError(f"unknown learner {config['learner']!r}; valid: {list(LEARNERS)}")
        self.learning_rate = float(config["learning_rate"])
        self.weight_decay = float(config["weight_decay"] or 0.0)
        self.epochs = int(config["epochs"])
        self.eval_step = max(1, int(config["eval_step"] or 1))
        self.stopping_step = int(config["stopping_step"])
        self.max_grad_norm = config["max_grad_norm"]
        self.grad_accum_steps = int(config["grad_accum_steps"] or 1)
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        self.batch_size = self.dist.local_batch_size(int(config["train_batch_size"]))
        self.eval_batch_size = int(config["eval_batch_size"])
        self.eval_mode = config["eval_mode"]
        parse_eval_mode(self.eval_mode)  # raises, listing the valid forms
        self.exclude_history = bool(config["exclude_history"])
        self.item_chunk = int(config["eval_item_chunk"])
        self.user_chunk = int(config["eval_user_chunk"])
        self.ks = _as_list(config["topk"])
        self.valid_metric = str(config["valid_metric"]).lower()
        names = [f"{m}@{k}" for k in self.ks for m in ("hr", "ndcg", "mrr")]
        if self.valid_metric not in names:
            raise ValueError(
                f"valid_metric {config['valid_metric']!r} is not computed; valid: {names}"
            )
        self.seed = int(config["seed"])
        self.use_bf16 = bool(config["bf16"]) and self.device.type == "cuda"
        self.logger = logger
        # Per device; mfu divides by it times the world size (None: mfu is not logged).
        self.peak_flops = resolve_peak_flops(config["peak_flops"], self.device, bf16=self.use_bf16)
        if config["torch_compile"]:
            compile_backbone(model, self.device)
        # The model itself stays self.model (evaluation, state dicts); training steps of a
        # data-parallel run go through the DDP wrapper, which shares its parameters.
        self._ddp = data_parallel(model, self.device) if self.dist.enabled else None

        self.optimizer = self._build_optimizer()
        n_batches = data.num_train_batches(self.batch_size, **self._shard)
        steps_per_epoch = math.ceil(n_batches / self.grad_accum_steps)
        self.total_steps = max(1, self.epochs * steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, config["scheduler"], self.total_steps)
        self.sample_generator = torch.Generator(device=self._generator_device())
        self.sample_generator.manual_seed(self.seed + _SAMPLING_SEED + _RANK_SEED * self.dist.rank)

        self.start_epoch = 0
        self.planned_epochs = self.epochs  # a resumed run: the epochs its checkpoint planned
        self.global_step = 0
        self.best_score = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_metrics: dict[str, float] = {}
        self.bad_evals = 0
        self.tokens_trained = 0
        self.final_metrics: dict[str, float] | None = None
        self.last_epoch_done = -1

    # ----- setup helpers -----------------------------------------------------------------

    def _generator_device(self) -> torch.device:
        """Negatives and sampled-evaluation candidates are drawn where the model runs."""
        return self.device

    def _build_optimizer(self, **kwargs) -> torch.optim.Optimizer:
        """Adam or AdamW over every parameter (RecBole's factory needs a few of its keys)."""
        params = kwargs.pop("params", self.model.parameters())
        cls = torch.optim.AdamW if self.learner == "adamw" else torch.optim.Adam
        betas = tuple(float(b) for b in (self.config["adam_betas"] or (0.9, 0.999)))
        return cls(params, lr=self.learning_rate, betas=betas, weight_decay=self.weight_decay)

    def _autocast(self):
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _batch_to_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # Non-blocking: from pinned memory (pin_memory on CUDA) the copy overlaps host work;
        # kernels on the same stream still wait for it.
        return {k: _to_tensor(v, self.device) for k, v in batch.items()}

    # ----- optimisation ------------------------------------------------------------------

    def _clip_gradients(self) -> float | None:
        """Clip the global gradient norm to ``max_grad_norm``; returns the norm before clipping.

        None when clipping is off.
        """
        if self.max_grad_norm is None:
            return None
        norm = clip_grad_norm_(self.model.parameters(), float(self.max_grad_norm))
        return float(norm)

    def _training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's loss; through DDP in a data-parallel run (gradients all-reduced)."""
        if self._ddp is not None:
            return self._ddp(batch, self.sample_generator)
        return self.model.training_loss(batch, self.sample_generator)

    def _grad_sync(self, sync: bool):
        """DDP's ``no_sync`` for the batches of an accumulation group before its last one.

        It must hold over forward and backward both: DDP arms the all-reduce in forward.
        """
        if self._ddp is None or sync:
            return nullcontext()
        return self._ddp.no_sync()

    def _optimizer_step(self) -> None:
        """Clip, step the optimizer and the LR schedule once, clear gradients."""
        self._clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training batches; returns loss and throughput figures.

        Raises:
            TrainingDivergedError: a non-finite loss.
        """
        self.model.train()
        n_batches = self.data.num_train_batches(self.batch_size, **self._shard)
        batches: Iterable = self.data.train_loader(self.batch_size, epoch, **self._shard)
        if self.show_progress:
            batches = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", ncols=100, leave=False)
        total_loss, n_seqs, n_tokens, n_seen = 0.0, 0, 0, 0
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, raw in enumerate(batches):
            batch = self._batch_to_device(raw)
            # Each batch's mean loss is divided by the size of its accumulation group, so a
            # group of g batches gives the mean of their losses (the last group may be short).
            group_start = (i // self.grad_accum_steps) * self.grad_accum_steps
            group = min(self.grad_accum_steps, n_batches - group_start)
            last_of_group = i + 1 == group_start + group
            with self._grad_sync(last_of_group):
                with self._autocast():
                    loss = self._training_loss(batch)
                value = float(loss.detach())
                if not math.isfinite(value):
                    # In a data-parallel run only this rank raises; torchrun then stops
                    # the others, which wait in the gradient all-reduce.
                    raise TrainingDivergedError(
                        f"loss is {value} at epoch {epoch}, batch {i}, optimizer step "
                        f"{self.global_step}; last good checkpoint: {self._last_good()} "
                        "(resume from it with a lower learning_rate or a max_grad_norm)"
                    )
                (loss / group).backward()
            total_loss += value
            n_seen += 1
            n_seqs += int(batch["item_seq"].shape[0])
            n_tokens += int((batch["item_seq"] > 0).sum())
            if last_of_group:
                self._optimizer_step()
            if self.show_progress:
                batches.set_postfix(loss=f"{value:.4f}")
        elapsed = time.perf_counter() - start
        if self.dist.enabled:  # the whole run's figures: sums over the ranks
            total_loss, n_seen, n_seqs, n_tokens = all_reduce_sum(
                [total_loss, n_seen, n_seqs, n_tokens], self.dist
            )
            n_seen, n_seqs, n_tokens = int(n_seen), int(n_seqs), int(n_tokens)
        self.tokens_trained += n_tokens
        tokens_per_s = n_tokens / elapsed if elapsed > 0 else 0.0
        metrics = {
            "train_loss": total_loss / max(n_seen, 1),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "epoch_time_s": elapsed,
            "sequences_per_s": n_seqs / elapsed if elapsed > 0 else 0.0,
            "tokens_per_s": tokens_per_s,
            # Training FLOPs ~ 3 x forward (forward + backward) per real input position
            # (padding not counted: the useful work).
            "achieved_flops_per_s": 3.0 * self.model.flops_per_token() * tokens_per_s,
        }
        if self.peak_flops is not None:
            peak = self.peak_flops * self.dist.world_size
            metrics["mfu"] = metrics["achieved_flops_per_s"] / peak
        return metrics

    def _last_good(self) -> str:
        return str(self.checkpoint_path) if self.checkpoint_path.is_file() else "none written yet"

    # ----- evaluation --------------------------------------------------------------------

    def _phase_generator(self, phase: str, rank: int = 0) -> torch.Generator:
        gen = torch.Generator(device=self._generator_device())
        return gen.manual_seed(self.seed + _PHASE_SEED[phase] + _RANK_SEED * rank)

    @torch.no_grad()
    def evaluate(self, phase: str) -> dict[str, float]:
        """Metrics and mean loss of ``phase`` (train | valid | test) with the current weights.

        ``train`` scores the data's fixed sample of train users (as many as valid users) on
        their last training item. Ranking runs in float32 (no autocast) so that bf16 ties do
        not distort ranks. In a data-parallel run each rank scores its shard of users and
        the sums are all-reduced: full-ranking metrics equal the one-process ones; the loss
        and ``sampled:N`` metrics use per-rank random draws, so they agree only on average.
        Returns ``{'hr@10': mean, ..., 'loss': mean, 'count': users}``.
        """
        sums, loss_sum, count = self.evaluation_sums(phase, **self._shard)
        if self.dist.enabled:
            # Fixed names and order on every rank (a rank may have no user to score).
            names = [f"{m}@{k}" for k in self.ks for m in ("hr", "ndcg", "mrr")]
            total = all_reduce_sum([*(sums.get(n, 0.0) for n in names), loss_sum, count], self.dist)
            sums, loss_sum, count = dict(zip(names, total)), total[-2], int(total[-1])
        out = {key: value / max(count, 1) for key, value in sums.items()}
        out["loss"] = loss_sum / max(count, 1)
        out["count"] = count
        return out

    @torch.no_grad()
    def evaluation_sums(
        self, phase: str, *, rank: int = 0, world_size: int = 1
    ) -> tuple[dict[str, float], float, int]:
        """Sums over the users of one shard: ``({'hr@10': sum, ...}, loss sum, users)``.

        The shard is the users ``u % world_size == rank`` (all of them by default); its
        draws come from the phase's generator of that rank. ``evaluate`` divides the sums
        (all-reduced over the ranks) by the count.
        """
        self.model.eval()
        gen = self._phase_generator(phase, rank)
        shard = {"rank": rank, "world_size": world_size} if world_size > 1 else {}
        sums: dict[str, float] = {}
        loss_sum, count = 0.0, 0
        for raw in self.data.eval_loader(phase, self.eval_batch_size, **shard):
            batch = self._batch_to_device(raw)
            user, loss = self.model.eval_step(batch, gen)  # [B, D], scalar
            result = evaluate_ranking(
                user.float(),
                lambda ids: self.model.item_embeddings(ids).float(),
                self.model.n_items,
                batch["target"],
                ks=self.ks,
                mode=self.eval_mode,
                hist_indptr=batch.get("hist_indptr") if self.exclude_history else None,
                hist_items=batch.get("hist_items") if self.exclude_history else None,
                item_chunk=self.item_chunk,
                user_chunk=self.user_chunk,
                generator=gen,
            )
            n = int(result.pop("count"))
            for key, value in result.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            loss_sum += float(loss) * n
            count += n
        return sums, loss_sum, count

    def _evaluate_all(self) -> dict[str, float]:
        """Metrics and losses of every phase: ``valid_loss``, ``test_loss``,
        ``train_eval_loss`` and ``{phase}_{metric}_at_{k}``.

        The train phase's evaluation loss (last position of the sampled train users) is
        ``train_eval_loss``: ``train_loss`` is the epoch's training loss, and the two must
        not share a name, or every evaluated epoch would log the wrong ``train_loss``.
        """
        metrics: dict[str, float] = {}
        for phase in EVAL_PHASES:
            result = self.evaluate(phase)
            loss_key = "train_eval_loss" if phase == "train" else f"{phase}_loss"
            metrics[loss_key] = result.pop("loss")
            result.pop("count")
            for name, value in result.items():
                metrics[metric_key(phase, name)] = value
        return metrics

    # ----- checkpoints -------------------------------------------------------------------

    def _state(self, epoch: int) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                # numpy's state tuple holds an ndarray, which weights_only loads refuse.
                "numpy": [
                    np_state[0],
                    torch.from_numpy(np_state[1].astype(np.int64)),
                    *np_state[2:],
                ],
                "python": random.getstate(),
                "sample_generator": self.sample_generator.get_state(),
            },
            "epoch": epoch,
            "global_step": self.global_step,
            # The plan the LR schedule was built for; a resume with another plan re-plans.
            "total_steps": self.total_steps,
            "planned_epochs": self.epochs,
            "world_size": self.dist.world_size,
            "tokens_trained": self.tokens_trained,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "best_metrics": dict(self.best_metrics),
            "bad_evals": self.bad_evals,
            "final_metrics": self.final_metrics,
            "config": _config_dict(self.config),
            "vocab": self.model.vocab() if hasattr(self.model, "vocab") else {},
            "mlflow_run_id": getattr(self.tracker, "run_id", None),
            "model_description": self.model.describe(),
            "model": str(self.config["model"]),
        }

    def _rank_rng(self) -> dict[str, Any]:
        """This rank's own random streams (the ones seeded with the rank offset)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {
            "torch": torch.get_rng_state(),
            "cuda": cuda,
            "sample_generator": self.sample_generator.get_state(),
        }

    def _set_rank_rng(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.sample_generator.set_state(rng["sample_generator"])

    def save(self, epoch: int) -> None:
        """Write the checkpoint for the completed ``epoch`` (atomic).

        Data-parallel: every rank calls it; rank 0 writes (with every rank's RNG streams
        under ``rank_rng``) while the others wait.
        """
        ranks_rng = all_gather_object(self._rank_rng(), self.dist) if self.dist.enabled else None
        if self.dist.is_main:
            state = self._state(epoch)
            if ranks_rng is not None:
                state["rank_rng"] = ranks_rng
            save_checkpoint(self.checkpoint_path, state)
        barrier(self.dist)
        self.last_epoch_done = epoch

    def load(self, ckpt: dict[str, Any]) -> None:
        """Restore everything ``_state`` saved, so training continues where it stopped.

        A checkpoint of another plan (other ``epochs``, or another world size, which changes
        the steps per epoch) keeps the step count and re-plans the LR schedule over this
        run's steps. Rank r > 0 of a data-parallel run takes its own streams from
        ``rank_rng`` (or keeps its fresh ones when the world size changed).

        Raises:
            CheckpointError: not a trainer checkpoint, or one of a different model.
        """
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} was not written by SeqTrainer "
                f"(format {ckpt.get('format')!r}); start without --resume"
            )
        if ckpt["model_description"] != self.model.describe():
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} holds {ckpt['model_description']}, but the "
                f"config builds {self.model.describe()}; use the run's own config to resume"
            )
        own_rng = self._rank_rng()
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        saved_steps = int(ckpt.get("total_steps", self.total_steps))
        if saved_steps == self.total_steps:
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        else:
            self._replan_schedule(saved_steps, int(ckpt["global_step"]))
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np_state = rng["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
        random.setstate(_tuples(rng["python"]))
        self.sample_generator.set_state(rng["sample_generator"])
        if self.dist.rank > 0:  # the top-level streams are rank 0's
            ranks_rng = ckpt.get("rank_rng") or []
            self._set_rank_rng(
                ranks_rng[self.dist.rank] if len(ranks_rng) == self.dist.world_size else own_rng
            )
        self.last_epoch_done = int(ckpt["epoch"])
        self.start_epoch = self.last_epoch_done + 1
        self.global_step = int(ckpt["global_step"])
        self.tokens_trained = int(ckpt["tokens_trained"])
        self.best_score = float(ckpt["best_score"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.best_state = ckpt["best_state"]
        self.best_metrics = dict(ckpt["best_metrics"])
        self.bad_evals = int(ckpt["bad_evals"])
        self.final_metrics = ckpt["final_metrics"]
        self.planned_epochs = int(ckpt.get("planned_epochs", self.epochs))

    def _replan_schedule(self, saved_steps: int, done: int) -> None:
        """Move this run's fresh LR schedule to step ``done`` (of ``self.total_steps``)."""
        logger.warning(
            "checkpoint %s planned %d optimizer steps, this run plans %d (epochs or world "
            "size changed): the LR schedule is re-planned and goes on from step %d",
            self.checkpoint_path,
            saved_steps,
            self.total_steps,
            done,
        )
        with warnings.catch_warnings():
            # Stepping a schedule with no optimizer step in between warns; here it is meant.
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(min(done, self.total_steps)):
                self.scheduler.step()

    # ----- the loop ----------------------------------------------------------------------

    def _log(self, metrics: dict[str, float], step: int | None) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step)

    def fit(self, resume: bool = False) -> dict[str, float]:  # type: ignore[override]
        """Train, evaluate, checkpoint each epoch; return the final ``best_*`` metrics.

        Args:
            resume: continue from ``checkpoint_path`` (same MLflow run; the caller passes
                the tracker built with the checkpoint's ``mlflow_run_id``).

        Raises:
            CheckpointError: ``resume`` without a usable checkpoint.
            TrainingDivergedError: NaN or infinite loss.
            KeyboardInterrupt: re-raised after saying how to resume.
        """
        if resume:
            # CPU first: RNG states must be CPU tensors; load_state_dict moves weights over.
            self.load(load_checkpoint(self.checkpoint_path, map_location="cpu"))
            logger.info("resuming %s at epoch %d", self.checkpoint_path, self.start_epoch)
            if self.final_metrics is not None:
                if self.epochs <= self.planned_epochs:
                    return dict(self.final_metrics)  # a finished run: its stored result
                logger.info(
                    "the checkpoint's run finished after %d epochs; training on to %d epochs",
                    self.start_epoch,
                    self.epochs,
                )
                self.final_metrics = None
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, self.epochs):
                metrics = self._train_epoch(epoch)
                last = epoch == self.epochs - 1
                stop = False
                if (epoch + 1) % self.eval_step == 0 or last:
                    metrics.update(self._evaluate_all())
                    stop = self._update_best(epoch, metrics)
                self._log(metrics, step=epoch)
                logger.info("epoch %d: %s", epoch, _fmt(metrics))
                self.save(epoch)
                if stop:
                    logger.info("early stop at epoch %d (best epoch %d)", epoch, self.best_epoch)
                    break
        except KeyboardInterrupt:
            done = (
                f"epoch {self.last_epoch_done}"
                if self.last_epoch_done >= 0
                else "no finished epoch"
            )
            msg = (
                f"interrupted during epoch {epoch}; the checkpoint {self._last_good()} holds "
                f"{done}; continue with the same command plus --resume"
            )
            logger.warning(msg)
            print(msg)
            raise
        return self._finish()

    def _update_best(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Keep the best weights; True when ``stopping_step`` evaluations brought nothing."""
        score = metrics[metric_key("valid", self.valid_metric)]
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_evals = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_metrics = {k: v for k, v in metrics.items() if k.startswith("valid_")}
            return False
        self.bad_evals += 1
        return self.bad_evals >= self.stopping_step

    def _finish(self) -> dict[str, float]:
        """Load the best weights, evaluate test with them, log and checkpoint the result."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        test = self.evaluate("test")
        final: dict[str, float] = {"best_epoch": self.best_epoch}
        for key, value in self.best_metrics.items():
            final[f"best_{key}"] = value
        final["best_test_loss"] = test.pop("loss")
        test.pop("count")
        for name, value in test.items():
            final[f"best_{metric_key('test', name)}"] = value
        # Training FLOPs ~ 3 x forward (forward + backward) per input position trained.
        final["total_tokens"] = float(self.tokens_trained)
        final["total_flops"] = float(3 * self.model.flops_per_token() * self.tokens_trained)
        self._log(final, step=None)
        self.final_metrics = final
        self.save(self.last_epoch_done)
        return dict(final)


def _tuples(value: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants the exact nested tuple form)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _config_dict(config) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    from recbole_fork.config import _plain

    return {k: _plain(v) for k, v in dict(config).items()}


def run_params(config, model, data, run_name: str | None) -> dict[str, Any]:
    """The params every run of a fork model logs: the flattened config, the parameter
    and FLOPs counts, the dataset's sizes and the evaluation protocol.

    ``dataset_users`` / ``dataset_items`` count real users and items: ``SeqData``'s
    ``n_users`` / ``n_items`` include the padding id 0, which is subtracted here.
    """
    kind, n = parse_eval_mode(config["eval_mode"])
    return {
        **_config_dict(config),
        **count_parameters(model).as_dict(),
        "flops_per_token": model.flops_per_token(),
        "dataset_users": data.n_users - 1,
        "dataset_items": data.n_items - 1,
        "dataset_interactions": int(data.dataset.inter_num),
        "train_interactions": data.num_train_interactions(),
        "run_name": run_name,
        "model_description": model.describe(),
        "eval_protocol": "full" if kind == "full" else f"sampled{n} (not comparable with full)",
    }


def check_settings(config) -> None:
    """Reject unknown choices before any data is loaded; each message lists the valid ones.

    Raises:
        ValueError: unknown learner, eval mode, valid metric, item encoder, loss or sampler,
            or a ``peak_flops`` that is not a positive number.
    """
    from recbole_fork.encoders import ITEM_ENCODERS
    from recbole_fork.losses import build_loss
    from recbole_fork.sampling import SAMPLERS

    if str(config["learner"]).lower() not in LEARNERS:
        raise ValueError(f"unknown learner {config['learner']!r}; valid: {list(LEARNERS)}")
    parse_eval_mode(config["eval_mode"])
    names = [f"{m}@{k}" for k in _as_list(config["topk"]) for m in ("hr", "ndcg", "mrr")]
    if str(config["valid_metric"]).lower() not in names:
        raise ValueError(f"valid_metric {config['valid_metric']!r} is not computed; valid: {names}")
    if config["item_encoder"] not in ITEM_ENCODERS:
        raise ValueError(
            f"unknown item_encoder {config['item_encoder']!r}; valid: {list(ITEM_ENCODERS)}"
        )
    if build_loss(config).needs_negatives and config["neg_sampler"] not in SAMPLERS:
        raise ValueError(f"neg_sampler={config['neg_sampler']!r} is not one of {list(SAMPLERS)}")
    check_peak_flops(config["peak_flops"])


def fit(
    config,
    checkpoint_path: str | Path,
    tracker=None,
    resume: bool = False,
    dist: DistEnv | None = None,
) -> dict[str, float]:
    """Build data and model from ``config``, train them, return the final metrics.

    Called by ``recbole_fork.run.pre_train`` for the fork's models. Logs params (flattened
    config, parameter counts, FLOPs per token, dataset sizes) on a fresh start.

    Args:
        dist: this process's place in a data-parallel run (default: one process); the
            process group must exist. Give ``tracker`` on rank 0 only.

    Raises:
        ValueError: bad config values, a dataset without valid/test users, or a
            ``train_batch_size`` that the world size does not divide.
        CheckpointError, TrainingDivergedError: see ``SeqTrainer.fit``.
    """
    from recbole.utils import init_seed

    from recbole_fork.data import build_seq_data
    from recbole_fork.models import get_model_class

    dist = dist or SINGLE
    check_settings(config)
    dist.local_batch_size(int(config["train_batch_size"]))  # raises before any data loads
    init_seed(config["seed"], config["reproducibility"])
    data = build_seq_data(config)  # raises, naming the dataset, when no user can be evaluated
    device = torch.device(config["device"]) if config["device"] else torch.device("cpu")
    if data.pin_memory and device.type != "cuda":
        data.pin_memory = False  # pinned pages only help host-to-GPU copies
    # Seed again so the weights do not depend on how much randomness loading consumed.
    init_seed(config["seed"], config["reproducibility"])
    model = get_model_class(config["model"])(config, data.dataset, item_counts=data.item_counts)
    model = model.to(device)
    if dist.enabled:
        # Same initial weights on every rank (DDP broadcasts rank 0's anyway); then each
        # rank its own dropout stream.
        torch.manual_seed(int(config["seed"]) + _RANK_SEED * dist.rank)
    trainer = SeqTrainer(
        config,
        model,
        data,
        checkpoint_path,
        tracker,
        show_progress=bool(config["show_progress"]),
        dist=dist,
    )
    if tracker is not None and not resume:
        run_name = getattr(tracker, "run_name", None) or config["run_name"]
        params = run_params(config, model, data, run_name)
        params["world_size"] = dist.world_size
        params["train_batch_size_per_rank"] = trainer.batch_size
        tracker.log_params(params)
    return trainer.fit(resume=resume)


__all__ = ["SeqTrainer", "TrainingDivergedError", "check_settings", "fit", "run_params"]
