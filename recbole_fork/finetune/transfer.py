"""Transfer of a pre-trained model to a new catalog: token remapping by string, weight loading.

RecBole numbers the pieces of a ``token_seq`` field per dataset, in the order it meets them,
so the same SentencePiece piece has a different id in the pre-training and the fine-tuning
catalog. A checkpoint holds, per text field, the piece strings in id order (``vocab``), so
the fine-tuning catalog is re-encoded into the checkpoint's ids by string.

Pieces the pre-trained model never saw are DROPPED: they are mapped to the padding id 0,
whose row stays zero, so the sum-pooling of a field simply ignores them (as the study does,
REFERENCE section 1). Dropping keeps the pre-trained table exactly as it was; a shared
"unknown" row would have to be learned from nothing and would merge unrelated pieces.
They are counted (``TransferReport``) and the counts go to MLflow.

Item-ID rows (``id`` and ``id+text`` encoders) only carry over when the fine-tuning dataset
is the pre-training dataset with the same item count; a new catalog gets fresh rows drawn
from N(0, s) with s the standard deviation of the pre-trained table's real rows (padding
excluded), so new rows have the scale the backbone was trained on; padding stays zero.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from recbole_fork.checkpoint import CheckpointError
from recbole_fork.encoders import IdItemEncoder, IdTextItemEncoder, TextItemEncoder
from recbole_fork.errors import UserError

logger = logging.getLogger(__name__)


class TransferError(UserError):
    """A checkpoint that does not fit the configured model (one-line message)."""


@dataclass
class TransferReport:
    """What a transfer did, for logs and MLflow.

    Attributes:
        unseen_pieces: distinct pieces used by the catalog's items that the checkpoint's
            vocabulary lacks (summed over text fields); they are dropped.
        used_pieces: distinct pieces used by the catalog's items (summed over text fields).
        unseen_occurrences, piece_occurrences: the same, counted per occurrence in items.
        items_without_known_pieces: real items (ids >= 1) left with no known piece in any
            field: their text encoding is the adapter's bias alone.
        unseen_by_field: field -> distinct unseen pieces (empty for an ``id`` encoder).
        id_rows: ``loaded`` (same catalog), ``new`` (fresh rows) or ``none`` (text encoder).
        id_init_std: the std of the fresh rows (0.0 when none were drawn).
        loaded: names of the parameters copied from the checkpoint.
        fresh: names of the parameters NOT copied (freshly initialised).
    """

    unseen_pieces: int = 0
    used_pieces: int = 0
    unseen_occurrences: int = 0
    piece_occurrences: int = 0
    items_without_known_pieces: int = 0
    unseen_by_field: dict[str, int] = field(default_factory=dict)
    id_rows: str = "none"
    id_init_std: float = 0.0
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)

    @property
    def unseen_piece_share(self) -> float:
        """Share of the catalog's distinct pieces that are unseen (0.0 without text)."""
        return self.unseen_pieces / self.used_pieces if self.used_pieces else 0.0

    def metrics(self) -> dict[str, float]:
        """The counts as MLflow metrics (``transfer_*``); none for a model without text."""
        if not self.unseen_by_field:
            return {}
        out = {
            "transfer_unseen_pieces": float(self.unseen_pieces),
            "transfer_used_pieces": float(self.used_pieces),
            "transfer_unseen_piece_share": self.unseen_piece_share,
            "transfer_unseen_occurrence_share": (
                self.unseen_occurrences / self.piece_occurrences if self.piece_occurrences else 0.0
            ),
            "transfer_items_without_known_pieces": float(self.items_without_known_pieces),
        }
        for name, n in self.unseen_by_field.items():
            out[f"transfer_unseen_pieces_{name}"] = float(n)
        return out

    def as_dict(self) -> dict[str, Any]:
        """Everything, as plain data (a JSON artifact)."""
        return {**asdict(self), "unseen_piece_share": self.unseen_piece_share}


def text_encoders(model: nn.Module) -> dict[str, TextItemEncoder]:
    """The model's text encoders by attribute path (``item_encoder`` or ``item_encoder.text``)."""
    enc = model.item_encoder
    if isinstance(enc, TextItemEncoder):
        return {"item_encoder": enc}
    if isinstance(enc, IdTextItemEncoder):
        return {"item_encoder.text": enc.text}
    return {}


