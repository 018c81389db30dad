"""The fine-tuning run's configuration: the architecture comes from the checkpoint.

``fine_tune_config`` layers the pre-trained checkpoint's architecture keys under the
fine-tuning config file and the ``--set`` overrides; ``read_pretrained`` checks the
checkpoint; ``check_dataset`` finds a dataset under the data path or lists the ones there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from recbole_fork.checkpoint import CheckpointError, load_checkpoint, require_keys
from recbole_fork.config import (
    PROPERTIES,
    ForkConfig,
    build_config,
    load_config_file,
    parse_overrides,
    resolve_config_path,
)
from recbole_fork.finetune.settings import FineTuneError
from recbole_fork.settings import ConfigError
from recbole_fork.trainer import WEIGHT_FORMATS

# Keys of a model's defaults file that do not change the network's shape or function.
_NOT_ARCHITECTURE = {"loss_type", "temperature", "hidden_dropout_prob", "attn_dropout_prob"}
_ENCODER_KEYS = ("item_encoder", "text_fields", "text_embedding_size", "max_seq_length")
# What fine-tuning reads from a pre-trained checkpoint.
PRETRAINED_KEYS = ("config", "model", "model_description", "model_state")


def architecture_keys(model: str) -> list[str]:
    """Config keys that fix a model's architecture: its defaults file's keys (minus loss,
    temperature and dropout) plus the item encoder's keys and ``max_seq_length``."""
    path = PROPERTIES / "model" / f"{model}.yaml"
    keys = list((yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {})
    keys = [k for k in keys if k not in _NOT_ARCHITECTURE]
    return sorted(set(keys) | set(_ENCODER_KEYS))


def _architecture(cfg: Mapping[str, Any]) -> dict[str, Any]:
    model = str(cfg["model"])
    out = {"model": model}
    for key in architecture_keys(model):
        if key in cfg and cfg[key] is not None:
            out[key] = cfg[key]
    return out


def read_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a pre-training checkpoint and check it is one ``SeqTrainer`` wrote.

    Raises:
        CheckpointError: missing, unreadable, not a fork model's training checkpoint, or
            lacking a key fine-tuning reads.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    if ckpt.get("format") not in WEIGHT_FORMATS or "config" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} was not written by pre_train for a fork model "
            f"(format {ckpt.get('format')!r}); pass a checkpoint of scripts/pre_train.py"
        )
    require_keys(ckpt, PRETRAINED_KEYS, path, "fine-tuning")
    return ckpt


def fine_tune_config(
    source: str | Path | Mapping[str, Any],
    dataset: str,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    pretrained: str | Path | None = None,
    pretrain_config: str | Path | None = None,
) -> ForkConfig:
    """The fine-tuning run's config: architecture from the checkpoint, the rest from ``source``.

    Layers, later wins: the architecture keys (``architecture_keys``) of the checkpoint's
    config (or of ``pretrain_config`` without a checkpoint) < ``source`` < ``overrides``;
    ``dataset`` is the target. A size set differently in ``source`` or ``overrides`` is
    caught when the weights are loaded (``transfer.TransferError``).

    Args:
        source: the fine-tuning config file (``confs/fine_tune/full.yaml``) or a dict.
        dataset: the target dataset's name (a folder under ``data_path``).
        overrides: ``--set`` items or a dict.
        pretrained: the pre-trained checkpoint (its config fixes the architecture).
        pretrain_config: the pre-training config; with a checkpoint it is only checked
            against the checkpoint's config.

    Raises:
        CheckpointError: missing or foreign checkpoint.
        ConfigError: bad config file or key, ``pretrain_config`` disagreeing with the
            checkpoint on a model or architecture key, or ``source`` / ``overrides`` naming
            another model than the checkpoint's.
    """
    base: dict[str, Any] = {}
    where = "config"
    if isinstance(source, Mapping):
        user = dict(source)
    else:
        where = str(resolve_config_path(source))
        user = load_config_file(where)
    pre = build_config(pretrain_config).to_dict() if pretrain_config is not None else None
    if pretrained is not None:
        ckpt_config = read_pretrained(pretrained)["config"]
        base = _architecture(ckpt_config)
        if pre is not None:
            theirs = _architecture(pre)
            # The model first: another model's keys would differ anyway, less clearly.
            for key in ["model", *sorted((set(base) | set(theirs)) - {"model"})]:
                if theirs.get(key) != base.get(key):
                    raise ConfigError(
                        f"pre-train config {pretrain_config} sets {key}={theirs.get(key)!r} but "
                        f"checkpoint {pretrained} was trained with {key}={base.get(key)!r}; "
                        "pass the pre-training's own config or leave -p out"
                    )
    elif pre is not None:
        base = _architecture(pre)
    asked = {**user, **parse_overrides(overrides)}.get("model")
    if base and asked and asked != base["model"]:
        origin = f"checkpoint {pretrained}" if pretrained is not None else f"{pretrain_config}"
        raise ConfigError(
            f"{origin} holds a {base['model']} model, but the config sets {asked}; "
            "fine-tune the pre-trained model (drop `model` from the config)"
        )
    try:
        return build_config({**base, **user}, overrides, dataset=dataset)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config:", f"{where}:", 1)) from None


def check_dataset(config: Any, name: str | None = None) -> Path:
    """The ``.inter`` file of dataset ``name`` (default: the config's) under ``data_path``.

    Raises:
        FineTuneError: no such dataset; the message lists the datasets found there.
    """
    name = str(name or config["dataset"])
    # A resolved Config's data_path already ends in its own dataset's folder.
    path = Path(str(config["data_path"]))
    root = path.parent if path.name == str(config["dataset"]) else path
    inter = root / name / f"{name}.inter"
    if not inter.is_file():
        found = (
            sorted(d.name for d in root.iterdir() if (d / f"{d.name}.inter").is_file())
            if root.is_dir()
            else []
        )
        raise FineTuneError(
            f"dataset {name!r} not found: no {inter}; datasets under {root}: {found} "
            "(check the dataset name and --data-path)"
        )
    return inter


__all__ = ["architecture_keys", "check_dataset", "fine_tune_config", "read_pretrained"]
