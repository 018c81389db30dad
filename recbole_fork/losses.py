"""Losses over user states and item embeddings, chosen by ``loss_type``.

Every loss takes the N supervised positions of a batch: user states ``user`` [N, D], the
positive ids and embeddings, and (for the sampled losses) the negatives from
``recbole_fork.sampling``, shared by the batch ([K]) or per example ([N, K]). Scores are dot
products divided by ``temperature``; each loss returns the mean over the N positions.

* ``sampled_softmax``: cross-entropy of the positive against its K negatives. With
  ``logq_correction`` each logit becomes ``score / temperature - log q(item)`` (positive and
  negatives alike), which makes the sampled softmax an unbiased-in-the-limit estimate of the
  full softmax under a non-uniform sampler. Negatives equal to the example's positive
  (accidental hits) are masked to ``-inf``.
* ``bce``: ``-log sigmoid(s+) - mean_k log(1 - sigmoid(s_k))`` over the negatives that are
  not accidental hits. The mean (not the sum) keeps the scale independent of K; with K = 1
  it is SASRec's original loss. No logQ correction.
* ``full_ce``: softmax over the whole catalog (``all_item_emb`` [n_items, D]), padding id 0
  excluded; for small catalogs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recbole_fork.sampling import accidental_hit_mask
from recbole_fork.settings import ConfigError, Settings, check_choice


@dataclass(frozen=True)
class LossSettings(Settings):
    """The loss slice (defaults: ``properties/data.yaml`` and the model's file)."""

    loss_type: str  # a name of LOSSES
    temperature: float  # scores are divided by it (> 0)
    logq_correction: bool  # sampled_softmax only: subtract log q(item)

    def __post_init__(self) -> None:
        check_choice("loss_type", self.loss_type, LOSSES)
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature}: must be > 0")
        if self.logq_correction and not LOSSES[self.loss_type].supports_logq:
            raise ConfigError(
                f"logq_correction applies to loss_type sampled_softmax only, not {self.loss_type!r}"
            )


def _neg_scores(user: torch.Tensor, neg_emb: torch.Tensor) -> torch.Tensor:
    """[N, D] x ([K, D] | [N, K, D]) -> [N, K], one batched matmul."""
    if neg_emb.dim() == 2:
        return user @ neg_emb.T  # [N, K]
    return torch.bmm(neg_emb, user.unsqueeze(-1)).squeeze(-1)  # [N, K]


class Loss(nn.Module):
    """Base class. ``needs_negatives`` tells the model whether to sample negatives.

    Args:
        temperature: scores are divided by it (> 0).
    """

    needs_negatives = True
    supports_logq = False
    name = "base"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        self.temperature = float(temperature)

    @classmethod
    def from_settings(cls, settings: LossSettings) -> Loss:
        """Build from the loss slice (a subclass with more options overrides it)."""
        return cls(settings.temperature)

    def forward(
        self,
        user: torch.Tensor,
        pos_ids: torch.Tensor,
        pos_emb: torch.Tensor,
        neg_ids: torch.Tensor | None,
        neg_emb: torch.Tensor | None,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
        all_item_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar mean loss over the N examples.

        Args:
            user: float [N, D], user states.
            pos_ids: int64 [N], positive item ids.
            pos_emb: float [N, D], their embeddings.
            neg_ids: int64 [K] or [N, K], or None (``full_ce``).
            neg_emb: float [K, D] or [N, K, D], or None.
            log_q_pos, log_q_neg: log draw probabilities, [N] and the shape of ``neg_ids``
                (used by ``sampled_softmax`` with ``logq_correction``).
            all_item_emb: float [n_items, D] (``full_ce`` only).
        """
        raise NotImplementedError

    def describe(self) -> str:
        """Short name for run names, e.g. ``ssm-t0.05-logq``."""
        return f"{self.name}-t{self.temperature:g}"


class SampledSoftmaxLoss(Loss):
    """Softmax over the positive and K sampled negatives (accidental hits masked)."""

    name = "ssm"
    supports_logq = True

    def __init__(self, temperature: float = 1.0, logq_correction: bool = False) -> None:
        super().__init__(temperature)
        self.logq_correction = bool(logq_correction)

    @classmethod
    def from_settings(cls, settings: LossSettings) -> SampledSoftmaxLoss:
        return cls(settings.temperature, settings.logq_correction)

    def forward(
        self,
        user,
        pos_ids,
        pos_emb,
        neg_ids,
        neg_emb,
        log_q_pos=None,
        log_q_neg=None,
        all_item_emb=None,
    ):
        if neg_ids is None or neg_emb is None:
            raise ValueError("sampled_softmax needs negatives (neg_ids and neg_emb)")
        pos = (user * pos_emb).sum(-1) / self.temperature  # [N]
        neg = _neg_scores(user, neg_emb) / self.temperature  # [N, K]
        if self.logq_correction:
            if log_q_pos is None or log_q_neg is None:
                raise ValueError("logq_correction needs log_q_pos and log_q_neg from the sampler")
            pos = pos - log_q_pos
            neg = neg - (log_q_neg.unsqueeze(0) if log_q_neg.dim() == 1 else log_q_neg)
        neg = neg.masked_fill(accidental_hit_mask(pos_ids, neg_ids), float("-inf"))
        logits = torch.cat([pos.unsqueeze(1), neg], dim=1)  # [N, 1 + K]
        return (torch.logsumexp(logits, dim=1) - pos).mean()

    def describe(self) -> str:
        return super().describe() + ("-logq" if self.logq_correction else "")


class BCELoss(Loss):
    """Binary cross-entropy: positive vs each non-hit negative (mean over negatives)."""

    name = "bce"

    def forward(
        self,
        user,
        pos_ids,
        pos_emb,
        neg_ids,
        neg_emb,
        log_q_pos=None,
        log_q_neg=None,
        all_item_emb=None,
    ):
        if neg_ids is None or neg_emb is None:
            raise ValueError("bce needs negatives (neg_ids and neg_emb)")
        pos = (user * pos_emb).sum(-1) / self.temperature  # [N]
        neg = _neg_scores(user, neg_emb) / self.temperature  # [N, K]
        keep = (~accidental_hit_mask(pos_ids, neg_ids)).to(neg.dtype)  # [N, K]
        # log(1 - sigmoid(s)) = logsigmoid(-s), stable for large |s|.
        neg_term = -(F.logsigmoid(-neg) * keep).sum(1) / keep.sum(1).clamp(min=1)  # [N]
        return (-F.logsigmoid(pos) + neg_term).mean()


class FullCELoss(Loss):
    """Cross-entropy over every real item (padding id 0 excluded)."""

    needs_negatives = False
    name = "fullce"

    def forward(
        self,
        user,
        pos_ids,
        pos_emb,
        neg_ids,
        neg_emb,
        log_q_pos=None,
        log_q_neg=None,
        all_item_emb=None,
    ):
        if all_item_emb is None:
            raise ValueError("full_ce needs all_item_emb [n_items, D]")
        logits = user @ all_item_emb.T / self.temperature  # [N, n_items]
        logits[:, 0] = float("-inf")  # padding is never a candidate
        return F.cross_entropy(logits, pos_ids)


# loss_type -> class: a new loss is one class above and one entry here.
LOSSES: dict[str, type[Loss]] = {
    "sampled_softmax": SampledSoftmaxLoss,
    "bce": BCELoss,
    "full_ce": FullCELoss,
}


def build_loss(settings: LossSettings) -> Loss:
    """The loss that ``settings.loss_type`` names (checked when the slice was read)."""
    return LOSSES[settings.loss_type].from_settings(settings)
