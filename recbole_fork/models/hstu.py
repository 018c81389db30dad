"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al., ICML 2024).

The backbone follows REFERENCE.md section 2 layer by layer:

    normed     = LayerNorm(x)                                  (no affine, eps 1e-6)
    u, v, q, k = split(SiLU(normed @ W_uvqk))                  (one weight, no bias)
    A          = SiLU(q k^T + rab) / N * causal_mask           (no softmax, no 1/sqrt(d))
    x          = x + Linear_o(dropout(u * LayerNorm(A v)))

`rab` is a relative attention bias, one per layer and shared by the heads: a learned
term per position offset plus a learned term per log-scaled time-gap bucket. The time gap
of query i and key j is ``hstu_time_bias``'s choice (REFERENCE section 6.1):

* ``next``: t_{i+1} - t_j, the time from each key to the event that position i predicts,
  as the reference code buckets it (it writes the target's time after the sequence). A
  training batch carries t_{i+1} as ``target_time`` [B, L]; an evaluation batch carries the
  held-out item's time as ``target_time`` [B], and the earlier positions' next times are
  the inputs' own. Nothing after the predicted event enters: only its time.
* ``own``: t_i - t_j, the query item's own time (no time of the predicted event is used).

The model class `HSTU` (item encoder + this backbone + loss) is at the end of the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recbole_fork.models.base import ForkSeqModel
from recbole_fork.settings import Settings, check_choice, check_range

# Time-gap buckets: floor(ln(gap) / 0.301), clamped to 0..128 (the paper's public code);
# 0.301 ~ log10(2), so a bucket spans a factor of exp(0.301) ~ 1.35 in the gap.
TIME_BUCKET_DIVISOR = 0.301
NUM_TIME_BUCKETS = 129
# Query times of the time bias: the predicted event's (the reference) or the query item's own.
TIME_BIAS_MODES = ("next", "own")
# Both LayerNorms of an HSTU layer use eps 1e-6 (the paper's public code).
LAYER_NORM_EPS = 1e-6


def time_buckets(dt: torch.Tensor) -> torch.Tensor:
    """Bucket time gaps for the relative attention bias.

    Args:
        dt: int64 tensor of any shape, time differences in seconds (sign ignored).

    Returns:
        int64 tensor of the same shape, `clamp(floor(ln(max(|dt|, 1)) / 0.301), 0, 128)`:
        gaps of 0 and 1 s fall in bucket 0, 10 s in bucket 7, 10^6 s in bucket 45.
    """
    # float64 so that large unix-second gaps and bucket edges are not rounded.
    gap = dt.abs().clamp(min=1).to(torch.float64)
    bucket = torch.floor(torch.log(gap) / TIME_BUCKET_DIVISOR).to(torch.int64)
    return bucket.clamp(0, NUM_TIME_BUCKETS - 1)


class RelativeAttentionBias(nn.Module):
    """Learned bias added to the attention scores, shared across heads.

    bias[b, i, j] = position_weight[(j - i) + N - 1] + time_weight[time_buckets(q_i - t_j)],
    where N = `max_seq_length`, t the item timestamps and q_i the query time (t_{i+1} or t_i,
    see ``hstu_time_bias`` in the module docstring).
    """

    def __init__(self, max_seq_length: int, use_position_bias: bool, use_time_bias: bool) -> None:
        super().__init__()
        self.max_seq_length = max_seq_length
        self.use_position_bias = use_position_bias
        self.use_time_bias = use_time_bias
        # Offsets j - i range over -(N-1) .. N-1: 2N-1 entries (the causal mask only ever
        # reads j <= i, but the paper's table keeps both signs).
        self.position_weight = (
            nn.Parameter(torch.empty(2 * max_seq_length - 1)) if use_position_bias else None
        )
        self.time_weight = nn.Parameter(torch.empty(NUM_TIME_BUCKETS)) if use_time_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) initialisation, as in the paper's public code."""
        for weight in (self.position_weight, self.time_weight):
            if weight is not None:
                nn.init.normal_(weight, mean=0.0, std=0.02)

    def forward(self, seq_len: int, buckets: torch.Tensor | None) -> torch.Tensor | float:
        """Bias for a batch: float [B or 1, L, L], or 0.0 when both terms are off.

        Args:
            seq_len: padded length L of the batch.
            buckets: int64 [B, L, L], `time_buckets(q_query - t_key)`; None when the time
                term is off.
        """
        bias: torch.Tensor | float = 0.0
        if self.position_weight is not None:
            pos = torch.arange(seq_len, device=self.position_weight.device)
            offset = pos[None, :] - pos[:, None] + self.max_seq_length - 1  # [L, L]
            bias = self.position_weight[offset].unsqueeze(0)  # [1, L, L]
        if self.time_weight is not None:
            bias = bias + self.time_weight[buckets]  # [B, L, L]
        return bias


