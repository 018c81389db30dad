"""The fine-tuning slice of the settings."""

from __future__ import annotations

from dataclasses import dataclass

from recbole_fork.errors import UserError
from recbole_fork.settings import Settings, check_choice, check_range

STRATEGIES = ("from_scratch", "full", "frozen_embeddings", "progressive", "ewc")


class FineTuneError(UserError):
    """A user-caused fine-tuning error (one-line message naming the thing and the fix)."""


@dataclass(frozen=True)
class FineTuneSettings(Settings):
    """Defaults: ``properties/finetune.yaml``."""

    fine_tune_strategy: str  # a name of STRATEGIES
    progressive_epochs_per_stage: int  # progressive: epochs of each "top i layers" stage
    ewc_lambda: float  # ewc: weight of the penalty
    ewc_samples: int  # ewc: pre-training batches for the diagonal Fisher

    def __post_init__(self) -> None:
        check_choice("fine_tune_strategy", self.fine_tune_strategy, STRATEGIES)
        check_range("progressive_epochs_per_stage", self.progressive_epochs_per_stage, low=1)
        check_range("ewc_lambda", self.ewc_lambda, low=0.0)
        check_range("ewc_samples", self.ewc_samples, low=1)


__all__ = ["STRATEGIES", "FineTuneError", "FineTuneSettings"]
