"""Learning-rate schedules chosen by ``scheduler: {type: ..., ...}`` in the config.

Every schedule is a ``torch.optim.lr_scheduler`` object stepped once per *optimizer* step
(not per batch, not per epoch), so gradient accumulation and resumed runs keep the right LR:
a resumed run restores the scheduler's state dict and goes on from the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from recbole_fork.settings import ConfigError, Settings, check_choice, check_range

SCHEDULERS = ("one_cycle", "constant", "warmup_cosine")


@dataclass(frozen=True)
class SchedulerSettings(Settings):
    """``scheduler: {type: ..., ...}`` (defaults: ``properties/foundation.yaml``)."""

    type: str  # one_cycle | constant | warmup_cosine
    pct_start: float  # one_cycle: share of the steps rising to learning_rate
    div_factor: float  # one_cycle: initial LR = learning_rate / div_factor
    final_div_factor: float  # one_cycle: final LR = initial LR / final_div_factor
    anneal_strategy: str  # one_cycle: cos | linear
    warmup_steps: int  # warmup_cosine: linear warmup steps (0 = 5% of the run)
    min_lr_ratio: float  # warmup_cosine: final LR as a share of learning_rate

    def __post_init__(self) -> None:
        check_choice("scheduler.type", self.type, SCHEDULERS)
        check_choice("scheduler.anneal_strategy", self.anneal_strategy, ("cos", "linear"))
        check_range("scheduler.pct_start", self.pct_start, low=0.0, high=1.0)
        check_range("scheduler.warmup_steps", self.warmup_steps, low=0)
        for key in ("div_factor", "final_div_factor"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"scheduler.{key}={getattr(self, key)}: must be > 0")


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: SchedulerSettings, total_steps: int
) -> LRScheduler:
    """Build the LR schedule for a run of ``total_steps`` optimizer steps.

    To resume, build it on a fresh optimizer first, then load the optimizer's and the
    scheduler's saved state dicts (in that order): the LR continues from the saved step.

    Args:
        optimizer: its ``lr`` is the peak learning rate (the config's ``learning_rate``).
        spec: the ``scheduler`` settings.
        total_steps: optimizer steps in the whole run (epochs x steps per epoch).

    Raises:
        ValueError: ``total_steps < 1``.
    """
    kind = spec.type
    if total_steps < 1:
        raise ValueError(f"scheduler needs total_steps >= 1, got {total_steps}")
    if kind == "constant":
        return LambdaLR(optimizer, lambda step: 1.0)
    if kind == "one_cycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total_steps,
            pct_start=spec.pct_start,
            anneal_strategy=spec.anneal_strategy,
            div_factor=spec.div_factor,
            final_div_factor=spec.final_div_factor,
            # Adam has no momentum to cycle; cycling beta1 changes the optimiser, not the LR.
            cycle_momentum=False,
        )
    warmup = spec.warmup_steps or max(1, int(0.05 * total_steps))
    floor = spec.min_lr_ratio

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, warmup_cosine)