class HSTULayer(nn.Module):
    """One HSTU block: pointwise aggregated attention with U gating, pre-norm residual."""

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        attention_dim: int,
        linear_dim: int,
        max_seq_length: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        use_position_bias: bool,
        use_time_bias: bool,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attention_dim = attention_dim
        self.linear_dim = linear_dim
        self.max_seq_length = max_seq_length
        # One D x (2*H*dv + 2*H*dqk) weight for u, v, q, k, no bias (paper, eq. 1).
        self.uvqk = nn.Linear(hidden_size, 2 * n_heads * (linear_dim + attention_dim), bias=False)
        self.output = nn.Linear(n_heads * linear_dim, hidden_size)
        self.rab = RelativeAttentionBias(max_seq_length, use_position_bias, use_time_bias)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)
        self.hidden_dropout = nn.Dropout(hidden_dropout_prob)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) for W_uvqk, Xavier-uniform for Linear_o (paper's public code)."""
        nn.init.normal_(self.uvqk.weight, mean=0.0, std=0.02)
        nn.init.xavier_uniform_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor, buckets: torch.Tensor | None
    ) -> torch.Tensor:
        """One block.

        Args:
            x: float [B, L, D].
            attn_mask: float [B, 1, L, L], 1 where query i may attend key j.
            buckets: int64 [B, L, L] time-gap buckets, or None without the time bias.

        Returns:
            float [B, L, D].
        """
        batch, seq_len, _ = x.shape
        hv, hq = self.n_heads * self.linear_dim, self.n_heads * self.attention_dim
        normed = F.layer_norm(x, (x.shape[-1],), eps=LAYER_NORM_EPS)  # [B, L, D]
        u, v, q, k = torch.split(F.silu(self.uvqk(normed)), [hv, hv, hq, hq], dim=-1)
        v = v.view(batch, seq_len, self.n_heads, self.linear_dim).transpose(1, 2)  # [B, H, L, dv]
        q = q.view(batch, seq_len, self.n_heads, self.attention_dim).transpose(
            1, 2
        )  # [B, H, L, dq]
        k = k.view(batch, seq_len, self.n_heads, self.attention_dim).transpose(
            1, 2
        )  # [B, H, L, dq]

        scores = q @ k.transpose(-1, -2)  # [B, H, L, L]
        bias = self.rab(seq_len, buckets)
        if isinstance(bias, torch.Tensor):
            scores = scores + bias.unsqueeze(1)  # bias [B|1, L, L] shared by the heads
        # Divide by N = max_seq_length, the length the paper pads every sequence to; a
        # fixed N keeps real positions independent of how much padding a batch carries.
        attn = F.silu(scores) / self.max_seq_length * attn_mask  # [B, H, L, L]
        attn = self.attn_dropout(attn)

        attended = (attn @ v).transpose(1, 2).reshape(batch, seq_len, hv)  # [B, L, H*dv]
        attended = F.layer_norm(attended, (hv,), eps=LAYER_NORM_EPS)
        return x + self.output(self.hidden_dropout(u * attended))  # [B, L, D]


@dataclass(frozen=True)
class HSTUSettings(Settings):
    """HSTU's backbone slice: the keys of ``properties/model/HSTU.yaml``."""

    hidden_size: int  # D
    n_layers: int  # HSTU blocks
    n_heads: int  # H
    attention_dim: int  # d_qk per head
    linear_dim: int  # d_v per head
    hidden_dropout_prob: float
    attn_dropout_prob: float
    max_seq_length: int  # N: positions, relative offsets (2N-1) and the 1/N attention scale
    use_time_bias: bool
    use_position_bias: bool
    hstu_time_bias: str  # next: bucket t_{i+1} - t_j (the reference) | own: t_i - t_j

    def __post_init__(self) -> None:
        check_choice("hstu_time_bias", self.hstu_time_bias, TIME_BIAS_MODES)
        for key in ("hidden_size", "n_layers", "n_heads", "attention_dim", "linear_dim"):
            check_range(key, getattr(self, key), low=1)
        check_range("max_seq_length", self.max_seq_length, low=1)
        for key in ("hidden_dropout_prob", "attn_dropout_prob"):
            check_range(key, getattr(self, key), low=0.0, high=1.0)

    describe_keys = ("hidden_size", "n_layers", "n_heads", "hstu_time_bias")

    def describe(self) -> str:
        """Short name from the hyperparameters, e.g. ``hstu-d50-l2-h1``; ``-own`` marks the
        query's own time in the time bias (the reference's ``next`` is unmarked)."""
        own = "-own" if self.use_time_bias and self.hstu_time_bias == "own" else ""
        return f"hstu-d{self.hidden_size}-l{self.n_layers}-h{self.n_heads}{own}"


