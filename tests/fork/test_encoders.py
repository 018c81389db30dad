"""Item encoders: exact values on a tiny vocabulary, only requested items embedded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.utils import FeatureSource, FeatureType

from recbole_fork.data import catalog_from_dataset
from recbole_fork.encoders import (
    EncoderSettings,
    IdItemEncoder,
    IdTextItemEncoder,
    TextItemEncoder,
    build_item_encoder,
)
from recbole_fork.settings import ConfigError
from tests.conftest import settings_slice

# 4 item ids (0 = padding). title: up to 3 pieces; brand: 1 piece; category: a token field.
TITLE = torch.tensor([[0, 0, 0], [1, 2, 0], [2, 2, 3], [3, 0, 0]])
BRAND = torch.tensor([[0], [1], [1], [2]])
CATEGORY = torch.tensor([0, 1, 2, 1])
VOCABS = {
    "title": ["[PAD]", "red", "shoe", "hat"],
    "brand": ["[PAD]", "acme", "zeta"],
    "category": ["[PAD]", "clothes", "sport"],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _text_encoder(embedding_size: int = 2, hidden: int = 3) -> TextItemEncoder:
    enc = TextItemEncoder(
        {"title": TITLE, "brand": BRAND}, VOCABS, embedding_size=embedding_size, hidden_size=hidden
    )
    with torch.no_grad():
        # Token t of the title table is [t, 10 t]; brand token t is [100 t, -t].
        enc.tables["title"].weight.copy_(torch.tensor([[0.0, 0.0], [1, 10], [2, 20], [3, 30]]))
        enc.tables["brand"].weight.copy_(torch.tensor([[0.0, 0.0], [100, -1], [200, -2]]))
        enc.adapter.weight.copy_(torch.arange(12, dtype=torch.float32).view(3, 4) / 10)
        enc.adapter.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    return enc


def test_text_encoder_matches_hand_computation():
    enc = _text_encoder()
    out = enc(torch.tensor([1, 2]))
    # item 1: title pieces 1, 2 -> [3, 30]; brand 1 -> [100, -1]; concat [3, 30, 100, -1].
    # item 2: title pieces 2, 2, 3 -> [7, 70]; brand 1 -> [100, -1].
    feats = torch.tensor([[3.0, 30, 100, -1], [7, 70, 100, -1]])
    expected = feats @ (torch.arange(12.0).view(3, 4) / 10).T + torch.tensor([1.0, 2, 3])
    torch.testing.assert_close(out, expected)
    # item 1, first output by hand: 0*3 + .1*30 + .2*100 + .3*(-1) + 1 = 23.7
    assert out[0, 0].item() == pytest.approx(23.7)


def test_text_encoder_embeds_only_requested_items():
    enc = _text_encoder()
    seen: list[tuple[int, ...]] = []
    for table in enc.tables.values():
        table.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    out = enc(torch.tensor([[3, 1]]))  # [1, 2] ids
    assert out.shape == (1, 2, 3)
    # One lookup per field, of the requested items' pieces only (not the 4-item catalog).
    assert seen == [(1, 2, 3), (1, 2, 1)]


def test_token_field_and_padding_item():
    enc = TextItemEncoder({"category": CATEGORY}, VOCABS, embedding_size=2, hidden_size=2)
    with torch.no_grad():
        enc.tables["category"].weight.copy_(torch.tensor([[0.0, 0.0], [1, 2], [3, 4]]))
        enc.adapter.weight.copy_(torch.eye(2))
        enc.adapter.bias.zero_()
    torch.testing.assert_close(
        enc(torch.tensor([0, 3, 2])), torch.tensor([[0.0, 0], [1, 2], [3, 4]])
    )


def test_vocab_and_embedding_names():
    enc = _text_encoder()
    assert enc.vocab() == {"title": VOCABS["title"], "brand": VOCABS["brand"]}
    assert enc.embedding_parameter_names() == {"tables.title.weight", "tables.brand.weight"}
    both = IdTextItemEncoder(IdItemEncoder(4, 3), enc)
    assert both.embedding_parameter_names() == {
        "id.item_embedding.weight",
        "text.tables.title.weight",
        "text.tables.brand.weight",
    }
    ids = torch.tensor([1, 2, 3])
    torch.testing.assert_close(both(ids), both.id(ids) + enc(ids))


def test_id_encoder_padding_row_is_zero():
    enc = IdItemEncoder(5, 4)
    assert torch.count_nonzero(enc(torch.tensor([0]))) == 0
    assert enc.vocab() == {}


def test_token_out_of_vocabulary_is_an_error():
    with pytest.raises(ValueError, match="outside its vocabulary of 3"):
        TextItemEncoder({"brand": torch.tensor([[0], [3]])}, VOCABS, 2, 2)


class _Dataset:
    """The few attributes of a RecBole dataset that ``build_item_encoder`` reads."""

    dataset_name = "tiny"
    iid_field = "item_id"

    def __init__(self, with_items: bool = True) -> None:
        self.item_feat = (
            {"title": TITLE, "brand": BRAND, "category": CATEGORY} if with_items else None
        )
        self.field2type = {
            "item_id": FeatureType.TOKEN,
            "title": FeatureType.TOKEN_SEQ,
            "brand": FeatureType.TOKEN_SEQ,
            "category": FeatureType.TOKEN,
            "rating": FeatureType.FLOAT,
        }
        self.field2source = {f: FeatureSource.ITEM for f in self.field2type}
        self.field2source["item_id"] = FeatureSource.ITEM_ID
        self.field2id_token = {f: np.array(v) for f, v in VOCABS.items()}

    def num(self, field: str) -> int:
        return 4


def _settings(**kw) -> EncoderSettings:
    base = {
        "item_encoder": "text",
        "hidden_size": 8,
        "text_fields": ["title", "brand", "category"],
        "text_embedding_size": 5,
    }
    return settings_slice(EncoderSettings, **{**base, **kw})


def test_build_item_encoder_kinds():
    catalog = catalog_from_dataset(_Dataset(), ["title", "brand", "category"])
    text = build_item_encoder(_settings(), catalog)
    assert isinstance(text, TextItemEncoder) and text.fields == ["title", "brand", "category"]
    assert text.adapter.in_features == 15 and text(torch.tensor([1, 2])).shape == (2, 8)
    assert text.vocab()["category"] == VOCABS["category"]
    assert isinstance(build_item_encoder(_settings(item_encoder="id"), catalog), IdItemEncoder)
    both = build_item_encoder(_settings(item_encoder="id+text"), catalog)
    assert isinstance(both, IdTextItemEncoder)


def test_unknown_encoder_and_missing_fields_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown item_encoder 'bert'; valid: \['id', 'text'"):
        _settings(item_encoder="bert")
    only_title = catalog_from_dataset(_Dataset(), ["title"])
    with pytest.raises(ConfigError, match=r"text field\(s\) \['color'\] are not item text fields"):
        build_item_encoder(_settings(text_fields=["color"]), only_title)


@pytest.mark.parametrize(
    ("fields", "with_items", "message"),
    [
        (["color"], True, "text field 'color' is not an item field of tiny"),
        (["rating"], True, "must be a token or token_seq field"),
        (["title"], False, "needs item features, but tiny has no .item file"),
    ],
)
def test_catalog_from_dataset_errors(fields, with_items, message):
    with pytest.raises(ConfigError, match=message):
        catalog_from_dataset(_Dataset(with_items), fields)
