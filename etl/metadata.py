"""Steps `train_sentence_piece` and `tokenize_metadata` over the partitioned 2018 metadata.

`items.parquet` (sorted by asin, one row per asin, first record wins) holds each item's
pieces: title (first 40), brand (first 8), the first three category levels as cleaned
tokens, and `usable` = the item has title or brand pieces. Items that are not usable are
dropped from pre-training; fine-tuning sets look for other text instead.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.engine import DEFAULT_ENGINE, Engine
from etl.hashing import sample_keys, stable_hash64
from etl.manifest import write_parquet_atomic
from etl.text import (
    BRAND_PIECES,
    TITLE_PIECES,
    Tokenizer,
    clean_text,
    clean_token,
    train_sentencepiece,
    words,
)

CATEGORY_COLUMNS = ("category_l1", "category_l2", "category_l3")
# Optional long text of Amazon 2023 items (`--item-text features,description`): it trains
# SentencePiece with the rest and is kept as its first EXTRA_PIECES pieces.
EXTRA_TEXT_COLUMNS = ("features", "description")
EXTRA_PIECES = 64


def first_per_key(table: pa.Table, key: str) -> pa.Table:
    """Keep the first row (smallest `order`) of each `key` value; rows stay in `order`."""
    if table.num_rows == 0:
        return table
    table = table.take(pc.sort_indices(table, sort_keys=[("order", "ascending")]))
    codes = pc.dictionary_encode(table.column(key).combine_chunks()).indices.to_numpy()
    _, first = np.unique(codes, return_index=True)
    return table.take(pa.array(np.sort(first)))


def load_metadata(work_dir: Path) -> pa.Table:
    """All metadata records of `work_dir/meta`, de-duplicated by asin, in input order."""
    files = sorted((work_dir / "meta").glob("chunk-*.parquet"))
    return first_per_key(pa.concat_tables([pq.read_table(f) for f in files]), "asin")


def load_metadata_sample(work_dir: Path, max_items: int, seed: int) -> tuple[pa.Table, int]:
    """The records `training_sentences` keeps, read without holding the whole catalog.

    Equal to `load_metadata` followed by the seeded choice of `training_sentences`: a first
    pass reads only the asins and finds the `max_items`-th smallest seeded key among them; the
    second keeps the rows at or below it (all the records of the chosen asins), so memory
    follows `max_items`, not the catalog (15M records on the full 2018 data).

    Returns:
        (the chosen records, de-duplicated by asin, in input order; the number of distinct
        asins, counted as distinct 64-bit keys).
    """
    files = sorted((work_dir / "meta").glob("chunk-*.parquet"))
    keys = [sample_keys(pq.read_table(f, columns=["asin"]).column("asin"), seed) for f in files]
    distinct = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)
    if not len(distinct):
        return load_metadata(work_dir), 0
    threshold = distinct[min(max_items, len(distinct)) - 1]
    tables = []
    for f, k in zip(files, keys):
        table = pq.read_table(f)
        tables.append(table.filter(pa.array(k <= threshold)))
    # More than `max_items` only if distinct asins share the threshold key: the choice of
    # `training_sentences` then applies, as it did to the whole catalog.
    return first_per_key(pa.concat_tables(tables), "asin"), len(distinct)


def training_sentences(meta: pa.Table, max_items: int, seed: int) -> list[str]:
    """Normalised title, brand and category sentences of up to `max_items` items, in input order.

    Above `max_items`, the items with the smallest seeded hash of their asin are kept,
    so the choice does not depend on file order or workers.
    """
    if meta.num_rows > max_items:
        keys = sample_keys(meta.column("asin"), seed)
        chosen = np.sort(np.argsort(keys, kind="stable")[:max_items])
        meta = meta.take(pa.array(chosen))
    columns = ["title", "brand", *CATEGORY_COLUMNS]
    columns += [c for c in EXTRA_TEXT_COLUMNS if c in meta.column_names]
    values = [meta.column(c).to_pylist() for c in columns]
    sentences = []
    for row in zip(*values):
        for text in row:
            sentence = words(clean_text(text))
            if sentence:
                sentences.append(sentence)
    return sentences


def train_sentence_piece(
    work_dir: Path, model_path: Path, *, vocab_size: int, max_items: int, seed: int
) -> dict:
    """Train the one SentencePiece model of the project on the pre-training catalog's text.

    Returns:
        summary dict: items and sentences used, vocabulary size reached.
    """
    meta, n_items = load_metadata_sample(work_dir, max_items, seed)
    sentences = training_sentences(meta, max_items, seed)
    train_sentencepiece(sentences, model_path, vocab_size=vocab_size)
    vocab = Tokenizer(model_path).processor.get_piece_size()
    return {
        "counts": [
            {
                "stage": "metadata items (distinct asins)",
                "users": None,
                "items": n_items,
                "interactions": None,
            }
        ],
        "sentences": len(sentences),
        "vocab_size_reached": vocab,
    }


def tokenize_table(meta: pa.Table, tokenizer: Tokenizer) -> pa.Table:
    """Raw (asin, title, brand, category_l1..l3[, order]) -> pieces and cleaned tokens + `usable`."""
    title = tokenizer.pieces(meta.column("title").to_pylist(), TITLE_PIECES)
    brand = tokenizer.pieces(meta.column("brand").to_pylist(), BRAND_PIECES)
    out = {
        "asin": meta.column("asin"),
        "title": pa.array(title, pa.string()),
        "brand": pa.array(brand, pa.string()),
    }
    for c in CATEGORY_COLUMNS:
        out[c] = pa.array([clean_token(v) for v in meta.column(c).to_pylist()], pa.string())
    for c in EXTRA_TEXT_COLUMNS:
        if c in meta.column_names:
            pieces = tokenizer.pieces(meta.column(c).to_pylist(), EXTRA_PIECES)
            out[c] = pa.array(pieces, pa.string())
    if "genres" in meta.column_names:  # MovieLens: '|'-separated -> one token per genre
        genres = [genre_tokens(v) for v in meta.column("genres").to_pylist()]
        out["genres"] = pa.array(genres, pa.string())
    if "order" in meta.column_names:
        out["order"] = meta.column("order")
    out["usable"] = pa.array([bool(t or b) for t, b in zip(title, brand)], pa.bool_())
    return pa.table(out)


def genre_tokens(genres: str) -> str:
    """MovieLens genres `Action|Sci-Fi|Film-Noir` as space-separated tokens (a token never
    holds a space: one inside a genre becomes `_`)."""
    tokens = (clean_token(g).replace(" ", "_") for g in genres.split("|"))
    return " ".join(t for t in tokens if t)


@dataclass(frozen=True)
class _TokenizeTask:
    in_path: str
    model_path: str
    out_dir: str
    buckets: int


# Records per bucket of the final de-duplication: the parent holds one bucket at a time, so
# its memory follows this, not the catalog (15M records on the full 2018 data).
RECORDS_PER_BUCKET = 4_000_000


def _tokenize_task(task: _TokenizeTask) -> int:
    table = tokenize_table(pq.read_table(task.in_path), Tokenizer(Path(task.model_path)))
    name = Path(task.in_path).name
    if task.buckets == 1:
        pq.write_table(table, Path(task.out_dir) / "bucket-0000" / name)
        return table.num_rows
    # All records of an asin land in one bucket (by a stable hash of the asin).
    bucket = (stable_hash64(table.column("asin")) % np.uint64(task.buckets)).astype(np.int64)
    for b in np.unique(bucket).tolist():
        rows = table.filter(pa.array(bucket == b))
        pq.write_table(rows, Path(task.out_dir) / f"bucket-{b:04d}" / name)
    return table.num_rows


def tokenize_metadata(
    work_dir: Path,
    model_path: Path,
    *,
    engine: Engine = DEFAULT_ENGINE,
) -> dict:
    """Tokenise every metadata chunk in parallel, then write `work_dir/items.parquet`.

    One row per asin (its first record). Up to RECORDS_PER_BUCKET records the file is sorted
    by asin; above, the records are split into buckets by a hash of the asin, each bucket
    de-duplicated and sorted on its own and appended (readers look asins up by value, so
    the order between buckets does not matter to them).

    Returns:
        summary dict with `counts`: distinct items, usable items.
    """
    files = sorted((work_dir / "meta").glob("chunk-*.parquet"))
    records = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    buckets = max(1, -(-records // RECORDS_PER_BUCKET))
    n_items = usable = 0
    out = work_dir / "items.parquet"
    with tempfile.TemporaryDirectory(prefix=".tokenized.", suffix=".tmp", dir=work_dir) as tmp_name:
        tmp = Path(tmp_name)
        for b in range(buckets):
            (tmp / f"bucket-{b:04d}").mkdir()
        tasks = [_TokenizeTask(str(f), str(model_path), str(tmp), buckets) for f in files]
        engine.map(_tokenize_task, tasks, desc="tokenize metadata")
        staged = tmp / "items.parquet"
        writer = None
        try:
            for b in range(buckets):
                parts = sorted((tmp / f"bucket-{b:04d}").glob("chunk-*.parquet"))
                if not parts:
                    continue
                table = first_per_key(pa.concat_tables([pq.read_table(p) for p in parts]), "asin")
                table = table.take(pc.sort_indices(table, sort_keys=[("asin", "ascending")]))
                table = table.drop_columns(["order"])
                n_items += table.num_rows
                usable += int(pc.sum(table.column("usable")).as_py() or 0)
                if writer is None:
                    writer = pq.ParquetWriter(staged, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no metadata record at all: an empty table of the same columns
            write_parquet_atomic(_empty_items(), out)
        else:
            os.replace(staged, out)
    return {
        "counts": [
            {
                "stage": "metadata items (distinct asins)",
                "users": None,
                "items": n_items,
                "interactions": None,
            },
            {
                "stage": "items with usable text (title or brand)",
                "users": None,
                "items": usable,
                "interactions": None,
            },
        ]
    }


def _empty_items() -> pa.Table:
    columns = ["asin", "title", "brand", *CATEGORY_COLUMNS]
    table = pa.table({c: pa.array([], pa.string()) for c in columns})
    return table.append_column("usable", pa.array([], pa.bool_()))
