"""Item text: HTML cleaning, word normalisation, SentencePiece BPE training and tokenising.

A token_seq field in the atomic files holds space-separated SentencePiece pieces; pieces
never contain spaces or tabs (SentencePiece marks word starts with U+2581), and an item
without text gets an empty field.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from etl.errors import EtlError
from etl.manifest import atomic_write_bytes

TITLE_PIECES = 40  # first 40 pieces of a title, as in the study
BRAND_PIECES = 8  # first 8 pieces of a brand
DEFAULT_VOCAB = 30_000

_TAG_RE = re.compile(r"<[^>]*(?:>|$)")  # also an unterminated tag cut at the end of a title
_WORD_RE = re.compile(r"\w+")
_SPACE_RE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Unescape HTML entities, drop tags, collapse whitespace (tabs and newlines included)."""
    if not text:
        return ""
    text = html.unescape(_TAG_RE.sub(" ", html.unescape(text)))
    text = _TAG_RE.sub(" ", text)
    return _SPACE_RE.sub(" ", text).strip()


def words(text: str) -> str:
    """The lower-cased `\\w+` tokens of cleaned text, joined by single spaces."""
    return " ".join(_WORD_RE.findall(text.lower()))


def clean_token(text: str) -> str:
    """A category as one RecBole `token`: cleaned text, may be empty.

    Tabs and line breaks become spaces (clean_text); double quotes become single quotes
    because RecBole reads atomic files with pandas' default quoting, where a field that
    starts with '"' is a quoted field.
    """
    return clean_text(text).replace('"', "'")


def train_sentencepiece(
    sentences: Iterable[str], model_path: Path, vocab_size: int = DEFAULT_VOCAB
) -> Path:
    """Train a BPE model on `sentences` (already normalised by `words`) and write it atomically.

    Deterministic: sentences are used in the given order, no sampling or shuffling, one
    thread. `hard_vocab_limit=False` lets a small corpus end with a smaller vocabulary.

    Args:
        sentences: normalised sentences, in a fixed order; empty ones are ignored.
        model_path: where `<name>.model` goes; `<name>.vocab` is written beside it.
        vocab_size: target vocabulary size (pieces), at least 8.

    Raises:
        EtlError: `vocab_size` < 8, or smaller than the characters of the text need (the
            message names --vocab-size and the smallest value that works); no sentence.
    """
    if vocab_size < 8:
        raise EtlError(
            f"--vocab-size {vocab_size} is too small; pass at least 8 (default {DEFAULT_VOCAB})"
        )
    corpus = [s for s in sentences if s]
    if not corpus:
        raise EtlError("no item text to train SentencePiece on; check the metadata files")
    model_path = Path(model_path)
    # The model is written to memory: with a model_prefix, SentencePiece stores that path
    # inside the model, which would make the bytes depend on the output folder.
    buffer = io.BytesIO()
    try:
        _train(corpus, buffer, vocab_size)
    except RuntimeError as exc:
        need = _REQUIRED_CHARS.search(str(exc))
        if need is None:
            raise
        raise EtlError(
            f"--vocab-size {vocab_size} is too small for this text: SentencePiece needs "
            f"{need.group(1)} pieces for its characters alone; pass --vocab-size "
            f"{need.group(1)} or more (default {DEFAULT_VOCAB})"
        ) from None
    model = buffer.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=model)
    vocab = "".join(
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
        for i in range(processor.get_piece_size())
    )
    atomic_write_bytes(model_path.with_suffix(".vocab"), vocab.encode())
    atomic_write_bytes(model_path, model)
    return model_path


# SentencePiece's message when the vocabulary cannot hold every character: "... 60 vs 64."
_REQUIRED_CHARS = re.compile(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)")


def _train(corpus: list[str], buffer: io.BytesIO, vocab_size: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=0.9995,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )


class Tokenizer:
    """Cleans and tokenises item text with one SentencePiece model."""

    def __init__(self, model_path: Path) -> None:
        """Load the model at `model_path` (raises OSError when it cannot be read)."""
        self.processor = spm.SentencePieceProcessor(model_file=str(model_path))

    def pieces(self, texts: Sequence[str], limit: int) -> list[str]:
        """Space-joined first `limit` pieces of each raw text ('' when there is none)."""
        normalised = [words(clean_text(t)) for t in texts]
        encoded = self.processor.encode(normalised, out_type=str)
        return [" ".join(p for p in pieces[:limit] if p.strip()) for pieces in encoded]
