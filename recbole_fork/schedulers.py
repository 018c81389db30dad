"""Learning-rate schedules chosen by ``scheduler: {type: ..., ...}`` in the config.

Every schedule is a ``torch.optim.lr_scheduler`` object stepped once per *optimizer* step
(not per batch, not per epoch), so gradient accumulation and resumed runs keep the right LR:
a resumed run restores the scheduler's state dict and goes on from the same step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

SCHEDULERS = ("one_cycle", "constant", "warmup_cosine")


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: Mapping[str, Any] | str | None, total_steps: int
) -> LRScheduler:
    """Build the LR schedule for a run of ``total_steps`` optimizer steps.

    To resume, build it on a fresh optimizer first, then load the optimizer's and the
    scheduler's saved state dicts (in that order): the LR continues from the saved step.

    Args:
        optimizer: its ``lr`` is the peak learning rate (the config's ``learning_rate``).
        spec: ``{"type": "one_cycle", "pct_start": 0.3, ...}``, a bare type name, or None
            (constant).
        total_steps: optimizer steps in the whole run (epochs x steps per epoch).

    Raises:
        ValueError: an unknown type (listing the valid ones) or ``total_steps < 1``.
    """
    spec = {"type": spec} if isinstance(spec, str) else dict(spec or {"type": "constant"})
    kind = spec.get("type") or "constant"
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler type {kind!r}; valid: {', '.join(SCHEDULERS)}")
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
            pct_start=float(spec.get("pct_start", 0.3)),
            anneal_strategy=spec.get("anneal_strategy", "cos"),
            div_factor=float(spec.get("div_factor", 25.0)),
            final_div_factor=float(spec.get("final_div_factor", 1e4)),
            # Adam has no momentum to cycle; cycling beta1 changes the optimiser, not the LR.
            cycle_momentum=False,
        )
    warmup = int(spec.get("warmup_steps", 0)) or max(1, int(0.05 * total_steps))
    floor = float(spec.get("min_lr_ratio", 0.0))

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, warmup_cosine)