class HSTUBackbone(nn.Module):
    """HSTU stack over item embeddings: scaling, positions, `n_layers` HSTU blocks.

    Input embeddings are multiplied by sqrt(D) and get a learned absolute position
    embedding (one per position 0 .. max_seq_length-1), then dropout. Padding positions
    are zeroed after the input and after every block, so they never carry values.
    """

    normalize = True  # the model L2-normalises user states and item embeddings

    def __init__(self, settings: HSTUSettings) -> None:
        super().__init__()
        self.settings = settings
        self.hidden_size = settings.hidden_size
        self.n_layers = settings.n_layers
        self.n_heads = settings.n_heads
        self.attention_dim = settings.attention_dim
        self.linear_dim = settings.linear_dim
        self.max_seq_length = settings.max_seq_length
        self.use_time_bias = settings.use_time_bias
        self.time_bias = settings.hstu_time_bias
        self.position_embedding = nn.Embedding(settings.max_seq_length, settings.hidden_size)
        self.input_dropout = nn.Dropout(settings.hidden_dropout_prob)
        self.layers = nn.ModuleList(
            HSTULayer(
                settings.hidden_size,
                settings.n_heads,
                settings.attention_dim,
                settings.linear_dim,
                settings.max_seq_length,
                settings.hidden_dropout_prob,
                settings.attn_dropout_prob,
                settings.use_position_bias,
                settings.use_time_bias,
            )
            for _ in range(settings.n_layers)
        )
        # Truncated normal with std sqrt(1/D) for positions (the paper's public code).
        std = math.sqrt(1.0 / settings.hidden_size)
        nn.init.trunc_normal_(self.position_embedding.weight, std=std, a=-2 * std, b=2 * std)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        time_seq: torch.Tensor | None = None,
        query_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode a right-padded batch causally.

        Args:
            x: float [B, L, D] item embeddings.
            mask: bool [B, L], True at real items.
            time_seq: int64 [B, L] unix seconds (needed when `use_time_bias`).
            query_time: int64 [B, L], the time of the event each position predicts (t_{i+1};
                needed when `use_time_bias` and `hstu_time_bias` is ``next``; ignored
                otherwise). ``HSTU.query_times`` builds it from a batch.

        Returns:
            float [B, L, D]; row t depends only on inputs at positions <= t (and, with
            ``next``, on ``query_time[:, t]``); zero at padding.

        Raises:
            ValueError: L exceeds `max_seq_length`, or `time_seq` (or, with ``next``,
                `query_time`) is missing with the time bias on.
        """
        seq_len = x.shape[1]
        if seq_len > self.max_seq_length:
            raise ValueError(
                f"HSTU: batch length {seq_len} exceeds max_seq_length {self.max_seq_length}; "
                "raise max_seq_length or cut the sequences"
            )
        keep = mask.unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        positions = self.position_embedding.weight[:seq_len]  # [L, D]
        h = self.input_dropout(x * math.sqrt(self.hidden_size) + positions) * keep  # [B, L, D]

        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device).tril()  # [L, L]
        attn_mask = (causal[None] & mask[:, None, :]).unsqueeze(1).to(x.dtype)  # [B, 1, L, L]
        buckets = None
        if self.use_time_bias:
            if time_seq is None:
                raise ValueError(
                    "HSTU: use_time_bias is true but the batch has no time_seq; "
                    "pass time_seq or set use_time_bias: false"
                )
            query = time_seq
            if self.time_bias == "next":
                if query_time is None:
                    raise ValueError(
                        "HSTU: hstu_time_bias is 'next' but the batch has no query_time (the "
                        "time of each predicted event: a batch's target_time); pass it or set "
                        "hstu_time_bias: own"
                    )
                query = query_time
            # Same buckets for every layer: query time minus key time.
            buckets = time_buckets(query[:, :, None] - time_seq[:, None, :])  # [B, L, L]
        for layer in self.layers:
            h = layer(h, attn_mask, buckets) * keep
        return h

    def describe(self) -> str:
        """Short name from the hyperparameters (``HSTUSettings.describe``)."""
        return self.settings.describe()

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per position for a padded length `seq_len` (a matmul is 2*m*n*k).

        Per layer and position: the uvqk projection 2*D*(2*H*dv + 2*H*dqk), the scores
        q k^T against all `seq_len` keys 2*H*dqk*L, the aggregation A v 2*H*dv*L, and the
        output projection 2*H*dv*D. The dense L x L products are counted in full, as the
        kernel computes them before masking. Element-wise work, norms and the relative
        bias are left out (they are O(1) per entry).
        """
        d, h = self.hidden_size, self.n_heads
        dv, dq = self.linear_dim, self.attention_dim
        per_layer = (
            2 * d * (2 * h * dv + 2 * h * dq)  # uvqk projection
            + 2 * h * dq * seq_len  # q k^T
            + 2 * h * dv * seq_len  # A v
            + 2 * h * dv * d  # Linear_o
        )
        return self.n_layers * per_layer

    def forward_flops(self, batch_size: int, width: int, n_real: int) -> int:
        """Forward FLOPs of one batch as run: ``[batch_size, width]`` (2 per multiply-add).

        Every position of the batch runs, padding within the (trimmed) width included. Per
        layer: the uvqk projection ``2 B L D (2 H dv + 2 H dqk)``, the output projection
        ``2 B L H dv D``, and the dense ``L x L`` products ``q k^T`` ``2 B H L^2 dqk`` and
        ``A v`` ``2 B H L^2 dv``, quadratic in the width run. Element-wise work, norms and
        the relative bias are left out. ``n_real`` is not used. Equals
        ``batch_size * width * flops_per_token(width)``.
        """
        del n_real  # padding positions run like real ones (and are zeroed afterwards)
        b, n, d, h = batch_size, width, self.hidden_size, self.n_heads
        dv, dq = self.linear_dim, self.attention_dim
        per_layer = (
            2 * b * n * d * (2 * h * dv + 2 * h * dq)  # uvqk projection
            + 2 * b * h * n * n * dq  # q k^T
            + 2 * b * h * n * n * dv  # A v
            + 2 * b * n * h * dv * d  # Linear_o
        )
        return self.n_layers * per_layer


