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

import torch
import torch.nn.functional as F
from torch import nn

from recbole_fork.models.base import ForkSeqModel

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


class SASRecBackbone(nn.Module):
    """Causal transformer over item embeddings with learned position embeddings.

    Follows the backbone contract of DESIGN.md: ``forward(x [B, L, D], mask [B, L],
    time_seq=None) -> [B, L, D]``, output at t depending only on inputs at positions <= t.

    Raises:
        ValueError: ``hidden_size`` not divisible by ``n_heads``, unknown ``hidden_act``,
            ``layer_norm_position`` or ``position_order``.
    """

    normalize = False

    def __init__(
        self,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int = 256,
        hidden_dropout_prob: float = 0.5,
        attn_dropout_prob: float = 0.5,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        max_seq_length: int = 50,
        layer_norm_position: str = "post",
        initializer_range: float = 0.02,
        position_order: str = "forward",
    ) -> None:
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by n_heads {n_heads}")
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"unknown hidden_act {hidden_act!r}; valid: {sorted(ACTIVATIONS)}")
        if layer_norm_position not in LAYER_NORM_POSITIONS:
            raise ValueError(
                f"unknown layer_norm_position {layer_norm_position!r}; "
                f"valid: {list(LAYER_NORM_POSITIONS)}"
            )
        if position_order not in POSITION_ORDERS:
            raise ValueError(
                f"unknown position_order {position_order!r}; valid: {list(POSITION_ORDERS)}"
            )
        self.reverse_positions = position_order == "reverse"
        self.hidden_size, self.n_layers, self.n_heads = hidden_size, n_layers, n_heads
        self.inner_size, self.max_seq_length = inner_size, max_seq_length
        self.pre_norm = layer_norm_position == "pre"
        self.position_embedding = nn.Embedding(max_seq_length, hidden_size)
        # post: LN on the input (RecBole); pre: LN on the output of the last block.
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.blocks = nn.ModuleList(
            _Block(
                hidden_size,
                n_heads,
                inner_size,
                hidden_dropout_prob,
                attn_dropout_prob,
                hidden_act,
                layer_norm_eps,
                self.pre_norm,
            )
            for _ in range(n_layers)
        )
        self.apply(lambda m: _init_weights(m, initializer_range))

    @classmethod
    def from_config(cls, config) -> SASRecBackbone:
        """Build from a config holding RecBole's SASRec keys plus ``layer_norm_position``."""
        return cls(
            hidden_size=config["hidden_size"],
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=float(config["layer_norm_eps"]),
            max_seq_length=config["MAX_ITEM_LIST_LENGTH"],
            layer_norm_position=config["layer_norm_position"],
            initializer_range=config["initializer_range"],
            # A config without the key (one saved before it existed) reads it as None.
            position_order=config["position_order"] or "forward",
        )

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
        """Short name, e.g. ``sasrec-d64-l2-h2``; ``-pre`` / ``-rev`` mark pre-norm and
        reverse positions, so run names and checkpoint folders of the variants differ."""
        name = f"sasrec-d{self.hidden_size}-l{self.n_layers}-h{self.n_heads}"
        return name + ("-pre" if self.pre_norm else "") + ("-rev" if self.reverse_positions else "")

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

    def build_backbone(self, config) -> nn.Module:
        """A :class:`SASRecBackbone` from ``config``."""
        return SASRecBackbone.from_config(config)


__all__ = ["SASRecBackbone", "SASRecX"]
