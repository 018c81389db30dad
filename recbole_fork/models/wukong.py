"""Wukong-style sequential backbone (after Zhang et al., 2024, "Towards a Scaling Law for
Large-Scale Recommendation"), REFERENCE.md section 3.

Wukong was published for click-through-rate prediction over n sparse-feature
embeddings. Here the n features at position t are the last `n_features` item
embeddings up to and including t (slot 0 = the item at t, slot j = the item at t-j),
each plus a learned slot embedding; absent slots (history shorter than the window)
are zero vectors. The stack runs on every real position at once and a head MLP turns
the final [n, d] features into a d-dimensional user vector, scored against item
embeddings by dot product. The window ends at t, so the model is causal by construction.

One layer over X_i [n_i, d]:

    FMB = reshape(MLP(LayerNorm(flatten(X_i (X_i^T Y)))), [n_F, d])   Y: [n_i, k]
    LCB = W_L X_i                                                   W_L: [n_L, n_i]
    X_{i+1} = LayerNorm(concat(FMB, LCB) + residual(X_i))

with residual(X) = X when n_F + n_L = n_i, else W_R X (W_R: [n_F + n_L, n_i]).

The model class `WukongSeq` (item encoder + this backbone + loss) is at the end of the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recbole_fork.models.base import ForkSeqModel
from recbole_fork.settings import ConfigError, Settings, check_range


def fm_optimized(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Factorization-machine interactions projected to rank k, in O(n*d*k).

    Args:
        x: float [R, n, d] feature embeddings.
        y: float [n, k] learned projection.

    Returns:
        float [R, n, k] equal to (x x^T) y, computed as x (x^T y) so the n x n matrix of
        pairwise dot products is never formed.
    """
    return x @ (x.transpose(1, 2) @ y)  # [R, n, d] @ [R, d, k] -> [R, n, k]


