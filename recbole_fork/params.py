"""Parameter and compute counts for the axes of scaling laws.

Embedding parameters are the item-ID tables and text-token tables: they grow with the
catalog, not with the model, so scaling laws use the *non-embedding* count N (as the study
and Kaplan et al. do). Position embeddings, adapters, norms and the backbone are
non-embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn


@dataclass(frozen=True)
class ParamCounts:
    """Trainable-or-not parameter counts of a model (each parameter counted once)."""

    total: int
    embedding: int
    non_embedding: int

    def as_dict(self, prefix: str = "params_") -> dict[str, int]:
        return {prefix + k: v for k, v in asdict(self).items()}


def embedding_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that count as embedding tables.

    A model may say so itself with ``embedding_parameter_names()``; otherwise every
    ``nn.Embedding`` / ``nn.EmbeddingBag`` whose module name does not contain "position".
    """
    if hasattr(model, "embedding_parameter_names"):
        return set(model.embedding_parameter_names())
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and "position" not in module_name:
            names.update(
                f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters()
            )
    return names


def count_parameters(model: nn.Module) -> ParamCounts:
    """Total, embedding and non-embedding parameter counts of ``model``.

    Shared (tied) parameters are counted once.
    """
    emb_names = embedding_parameter_names(model)
    total = embedding = 0
    for name, p in model.named_parameters():  # named_parameters() already skips duplicates
        total += p.numel()
        if name in emb_names:
            embedding += p.numel()
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding)


def transformer_forward_flops_per_token(
    non_embedding: int, n_layers: int, hidden: int, seq_len: int
) -> int:
    """Kaplan et al.'s estimate of forward FLOPs per token of a causal transformer.

    ``2 N`` for the weight matmuls plus ``2 n_layers L d`` for the attention scores and
    their product with the values (averaged over a causal sequence, the usual convention).
    """
    return 2 * non_embedding + 2 * n_layers * seq_len * hidden


def training_flops_per_token(
    model: nn.Module, *, seq_len: int, hidden: int, n_layers: int, scored_items: int
) -> int:
    """Training FLOPs per supervised position: 3 x forward (backward costs twice forward).

    Forward = the model's own ``flops_per_token()`` when it has one, else Kaplan's estimate
    from the non-embedding count, plus ``2 d`` per scored item (the positive and its
    negatives, or the whole catalog for full softmax).
    """
    if hasattr(model, "flops_per_token"):
        forward = int(model.flops_per_token())
    else:
        counts = count_parameters(model)
        forward = transformer_forward_flops_per_token(
            counts.non_embedding, n_layers, hidden, seq_len
        )
        forward += 2 * hidden * scored_items
    return 3 * forward
