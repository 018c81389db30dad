"""One run name, built from the resolved settings: the MLflow run, the checkpoint folder and
a sweep trial all carry it.

``sasrec-d64-l2-h2-text-amazon-1M-s42``: the model's description (its backbone's letters:
``d`` width, ``l`` layers, ``h`` heads, and the model's own, never reused; then the item
encoder), one tag per other setting a sweep varies (``lr0.001``, ``neg300``), the dataset,
a fine-tuning strategy when there is one, and the seed. A config's ``run_name`` wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from recbole_fork.settings import RunSettings

# Short tags of settings a sweep may vary (others: the key without underscores).
NAME_TAGS = {
    "num_negatives": "neg",
    "learning_rate": "lr",
    "inner_size": "ff",
    "max_seq_length": "len",
    "hidden_dropout_prob": "do",
    "attn_dropout_prob": "ado",
    "train_batch_size": "b",
    "weight_decay": "wd",
    "train_flops_budget": "c",
    "n_heads": "h",
    "neg_sampler": "",
    "loss_type": "",
}
# Settings every name shows in its own place, or that do not change what is trained.
_NOT_TAGGED = {
    "model", "dataset", "seed", "item_encoder", "run_name", "experiment", "data_path",
    "show_progress", "checkpoint_dir",
}  # fmt: skip


def tag(value: Any) -> str:
    """A value as a name fragment: no spaces or path characters (``0.001``, ``text``)."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(ch for ch in text if ch.isalnum() or ch in ".-")


def model_description(settings: RunSettings) -> str:
    """``sasrec-d64-l2-h2-text`` for the fork's models; ``recbole-sasrec-d64-l2`` for a stock
    RecBole model (its ``hidden_size`` and ``n_layers`` when it has them)."""
    if settings.spec is not None:
        return settings.spec.describe()
    parts = ["recbole", settings.model.lower()]
    for key, letter in (("hidden_size", "d"), ("n_layers", "l")):
        if settings.resolved.get(key) is not None:
            parts.append(f"{letter}{settings.resolved[key]}")
    return "-".join(parts)


def _described_keys(settings: RunSettings) -> set[str]:
    if settings.spec is None:
        return {"hidden_size", "n_layers"}
    return set(getattr(type(settings.spec.backbone), "describe_keys", ()))


def _value(resolved: Mapping[str, Any], key: str) -> Any:
    node: Any = resolved
    for part in key.split("."):
        node = node[part]
    return node


def run_name(
    settings: RunSettings, *, vary: Iterable[str] = (), strategy: str | None = None
) -> str:
    """The run's name (see the module docstring).

    Args:
        settings: the resolved run settings.
        vary: settings a sweep varies; each one the description does not already show gets
            a tag, so two trials of a sweep never share a name.
        strategy: the fine-tuning strategy, if any.
    """
    if settings.run_name:
        return settings.run_name
    parts = [model_description(settings)]
    skip = _NOT_TAGGED | _described_keys(settings)
    for key in vary:
        if key in skip:
            continue
        parts.append(
            NAME_TAGS.get(key, key.replace("_", "").replace(".", ""))
            + tag(_value(settings.resolved, key))
        )
    parts.append(settings.dataset)
    if strategy:
        parts.append(strategy)
    parts.append(f"s{settings.seed}")
    return "-".join(parts)


def experiment_name(settings: RunSettings, script: str = "pre_train") -> str:
    """One experiment per script and dataset: ``pre_train-amazon-1M`` (or the config's)."""
    return settings.experiment or f"{script}-{settings.dataset}"


__all__ = ["NAME_TAGS", "experiment_name", "model_description", "run_name", "tag"]
