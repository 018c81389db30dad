"""``ForkSeqModel``: item encoder + backbone + loss + negative sampler, as one RecBole model.

A model file says which backbone it uses (``settings_class`` and ``backbone_class``);
everything else is shared. The backbone contract is in DESIGN.md ("Backbones").

Training is single pass (REFERENCE section 1): each sequence is encoded once, the negatives
of a batch are sampled once, and every item the step needs (inputs, targets, negatives) is
embedded once, as the unique set of their ids; the scores then come from batched matmuls
inside the loss. With ``train_mode: all_positions`` every real position is a training
example, so one pass over a sequence of length L yields up to L examples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_fork import compat
from recbole_fork.encoders import Catalog, TextItemEncoder, build_item_encoder
from recbole_fork.flops import FlopCount, StepShape, step_flops
from recbole_fork.losses import build_loss
from recbole_fork.sampling import build_sampler
from recbole_fork.settings import ModelSpec, Settings

compat.apply()  # RecBole's numpy 2 / pandas 3 fixes, before RecBole is used


class ForkSeqModel(SequentialRecommender):
    """Base of the fork's sequential models.

    A model file defines its backbone's settings slice and module and names them here:
    ``settings_class`` (a ``Settings`` subclass with ``describe()``) and ``backbone_class``
    (built as ``backbone_class(settings)``). Everything else is shared.

    Args:
        spec: the model's settings (``RunSettings.spec``): backbone, item encoder, loss,
            sampler and RecBole's field names.
        catalog: item count and item text (``recbole_fork.data.catalog_from_dataset``, or a
            checkpoint's own tables when serving).
        item_counts: training interactions per item id, int ``[n_items]``, for popularity
            samplers and logQ correction (``SeqData.item_counts``); None counts each item
            once (uniform), for models that never train (serving, tests of the forward pass).

    Raises:
        ConfigError: more negatives requested than the catalog holds, or text fields the
            catalog lacks.
    """

    settings_class: type[Settings]
    backbone_class: type[nn.Module]
    # What the last training_loss / eval_step ran (see last_step_shape); class-level
    # defaults so that a model that has not run a step reads None.
    _pending_step: tuple | None = None
    _last_step: StepShape | None = None

    def __init__(
        self, spec: ModelSpec, catalog: Catalog, item_counts: np.ndarray | None = None
    ) -> None:
        # RecBole's SequentialRecommender.__init__ reads its Config; the fork's models are
        # built from their settings, so only what its methods use is set here.
        super(SequentialRecommender, self).__init__()
        self.spec = spec
        self.fields = spec.fields
        self.ITEM_ID = spec.fields.ITEM_ID_FIELD
        self.USER_ID = spec.fields.USER_ID_FIELD
        self.ITEM_SEQ = self.ITEM_ID + spec.fields.LIST_SUFFIX
        self.ITEM_SEQ_LEN = spec.fields.ITEM_LIST_LENGTH_FIELD
        self.POS_ITEM_ID = self.ITEM_ID
        self.NEG_ITEM_ID = spec.fields.NEG_PREFIX + self.ITEM_ID
        self.max_seq_length = spec.backbone.max_seq_length
        self.n_items = catalog.n_items
        self.item_encoder = build_item_encoder(spec.encoder, catalog)
        self._init_item_encoder(spec.encoder.initializer_range)
        self.backbone = self.backbone_class(spec.backbone)
        if item_counts is None:
            item_counts = np.ones(self.n_items, dtype=np.int64)
            item_counts[0] = 0
        self.item_counts = np.asarray(item_counts)
        self.loss_fn = build_loss(spec.loss)
        self.sampler = (
            build_sampler(spec.sampler, self.item_counts) if self.loss_fn.needs_negatives else None
        )
        # Only for RecBole's calculate_loss path; the fork's trainer passes its own generator.
        self._recbole_generator: torch.Generator | None = None

    def _init_item_encoder(self, std: float) -> None:
        """N(0, std) tables and adapter weights, zero biases, zero padding rows.

        PyTorch's default N(0, 1) embedding init gives dot-product logits of order D at the
        start (loss far above log(K + 1)); RecBole's SASRec uses N(0, 0.02), as here.
        """
        for module in self.item_encoder.modules():
            if isinstance(module, nn.Embedding | nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    # ----- encoding -----------------------------------------------------------------------

    @property
    def normalize(self) -> bool:
        """True when user states and item embeddings are L2-normalised (backbone's choice)."""
        return bool(getattr(self.backbone, "normalize", False))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def _time_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        """The backbone's keyword arguments beyond ``(x, mask)``: the batch's ``time_seq``
        (HSTU adds the times of the predicted events)."""
        return {"time_seq": batch.get("time_seq")}

    def _contextualise(
        self, x: torch.Tensor, item_seq: torch.Tensor, times: dict[str, torch.Tensor | None]
    ) -> torch.Tensor:
        mask = item_seq > 0  # [B, L]
        return self.backbone(x, mask, **times)  # [B, L, D]

    def encode(self, item_seq: torch.Tensor, time_seq: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence states: item_seq int64 [B, L] (0 = padding) -> float [B, L, D].

        The state at t summarises items ``<= t`` (causal); it is the user vector for
        predicting the item at t + 1. Not normalised (see ``user_vectors``). A model whose
        backbone needs more than the item times (HSTU with ``hstu_time_bias: next``) is
        encoded from a whole batch by ``user_vectors`` instead.
        """
        batch = {"item_seq": item_seq, "time_seq": time_seq}
        return self._contextualise(self.item_encoder(item_seq), item_seq, self._time_inputs(batch))

    def item_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Candidate embeddings of item ids (int64, any shape) -> ``[..., D]``.

        L2-normalised when the backbone says ``normalize``.
        """
        return self._norm(self.item_encoder(ids))

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """User vectors of an evaluation batch: the state at position ``seq_len - 1`` -> [B, D]."""
        item_seq = batch["item_seq"]
        x = self.item_encoder(item_seq)
        states = self._contextualise(x, item_seq, self._time_inputs(batch))  # [B, L, D]
        last = (batch["seq_len"] - 1).clamp(min=0)
        return self._norm(self.gather_indexes(states, last))  # [B, D]

    # ----- losses -------------------------------------------------------------------------

    def _embed_step(
        self, item_seq: torch.Tensor, pos_ids: torch.Tensor, generator: torch.Generator | None
    ) -> tuple:
        """Sample negatives once and embed inputs, targets and negatives in ONE encoder call.

        Returns ``(x [B, L, D] input embeddings, pos_emb [N, D], neg_ids [K] | [N, K] | None,
        neg_emb [..., D] | None, all_emb [n_items, D] | None)``; candidate embeddings are
        normalised when the backbone says so, input embeddings are not.
        """
        if self.sampler is None:
            # Full softmax: the whole catalog is embedded once and everything indexes into it.
            all_emb = self.item_encoder(torch.arange(self.n_items, device=item_seq.device))
            all_n = self._norm(all_emb)  # [n_items, D]
            self._n_embedded = self.n_items
            return all_emb[item_seq], all_n[pos_ids], None, None, all_n
        neg_ids = self.sampler.sample(pos_ids, generator).to(pos_ids.device)  # [K] or [N, K]
        n, k = pos_ids.numel(), neg_ids.numel()
        uniq, inverse = torch.unique(
            torch.cat([pos_ids.reshape(-1), neg_ids.reshape(-1), item_seq.reshape(-1)]),
            return_inverse=True,
        )
        emb = self.item_encoder(uniq)  # [U, D]: each needed item embedded exactly once
        self._n_embedded = uniq.numel()  # the size is known on the host once unique returns
        x = emb[inverse[n + k :]].view(*item_seq.shape, -1)  # [B, L, D]
        cand = self._norm(emb)  # normalise the U unique rows once, not the gathered [N, K, D]
        pos_emb = cand[inverse[:n]]  # [N, D]
        neg_emb = cand[inverse[n : n + k]].view(*neg_ids.shape, -1)  # [K | N,K, D]
        return x, pos_emb, neg_ids, neg_emb, None

    def _score(self, user, pos_ids, pos_emb, neg_ids, neg_emb, all_emb) -> torch.Tensor:
        """The configured loss of user vectors ``user`` [N, D] (normalised) against targets."""
        if self.sampler is None:
            return self.loss_fn(user, pos_ids, pos_emb, None, None, all_item_emb=all_emb)
        return self.loss_fn(
            user,
            pos_ids,
            pos_emb,
            neg_ids,
            neg_emb,
            log_q_pos=self.sampler.log_q(pos_ids),
            log_q_neg=self.sampler.log_q(neg_ids),
        )

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean loss over every position with ``target > 0`` of a training batch (DESIGN.md).

        Args:
            batch: ``item_seq``, ``target`` int64 [B, L], optional ``time_seq``,
                ``target_time`` (int64 [B, L], the time of each position's next item) and
                ``loss_scale`` (float scalar: the mean loss is multiplied by it).
            generator: torch generator for negative sampling (owned by the trainer).

        Raises:
            ValueError: the batch has no position with a target.
        """
        item_seq, target = batch["item_seq"], batch["target"]  # [B, L]
        sel = target > 0  # [B, L]
        if not bool(sel.any()):
            raise ValueError("training batch has no target (every `target` is 0)")
        pos_ids = target[sel]  # [N]
        x, pos_emb, neg_ids, neg_emb, all_emb = self._embed_step(item_seq, pos_ids, generator)
        states = self._contextualise(x, item_seq, self._time_inputs(batch))  # [B, L, D]
        user = self._norm(states[sel])  # [N, D]
        loss = self._score(user, pos_ids, pos_emb, neg_ids, neg_emb, all_emb)
        if "loss_scale" in batch:  # bucketed batches: the batch's share of the epoch's positions
            loss = loss * batch["loss_scale"]
        self._record_step(item_seq, pos_ids.numel(), neg_ids)
        return loss

    def eval_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """User vectors [B, D] and mean loss of an evaluation batch, from one encoder pass.

        The loss is the training loss at the last position (target = the held-out item),
        with negatives drawn from ``generator``.
        """
        item_seq, target = batch["item_seq"], batch["target"]  # [B, L], [B]
        x, pos_emb, neg_ids, neg_emb, all_emb = self._embed_step(item_seq, target, generator)
        states = self._contextualise(x, item_seq, self._time_inputs(batch))  # [B, L, D]
        user = self._norm(self.gather_indexes(states, (batch["seq_len"] - 1).clamp(min=0)))
        loss = self._score(user, target, pos_emb, neg_ids, neg_emb, all_emb)
        self._record_step(item_seq, target.numel(), neg_ids)
        return user, loss

    # ----- compute of the last step (recbole_fork.flops) ----------------------------------

    def _record_step(
        self, item_seq: torch.Tensor, n_supervised: int, neg_ids: torch.Tensor | None
    ) -> None:
        """Keep what the step just run had, for ``last_step_shape`` / ``last_step_flops``.

        Everything is a host integer already (shapes, ``numel``, the size of
        ``torch.unique``'s output) except the real-position count, which stays a 0-dim
        tensor until it is read, so that recording costs no GPU sync.
        """
        self._pending_step = (
            tuple(item_seq.shape),
            (item_seq > 0).sum(),  # [] real positions, read lazily
            int(n_supervised),
            int(self._n_embedded),
            None if neg_ids is None else tuple(neg_ids.shape),
        )
        self._last_step = None

    @property
    def last_step_shape(self) -> StepShape | None:
        """What the last ``training_loss`` or ``eval_step`` ran: batch size, trimmed width,
        real and supervised positions, ids embedded, negatives' shape or catalog; None
        before the first step.

        The first read after a step fetches the real-position count from the device (one
        small copy; read it after the loss value has been fetched and it is already there).
        """
        if self._last_step is None and self._pending_step is not None:
            (batch_size, width), n_real, n_supervised, n_embedded, negatives = self._pending_step
            self._last_step = StepShape(
                batch_size=batch_size,
                width=width,
                n_real=int(n_real),
                n_supervised=n_supervised,
                n_embedded=n_embedded,
                negatives=negatives,
                catalog=self.n_items if negatives is None else None,
            )
            self._pending_step = None
        return self._last_step

    @property
    def last_step_flops(self) -> FlopCount | None:
        """FORWARD FLOPs of the last ``training_loss`` or ``eval_step``, split into backbone,
        item encoder and scoring (``recbole_fork.flops``); None before the first step.

        A training step costs ``last_step_flops.training()`` (3 x forward); an evaluation
        step is forward only (its full ranking is ``flops.ranking_flops``).
        """
        shape = self.last_step_shape
        return None if shape is None else step_flops(self, shape)

    # ----- RecBole's model interface (thin wrappers) --------------------------------------

    def _recbole_batch(self, interaction) -> dict[str, torch.Tensor]:
        item_seq = interaction[self.ITEM_SEQ]
        seq_len = interaction[self.ITEM_SEQ_LEN]
        return {"item_seq": item_seq, "seq_len": seq_len}

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """RecBole's ``forward``: user vectors [B, D] at position ``item_seq_len - 1``."""
        return self.user_vectors({"item_seq": item_seq, "seq_len": item_seq_len})

    def calculate_loss(self, interaction) -> torch.Tensor:
        """RecBole's training hook: loss at the last position of each RecBole row."""
        batch = self._recbole_batch(interaction)
        target = torch.zeros_like(batch["item_seq"])  # [B, L]
        rows = torch.arange(target.shape[0], device=target.device)
        target[rows, (batch["seq_len"] - 1).clamp(min=0)] = interaction[self.POS_ITEM_ID]
        # The state at position t predicts item t + 1: shift RecBole's "next item" target onto
        # the last input position.
        if self._recbole_generator is None:
            self._recbole_generator = torch.Generator(device=target.device).manual_seed(0)
        train_batch = {"item_seq": batch["item_seq"], "target": target}
        # The times travel as in an evaluation batch: the target's time [B] at the last input.
        train_batch.update({k: batch[k] for k in ("time_seq", "target_time") if k in batch})
        return self.training_loss(train_batch, self._recbole_generator)

    def predict(self, interaction) -> torch.Tensor:
        """RecBole's point-wise scores of ``interaction[ITEM_ID]`` -> [B]."""
        user = self.user_vectors(self._recbole_batch(interaction))  # [B, D]
        items = self.item_embeddings(interaction[self.ITEM_ID])  # [B, D]
        return (user * items).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """RecBole's full-ranking scores -> [B, n_items]."""
        user = self.user_vectors(self._recbole_batch(interaction))  # [B, D]
        items = self.item_embeddings(torch.arange(self.n_items, device=user.device))  # [n, D]
        return user @ items.T

    # ----- description, size, cost --------------------------------------------------------

    def describe(self) -> str:
        """Short name from the hyperparameters, e.g. ``sasrec-d64-l2-h2-text``."""
        return self.spec.describe()

    def flops_per_token(self) -> int:
        """Forward FLOPs per input position at ``max_seq_length``: backbone plus item encoder.

        The text encoder's adapter costs ``2 * (n_fields * E) * D`` per embedded item (token
        table lookups and sums are not counted). Scoring against targets and negatives depends
        on the loss and K and is not included.
        """
        flops = int(self.backbone.flops_per_token(self.max_seq_length))
        for module in self.item_encoder.modules():
            if isinstance(module, TextItemEncoder):
                flops += 2 * module.adapter.in_features * module.adapter.out_features
        return flops

    def embedding_parameter_names(self) -> set[str]:
        """Full names of the item-ID and text-token tables (what ``params_embedding`` counts)."""
        return {f"item_encoder.{n}" for n in self.item_encoder.embedding_parameter_names()}

    def vocab(self) -> dict[str, list[str]]:
        """The item encoder's text vocabulary (empty for ``id``), for checkpoints."""
        return self.item_encoder.vocab()
