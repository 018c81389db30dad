"""``SeqTrainer``: training, evaluation, checkpoints and resume for the fork's models.

One epoch is a pass over ``SeqData.train_loader``; every ``eval_step`` epochs (and after the
last) HR/NDCG/MRR at ``topk`` and the loss are computed on valid, test and a fixed sample of
train users, and a checkpoint holding everything needed to continue is written atomically.
The weights of the best validation epoch are kept and the final test uses them.

Read top to bottom: the training slice (``TrainingSettings``), the run's progress
(``TrainState``: one dataclass of counters, best state and schedule plan), RNG capture and
restore, then the trainer (setup, optimisation, evaluation, checkpoints, the loop). The
checkpoint is that state plus model, optimizer, scheduler and RNG states.

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

Subclasses (the fine-tuning recipe) change behaviour through five hooks, nothing else:
``on_epoch_start`` (freeze stages), ``batch_loss`` (add a penalty), ``epoch_extras`` (more
per-epoch metrics), ``on_finish`` and ``checkpoint_extra`` (what the checkpoint also records).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_fork.checkpoint import CheckpointError, load_checkpoint, require_keys, save_checkpoint
from recbole_fork.distributed import (
    SINGLE,
    DistEnv,
    all_gather_object,
    all_reduce_sum,
    barrier,
    data_parallel,
)
from recbole_fork.errors import UserError
from recbole_fork.evaluation import EvalSettings, evaluate_ranking, metric_key
from recbole_fork.flops import TRAIN_FLOPS_MULTIPLIER, FlopCount, estimate_step_flops
from recbole_fork.hardware import compile_backbone, resolve_peak_flops
from recbole_fork.schedulers import SchedulerSettings, build_scheduler
from recbole_fork.settings import ConfigError, Settings, check_choice, check_range

logger = logging.getLogger(__name__)

LEARNERS = ("adam", "adamw")
EVAL_PHASES = ("train", "valid", "test")
CHECKPOINT_FORMAT = "recbole_fork.seq_trainer/2"
# Checkpoints of the first format hold the same weights, config and vocabulary under the same
# keys (only the trainer's counters moved into `state`): fine-tuning reads their weights.
WEIGHT_FORMATS = ("recbole_fork.seq_trainer/1", CHECKPOINT_FORMAT)
# Offsets that give each evaluation phase its own generator stream (any distinct constants).
_PHASE_SEED = {"train": 101, "valid": 202, "test": 303}
_SAMPLING_SEED = 404
# Rank r of a data-parallel run adds r x this to every generator seed (rank 0: the
# one-process seeds); larger than the offsets above, so no two streams of a run coincide.
RANK_SEED = 1000
# Config keys the optimizer's hyperparameters and the LR schedule are built from. A resume that
# changes one (``--allow-change``) re-plans the schedule with this run's values, since the
# saved optimizer and scheduler states would otherwise bring the old ones back.
OPTIMIZER_KEYS = ("learner", "learning_rate", "weight_decay", "adam_betas", "scheduler")
# What resuming a checkpoint reads.
RESUME_KEYS = (
    "format", "state", "model_state", "optimizer_state", "scheduler_state", "rng", "model",
    "model_description",
)  # fmt: skip


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; the message names the step and last good checkpoint."""


# ----- the training slice -------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSettings(Settings):
    """The optimisation slice (defaults: RecBole's ``overall.yaml`` for learner,
    learning_rate, weight_decay, epochs, eval_step, stopping_step, train_batch_size, seed,
    reproducibility, show_progress; the fork's ``training.yaml`` and ``foundation.yaml``)."""

    learner: str  # adam | adamw (case-insensitive)
    learning_rate: float  # the peak LR of the schedule
    weight_decay: float
    epochs: int
    eval_step: int  # evaluate every eval_step epochs (and after the last)
    stopping_step: int  # stop after this many evaluations without a better valid metric
    max_grad_norm: float | None
    grad_accum_steps: int
    train_batch_size: int  # the GLOBAL batch under torchrun
    seed: int
    reproducibility: bool
    bf16: bool  # bfloat16 autocast on CUDA
    adam_betas: tuple[float, float]
    scheduler: SchedulerSettings
    torch_compile: bool
    peak_flops: float | None
    show_progress: bool
    train_flops_budget: float | None  # stop when the counted training FLOPs reach it

    def __post_init__(self) -> None:
        check_choice("learner", self.learner.lower(), LEARNERS)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate={self.learning_rate}: must be a positive number")
        check_range("weight_decay", self.weight_decay, low=0.0)
        for key in ("epochs", "eval_step", "stopping_step", "grad_accum_steps"):
            check_range(key, getattr(self, key), low=1)
        check_range("train_batch_size", self.train_batch_size, low=1)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm={self.max_grad_norm}: must be > 0 or null")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ConfigError(
                f"peak_flops={self.peak_flops!r}: must be a positive FLOP/s figure or null"
            )
        budget = self.train_flops_budget
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ConfigError(f"train_flops_budget={budget!r}: must be a positive number or null")