def id_encoder_prefix(model: nn.Module) -> str | None:
    """Path of the model's item-ID encoder (``item_encoder`` / ``item_encoder.id``) or None."""
    enc = model.item_encoder
    if isinstance(enc, IdItemEncoder):
        return "item_encoder"
    if isinstance(enc, IdTextItemEncoder):
        return "item_encoder.id"
    return None


def remap_tokens(
    tokens: torch.Tensor, own_vocab: list[str], target_vocab: list[str]
) -> tuple[torch.Tensor, set[int]]:
    """Re-encode token ids of one field from ``own_vocab`` into ``target_vocab`` by string.

    Args:
        tokens: int64 ``[n_items, T]`` ids into ``own_vocab`` (0 = padding).
        own_vocab: the catalog's piece strings, index = id (RecBole's ``field2id_token``).
        target_vocab: the checkpoint's piece strings, index = id.

    Returns:
        (int64 ``[n_items, T]`` ids into ``target_vocab``, unseen pieces dropped to 0;
        the set of ``own_vocab`` ids that have no match).
    """
    index = {piece: i for i, piece in enumerate(target_vocab)}
    lookup = torch.zeros(len(own_vocab), dtype=torch.long)  # own id -> target id (0 = drop)
    unseen: set[int] = set()
    for i, piece in enumerate(own_vocab):
        if i == 0:
            continue  # padding stays padding
        j = index.get(piece)
        if j is None or j == 0:
            unseen.add(i)
        else:
            lookup[i] = j
    return lookup[tokens], unseen


def _retarget_text_encoder(
    enc: TextItemEncoder, vocab: dict[str, list[str]], where: str, report: TransferReport
) -> TextItemEncoder:
    """A new text encoder over the checkpoint's vocabulary, with the catalog re-encoded."""
    missing = [f for f in enc.fields if f not in vocab]
    if missing:
        raise TransferError(
            f"checkpoint {where} has no vocabulary for text field(s) {missing} "
            f"(it has {sorted(vocab)}); set text_fields to the pre-training ones"
        )
    own = enc.vocab()
    remapped: dict[str, torch.Tensor] = {}
    known_any = torch.zeros(enc.n_items, dtype=torch.bool)  # [n_items]
    for i, name in enumerate(enc.fields):
        tokens = getattr(enc, f"tokens_{i}").cpu()  # [n_items, T]
        new, unseen = remap_tokens(tokens, own[name], vocab[name])
        real = tokens[1:]  # item 0 is padding
        used = set(int(t) for t in torch.unique(real).tolist()) - {0}
        unseen_used = used & unseen
        report.used_pieces += len(used)
        report.unseen_pieces += len(unseen_used)
        report.unseen_by_field[name] = len(unseen_used)
        report.piece_occurrences += int((real > 0).sum())
        if unseen_used:
            is_unseen = torch.isin(real, torch.tensor(sorted(unseen_used)))
            report.unseen_occurrences += int(is_unseen.sum())
        known_any |= (new > 0).any(dim=1)
        remapped[name] = new
    report.items_without_known_pieces += int((~known_any[1:]).sum())
    hidden = enc.adapter.out_features
    emb_size = next(iter(enc.tables.values())).embedding_dim
    return TextItemEncoder(remapped, {f: vocab[f] for f in enc.fields}, emb_size, hidden)


def _check_text_fields(model: nn.Module, ckpt: dict[str, Any], where: str) -> None:
    """The text fields must be the checkpoint's, in its order: the adapter's input columns
    are the fields' embeddings concatenated in that order, so another order would load
    them permuted without any shape telling."""
    encoders = text_encoders(model)
    if not encoders:
        return
    theirs = (ckpt.get("config") or {}).get("text_fields")
    if not theirs:
        return  # a checkpoint without a text encoder: the vocabulary check names it
    ours = list(next(iter(encoders.values())).fields)
    if list(theirs) != ours:
        raise TransferError(
            f"text_fields {ours} differ from checkpoint {where}'s {list(theirs)}: the adapter "
            "reads the fields in the checkpoint's order; set text_fields to exactly that list"
        )


def _check_shapes(
    model: nn.Module, state: dict[str, torch.Tensor], skip: set[str], where: str, desc: str
) -> None:
    own = model.state_dict()
    mine = set(own) - skip
    theirs = set(state) - skip
    if mine != theirs:
        only_here = sorted(mine - theirs)[:3]
        only_there = sorted(theirs - mine)[:3]
        raise TransferError(
            f"checkpoint {where} ({desc}) holds another architecture than the configured "
            f"{model.describe()}: only in the config {only_here}, only in the checkpoint "
            f"{only_there}"
        )
    for key in sorted(mine):
        if tuple(own[key].shape) != tuple(state[key].shape):
            raise TransferError(
                f"checkpoint {where} ({desc}) does not fit the configured {model.describe()}: "
                f"{key} is {list(state[key].shape)} there, {list(own[key].shape)} here "
                "(use the pre-training's hidden_size, n_layers, ... or no checkpoint)"
            )


