"""Rebuild the 2014 Beauty 5-core raw files from the standard benchmark in `seqrec_reference`.

`Beauty.txt` (item ids per user, in time order), `Beauty_time.txt` (their unix seconds),
`beauty_datamaps.json` (ids back to reviewerID / asin, attribute names) and
`Beauty_item2attributes.json` (brand and categories per item) together give every
(reviewerID, asin, unixReviewTime) of the 2014 file. The lines are written newest first
(ties keep the user's order), so the ETL must really sort by time, stably, to get the
benchmark's order back.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

from etl.manifest import atomic_write_bytes
from etl.raw_files import finetune_set

REFERENCE = "seqrec_reference"
BEAUTY = finetune_set("amazon-beauty")  # the raw file names written here


def _read_gz_json(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _read_gz_lines(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def reference_sequences(shared_data_dir: Path) -> dict[str, list[str]]:
    """`{reviewerID: [asin, ...]}` in the benchmark's order (`Beauty.txt` through the datamaps)."""
    ref = Path(shared_data_dir) / REFERENCE
    maps = _read_gz_json(ref / "beauty_datamaps.json.gz")
    id2user, id2item = maps["id2user"], maps["id2item"]
    return {
        id2user[row[0]]: [id2item[i] for i in row[1:]]
        for row in _read_gz_lines(ref / "Beauty.txt.gz")
    }


def _gzip_bytes(lines: list[bytes]) -> bytes:
    # mtime=0 and no file name in the header: the same inputs give the same bytes.
    return gzip.compress(b"".join(lines), compresslevel=6, mtime=0)


def write_beauty_2014_from_reference(shared_data_dir: Path, raw_dir: Path) -> dict[str, Path]:
    """Write the Beauty 5-core reviews and metadata of the raw file table (2014 formats:
    `reviews_Beauty_5.json.gz`, `meta_Beauty.json.gz`) into `raw_dir`.

    Reviews are strict JSON lines with the 2014 fields (`overall` is not in the benchmark
    and is written as 5.0). Metadata lines are Python literals with `brand` (heuristic: an
    item's first attribute when that attribute never appears after another one) and
    `categories` = [['Beauty', *the other attributes]]; no titles exist in the benchmark.

    Returns:
        `{"reviews": path, "meta": path}`.

    Raises:
        FileNotFoundError: a `seqrec_reference` file is missing.
    """
    ref = Path(shared_data_dir) / REFERENCE
    maps = _read_gz_json(ref / "beauty_datamaps.json.gz")
    id2user, id2item, id2attr = maps["id2user"], maps["id2item"], maps["id2attribute"]
    items_rows = _read_gz_lines(ref / "Beauty.txt.gz")
    time_rows = _read_gz_lines(ref / "Beauty_time.txt.gz")
    records = []  # (-timestamp, user row, position, line)
    for u, (items, stamps) in enumerate(zip(items_rows, time_rows)):
        if items[0] != stamps[0] or len(items) != len(stamps):
            raise ValueError(f"Beauty.txt and Beauty_time.txt disagree on user {items[0]}")
        user = id2user[items[0]]
        for pos, (item, ts) in enumerate(zip(items[1:], stamps[1:])):
            stamp = int(ts)
            review = {
                "reviewerID": user,
                "asin": id2item[item],
                "reviewerName": "",
                "helpful": [0, 0],
                "reviewText": "",
                "overall": 5.0,
                "summary": "",
                "unixReviewTime": stamp,
                "reviewTime": time.strftime("%m %d, %Y", time.gmtime(stamp)),
            }
            records.append((-stamp, u, pos, (json.dumps(review) + "\n").encode()))
    records.sort(key=lambda r: r[:3])
    raw_dir = Path(raw_dir)
    reviews = raw_dir / BEAUTY.reviews.name
    atomic_write_bytes(reviews, _gzip_bytes([r[3] for r in records]))

    attributes = _read_gz_json(ref / "Beauty_item2attributes.json.gz")
    later = {a for attrs in attributes.values() for a in attrs[1:]}
    meta_lines = []
    for item in sorted(attributes, key=int):
        attrs = attributes[item]
        brand = id2attr[str(attrs[0])] if attrs and attrs[0] not in later else ""
        cats = [id2attr[str(a)] for a in (attrs[1:] if brand else attrs)]
        record = {"asin": id2item[item], "brand": brand, "categories": [["Beauty", *cats]]}
        meta_lines.append((repr(record) + "\n").encode())
    assert BEAUTY.meta is not None, "the raw file table lists meta_Beauty"
    meta = raw_dir / BEAUTY.meta.name
    atomic_write_bytes(meta, _gzip_bytes(meta_lines))
    return {"reviews": reviews, "meta": meta}
