"""Item encoders: how an item id becomes a vector of ``hidden_size``.

Three kinds, chosen by the config key ``item_encoder``:

* ``id``: one trainable row per item (RecBole's usual item embedding table).
* ``text``: the item is its text, as in the study of REFERENCE section 1. Each text field
  (``text_fields``: ``token_seq`` fields such as ``title`` and ``brand`` holding SentencePiece
  pieces, or ``token`` fields such as ``category_l1``) has its own trainable token table of
  width ``text_embedding_size``; the pieces of a field are sum-pooled, the fields
  concatenated, and a linear adapter maps the result to ``hidden_size``. No per-item row, so
  the model applies to items it never saw and the parameter count does not grow with the
  catalog.
* ``id+text``: the SUM of the two (not concat + adapter): the text part already ends in an
  adapter, and a sum keeps the width at ``hidden_size`` with no extra parameters.

Token ids of every item are held as buffers (``[n_items, T_f]`` per field); an encoder call
gathers the rows of the requested ids only, so a step never embeds the whole catalog.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from recbole_fork.settings import ConfigError, Settings, check_choice

ITEM_ENCODERS = ("id", "text", "id+text")


@dataclass(frozen=True)
class EncoderSettings(Settings):
    """The item-encoder slice (defaults: ``properties/training.yaml``)."""

    item_encoder: str  # id | text | id+text
    text_fields: tuple[str, ...]  # item fields the text encoder reads, one token table each
    text_embedding_size: int  # width E of each token table
    hidden_size: int  # output width D
    initializer_range: float  # std of the N(0, std) init of tables and adapter

    def __post_init__(self) -> None:
        check_choice("item_encoder", self.item_encoder, ITEM_ENCODERS)
        if self.uses_text and not self.text_fields:
            raise ConfigError(
                f"item_encoder {self.item_encoder!r} needs at least one field in text_fields"
            )
        for key in ("text_embedding_size", "hidden_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must be at least 1")

    @property
    def uses_id(self) -> bool:
        return "id" in self.item_encoder.split("+")

    @property
    def uses_text(self) -> bool:
        return "text" in self.item_encoder.split("+")


@dataclass(frozen=True)
class Catalog:
    """What an item encoder needs to know of the items: their number and their text.

    Attributes:
        n_items: item ids including padding 0.
        tokens: text field -> int64 ``[n_items, T_f]`` (or ``[n_items]``) token ids, row i for
            item id i (empty when no text field is used).
        vocabs: text field -> token strings, index = token id (``'[PAD]'`` at 0).
        name: the dataset's name, for messages.
    """

    n_items: int
    tokens: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    vocabs: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    name: str = "dataset"


class IdItemEncoder(nn.Module):
    """One trainable ``hidden_size`` row per item id; row 0 (padding) stays zero.

    Args:
        n_items: catalog size including padding id 0.
        hidden_size: output width D.
    """

    def __init__(self, n_items: int, hidden_size: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed ``ids`` (int64, any shape) -> float ``[*ids.shape, D]``."""
        return self.item_embedding(ids)

    def vocab(self) -> dict[str, list[str]]:
        """No text vocabulary: an empty dict."""
        return {}

    def embedding_parameter_names(self) -> set[str]:
        """Names (relative to this module) of the item-ID table."""
        return {"item_embedding.weight"}


