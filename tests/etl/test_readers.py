"""Readers: good rows, every kind of bad row counted per file and reason, fatal files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from etl.errors import EtlError
from etl.metadata import first_per_key
from etl.readers import (
    BadRows,
    parse_meta_2014_lines,
    parse_meta_2018_lines,
    parse_ratings_csv,
    parse_review_lines,
    plan_chunks,
    read_chunk,
    read_file,
)


def test_ratings_csv_bad_rows_counted_per_reason(tmp_path: Path) -> None:
    path = tmp_path / "Beauty.csv"
    path.write_bytes(
        b"I1,U1,5.0,100\n"
        b"I2,U1,x,100\n"  # non-numeric rating
        b"I3,U2,4.0\n"  # 3 columns
        b"I3,U2,4.0,1,9\n"  # 5 columns
        b"I4,U\xff,3.0,5\n"  # non-UTF-8
        b",U3,1.0,1\n"  # empty item
        b"I5,U3,2.0,1.5\n"  # non-integer timestamp
        b"\n"
        b'I6,"U4,1.0,7\n'  # a quote in an id: bad, and it must not swallow the next line
        b"I7,U5,1,8\n"
    )
    bad = BadRows()
    table = read_file(path, parse_ratings_csv, bad)
    assert table.to_pylist() == [
        {"user": "U1", "item": "I1", "rating": 5.0, "timestamp": 100, "order": 0},
        {"user": "U5", "item": "I7", "rating": 1.0, "timestamp": 8, "order": 1},
    ]
    assert bad.as_dict() == {
        "Beauty.csv": {
            "bad_id": 1,
            "bad_rating": 1,
            "bad_timestamp": 1,
            "missing_field": 1,
            "non_utf8": 1,
            "wrong_column_count": 2,
        }
    }


def test_chunks_keep_file_order(tmp_path: Path) -> None:
    lines = [f"I{i},U{i % 3},5.0,{i}" for i in range(50)]
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    chunks = plan_chunks([path], chunk_bytes=40)
    assert len(chunks) > 5
    tables = [read_chunk(c, parse_ratings_csv, BadRows()) for c in chunks]
    items = [i for t in tables for i in t.column("item").to_pylist()]
    orders = [o for t in tables for o in t.column("order").to_pylist()]
    assert items == [f"I{i}" for i in range(50)]
    assert orders == sorted(orders)


def test_review_lines_bad_rows(tmp_path: Path) -> None:
    good = {"reviewerID": "U1", "asin": "A", "overall": 4.0, "unixReviewTime": 10}
    lines = [
        json.dumps(good).encode(),
        b'{"reviewerID": "U2", "asin": ',  # malformed JSON
        json.dumps({"reviewerID": "U3", "overall": 1.0, "unixReviewTime": 1}).encode(),  # no asin
        json.dumps({**good, "overall": "great"}).encode(),
        json.dumps({**good, "unixReviewTime": "yesterday"}).encode(),
        b'{"reviewerID": "U\xff", "asin": "A", "overall": 1.0, "unixReviewTime": 1}',
        json.dumps({**good, "reviewerID": "U9", "overall": "3"}).encode(),  # numeric string is fine
        json.dumps({**good, "reviewerID": 'U"8'}).encode(),  # a quote in an id
    ]
    path = tmp_path / "Gift_Cards_5.json.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    bad = BadRows()
    table = read_file(path, parse_review_lines, bad)
    assert table.select(["user", "item", "rating", "timestamp"]).to_pylist() == [
        {"user": "U1", "item": "A", "rating": 4.0, "timestamp": 10},
        {"user": "U9", "item": "A", "rating": 3.0, "timestamp": 10},
    ]
    assert bad.as_dict() == {
        "Gift_Cards_5.json.gz": {
            "bad_id": 1,
            "bad_rating": 1,
            "bad_timestamp": 1,
            "malformed_json": 1,
            "missing_field": 1,
            "non_utf8": 1,
        }
    }


def test_meta_2018_fields_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "meta_X.json"
    path.write_text(
        json.dumps(
            {
                "asin": "A",
                "title": "T &amp; <b>U</b>",
                "brand": "B",
                "category": ["r", "s", "t", "u"],
            }
        )
        + "\n"
        + json.dumps({"asin": "A", "title": "second"})
        + "\n"
        + json.dumps({"asin": "C", "title": ["not", "a", "string"]})
        + "\n{broken\n"
    )
    bad = BadRows()
    table = read_file(path, parse_meta_2018_lines, bad)
    assert table.num_rows == 3
    first = first_per_key(table, "asin").drop_columns(["order"]).to_pylist()
    assert first == [
        {
            "asin": "A",
            "title": "T &amp; <b>U</b>",
            "brand": "B",
            "category_l1": "r",
            "category_l2": "s",
            "category_l3": "t",
        },
        {
            "asin": "C",
            "title": "",
            "brand": "",
            "category_l1": "",
            "category_l2": "",
            "category_l3": "",
        },
    ]
    assert bad.as_dict() == {"meta_X.json": {"malformed_json": 1}}


def test_meta_2014_literals_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    lines = [
        repr(
            {
                "asin": "K",
                "title": "Kit",
                "brand": "Kb",
                "categories": [["Beauty", "Makeup"], ["Other"]],
            }
        ),
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        "{'asin': 'broken'",
        repr({"title": "no asin"}),
    ]
    path = tmp_path / "meta_Beauty.json.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    bad = BadRows()
    table = read_file(path, parse_meta_2014_lines, bad)
    assert table.drop_columns(["order"]).to_pylist() == [
        {
            "asin": "K",
            "title": "Kit",
            "brand": "Kb",
            "category_l1": "Beauty",
            "category_l2": "Makeup",
            "category_l3": "",
        }
    ]
    assert not marker.exists()
    assert bad.as_dict() == {"meta_Beauty.json.gz": {"malformed_literal": 2, "missing_field": 1}}


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    data = gzip.compress(b"I1,U1,5.0,1\n" * 10_000)
    path = tmp_path / "all_csv_files.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EtlError, match="all_csv_files.csv.gz: truncated or corrupt gzip"):
        read_file(path, parse_ratings_csv)


def test_missing_file_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(EtlError, match="input file not found: .*nope.csv"):
        read_file(tmp_path / "nope.csv", parse_ratings_csv)


def _distinct_pairs(path: Path) -> tuple[int, int, int]:
    with gzip.open(path, "rt") as f:
        recs = [json.loads(line) for line in f]
    pairs = {(r["reviewerID"], r["asin"]) for r in recs}
    return len(pairs), len({u for u, _ in pairs}), len({i for _, i in pairs})


@pytest.mark.parametrize(
    ("name", "lines", "pairs", "users", "items"),
    [
        ("All_Beauty_5.json.gz", 5269, 5269 - 1177, 991, 85),
        ("Gift_Cards_5.json.gz", 2972, 2972 - 7, 458, 148),
        ("Magazine_Subscriptions_5.json.gz", 2375, 2375 - 73, 348, 157),
    ],
)
def test_real_2018_reviews(
    shared_data: Path, name: str, lines: int, pairs: int, users: int, items: int
) -> None:
    from etl.ratings import dedup_and_order

    path = shared_data / "amazon2018" / name
    bad = BadRows()
    table = read_file(path, parse_review_lines, bad)
    assert table.num_rows == lines
    assert bad.total() == 0
    deduped, dropped = dedup_and_order(table)
    assert (deduped.num_rows, dropped) == (pairs, lines - pairs)
    assert _distinct_pairs(path) == (pairs, users, items)
    assert len(set(deduped.column("user").to_pylist())) == users
    assert len(set(deduped.column("item").to_pylist())) == items


@pytest.mark.parametrize(
    ("name", "lines", "asins"),
    [("meta_Gift_Cards.json.gz", 1547, 1547), ("meta_Magazine_Subscriptions.json.gz", 3385, 2320)],
)
def test_real_2018_metadata(shared_data: Path, name: str, lines: int, asins: int) -> None:
    bad = BadRows()
    table = read_file(shared_data / "amazon2018" / name, parse_meta_2018_lines, bad)
    assert (table.num_rows, bad.total()) == (lines, 0)
    assert first_per_key(table, "asin").num_rows == asins


# Numeric fields the fast (typed) and the slow (careful) CSV paths must judge alike.
RATINGS = ["5.0", "1e3", ".5", "5.", "+5.0", "-0", "007.5", "1e-400", "1.5E+3"]
BAD_RATINGS = ["1e999", "-inf", "inf", "nan", "NaN", " 5.0", "5.0 ", "0x10", "1_0", "", "NA",
               ".", "5e"]  # fmt: skip
STAMPS = ["7", "-0", "0001", "0x10", "0X1f", "9223372036854775807", "00000000000000000000007"]
BAD_STAMPS = ["-1", "+5", "1.5", "1e3", " 7", "7 ", "", "NA", "-0x10", "0x", "0x8000000000000000",
              "99999999999999999999", "9223372036854775808", "-9223372036854775808"]  # fmt: skip


def _parse_without(block: bytes, forcing: dict[str, int]) -> tuple[list[dict], dict[str, int]]:
    """Parse `block`; rows and counts less those of the lines added to force the slow path."""
    bad = BadRows()
    rows = [r for r in parse_ratings_csv(block, "f", bad).to_pylist() if r["user"] != "FORCE"]
    counts = dict(bad.as_dict().get("f", {}))
    for reason, n in forcing.items():
        counts[reason] -= n
    return rows, {reason: n for reason, n in counts.items() if n}


@pytest.mark.parametrize(
    ("line", "reason"),
    [(f"I1,U1,{r},7", None) for r in RATINGS]
    + [(f"I1,U1,{r},7", "bad_rating") for r in BAD_RATINGS]
    + [(f"I1,U1,5.0,{t}", None) for t in STAMPS]
    + [(f"I1,U1,5.0,{t}", "bad_timestamp") for t in BAD_STAMPS],
)
def test_ratings_csv_row_judged_alike_whatever_its_block(line: str, reason: str | None) -> None:
    # A row must not be kept or dropped depending on the other rows of its block (chunking):
    # alone it may take the fast path; a bad id forces the slow path's one-call cast; a
    # non-numeric rating and timestamp force its per-row parse.
    block = b"I0,U0,5.0,1\n" + line.encode() + b"\n"
    alone = _parse_without(block, {})
    cast = _parse_without(block + b'I9,"FORCE,5.0,1\n', {"bad_id": 1})
    per_row = _parse_without(
        block + b"I9,FORCE,x,1\nI9,FORCE,5.0,y\n", {"bad_rating": 1, "bad_timestamp": 1}
    )
    assert alone == cast == per_row
    rows, counts = alone
    assert [r["user"] for r in rows] == (["U0", "U1"] if reason is None else ["U0"])
    assert counts == ({} if reason is None else {reason: 1})


def test_ratings_csv_values_of_odd_numbers() -> None:
    block = b"I1,U1,1e3,0x10\nI2,U2,.5,-0\nI3,U3,+5.0,0001\n"
    table = parse_ratings_csv(block, "f", BadRows())
    assert table.column("rating").to_pylist() == [1000.0, 0.5, 5.0]
    assert table.column("timestamp").to_pylist() == [16, 0, 1]