def transfer_weights(
    model: nn.Module, ckpt: dict[str, Any], *, dataset: str, where: str = "checkpoint"
) -> TransferReport:
    """Load a pre-trained checkpoint into ``model``, built on a (possibly new) catalog.

    Text encoders are rebuilt over the checkpoint's vocabulary (the catalog re-encoded by
    string, unseen pieces dropped); backbone, adapter, position embeddings and token tables
    are copied; item-ID rows are copied for the same catalog, fresh otherwise (module
    docstring). Nothing is changed when an error is raised.

    Args:
        model: a ``ForkSeqModel`` built from the fine-tuning config and dataset.
        ckpt: a checkpoint dict written by ``SeqTrainer`` (``model_state``, ``vocab``,
            ``config``, ``model_description``).
        dataset: the fine-tuning dataset's name (the same name and size keep ID rows).
        where: the checkpoint's path, for messages.

    Returns:
        The ``TransferReport`` (counts of unseen pieces, which weights were loaded).

    Raises:
        TransferError: text fields other than the checkpoint's (or in another order),
            missing text vocabulary, or a parameter whose name or shape differs.
    """
    state: dict[str, torch.Tensor] = ckpt["model_state"]
    vocab: dict[str, list[str]] = ckpt.get("vocab") or {}
    desc = str(ckpt.get("model_description", "?"))
    report = TransferReport()
    _check_text_fields(model, ckpt, where)

    device = next(model.parameters()).device
    new_text = {
        path: _retarget_text_encoder(enc, vocab, where, report).to(device)
        for path, enc in text_encoders(model).items()
    }
    # Token-id buffers describe a catalog, not learned weights: never copied.
    skip = {k for k in state if k.rsplit(".", 1)[-1].startswith("tokens_")}
    skip |= {k for k in model.state_dict() if k.rsplit(".", 1)[-1].startswith("tokens_")}
    id_prefix = id_encoder_prefix(model)
    id_key = f"{id_prefix}.item_embedding.weight" if id_prefix else None
    same_catalog = False
    if id_key is not None:
        same_catalog = (
            str((ckpt.get("config") or {}).get("dataset")) == dataset
            and id_key in state
            and tuple(state[id_key].shape) == tuple(model.state_dict()[id_key].shape)
        )
        if not same_catalog:
            skip.add(id_key)
    # Check every shape against the retargeted tables before touching the model.
    saved = {}
    for path, enc in new_text.items():
        saved[path] = _get(model, path)
        _set(model, path, enc)
    try:
        _check_shapes(model, state, skip, where, desc)
    except TransferError:
        for path, enc in saved.items():
            _set(model, path, enc)
        raise

    to_load = {k: v for k, v in state.items() if k not in skip}
    result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"checkpoint {where}: unexpected keys {result.unexpected_keys[:3]}")
    params = dict(model.named_parameters())
    report.loaded = sorted(k for k in to_load if k in params)
    report.fresh = sorted(k for k in params if k not in to_load)
    if id_key is not None:
        if same_catalog:
            report.id_rows = "loaded"
        else:
            report.id_rows = "new"
            pre = state.get(id_key)
            std = float(pre[1:].float().std()) if pre is not None and pre.shape[0] > 2 else 0.02
            report.id_init_std = std
            table = params[id_key]
            with torch.no_grad():
                table.normal_(0.0, std)
                table[0].zero_()
            logger.info(
                "new catalog %s: %d fresh item-ID rows ~ N(0, %.4g) (the pre-trained table's std)",
                dataset,
                table.shape[0] - 1,
                std,
            )
    if report.used_pieces:
        logger.info(
            "transfer to %s: %d of %d pieces unseen in pre-training (dropped), %d items "
            "without a known piece",
            dataset,
            report.unseen_pieces,
            report.used_pieces,
            report.items_without_known_pieces,
        )
    return report


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


__all__ = [
    "TransferError",
    "TransferReport",
    "id_encoder_prefix",
    "remap_tokens",
    "text_encoders",
    "transfer_weights",
]
