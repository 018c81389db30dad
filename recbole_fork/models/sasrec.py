"""SASRec (Kang and McAuley, 2018) as a fork backbone, and the ``SASRecX`` model.

Hyperparameter names follow RecBole's ``SASRec`` (``hidden_size``, ``n_layers``, ``n_heads``,
``inner_size``, ``hidden_dropout_prob``, ``attn_dropout_prob``, ``hidden_act``,
``layer_norm_eps``, ``max_seq_length``), plus ``layer_norm_position``:

* ``post`` (RecBole's layout): ``x = LN(emb + pos)``, then per block
  ``x = LN(x + drop(attn(x)))``, ``x = LN(x + drop(ffn(x)))``.
* ``pre``: per block ``x = x + drop(attn(LN(x)))``, ``x = x + drop(ffn(LN(x)))``, and one
  final LN. Same parameter count as ``post`` (the input LN becomes the final LN).

and ``position_order``:

* ``forward`` (RecBole's): item t of a window gets position embedding t.
* ``reverse``: item t of a window of n real items gets position ``n - 1 - t``, so the last
  item always has position 0, as in the original SASRec, whose inputs are left-padded to
  ``max_seq_length``. The output at t then depends on how many items follow t (never on
  which items they are); at prediction time the last item is always position 0.

Like RecBole (and unlike the original TensorFlow SASRec) inputs are not scaled by sqrt(D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recbole_fork.models.base import ForkSeqModel
from recbole_fork.settings import ConfigError, Settings, check_choice, check_range

ACTIVATIONS = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
LAYER_NORM_POSITIONS = ("post", "pre")
POSITION_ORDERS = ("forward", "reverse")


class _SelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v, output projections."""

    def __init__(self, hidden_size: int, n_heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = attn_dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)  # [B, H, L, D/H]

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # [B, H, L, D/H]
        return self.out(y.transpose(1, 2).reshape(b, n, d))  # [B, L, D]


