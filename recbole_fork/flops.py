"""FLOPs as spent: what a training or evaluation step really runs (issue 13, item 1).

A step's forward cost has three parts, counted from the quantities the step really had:

* **backbone**: the backbone on the batch as run, ``[B, width]`` with ``width`` the trimmed
  width (``SeqData`` drops all-padding columns), so attention is quadratic in the window
  actually run, not in ``max_seq_length``. Each backbone says what it runs in
  ``forward_flops(batch_size, width, n_real)``: SASRec and HSTU run every position of the
  ``[B, width]`` batch, padding included; Wukong runs only the ``n_real`` real positions.
* **item_encoder**: the item encoder on the ids the step embeds. A sampled step embeds the
  unique ids of its inputs, targets and negatives once (``U`` ids, padding 0 included when
  the batch has padding); full cross-entropy embeds the whole catalog (``n_items`` ids).
  ``id`` lookups cost nothing; every ``nn.Linear`` inside the encoder (the text adapter) runs
  once per embedded id.
* **scoring**: the ``N`` supervised user states against their candidates: the positive and K
  negatives (``2 N D (1 + K)``; shared ``[K]`` and per-row ``[N, K]`` negatives cost the
  same), or the full catalog for full cross-entropy (``2 N D n_items``, padding column
  included: the matmul computes it before it is masked).

Convention: a matmul ``[m, k] x [k, n]`` costs ``2 m k n`` FLOPs (a multiply and an add per
multiply-add). Embedding lookups, sums of looked-up rows, norms, activations, softmax,
masking, dropout and other element-wise work are not counted: they are O(1) per entry, and
``torch.utils.flop_counter.FlopCounterMode`` leaves them out too. One exception: the
positive's score, written as an element-wise product and a sum, is counted as the D-term dot
product it is (``2 D`` per row), so that a positive costs what a negative does.

Training costs ``TRAIN_FLOPS_MULTIPLIER = 3`` times the forward count (see there). The old
per-token figure (``flops_per_token`` at ``max_seq_length``, no scoring) is only an estimate;
``estimate_step_flops`` plans a run before it starts from the batch shapes of the plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

# Training FLOPs = 3 x forward FLOPs, the usual convention (Kaplan et al. 2020; Hoffmann et
# al. 2022). The reason: for every matmul Y = X W of the forward pass the backward pass runs
# two matmuls of the same size, dL/dX = dL/dY W^T and dL/dW = X^T dL/dY. It is exact for
# these models, not just a rule of thumb: every matmul input needs a gradient, because the
# item-ID rows and text token tables the first layer reads are trainable (FlopCounterMode
# measures 3.00 x on the tiny models of tests/fork/test_flops.py).
TRAIN_FLOPS_MULTIPLIER = 3


@dataclass(frozen=True)
class FlopCount:
    """FLOPs split into backbone, item encoder and scoring (integers, 2 per multiply-add).

    Add counts with ``+`` (``sum(counts, FlopCount())`` works too) and scale them by an
    integer with ``*`` (e.g. ``count * TRAIN_FLOPS_MULTIPLIER``).
    """

    backbone: int = 0
    item_encoder: int = 0
    scoring: int = 0

    @property
    def total(self) -> int:
        """Backbone + item encoder + scoring."""
        return self.backbone + self.item_encoder + self.scoring

    def __add__(self, other: FlopCount) -> FlopCount:
        if not isinstance(other, FlopCount):
            return NotImplemented
        return FlopCount(
            self.backbone + other.backbone,
            self.item_encoder + other.item_encoder,
            self.scoring + other.scoring,
        )

    def __radd__(self, other: Any) -> FlopCount:
        # The built-in sum() starts from 0.
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented

    def __mul__(self, factor: int) -> FlopCount:
        # Integers only, so that counts stay exact (a float would round at 1e18 FLOPs).
        if isinstance(factor, bool) or not isinstance(factor, int):
            return NotImplemented
        return FlopCount(self.backbone * factor, self.item_encoder * factor, self.scoring * factor)

    __rmul__ = __mul__

    def training(self) -> FlopCount:
        """Forward + backward: this forward count times ``TRAIN_FLOPS_MULTIPLIER``."""
        return self * TRAIN_FLOPS_MULTIPLIER

    def as_dict(self, prefix: str = "flops_") -> dict[str, int]:
        """``{prefix + 'backbone', prefix + 'item_encoder', prefix + 'scoring',
        prefix + 'total'}``, for logging."""
        out = {prefix + k: v for k, v in asdict(self).items()}
        out[prefix + "total"] = self.total
        return out


@dataclass(frozen=True)
class StepShape:
    """The quantities one step really had, from which its FLOPs follow.

    Attributes:
        batch_size: B, rows of the batch.
        width: the batch's (trimmed) width L, the second dimension of ``item_seq``.
        n_real: real (non-padding) input positions, ``(item_seq > 0).sum()``.
        n_supervised: N, the user states scored (targets > 0; B in an evaluation step).
        n_embedded: U, ids the item encoder ran on (the unique ids of inputs, targets and
            negatives, padding included; ``n_items`` for full cross-entropy).
        negatives: shape of the negative ids, ``(K,)`` shared or ``(N, K)`` per row
            (``(N,)`` for shared in-batch negatives); None for full cross-entropy.
        catalog: items scored per row by full cross-entropy (``n_items``), else None.
    """

    batch_size: int
    width: int
    n_real: int
    n_supervised: int
    n_embedded: int
    negatives: tuple[int, ...] | None = None
    catalog: int | None = None


def item_encoder_flops_per_id(item_encoder: nn.Module) -> int:
    """Forward FLOPs of embedding one id: ``2 * in * out`` per ``nn.Linear`` in the encoder.

    ``id``: 0 (a lookup). ``text``: the adapter, ``2 * (n_fields * E) * D`` (token lookups and
    their sums are not counted). ``id+text``: the text part's adapter.
    """
    return sum(
        2 * m.in_features * m.out_features
        for m in item_encoder.modules()
        if isinstance(m, nn.Linear)
    )


def item_encoder_flops(item_encoder: nn.Module, n_ids: int) -> int:
    """Forward FLOPs of the item encoder on ``n_ids`` ids (each embedded once)."""
    return int(n_ids) * item_encoder_flops_per_id(item_encoder)


def scoring_flops(
    n_rows: int,
    hidden: int,
    *,
    negatives: Sequence[int] | None = None,
    catalog: int | None = None,
) -> int:
    """Forward FLOPs of scoring ``n_rows`` user states of width ``hidden`` (D).

    Args:
        n_rows: N, supervised user states.
        hidden: D.
        negatives: shape of the negative ids: ``(K,)`` shared by the batch or ``(N, K)`` per
            row; each row is scored against its positive and K negatives, ``2 N D (1 + K)``.
        catalog: full cross-entropy: each row against ``catalog`` items, ``2 N D catalog``.

    Raises:
        ValueError: neither or both of ``negatives`` and ``catalog`` given, or a per-row
            shape whose first dimension is not ``n_rows``.
    """
    if (negatives is None) == (catalog is None):
        raise ValueError("scoring_flops: give exactly one of negatives (a shape) and catalog")
    if catalog is not None:
        return 2 * int(n_rows) * int(hidden) * int(catalog)
    shape = tuple(int(s) for s in negatives)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != n_rows):
        raise ValueError(
            f"scoring_flops: negatives shape {shape} is neither (K,) nor (N, K) with N={n_rows}"
        )
    return 2 * int(n_rows) * int(hidden) * (1 + shape[-1])


def step_flops(model: nn.Module, shape: StepShape) -> FlopCount:
    """Forward FLOPs of one step of ``model`` (a ``ForkSeqModel``) with ``shape``.

    Multiply by ``TRAIN_FLOPS_MULTIPLIER`` (``.training()``) for a training step.
    """
    backbone = model.backbone
    return FlopCount(
        backbone=int(backbone.forward_flops(shape.batch_size, shape.width, shape.n_real)),
        item_encoder=item_encoder_flops(model.item_encoder, shape.n_embedded),
        scoring=scoring_flops(
            shape.n_supervised,
            backbone.hidden_size,
            negatives=shape.negatives,
            catalog=shape.catalog,
        ),
    )


def expected_new_ids_bound(n_present: int, n_draws: int, n_choices: int) -> float:
    """Upper bound on the expected number of new distinct ids among ``n_draws`` draws.

    The draws (with replacement, any distribution over ``n_choices`` ids) are new when not
    among ``n_present`` ids already held. With p_i the probability of id i, the expectation is
    ``sum over absent i of 1 - (1 - p_i)^n``; that function of p is concave and increasing,
    so with the absent ids' mass at most 1 it is at most ``A (1 - (1 - 1/A)^n)``, A = the
    absent ids (Jensen; equality for a uniform sampler that never draws a present id). Also
    at most ``min(n, A)``. A realised count can exceed an expectation by chance.
    """
    absent = max(int(n_choices) - int(n_present), 0)
    if absent == 0 or n_draws <= 0:
        return 0.0
    if absent == 1:  # log1p(-1) is undefined; the one absent id is drawn or not
        return 1.0
    return min(float(n_draws), absent * -math.expm1(n_draws * math.log1p(-1.0 / absent)))


def estimate_embedded_ids(
    model: nn.Module,
    *,
    batch_size: int,
    width: int,
    n_real: int,
    n_supervised: int,
    n_present_ids: int | None = None,
) -> int:
    """Planned U: the ids a training step of this shape will embed, before its negatives exist.

    Full cross-entropy embeds the catalog: exactly ``n_items``. In-batch negatives are the
    batch's own targets: U = the ids present. Uniform and popularity negatives add their new
    distinct ids, bounded in expectation by ``expected_new_ids_bound`` (which holds for any
    sampler); the result is rounded up and capped at ``n_items``.

    Args:
        n_present_ids: distinct ids of the batch's inputs and supervised targets, padding 0
            included when a row is padded (what ``torch.unique`` sees without negatives),
            when the plan knows them; None bounds them by ``n_real + n_supervised`` plus
            the padding id (every input and target distinct).
    """
    n_items = int(model.n_items)
    has_padding = batch_size * width > n_real
    if model.sampler is None:
        return n_items
    if n_present_ids is None:
        n_present_ids = min(n_items, n_real + n_supervised + int(has_padding))
    sampler = model.sampler
    if sampler.name == "in_batch":
        return int(n_present_ids)
    draws = sampler.num_negatives * (1 if sampler.shared else n_supervised)
    real_present = int(n_present_ids) - int(has_padding)
    new = expected_new_ids_bound(real_present, draws, n_items - 1)
    return min(n_items, int(n_present_ids) + math.ceil(new))


def estimate_step_flops(
    model: nn.Module,
    *,
    batch_size: int,
    width: int,
    n_real: int,
    n_supervised: int,
    n_present_ids: int | None = None,
) -> FlopCount:
    """Planned forward FLOPs of a training step, from the plan's batch shape.

    For budgeting a run before it starts: the data plan gives each batch's size, trimmed
    width, real and supervised positions (and, if computed, its distinct ids); the random
    negatives are not known yet. Backbone and scoring are then exact (the negatives' count is
    fixed by the sampler: K, or N for shared in-batch negatives); the item encoder uses
    ``estimate_embedded_ids`` (exact for full cross-entropy, an upper bound in expectation
    otherwise, and 0 for the ``id`` encoder whatever U is).
    """
    sampler = model.sampler
    if sampler is None:
        negatives, catalog = None, int(model.n_items)
    elif sampler.name == "in_batch" and sampler.shared:
        negatives, catalog = (n_supervised,), None
    else:
        negatives, catalog = (sampler.num_negatives,), None
    shape = StepShape(
        batch_size=batch_size,
        width=width,
        n_real=n_real,
        n_supervised=n_supervised,
        n_embedded=estimate_embedded_ids(
            model,
            batch_size=batch_size,
            width=width,
            n_real=n_real,
            n_supervised=n_supervised,
            n_present_ids=n_present_ids,
        ),
        negatives=negatives,
        catalog=catalog,
    )
    return step_flops(model, shape)


def ranking_flops(
    model: nn.Module,
    n_users: int,
    mode: str = "full",
    *,
    item_chunk: int = 65536,
    user_chunk: int = 4096,
) -> FlopCount:
    """Forward FLOPs of ranking ``n_users`` user vectors with ``evaluation.target_ranks``.

    The user vectors come from ``eval_step`` (count that step with ``last_step_flops``);
    this counts the ranking after it, with ``model.item_embeddings`` as ``item_fn``: the
    item encoder on the candidates (``n_items - 1`` real items, or N for ``sampled:N``) and
    the users' targets, and per (candidate chunk of C, user chunk of u) one matmul
    ``[u, D] x [D, C + u]`` (the targets' scores ride along in every chunk).

    Raises:
        ValueError: a malformed ``mode`` (see ``evaluation.parse_eval_mode``).
    """
    from recbole_fork.evaluation import parse_eval_mode

    kind, n_sampled = parse_eval_mode(mode)
    n_candidates = int(model.n_items) - 1 if kind == "full" else int(n_sampled)
    d = int(model.backbone.hidden_size)
    n_users = int(n_users)
    full, rest = divmod(n_users, user_chunk)
    users_squared = full * user_chunk**2 + rest**2  # sum of u^2 over the user chunks
    n_chunks = math.ceil(n_candidates / item_chunk)
    return FlopCount(
        item_encoder=item_encoder_flops(model.item_encoder, n_candidates + n_users),
        scoring=2 * d * (n_users * n_candidates + n_chunks * users_squared),
    )


__all__ = [
    "TRAIN_FLOPS_MULTIPLIER",
    "FlopCount",
    "StepShape",
    "estimate_embedded_ids",
    "estimate_step_flops",
    "expected_new_ids_bound",
    "item_encoder_flops",
    "item_encoder_flops_per_id",
    "ranking_flops",
    "scoring_flops",
    "step_flops",
]
