"""Step `build_beauty_and_sports_datasets`: the standard 2014 5-core benchmarks, kept whole.

The 5-core files are already 5-core and are not re-filtered; only (user, item) duplicates
go. Item text comes from the 2018 metadata when the asin has usable text there, else from
the 2014 metadata (title, brand, categories), else it is empty: no item is ever dropped.
Every text is tokenised with the pre-training SentencePiece model.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from etl.atomic_files import write_inter, write_item
from etl.errors import EtlError
from etl.manifest import staging_dir
from etl.metadata import first_per_key, tokenize_table
from etl.ratings import dedup_and_order
from etl.raw_files import FinetuneSet, finetune_sets
from etl.readers import PARSERS, BadRows, Parser, find_raw_file, read_file
from etl.scaling import lookup_items
from etl.text import Tokenizer


def finetune_inputs(raw_dir: Path) -> list[Path]:
    """The fine-tuning review and metadata files (2014) present in RAW."""
    found = []
    for s in finetune_sets():
        for entry in (s.reviews, s.meta):
            path = find_raw_file(raw_dir, entry.name) if entry is not None else None
            if path is not None:
                found.append(path)
    return found


def finetune_reviews_missing(raw_dir: Path) -> list[str]:
    """Names of the fine-tuning review files absent from RAW, in table order."""
    return [
        s.reviews.name for s in finetune_sets() if find_raw_file(raw_dir, s.reviews.name) is None
    ]


def read_finetune_file(path: Path, parser: Parser, bad: BadRows) -> pa.Table:
    """Read a fine-tuning input, which must give at least one good row.

    A 0-byte or empty file (a failed download) would publish an empty dataset and let its
    users into the pre-training pool unnoticed.

    Raises:
        EtlError: the file gives no good row (the message names it), or cannot be read.
    """
    mine = BadRows()
    table = read_file(path, parser, mine)
    if bad is not None:
        bad.merge(mine)
    if table.num_rows == 0:
        reasons = mine.as_dict().get(path.name, {})
        found = ", ".join(f"{n} {r}" for r, n in reasons.items()) or f"{path.stat().st_size} bytes"
        raise EtlError(
            f"{path}: no valid row ({found}), so its fine-tuning set cannot be built nor its "
            "users kept out of pre-training; download it again or remove it from RAW"
        )
    return table


def finetune_users(raw_dir: Path, bad: BadRows | None = None) -> pa.Array:
    """Distinct users of the fine-tuning review files (Beauty, Sports) present in RAW, sorted.

    Raises:
        EtlError: a review file present is empty or unreadable.
    """
    bad = bad if bad is not None else BadRows()
    arrays = []
    for s in finetune_sets():
        path = find_raw_file(raw_dir, s.reviews.name)
        if path is not None:
            table = read_finetune_file(path, PARSERS[s.reviews.format], bad)
            arrays.append(table.column("user").combine_chunks())
    if not arrays:
        return pa.array([], pa.string())
    users = pc.unique(pa.concat_arrays(arrays))
    return users.take(pc.array_sort_indices(users))


def item_texts(
    asins: pa.Array,
    items_path: Path,
    meta: tuple[Path, Parser] | None,
    tokenizer: Tokenizer,
    bad: BadRows,
) -> tuple[pa.Table, dict[str, int]]:
    """The `.item` rows of `asins` (sorted by asin) and how many items took each text source.

    `meta` is the fine-tuning set's own metadata file (2014) and its parser, if present.
    """
    from_2018 = lookup_items(items_path, asins)
    from_2018 = from_2018.filter(from_2018.column("usable")).drop_columns(["usable"])
    rest = pc.filter(asins, pc.invert(pc.is_in(asins, value_set=from_2018.column("asin"))))
    from_2014 = None
    if meta is not None and len(rest):
        raw = read_finetune_file(meta[0], meta[1], bad)
        raw = first_per_key(raw.filter(pc.is_in(raw.column("asin"), value_set=rest)), "asin")
        from_2014 = tokenize_table(raw, tokenizer).drop_columns(["order", "usable"])
        rest = pc.filter(rest, pc.invert(pc.is_in(rest, value_set=from_2014.column("asin"))))
    empty = pa.table(
        {
            c: (rest if c == "asin" else pa.array([""] * len(rest), pa.string()))
            for c in from_2018.column_names
        }
    )
    parts = [from_2018, empty] + (
        [from_2014.select(from_2018.column_names)] if from_2014 is not None else []
    )
    table = pa.concat_tables(parts)
    table = table.take(pc.sort_indices(table, sort_keys=[("asin", "ascending")]))
    sources = {
        "text_from_2018": from_2018.num_rows,
        "text_from_2014": from_2014.num_rows if from_2014 is not None else 0,
        "no_text": len(rest),
    }
    return table, sources


def build_finetune_dataset(
    fset: FinetuneSet, raw_dir: Path, items_path: Path, model_path: Path, out_dir: Path
) -> dict:
    """Write `out_dir/<name>/<name>.{inter,item}` from one 2014 5-core review file in RAW.

    Users are written in id order, each history by (timestamp, file order).

    Returns:
        summary dict: counts before/after de-duplication, text sources, skipped rows.

    Raises:
        EtlError: an input file is unreadable, a truncated gzip, or gives no valid row.
    """
    name = fset.dataset
    reviews_path = find_raw_file(raw_dir, fset.reviews.name)
    if reviews_path is None:
        raise EtlError(f"{fset.reviews.name} not found in {raw_dir}; place it there")
    meta_path = find_raw_file(raw_dir, fset.meta.name) if fset.meta is not None else None
    meta = (meta_path, PARSERS[fset.meta.format]) if fset.meta and meta_path else None
    if meta_path is not None and meta_path.stat().st_size == 0:
        raise EtlError(f"{meta_path} is empty (0 bytes); download it again or remove it from RAW")
    bad = BadRows()
    raw = read_finetune_file(reviews_path, PARSERS[fset.reviews.format], bad)
    table, dups = dedup_and_order(raw)
    items = pc.unique(table.column("item"))
    item_table, sources = item_texts(items, items_path, meta, Tokenizer(model_path), bad)
    with staging_dir(out_dir / name) as tmp:
        write_inter(tmp / f"{name}.inter", table)
        write_item(tmp / f"{name}.item", item_table)
    users = pc.count_distinct(table.column("user")).as_py()
    return {
        "counts": [
            {
                "stage": f"{name}: reviews read",
                "users": None,
                "items": None,
                "interactions": raw.num_rows,
            },
            {
                "stage": f"{name}: after de-duplicating",
                "users": users,
                "items": len(items),
                "interactions": table.num_rows,
            },
        ],
        "text_sources": {name: sources},
        "bad_rows": bad.as_dict(),
    }


def build_beauty_and_sports_datasets(
    raw_dir: Path, items_path: Path, model_path: Path, out_dir: Path
) -> dict:
    """Build amazon-beauty and amazon-sports from whichever 2014 5-core files RAW holds.

    A missing 5-core file is reported in the summary (`missing`), not an error, so a run
    on pre-training data alone still completes.
    """
    summary: dict = {
        "counts": [],
        "text_sources": {},
        "bad_rows": {},
        "missing": [],
        "datasets": [],
    }
    for s in finetune_sets():
        reviews_path = find_raw_file(raw_dir, s.reviews.name)
        if reviews_path is None:
            summary["missing"].append(s.reviews.name)
            continue
        one = build_finetune_dataset(s, raw_dir, items_path, model_path, out_dir)
        summary["counts"] += one["counts"]
        summary["text_sources"].update(one["text_sources"])
        BadRows(summary["bad_rows"]).merge(BadRows(one["bad_rows"]))
        summary["datasets"].append(s.dataset)
    return summary
