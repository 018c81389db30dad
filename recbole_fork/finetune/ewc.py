"""Elastic weight consolidation: ``ewc_lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` with
theta* the pre-trained weights and F the diagonal Fisher estimated on ``ewc_samples``
batches of the pre-training dataset, added to every training batch's loss by
``EWCTrainer.batch_loss`` (the trainer's batch-loss hook).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from recbole_fork.finetune.settings import FineTuneError
from recbole_fork.finetune.stages import StagedTrainer
from recbole_fork.settings import RunSettings

logger = logging.getLogger(__name__)

_FISHER_SEED = 505  # any constant distinct from the trainer's own seed offsets


def estimate_fisher(
    model: nn.Module, data, *, n_batches: int, batch_size: int, seed: int
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of ``model``'s training loss on ``data``'s training batches.

    F_i = mean over the first ``n_batches`` batches (epoch 0 order) of the squared gradient
    of the batch's mean loss. This is the batch-level estimate: cheaper than per-example
    gradients by a factor of the batch size, and smaller by about that factor, which
    ``ewc_lambda`` absorbs. Dropout is off (``eval()``) so the estimate is deterministic.
    A bucketed batch's ``loss_scale`` (its share of the epoch's positions, which weights an
    epoch's training loss) is left out: it would weight each batch's squared gradient by
    the square of that share, so the Fisher would depend on how batches were bucketed.

    Returns:
        parameter name -> float32 tensor of the parameter's shape.

    Raises:
        FineTuneError: ``n_batches`` below 1.
    """
    if n_batches < 1:
        raise FineTuneError(f"ewc_samples must be at least 1 batch, got {n_batches}")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed + _FISHER_SEED)
    params = {n: p for n, p in model.named_parameters()}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    used = 0
    for raw in data.train_loader(batch_size, 0):
        if used >= n_batches:
            break
        batch = {k: torch.as_tensor(v).to(device) for k, v in raw.items() if k != "loss_scale"}
        model.zero_grad(set_to_none=True)
        model.training_loss(batch, gen).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float() ** 2
        used += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: f / max(used, 1) for n, f in fisher.items()}


class EWCPenalty:
    """``lam / 2 * sum_i F_i (theta_i - theta*_i)^2`` over the anchored parameters.

    Args:
        fisher: name -> diagonal Fisher (parameter's shape).
        anchor: name -> pre-trained values theta*.
        lam: ``ewc_lambda``.
    """

    def __init__(
        self, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], lam: float
    ) -> None:
        self.fisher = fisher
        self.anchor = anchor
        self.lam = float(lam)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The penalty (a scalar tensor with gradients) for ``model``'s current weights."""
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(model.parameters()).device)
        for name, f in self.fisher.items():
            total = total + (f * (params[name].float() - self.anchor[name]) ** 2).sum()
        return 0.5 * self.lam * total


def build_ewc(
    config: Any,
    settings: RunSettings,
    ckpt: dict[str, Any],
    pretrain_dataset: str,
    model: nn.Module,
    loaded: Iterable[str],
    where: str,
) -> EWCPenalty:
    """EWC anchored at ``model``'s current (freshly loaded) weights, Fisher from pre-training data.

    The pre-training dataset is read under the fine-tuning config's ``data_path``, with the
    same architecture and the checkpoint's weights; only parameters loaded from the
    checkpoint into both models (``loaded``: those of ``model``) with equal shapes are
    anchored.

    Args:
        config: the fine-tuning run's RecBole ``Config`` (its files' edge).
        settings: the fine-tuning run's settings.

    Raises:
        DataError: the pre-training dataset cannot be loaded (named in the message).
    """
    from recbole_fork.config import build_config
    from recbole_fork.data import build_seq_data
    from recbole_fork.finetune.transfer import transfer_weights
    from recbole_fork.session import build_model, seed

    pre_config = build_config(dict(config.external_config_dict), dataset=pretrain_dataset)
    ft = settings.finetune
    seed(settings)
    pre_data = build_seq_data(pre_config, settings.data)
    pre_model = build_model(settings.spec, pre_data).to(next(model.parameters()).device)
    pre_report = transfer_weights(pre_model, ckpt, dataset=pretrain_dataset, where=where)
    fisher = estimate_fisher(
        pre_model,
        pre_data,
        n_batches=ft.ewc_samples,
        batch_size=settings.training.train_batch_size,
        seed=settings.seed,
    )
    own = dict(model.named_parameters())
    anchored = set(loaded) & set(pre_report.loaded)
    keep = {n for n in anchored if n in own and own[n].shape == fisher[n].shape}
    logger.info(
        "EWC: Fisher of %d tensors from %d batches of %s, lambda %g",
        len(keep),
        ft.ewc_samples,
        pretrain_dataset,
        ft.ewc_lambda,
    )
    return EWCPenalty(
        {n: fisher[n] for n in sorted(keep)},
        {n: own[n].detach().float().clone() for n in sorted(keep)},
        ft.ewc_lambda,
    )


class EWCTrainer(StagedTrainer):
    """A staged trainer whose batch loss carries the EWC penalty; logs ``ewc_penalty``.

    Args:
        ewc: the penalty; the other arguments as ``StagedTrainer``.
    """

    def __init__(self, model: nn.Module, data, *, ewc: EWCPenalty, **kwargs: Any) -> None:
        super().__init__(model, data, **kwargs)
        self.ewc = ewc
        self._penalties: list[float] = []

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        term = self.ewc(self.model)
        self._penalties.append(float(term.detach()))
        return super().batch_loss(batch) + term

    def epoch_extras(self, epoch: int) -> dict[str, float]:
        values, self._penalties = self._penalties, []
        return {
            **super().epoch_extras(epoch),
            "ewc_penalty": sum(values) / max(len(values), 1),
        }


__all__ = ["EWCPenalty", "EWCTrainer", "build_ewc", "estimate_fisher"]