class HSTU(ForkSeqModel):
    """HSTU backbone + the fork's item encoders, single-pass sampled losses and evaluation.

    The backbone says `normalize = True`, so user states and item embeddings are
    L2-normalised and scores are cosines; pair it with a low `temperature` (the paper: 0.05).
    """

    settings_class = HSTUSettings
    backbone_class = HSTUBackbone

    def _time_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        """The backbone's time arguments: ``time_seq`` and, with ``next``, ``query_time``."""
        out = super()._time_inputs(batch)
        if self.backbone.use_time_bias and self.backbone.time_bias == "next":
            out["query_time"] = query_times(batch)
        return out

    def _recbole_batch(self, interaction: Any) -> dict[str, torch.Tensor]:
        """RecBole's rows plus their timestamps, which the time bias needs."""
        batch = super()._recbole_batch(interaction)
        # RecBole's interactions carry the timestamps of a sequence as 'timestamp_list' and
        # the target's own time as 'timestamp'.
        time_seq_field = f"{self.fields.TIME_FIELD}{self.fields.LIST_SUFFIX}"
        if time_seq_field in interaction:
            batch["time_seq"] = interaction[time_seq_field].long()
        if self.fields.TIME_FIELD in interaction:
            batch["target_time"] = interaction[self.fields.TIME_FIELD].long()
        return batch


def query_times(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The time of the event each position predicts: int64 [B, L] (0 at padding), or None.

    A training batch's ``target_time`` [B, L] is that already (t_{i+1} at every real input
    position). An evaluation batch's ``target_time`` [B] is the held-out item's time: the
    last real position predicts it, and every earlier position i predicts input i + 1,
    whose time is ``time_seq[:, i + 1]``. None when the batch has no ``time_seq`` or no
    ``target_time``.
    """
    time_seq, target_time = batch.get("time_seq"), batch.get("target_time")
    if time_seq is None or target_time is None:
        return None
    if target_time.dim() == 2:
        return target_time
    real = batch["item_seq"] > 0  # [B, L], right-padded
    nxt = torch.zeros_like(time_seq)
    nxt[:, :-1] = time_seq[:, 1:]
    last = (real.sum(dim=1) - 1).clamp(min=0)  # [B]
    rows = torch.arange(time_seq.shape[0], device=time_seq.device)
    nxt[rows, last] = target_time.to(time_seq.dtype)
    return torch.where(real, nxt, torch.zeros_like(nxt))


__all__ = ["HSTU", "HSTUBackbone", "HSTUSettings", "TIME_BIAS_MODES", "query_times", "time_buckets"]
