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
from etl.manifest import staging_dir
from etl.metadata import first_per_key, tokenize_table
from etl.ratings import dedup_and_order
from etl.readers import BadRows, find_raw_file, parse_meta_2014_lines, parse_review_lines, read_file
from etl.scaling import lookup_items
from etl.text import Tokenizer

# (dataset name, 2014 5-core reviews, 2014 metadata)
FINETUNE_SETS = (
    ("amazon-beauty", "reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"),
    ("amazon-sports", "reviews_Sports_and_Outdoors_5.json.gz", "meta_Sports_and_Outdoors.json.gz"),
)


def finetune_inputs(raw_dir: Path) -> list[Path]:
    """The 2014 review and metadata files present in RAW."""
    found = []
    for _, reviews, meta in FINETUNE_SETS:
        for name in (reviews, meta):
            path = find_raw_file(raw_dir, name)
            if path is not None:
                found.append(path)
    return found


def finetune_users(raw_dir: Path, bad: BadRows | None = None) -> pa.Array:
    """Distinct reviewerIDs of the Beauty and Sports 5-core files present in RAW, sorted."""
    arrays = []
    for _, reviews, _ in FINETUNE_SETS:
        path = find_raw_file(raw_dir, reviews)
        if path is not None:
            arrays.append(read_file(path, parse_review_lines, bad).column("user").combine_chunks())
    if not arrays:
        return pa.array([], pa.string())
    users = pc.unique(pa.concat_arrays(arrays))
    return users.take(pc.array_sort_indices(users))


def item_texts(
    asins: pa.Array, items_path: Path, meta_2014: Path | None, tokenizer: Tokenizer, bad: BadRows
) -> tuple[pa.Table, dict[str, int]]:
    """The `.item` rows of `asins` (sorted by asin) and how many items took each text source."""
    from_2018 = lookup_items(items_path, asins)
    from_2018 = from_2018.filter(from_2018.column("usable")).drop_columns(["usable"])
    rest = pc.filter(asins, pc.invert(pc.is_in(asins, value_set=from_2018.column("asin"))))
    from_2014 = None
    if meta_2014 is not None and len(rest):
        raw = read_file(meta_2014, parse_meta_2014_lines, bad)
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
    name: str,
    reviews_path: Path,
    meta_2014: Path | None,
    items_path: Path,
    model_path: Path,
    out_dir: Path,
) -> dict:
    """Write `out_dir/<name>/<name>.{inter,item}` from one 2014 5-core review file.

    Users are written in id order, each history by (timestamp, file order).

    Returns:
        summary dict: counts before/after de-duplication, text sources, skipped rows.

    Raises:
        EtlError: an input file is unreadable or a truncated gzip.
    """
    bad = BadRows()
    raw = read_file(reviews_path, parse_review_lines, bad)
    table, dups = dedup_and_order(raw)
    items = pc.unique(table.column("item"))
    item_table, sources = item_texts(items, items_path, meta_2014, Tokenizer(model_path), bad)
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
    for name, reviews, meta in FINETUNE_SETS:
        reviews_path = find_raw_file(raw_dir, reviews)
        if reviews_path is None:
            summary["missing"].append(reviews)
            continue
        one = build_finetune_dataset(
            name, reviews_path, find_raw_file(raw_dir, meta), items_path, model_path, out_dir
        )
        summary["counts"] += one["counts"]
        summary["text_sources"].update(one["text_sources"])
        BadRows(summary["bad_rows"]).merge(BadRows(one["bad_rows"]))
        summary["datasets"].append(name)
    return summary