# ----- the run's progress -------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything about a run's progress a resume restores, besides weights, optimizer,
    schedule and RNG.

    Attributes:
        epoch_done: last completed epoch (-1: none).
        global_step: optimizer steps taken.
        tokens_trained: real input positions trained on.
        flops_backbone, flops_item_encoder, flops_scoring: training FLOPs spent so far
            (forward + backward, ``recbole_fork.flops``), by part.
        best_score, best_epoch, best_metrics: the best validation so far (its ``valid_*``).
        best_state: the weights of the best epoch (None before the first evaluation).
        bad_evals: evaluations since the last improvement (early stopping).
        final_metrics: the finished run's result (None while training).
        planned_epochs, total_steps: the plan the LR schedule was built for.
        world_size: processes of the run that wrote the state.
    """

    epoch_done: int = -1
    global_step: int = 0
    tokens_trained: int = 0
    flops_backbone: int = 0
    flops_item_encoder: int = 0
    flops_scoring: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals: int = 0
    final_metrics: dict[str, float] | None = None
    planned_epochs: int = 0
    total_steps: int = 0
    world_size: int = 1

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint (``best_state`` stays a dict of tensors)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def flops(self) -> FlopCount:
        """The training FLOPs spent so far, by part."""
        return FlopCount(self.flops_backbone, self.flops_item_encoder, self.flops_scoring)

    def add_flops(self, count: FlopCount) -> None:
        self.flops_backbone += count.backbone
        self.flops_item_encoder += count.item_encoder
        self.flops_scoring += count.scoring

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """The state a checkpoint holds (keys of an older writer that no longer exist are
        ignored; missing ones keep their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def optimizer_changed(saved: dict[str, Any] | None, now: dict[str, Any] | None) -> bool:
    """True when the resolved configs ``saved`` and ``now`` differ in an ``OPTIMIZER_KEYS``
    key (False when either is unknown)."""
    if not saved or not now:
        return False
    return any(_as_list(saved.get(k)) != _as_list(now.get(k)) for k in OPTIMIZER_KEYS)


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def param_group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's hyperparameters (lr, betas, the schedule's max_lr, ...), no params."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


# ----- RNG capture and restore --------------------------------------------------------------


def capture_rng(sample_generator: torch.Generator) -> dict[str, Any]:
    """Every random stream of this process: torch (CPU, CUDA), numpy, python, the negatives."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state tuple holds an ndarray, which weights_only loads refuse.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        "sample_generator": sample_generator.get_state(),
    }


def restore_rng(rng: dict[str, Any], sample_generator: torch.Generator) -> None:
    """Put back what ``capture_rng`` took."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    random.setstate(_tuples(rng["python"]))
    sample_generator.set_state(rng["sample_generator"])