class TextItemEncoder(nn.Module):
    """Items as their text: per-field token tables, sum-pooled, concatenated, adapted.

    Args:
        field_tokens: field name -> int64 ``[n_items, T_f]`` token ids of each item (0 = padding
            piece), or ``[n_items]`` for a single-token field. Row i belongs to item id i.
        vocabs: field name -> token strings, index = token id (``'[PAD]'`` at 0), as in
            RecBole's ``dataset.field2id_token``. Saved in checkpoints so pieces of a new
            catalog can be remapped by string.
        embedding_size: width E of each token table.
        hidden_size: output width D.

    Raises:
        ValueError: no fields, fields with different item counts, or a token id outside its
            vocabulary.
    """

    def __init__(
        self,
        field_tokens: dict[str, torch.Tensor],
        vocabs: dict[str, list[str]],
        embedding_size: int,
        hidden_size: int,
    ) -> None:
        super().__init__()
        if not field_tokens:
            raise ValueError("text item encoder needs at least one field in `text_fields`")
        self.fields = list(field_tokens)
        n_rows = {f: int(t.shape[0]) for f, t in field_tokens.items()}
        if len(set(n_rows.values())) != 1:
            raise ValueError(f"text fields cover different numbers of items: {n_rows}")
        self.n_items = next(iter(n_rows.values()))
        self._vocabs = {f: [str(s) for s in vocabs[f]] for f in self.fields}
        self.tables = nn.ModuleDict()
        for i, field in enumerate(self.fields):
            tokens = field_tokens[field].long()
            if tokens.dim() == 1:
                tokens = tokens.unsqueeze(1)  # [n_items, 1]: a `token` field is one piece
            size = len(self._vocabs[field])
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= size):
                raise ValueError(
                    f"text field {field!r} has token ids outside its vocabulary of {size}"
                )
            # Buffers, not parameters: they move with .to(device) and are saved in state_dict.
            self.register_buffer(f"tokens_{i}", tokens, persistent=True)
            self.tables[field] = nn.Embedding(size, embedding_size, padding_idx=0)
        self.adapter = nn.Linear(embedding_size * len(self.fields), hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed ``ids`` (int64, any shape) -> float ``[*ids.shape, D]``.

        Only the requested items' token rows are gathered and embedded.
        """
        pooled = []
        for i, field in enumerate(self.fields):
            tokens = getattr(self, f"tokens_{i}")[ids]  # [..., T_f]
            # padding_idx=0 keeps the padding row at zero, so a plain sum is the masked sum.
            pooled.append(self.tables[field](tokens).sum(dim=-2))  # [..., E]
        return self.adapter(torch.cat(pooled, dim=-1))  # [..., D]

    def vocab(self) -> dict[str, list[str]]:
        """Field name -> token strings (index = token id), for checkpoints."""
        return {f: list(v) for f, v in self._vocabs.items()}

    def embedding_parameter_names(self) -> set[str]:
        """Names (relative to this module) of the text token tables (not the adapter)."""
        return {f"tables.{f}.weight" for f in self.fields}


class IdTextItemEncoder(nn.Module):
    """``id`` + ``text``: the sum of an item-ID row and the text encoding."""

    def __init__(self, id_encoder: IdItemEncoder, text_encoder: TextItemEncoder) -> None:
        super().__init__()
        self.id = id_encoder
        self.text = text_encoder

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed ``ids`` (int64, any shape) -> float ``[*ids.shape, D]``."""
        return self.id(ids) + self.text(ids)

    def vocab(self) -> dict[str, list[str]]:
        """The text part's vocabulary."""
        return self.text.vocab()

    def embedding_parameter_names(self) -> set[str]:
        """Item-ID table and text token tables."""
        return {f"id.{n}" for n in self.id.embedding_parameter_names()} | {
            f"text.{n}" for n in self.text.embedding_parameter_names()
        }


def build_item_encoder(settings: EncoderSettings, catalog: Catalog) -> nn.Module:
    """The item encoder that ``settings.item_encoder`` names, over ``catalog``.

    Raises:
        ConfigError: a text encoder over a catalog that lacks one of ``text_fields``.
    """
    id_enc = IdItemEncoder(catalog.n_items, settings.hidden_size) if settings.uses_id else None
    text_enc = None
    if settings.uses_text:
        missing = [f for f in settings.text_fields if f not in catalog.tokens]
        if missing:
            raise ConfigError(
                f"text field(s) {missing} are not item text fields of {catalog.name} "
                f"(it has {sorted(catalog.tokens)}); check text_fields and load_col"
            )
        fields = list(settings.text_fields)
        text_enc = TextItemEncoder(
            {f: catalog.tokens[f] for f in fields},
            {f: catalog.vocabs[f] for f in fields},
            settings.text_embedding_size,
            settings.hidden_size,
        )
    if id_enc is not None and text_enc is not None:
        return IdTextItemEncoder(id_enc, text_enc)
    return id_enc if id_enc is not None else text_enc