class _Block(nn.Module):
    """One transformer block: attention and feed-forward, each with residual and LayerNorm."""

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        inner_size: int,
        hidden_dropout: float,
        attn_dropout: float,
        act: str,
        eps: float,
        pre_norm: bool,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.attention = _SelfAttention(hidden_size, n_heads, attn_dropout)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            ACTIVATIONS[act](),
            nn.Linear(inner_size, hidden_size),
        )
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attn_norm(x), attn_mask))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(x + self.dropout(self.attention(x, attn_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


@dataclass(frozen=True)
class SASRecSettings(Settings):
    """SASRecX's backbone slice: the keys of ``properties/model/SASRecX.yaml`` plus
    ``max_seq_length`` and ``initializer_range`` (``data.yaml``, ``training.yaml``)."""

    hidden_size: int  # D, the width of item embeddings and hidden states
    n_layers: int  # transformer blocks
    n_heads: int  # attention heads per block; must divide hidden_size
    inner_size: int  # feed-forward width
    hidden_dropout_prob: float
    attn_dropout_prob: float
    hidden_act: str  # a name of ACTIVATIONS
    layer_norm_eps: float
    initializer_range: float  # std of the N(0, std) init of linear and embedding weights
    layer_norm_position: str  # post (RecBole's) | pre
    position_order: str  # forward (RecBole's) | reverse (the last item gets position 0)
    max_seq_length: int  # L, the position table's size

    def __post_init__(self) -> None:
        for key in ("hidden_size", "n_layers", "n_heads", "inner_size", "max_seq_length"):
            check_range(key, getattr(self, key), low=1)
        if self.hidden_size % self.n_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} must be divisible by n_heads {self.n_heads}"
            )
        check_choice("hidden_act", self.hidden_act, ACTIVATIONS)
        check_choice("layer_norm_position", self.layer_norm_position, LAYER_NORM_POSITIONS)
        check_choice("position_order", self.position_order, POSITION_ORDERS)
        for key in ("hidden_dropout_prob", "attn_dropout_prob"):
            check_range(key, getattr(self, key), low=0.0, high=1.0)

    # Keys that describe() shows; a run name adds the other varied keys itself.
    describe_keys = ("hidden_size", "n_layers", "n_heads", "layer_norm_position", "position_order")

    def describe(self) -> str:
        """Short name, e.g. ``sasrec-d64-l2-h2``; ``-pre`` / ``-rev`` mark pre-norm and
        reverse positions, so run names and checkpoint folders of the variants differ."""
        name = f"sasrec-d{self.hidden_size}-l{self.n_layers}-h{self.n_heads}"
        pre = "-pre" if self.layer_norm_position == "pre" else ""
        return name + pre + ("-rev" if self.position_order == "reverse" else "")


class SASRecBackbone(nn.Module):
    """Causal transformer over item embeddings with learned position embeddings.

    Follows the backbone contract of DESIGN.md: ``forward(x [B, L, D], mask [B, L],
    time_seq=None) -> [B, L, D]``, output at t depending only on inputs at positions <= t.
    """

    normalize = False

    def __init__(self, settings: SASRecSettings) -> None:
        super().__init__()
        self.settings = settings
        d = settings.hidden_size
        self.reverse_positions = settings.position_order == "reverse"
        self.hidden_size, self.n_layers, self.n_heads = d, settings.n_layers, settings.n_heads
        self.inner_size, self.max_seq_length = settings.inner_size, settings.max_seq_length
        self.pre_norm = settings.layer_norm_position == "pre"
        self.position_embedding = nn.Embedding(settings.max_seq_length, d)
        # post: LN on the input (RecBole); pre: LN on the output of the last block.
        self.norm = nn.LayerNorm(d, eps=settings.layer_norm_eps)
        self.dropout = nn.Dropout(settings.hidden_dropout_prob)
        self.blocks = nn.ModuleList(
            _Block(
                d,
                settings.n_heads,
                settings.inner_size,
                settings.hidden_dropout_prob,
                settings.attn_dropout_prob,
                settings.hidden_act,
                settings.layer_norm_eps,
                self.pre_norm,
            )
            for _ in range(settings.n_layers)
        )
        self.apply(lambda m: _init_weights(m, settings.initializer_range))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, time_seq: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Contextualise item embeddings ``x`` [B, L, D]; ``mask`` [B, L] True at real items.

        ``time_seq`` is accepted for the contract and ignored (SASRec has no time signal).

        Raises:
            ValueError: L longer than ``max_seq_length``.
        """
        _, n, _ = x.shape
        if n > self.max_seq_length:
            raise ValueError(f"sequence length {n} exceeds max_seq_length {self.max_seq_length}")
        t = torch.arange(n, device=x.device)  # [L]
        if self.reverse_positions:
            # Windows are right-padded: n_real - 1 - t at real items, clamped to 0 at padding.
            t = (mask.sum(dim=1, keepdim=True) - 1 - t).clamp(min=0)  # [B, L]
        h = x + self.position_embedding(t)  # [B, L, D] (or [L, D] broadcast)
        if not self.pre_norm:
            h = self.norm(h)
        h = self.dropout(h)  # [B, L, D]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # [L, L]
        # True = may attend. The diagonal is always allowed so a padded query never sees an
        # all-False row (softmax over nothing gives NaN); padded outputs are never used.
        attn_mask = (causal & mask[:, None, None, :]) | torch.eye(
            n, dtype=torch.bool, device=x.device
        )
        for block in self.blocks:
            h = block(h, attn_mask)  # [B, L, D]
        return self.norm(h) if self.pre_norm else h

    def describe(self) -> str:
        """Short name from the hyperparameters (``SASRecSettings.describe``)."""
        return self.settings.describe()

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per position (2 per multiply-add), matmuls only.

        Per block: q, k, v, out projections ``4 * 2 * D^2``; scores and weighted sum against
        ``seq_len`` keys ``2 * 2 * seq_len * D`` (causal masking not subtracted, as in the
        usual 6ND-style accounting); feed-forward ``2 * 2 * D * inner``.
        """
        d, i = self.hidden_size, self.inner_size
        per_block = 8 * d * d + 4 * seq_len * d + 4 * d * i
        return self.n_layers * per_block

    def forward_flops(self, batch_size: int, width: int, n_real: int) -> int:
        """Forward FLOPs of one batch as run: ``[batch_size, width]`` (2 per multiply-add).

        Every position of the batch runs, padding within the (trimmed) width included. Per
        block: q, k, v, out projections ``4 * 2 * B L D^2``; feed-forward ``2 * 2 * B L D I``;
        scores ``q k^T`` and their weighted sum of ``v``, ``2 * 2 * B L^2 D`` over all heads,
        quadratic in the width run (SDPA computes the masked entries too). ``n_real`` is not
        used. Equals ``batch_size * width * flops_per_token(width)``.
        """
        del n_real  # padding positions run like real ones
        b, n, d, i = batch_size, width, self.hidden_size, self.inner_size
        per_block = 8 * b * n * d * d + 4 * b * n * d * i + 4 * b * n * n * d
        return self.n_layers * per_block


def _init_weights(module: nn.Module, std: float) -> None:
    """RecBole SASRec's init: N(0, std) for linear and embedding weights, zero biases."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SASRecX(ForkSeqModel):
    """SASRec backbone + the fork's item encoders, single-pass sampled losses and evaluation."""

    settings_class = SASRecSettings
    backbone_class = SASRecBackbone


__all__ = ["SASRecBackbone", "SASRecSettings", "SASRecX"]