def fm_naive(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference form of `fm_optimized`: all pairwise dot products, then the projection.

    Args:
        x: float [R, n, d]; y: float [n, k].

    Returns:
        float [R, n, k], out[r, i, c] = sum_j <x[r, i], x[r, j]> * y[j, c].
    """
    pairwise = torch.einsum("rid,rjd->rij", x, x)  # [R, n, n]
    return torch.einsum("rij,jc->ric", pairwise, y)


def build_mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear layers through `sizes` (input first, output last), ReLU and dropout between.

    The last layer is linear (no activation), so the MLP can produce embeddings.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.extend([nn.ReLU(), nn.Dropout(dropout)])
    return nn.Sequential(*layers)


class WukongLayer(nn.Module):
    """One Wukong layer: Factorization Machine Block + Linear Compress Block, residual, norm."""

    def __init__(
        self,
        n_in: int,
        hidden_size: int,
        num_emb_fmb: int,
        num_emb_lcb: int,
        fmb_rank: int,
        fmb_mlp_sizes: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.num_emb_fmb = num_emb_fmb
        self.hidden_size = hidden_size
        n_out = num_emb_fmb + num_emb_lcb
        # Y [n_i, k]: the FM projection, columns of about unit norm (the LayerNorm that
        # follows makes the overall scale of the FM output irrelevant).
        self.fm_projection = nn.Parameter(torch.randn(n_in, fmb_rank) / n_in**0.5)
        self.fmb_norm = nn.LayerNorm(n_in * fmb_rank)
        self.fmb_mlp = build_mlp(
            [n_in * fmb_rank, *fmb_mlp_sizes, num_emb_fmb * hidden_size], dropout
        )
        # W_L and W_R act on the feature axis only: Linear over n, applied to X^T.
        self.lcb = nn.Linear(n_in, num_emb_lcb, bias=False)
        self.residual = nn.Linear(n_in, n_out, bias=False) if n_out != n_in else None
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [R, n_i, d]. Returns float [R, n_F + n_L, d]."""
        rows = x.shape[0]
        fm = fm_optimized(x, self.fm_projection).flatten(1)  # [R, n_i * k]
        fmb = self.fmb_mlp(self.fmb_norm(fm)).view(rows, self.num_emb_fmb, self.hidden_size)
        lcb = self.lcb(x.transpose(1, 2)).transpose(1, 2)  # [R, n_L, d]
        residual = x if self.residual is None else self.residual(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(torch.cat([fmb, lcb], dim=1) + residual)  # [R, n_F + n_L, d]


@dataclass(frozen=True)
class WukongSettings(Settings):
    """WukongSeq's backbone slice: the keys of ``properties/model/WukongSeq.yaml`` plus
    ``max_seq_length`` (``data.yaml``)."""

    hidden_size: int  # d, the width of item embeddings, features and the user vector
    n_layers: int  # Wukong layers (FMB + LCB each)
    n_features: int  # the window: the last n_features items up to and including t
    num_emb_fmb: int  # n_F, features from each Factorization Machine Block
    num_emb_lcb: int  # n_L, features from each Linear Compress Block
    fmb_rank: int  # k, the rank of the FM projection
    fmb_mlp_sizes: tuple[int, ...]  # hidden widths of each FMB's MLP
    head_mlp_sizes: tuple[int, ...]  # hidden widths of the head MLP
    hidden_dropout_prob: float
    max_seq_length: int

    def __post_init__(self) -> None:
        for key in (
            "hidden_size",
            "n_layers",
            "n_features",
            "num_emb_fmb",
            "num_emb_lcb",
            "fmb_rank",
            "max_seq_length",
        ):
            check_range(key, getattr(self, key), low=1)
        for key in ("fmb_mlp_sizes", "head_mlp_sizes"):
            if any(size < 1 for size in getattr(self, key)):
                raise ConfigError(f"{key}={list(getattr(self, key))}: must list positive integers")
        check_range("hidden_dropout_prob", self.hidden_dropout_prob, low=0.0, high=1.0)

    describe_keys = (
        "hidden_size",
        "n_layers",
        "n_features",
        "num_emb_fmb",
        "num_emb_lcb",
        "fmb_rank",
    )

    def describe(self) -> str:
        """Short name, e.g. ``wukong-d64-l3-w16-f16-c16-k24``: width, layers, window,
        FMB features, LCB (compress) features, FM rank."""
        return (
            f"wukong-d{self.hidden_size}-l{self.n_layers}-w{self.n_features}"
            f"-f{self.num_emb_fmb}-c{self.num_emb_lcb}-k{self.fmb_rank}"
        )


class WukongBackbone(nn.Module):
    """Wukong stack over a sliding window of the last `n_features` item embeddings."""

    normalize = False  # scores are raw dot products

    def __init__(self, settings: WukongSettings) -> None:
        super().__init__()
        self.settings = settings
        hidden_size, n_features = settings.hidden_size, settings.n_features
        self.hidden_size = hidden_size
        self.n_layers = settings.n_layers
        self.n_features = n_features
        self.num_emb_fmb = settings.num_emb_fmb
        self.num_emb_lcb = settings.num_emb_lcb
        self.fmb_rank = settings.fmb_rank
        self.fmb_mlp_sizes = list(settings.fmb_mlp_sizes)
        self.head_mlp_sizes = list(settings.head_mlp_sizes)
        self.max_seq_length = settings.max_seq_length
        self.position_embedding = nn.Embedding(n_features, hidden_size)  # position in the window
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.input_dropout = nn.Dropout(settings.hidden_dropout_prob)
        n_out = settings.num_emb_fmb + settings.num_emb_lcb
        widths = [n_features] + [n_out] * settings.n_layers  # n_0 .. n_layers
        self.layers = nn.ModuleList(
            WukongLayer(
                widths[i],
                hidden_size,
                settings.num_emb_fmb,
                settings.num_emb_lcb,
                settings.fmb_rank,
                self.fmb_mlp_sizes,
                settings.hidden_dropout_prob,
            )
            for i in range(settings.n_layers)
        )
        self.head = build_mlp(
            [widths[-1] * hidden_size, *self.head_mlp_sizes, hidden_size],
            settings.hidden_dropout_prob,
        )

    def windows(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The features of every position: float [B, L, n_features, D].

        Slot j at position t holds x[t - j] + position_embedding[j] when t - j >= 0 and is a
        real item, else zeros.
        """
        w = self.n_features
        keep = mask.unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        # Left-pad the time axis with w-1 zero rows so every window has w slots.
        padded = F.pad(x * keep, (0, 0, w - 1, 0))  # [B, L+w-1, D]
        padded_mask = F.pad(keep, (0, 0, w - 1, 0))  # [B, L+w-1, 1]
        # unfold gives the window oldest-first, [B, L, D, w]; flip so slot 0 is the item at t.
        feats = padded.unfold(1, w, 1).permute(0, 1, 3, 2).flip(2)  # [B, L, w, D]
        present = padded_mask.unfold(1, w, 1).permute(0, 1, 3, 2).flip(2)  # [B, L, w, 1]
        return feats + self.position_embedding.weight * present  # [B, L, w, D]

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, time_seq: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode a right-padded batch; one user vector per real position.

        Args:
            x: float [B, L, D] item embeddings.
            mask: bool [B, L], True at real items.
            time_seq: unused (accepted for the common backbone signature).

        Returns:
            float [B, L, D]; row t depends only on items at positions t-n_features+1 .. t;
            zero at padding.
        """
        batch, seq_len, dim = x.shape
        feats = self.windows(x, mask)  # [B, L, w, D]
        # Only real positions are run through the stack: [R, w, D] with R = mask.sum().
        rows = self.input_dropout(feats[mask])
        for layer in self.layers:
            rows = layer(rows)  # [R, n_F + n_L, D]
        user = self.head(rows.flatten(1))  # [R, D]
        out = x.new_zeros(batch, seq_len, dim)
        out[mask] = user.to(out.dtype)
        return out

    def describe(self) -> str:
        """Short name from the hyperparameters (``WukongSettings.describe``)."""
        return self.settings.describe()

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per position (a matmul is 2*m*n*k); independent of `seq_len`.

        Per layer with n_i input features: X^T Y 2*n_i*d*k, X (X^T Y) 2*n_i*d*k, the FMB
        MLP 2*in*out per linear, the LCB 2*n_L*n_i*d, the residual projection
        2*(n_F+n_L)*n_i*d when present; then the head MLP. Norms, activations and the
        window gather are left out.
        """
        del seq_len  # each position sees a fixed window of n_features items
        d, k = self.hidden_size, self.fmb_rank
        n_out = self.num_emb_fmb + self.num_emb_lcb
        total = 0
        n_in = self.n_features
        for _ in range(self.n_layers):
            total += 2 * 2 * n_in * d * k  # X^T Y and X (X^T Y)
            total += mlp_flops([n_in * k, *self.fmb_mlp_sizes, self.num_emb_fmb * d])
            total += 2 * self.num_emb_lcb * n_in * d  # W_L X
            if n_out != n_in:
                total += 2 * n_out * n_in * d  # W_R X
            n_in = n_out
        total += mlp_flops([n_in * d, *self.head_mlp_sizes, d])
        return total

    def forward_flops(self, batch_size: int, width: int, n_real: int) -> int:
        """Forward FLOPs of one batch as run (2 per multiply-add): only the ``n_real`` real
        positions go through the stack (``forward`` selects them), each at the fixed cost of
        ``flops_per_token``; ``batch_size`` and ``width`` do not matter.
        """
        del batch_size, width  # padding positions are never run
        return n_real * self.flops_per_token(0)


def mlp_flops(sizes: Sequence[int]) -> int:
    """Matmul FLOPs of one row through linear layers of `sizes` (input first)."""
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


class WukongSeq(ForkSeqModel):
    """Wukong-style backbone + the fork's item encoders, single-pass sampled losses and
    evaluation; scores are raw dot products (`normalize = False`)."""

    settings_class = WukongSettings
    backbone_class = WukongBackbone


__all__ = ["WukongBackbone", "WukongSeq", "WukongSettings", "fm_naive", "fm_optimized"]