def _rank_rng(sample_generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """One rank's own random streams (the ones seeded with the rank offset)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "sample_generator": sample_generator.get_state(),
    }


def _set_rank_rng(rng: dict[str, Any], sample_generator: torch.Generator, device) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    sample_generator.set_state(rng["sample_generator"])


def _tuples(value: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants the exact nested tuple form)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


# ----- the trainer --------------------------------------------------------------------------


class SeqTrainer:
    """Trains a ``ForkSeqModel`` over a ``SeqData``; evaluates, checkpoints, resumes.

    Args:
        model: a ``ForkSeqModel`` already on ``device``.
        data: the ``SeqData`` (loaders and sizes).
        training, evaluation: the run's slices.
        checkpoint_path: where the per-epoch checkpoint is written (atomically).
        device: where the model runs.
        tracker: a ``recbole_fork.tracking.Tracker`` or None (no logging).
        dist: this process's place in a data-parallel run (default: one process). With
            several processes the process group must exist (``distributed.process_group``).
        meta: plain data every checkpoint also holds: ``config`` (the resolved config) and
            ``model`` (the model's name).

    Raises:
        DistributedError: a ``train_batch_size`` that the world size does not divide.
    """

    # Said after Ctrl-C: how to go on from the last checkpoint.
    resume_hint = "continue with the same command plus --resume"

    def __init__(
        self,
        model: torch.nn.Module,
        data,
        *,
        training: TrainingSettings,
        evaluation: EvalSettings,
        checkpoint_path: str | Path,
        device: torch.device | str = "cpu",
        tracker=None,
        dist: DistEnv | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.training = training
        self.evaluation = evaluation
        self.checkpoint_path = Path(checkpoint_path)
        self.device = torch.device(device)
        self.tracker = tracker
        self.dist = dist or SINGLE
        self.meta = dict(meta or {})
        self._shard = self.dist.shard()  # loader kwargs: {} for one process
        self.show_progress = training.show_progress and self.dist.is_main
        self.batch_size = self.dist.local_batch_size(training.train_batch_size)
        self.ks = list(evaluation.topk)
        self.valid_metric = evaluation.valid_metric.lower()
        self.use_bf16 = training.bf16 and self.device.type == "cuda"
        # Per device; mfu divides by it times the world size (None: mfu is not logged).
        self.peak_flops = resolve_peak_flops(training.peak_flops, self.device, bf16=self.use_bf16)
        if training.torch_compile:
            compile_backbone(model, self.device)
        # The model itself stays self.model (evaluation, state dicts); training steps of a
        # data-parallel run go through the DDP wrapper, which shares its parameters.
        self._ddp = data_parallel(model, self.device) if self.dist.enabled else None

        self.optimizer = self._build_optimizer(self.model.parameters())
        if training.train_flops_budget is None:
            n_batches = data.num_train_batches(self.batch_size, **self._shard)
            steps_per_epoch = math.ceil(n_batches / training.grad_accum_steps)
            self.epochs, total_steps = training.epochs, training.epochs * steps_per_epoch
        else:
            self.epochs, total_steps = self._plan_budget(training.train_flops_budget)
        self.state = TrainState(
            planned_epochs=self.epochs,
            total_steps=max(1, total_steps),
            world_size=self.dist.world_size,
        )
        self.scheduler = build_scheduler(self.optimizer, training.scheduler, self.state.total_steps)
        self.sample_generator = torch.Generator(device=self.device)
        self.sample_generator.manual_seed(
            training.seed + _SAMPLING_SEED + RANK_SEED * self.dist.rank
        )

    # ----- hooks (the fine-tuning recipe overrides these) --------------------------------

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (fine-tuning enters its stages here)."""

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss one training batch backpropagates; through DDP in a data-parallel run.

        Override to add a term (EWC's penalty); call ``super().batch_loss(batch)``.
        """
        if self._ddp is not None:
            return self._ddp(batch, self.sample_generator)
        return self.model.training_loss(batch, self.sample_generator)

    def epoch_extras(self, epoch: int) -> dict[str, float]:
        """Extra metrics logged with each epoch's training figures."""
        return {}

    def on_finish(self) -> None:
        """Called once training ends, before the best weights are restored for the test."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra plain data every checkpoint holds (fine-tuning: its strategy and stages)."""
        return {}

    # ----- compute budget ----------------------------------------------------------------

    def _plan_budget(self, budget: float) -> tuple[int, int]:
        """Epochs and optimizer steps that spend ``budget`` training FLOPs.

        Walks the data plan batch by batch (each batch's size, trimmed width, positions and
        distinct ids are known before the epoch runs; ``TrainLoader.batch_shapes``) and adds
        the planned training FLOPs of each step (``flops.estimate_step_flops``: exact but for
        the ids the random negatives add, bounded in expectation) until the budget is
        reached. The LR schedule is planned for that many steps; training then stops on the
        FLOPs it really counts (``_budget_reached``).

        Raises:
            ConfigError: a budget that would take more than 100,000 epochs.
        """
        accum = self.training.grad_accum_steps
        spent, steps = 0, 0
        for epoch in range(100_000):
            loader = self.data.train_loader(self.batch_size, epoch, **self._shard)
            shapes = loader.batch_shapes()
            for i, (b, width, n_real, n_sup, distinct) in enumerate(shapes):
                step = estimate_step_flops(
                    self.model,
                    batch_size=b,
                    width=width,
                    n_real=n_real,
                    n_supervised=n_sup,
                    n_present_ids=distinct,
                )
                # Every rank runs batches like this one; the budget is the whole run's.
                spent += step.total * TRAIN_FLOPS_MULTIPLIER * self.dist.world_size
                end_of_group = (i + 1) % accum == 0 or i + 1 == len(shapes)
                if end_of_group:
                    steps += 1
                    if spent >= budget:
                        logger.info(
                            "train_flops_budget %.4g: planned %d optimizer steps over %d epochs",
                            budget,
                            steps,
                            epoch + 1,
                        )
                        return epoch + 1, steps
        raise ConfigError(
            f"train_flops_budget={budget:.4g} would take more than 100,000 epochs of this "
            "dataset; lower it or check the units (FLOPs, not FLOP/s)"
        )

    def _budget_reached(self) -> bool:
        """True once the run has spent its ``train_flops_budget`` (never without one).

        One process stops on the FLOPs it counted. A data-parallel run stops on its planned
        step count instead: the ranks count slightly different FLOPs (their batches differ)
        and must stop at the same step.
        """
        budget = self.training.train_flops_budget
        if budget is None:
            return False
        if self.dist.enabled:
            return self.state.global_step >= self.state.total_steps
        return self.state.flops.total >= budget

    # ----- optimisation ------------------------------------------------------------------

    def _build_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """Adam or AdamW over ``params``."""
        t = self.training
        cls = torch.optim.AdamW if t.learner.lower() == "adamw" else torch.optim.Adam
        return cls(params, lr=t.learning_rate, betas=t.adam_betas, weight_decay=t.weight_decay)

    def _autocast(self):
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _batch_to_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # Non-blocking: from pinned memory (pin_memory on CUDA) the copy overlaps host work;
        # kernels on the same stream still wait for it.
        return {k: torch.as_tensor(v).to(self.device, non_blocking=True) for k, v in batch.items()}

    def _grad_sync(self, sync: bool):
        """DDP's ``no_sync`` for the batches of an accumulation group before its last one.

        It must hold over forward and backward both: DDP arms the all-reduce in forward.
        """
        if self._ddp is None or sync:
            return nullcontext()
        return self._ddp.no_sync()

    def _optimizer_step(self) -> None:
        """Clip the global gradient norm (``max_grad_norm``), step the optimizer and the LR
        schedule once, clear gradients."""
        if self.training.max_grad_norm is not None:
            clip_grad_norm_(self.model.parameters(), self.training.max_grad_norm)
        self.optimizer.step()
        # A budgeted run may count a little fewer FLOPs per step than it planned and take a
        # few steps more than its schedule: those run at the schedule's final LR.
        if self.state.global_step < self.state.total_steps:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training batches; returns loss and throughput figures.

        Raises:
            TrainingDivergedError: a non-finite loss.
        """
        self.on_epoch_start(epoch)
        self.model.train()
        accum = self.training.grad_accum_steps
        n_batches = self.data.num_train_batches(self.batch_size, **self._shard)
        batches: Iterable = self.data.train_loader(self.batch_size, epoch, **self._shard)
        if self.show_progress:
            batches = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", ncols=100, leave=False)
        total_loss, n_seqs, n_tokens, n_seen = 0.0, 0, 0, 0
        flops = FlopCount()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, raw in enumerate(batches):
            batch = self._batch_to_device(raw)
            # Each batch's mean loss is divided by the size of its accumulation group, so a
            # group of g batches gives the mean of their losses (the last group may be short).
            group_start = (i // accum) * accum
            group = min(accum, n_batches - group_start)
            last_of_group = i + 1 == group_start + group
            with self._grad_sync(last_of_group):
                with self._autocast():
                    loss = self.batch_loss(batch)
                value = float(loss.detach())
                if not math.isfinite(value):
                    # In a data-parallel run only this rank raises; torchrun then stops
                    # the others, which wait in the gradient all-reduce.
                    raise TrainingDivergedError(
                        f"loss is {value} at epoch {epoch}, batch {i}, optimizer step "
                        f"{self.state.global_step}; last good checkpoint: {self._last_good()} "
                        "(resume from it with a lower learning_rate or a max_grad_norm: "
                        "--resume --allow-change KEY --set KEY=...)"
                    )
                (loss / group).backward()
            # What the step really ran (its trimmed width, the ids it embedded, its
            # candidates), forward + backward; an EWC penalty's few FLOPs are not counted.
            shape, step = self.model.last_step_shape, self.model.last_step_flops
            flops = flops + step * TRAIN_FLOPS_MULTIPLIER
            self.state.add_flops(step * TRAIN_FLOPS_MULTIPLIER)
            total_loss += value
            n_seen += 1
            n_seqs += shape.batch_size
            n_tokens += shape.n_real
            if last_of_group:
                self._optimizer_step()
                if self._budget_reached():
                    break
            if self.show_progress:
                batches.set_postfix(loss=f"{value:.4f}")
        elapsed = time.perf_counter() - start
        parts = [flops.backbone, flops.item_encoder, flops.scoring]
        if self.dist.enabled:  # the whole run's figures: sums over the ranks
            summed = all_reduce_sum([total_loss, n_seen, n_seqs, n_tokens, *parts], self.dist)
            total_loss, n_seen, n_seqs, n_tokens = summed[0], *map(int, summed[1:4])
            others = [int(x) - own for x, own in zip(summed[4:], parts, strict=True)]
            self.state.add_flops(FlopCount(*others))  # the other ranks' share
            parts = [int(x) for x in summed[4:]]
        flops = FlopCount(*parts)
        self.state.tokens_trained += n_tokens
        tokens_per_s = n_tokens / elapsed if elapsed > 0 else 0.0
        metrics = {
            "train_loss": total_loss / max(n_seen, 1),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "epoch_time_s": elapsed,
            "sequences_per_s": n_seqs / elapsed if elapsed > 0 else 0.0,
            "tokens_per_s": tokens_per_s,
            **{k: float(v) for k, v in flops.as_dict("flops_").items() if k != "flops_total"},
            "flops": float(flops.total),
            # The FLOPs the epoch really ran (recbole_fork.flops), per second of training.
            "achieved_flops_per_s": flops.total / elapsed if elapsed > 0 else 0.0,
        }
        if self.peak_flops is not None:
            peak = self.peak_flops * self.dist.world_size
            metrics["mfu"] = metrics["achieved_flops_per_s"] / peak
        metrics.update(self.epoch_extras(epoch))
        return metrics

    def _last_good(self) -> str:
        return str(self.checkpoint_path) if self.checkpoint_path.is_file() else "none written yet"

    # ----- evaluation --------------------------------------------------------------------

    def _phase_generator(self, phase: str, rank: int = 0) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        return gen.manual_seed(self.training.seed + _PHASE_SEED[phase] + RANK_SEED * rank)

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
            names = self.evaluation.metric_names()
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
        ev = self.evaluation
        self.model.eval()
        gen = self._phase_generator(phase, rank)
        shard = {"rank": rank, "world_size": world_size} if world_size > 1 else {}
        sums: dict[str, float] = {}
        loss_sum, count = 0.0, 0
        for raw in self.data.eval_loader(phase, ev.eval_batch_size, **shard):
            batch = self._batch_to_device(raw)
            user, loss = self.model.eval_step(batch, gen)  # [B, D], scalar
            result = evaluate_ranking(
                user.float(),
                lambda ids: self.model.item_embeddings(ids).float(),
                self.model.n_items,
                batch["target"],
                ks=self.ks,
                mode=ev.eval_mode,
                hist_indptr=batch.get("hist_indptr") if ev.exclude_history else None,
                hist_items=batch.get("hist_items") if ev.exclude_history else None,
                item_chunk=ev.eval_item_chunk,
                user_chunk=ev.eval_user_chunk,
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

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint: the state plus model, optimizer, scheduler and RNG states."""
        return {
            "format": CHECKPOINT_FORMAT,
            "state": self.state.as_dict(),
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "rng": capture_rng(self.sample_generator),
            "config": self.meta.get("config", {}),
            "model": self.meta.get("model"),
            "model_description": self.model.describe(),
            "vocab": self.model.vocab() if hasattr(self.model, "vocab") else {},
            "mlflow_run_id": getattr(self.tracker, "run_id", None),
            # Where that run lives: a resume after a tracking fallback links the runs.
            "mlflow_tracking_uri": getattr(self.tracker, "uri", None),
            **self.checkpoint_extra(),
        }

    def save(self, epoch: int) -> None:
        """Write the checkpoint for the completed ``epoch`` (atomic).

        Data-parallel: every rank calls it; rank 0 writes (with every rank's RNG streams
        under ``rank_rng``) while the others wait.
        """
        self.state.epoch_done = epoch
        ranks_rng = None
        if self.dist.enabled:
            ranks_rng = all_gather_object(_rank_rng(self.sample_generator, self.device), self.dist)
        if self.dist.is_main:
            ckpt = self.checkpoint()
            if ranks_rng is not None:
                ckpt["rank_rng"] = ranks_rng
            save_checkpoint(self.checkpoint_path, ckpt)
        barrier(self.dist)

    def load(self, ckpt: dict[str, Any]) -> None:
        """Restore everything ``checkpoint`` saved, so training continues where it stopped.

        A checkpoint of another plan (other ``epochs``, or another world size, which changes
        the steps per epoch), or of other optimizer settings (``OPTIMIZER_KEYS``, a resume
        with ``--allow-change``), keeps the step count, the Adam moments and the weights, and
        re-plans the LR schedule with this run's settings over this run's steps. Rank r > 0 of a data-parallel run takes its own streams from
        ``rank_rng`` (or keeps its fresh ones when the world size changed).

        Raises:
            CheckpointError: not a checkpoint of this trainer, one missing a key it needs, or
                one of a different model or catalog.
        """
        require_keys(ckpt, ["format"], self.checkpoint_path, "resuming")
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} was not written by this version of "
                f"SeqTrainer (format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT!r}); "
                "start without --resume"
            )
        require_keys(ckpt, RESUME_KEYS, self.checkpoint_path, "resuming")
        if ckpt["model"] != self.meta.get("model", ckpt["model"]):
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} holds a {ckpt['model']}, but the config "
                f"builds a {self.meta['model']}; use the run's own config to resume"
            )
        if ckpt["model_description"] != self.model.describe():
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} holds {ckpt['model_description']}, but the "
                f"config builds {self.model.describe()}; use the run's own config to resume"
            )
        own_rng = _rank_rng(self.sample_generator, self.device)
        planned_steps = self.state.total_steps
        try:
            self.model.load_state_dict(ckpt["model_state"])
        except RuntimeError as e:  # another catalog: item tables of another size
            detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} does not fit this run's model and data "
                f"({detail[:300]}); resume on the data it was trained on"
            ) from None
        fresh = param_group_settings(self.optimizer)
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        saved = TrainState.from_dict(ckpt["state"])
        changed = optimizer_changed(ckpt.get("config"), self.meta.get("config"))
        if saved.total_steps == planned_steps and not changed:
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        else:
            # This run's learning rate, betas, weight decay and schedule bounds, not the
            # saved ones the optimizer state just brought back.
            for group, settings in zip(self.optimizer.param_groups, fresh, strict=True):
                group.update(settings)
            self._replan_schedule(saved.total_steps, saved.global_step)
        restore_rng(ckpt["rng"], self.sample_generator)
        if self.dist.rank > 0:  # the top-level streams are rank 0's
            ranks_rng = ckpt.get("rank_rng") or []
            rng = ranks_rng[self.dist.rank] if len(ranks_rng) == self.dist.world_size else own_rng
            _set_rank_rng(rng, self.sample_generator, self.device)
        # This run's plan (its schedule was re-planned above when it differs).
        saved.total_steps = planned_steps
        saved.world_size = self.dist.world_size
        self.state = saved

    def _replan_schedule(self, saved_steps: int, done: int) -> None:
        """Move this run's fresh LR schedule to step ``done`` (of its own total)."""
        logger.warning(
            "checkpoint %s planned %d optimizer steps, this run plans %d (epochs, world size "
            "or optimizer settings changed): the LR schedule is re-planned with this run's "
            "settings and goes on from step %d",
            self.checkpoint_path,
            saved_steps,
            self.state.total_steps,
            done,
        )
        with warnings.catch_warnings():
            # Stepping a schedule with no optimizer step in between warns; here it is meant.
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(min(done, self.state.total_steps)):
                self.scheduler.step()

    # ----- the loop ----------------------------------------------------------------------

    def _log(self, metrics: dict[str, float], step: int | None) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step)

    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train, evaluate, checkpoint each epoch; return the final ``best_*`` metrics.

        Args:
            resume: continue from ``checkpoint_path`` (same MLflow run; the caller passes
                the tracker built with the checkpoint's ``mlflow_run_id``).

        Raises:
            CheckpointError: ``resume`` without a usable checkpoint.
            TrainingDivergedError: NaN or infinite loss.
            KeyboardInterrupt: re-raised after saying how to resume.
        """
        epochs = self.epochs
        if resume:
            # CPU first: RNG states must be CPU tensors; load_state_dict moves weights over.
            self.load(load_checkpoint(self.checkpoint_path, map_location="cpu"))
            logger.info("resuming %s at epoch %d", self.checkpoint_path, self.state.epoch_done + 1)
            if self.state.final_metrics is not None:
                if epochs <= self.state.planned_epochs:
                    return dict(self.state.final_metrics)  # a finished run: its stored result
                logger.info(
                    "the checkpoint's run finished after %d epochs; training on to %d epochs",
                    self.state.epoch_done + 1,
                    epochs,
                )
                self.state.final_metrics = None
        self.state.planned_epochs = epochs
        epoch = start = self.state.epoch_done + 1
        try:
            for epoch in range(start, epochs):
                metrics = self._train_epoch(epoch)
                spent = self._budget_reached()  # a budgeted run ends in this epoch
                last = epoch == epochs - 1 or spent
                stop = False
                if (epoch + 1) % self.training.eval_step == 0 or last:
                    metrics.update(self._evaluate_all())
                    stop = self._update_best(epoch, metrics)
                self._log(metrics, step=epoch)
                logger.info("epoch %d: %s", epoch, _fmt(metrics))
                self.save(epoch)
                if stop:
                    logger.info(
                        "early stop at epoch %d (best epoch %d)", epoch, self.state.best_epoch
                    )
                    break
                if spent:
                    logger.info("train_flops_budget spent in epoch %d", epoch)
                    break
        except KeyboardInterrupt:
            done = self.state.epoch_done
            held = f"epoch {done}" if done >= 0 else "no finished epoch"
            msg = (
                f"interrupted during epoch {epoch}; the checkpoint {self._last_good()} holds "
                f"{held}; {self.resume_hint}"
            )
            logger.warning(msg)
            print(msg)
            raise
        return self._finish()

    def _update_best(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Keep the best weights; True when ``stopping_step`` evaluations brought nothing."""
        s = self.state
        score = metrics[metric_key("valid", self.valid_metric)]
        if score > s.best_score:
            s.best_score, s.best_epoch, s.bad_evals = score, epoch, 0
            s.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            s.best_metrics = {k: v for k, v in metrics.items() if k.startswith("valid_")}
            return False
        s.bad_evals += 1
        return s.bad_evals >= self.training.stopping_step

    def _finish(self) -> dict[str, float]:
        """Load the best weights, evaluate test with them, log and checkpoint the result."""
        self.on_finish()
        s = self.state
        if s.best_state is not None:
            self.model.load_state_dict(s.best_state)
        test = self.evaluate("test")
        final: dict[str, float] = {"best_epoch": s.best_epoch}
        for key, value in s.best_metrics.items():
            final[f"best_{key}"] = value
        final["best_test_loss"] = test.pop("loss")
        test.pop("count")
        for name, value in test.items():
            final[f"best_{metric_key('test', name)}"] = value
        # Training FLOPs as run (recbole_fork.flops): the C of the scaling laws.
        final["total_tokens"] = float(s.tokens_trained)
        final["total_flops"] = float(s.flops.total)
        for key, value in s.flops.as_dict("total_flops_").items():
            if key != "total_flops_total":
                final[key] = float(value)
        self._log(final, step=None)
        s.final_metrics = final
        self.save(s.epoch_done)
        return dict(final)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


__all__ = [
    "CHECKPOINT_FORMAT",
    "SeqTrainer",
    "TrainState",
    "TrainingDivergedError",
    "TrainingSettings",
    "capture_rng",
    "restore_rng",
]
