"""Item text: HTML cleaning, word normalisation, deterministic SentencePiece, piece limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.errors import EtlError
from etl.text import Tokenizer, clean_text, clean_token, train_sentencepiece, words

SENTENCES = ["red lipstick matte", "blue shampoo", "hair dryer pro", "face cream spf"] * 20


def test_clean_text() -> None:
    assert clean_text("Shampoo &amp; Conditioner <b>Set</b>") == "Shampoo & Conditioner Set"
    assert clean_text('<span class="a-size-medium a-color-secondary"') == ""
    assert clean_text("a\tb\n c &lt;i&gt;x&lt;/i&gt;") == "a b c x"
    assert words("Shampoo & Conditioner, 2-Pack!") == "shampoo conditioner 2 pack"
    assert clean_token('"Kids" Toys\t&amp; Games') == "'Kids' Toys & Games"


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = train_sentencepiece(SENTENCES, tmp_path / "a" / "spm.model", vocab_size=40)
    b = train_sentencepiece(SENTENCES, tmp_path / "b" / "spm.model", vocab_size=40)
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".vocab").read_text() == b.with_suffix(".vocab").read_text()
    assert not list(tmp_path.glob("*/.*"))  # no temporaries left


def test_pieces_limit_and_empty(tmp_path: Path) -> None:
    model = train_sentencepiece(SENTENCES, tmp_path / "spm.model", vocab_size=40)
    tok = Tokenizer(model)
    long_title = " ".join(["shampoo"] * 100)
    out = tok.pieces(["Red <b>Lipstick</b>", "", long_title, "<span"], limit=40)
    assert "".join(out[0].split(" ")).replace("\u2581", " ").strip() == "red lipstick"
    assert out[1] == "" and out[3] == ""
    assert len(out[2].split(" ")) == 40
    assert all("\t" not in p and "" not in p.split(" ") for p in out if p)


def test_errors() -> None:
    with pytest.raises(EtlError, match="--vocab-size 2 is too small; pass at least 8"):
        train_sentencepiece(SENTENCES, Path("unused.model"), vocab_size=2)
    with pytest.raises(EtlError, match="no item text"):
        train_sentencepiece(["", ""], Path("unused.model"), vocab_size=40)
