"""Amazon Reviews 2023: readers, bad rows by reason, and the official splits kept whole.

Fixtures are written by hand in the release's formats (README of `benchmark_scripts` and
the scripts `last_out_split.py` / `timestamp_split.py` of hyp1231/AmazonReviews2023).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.amazon2023 import (
    TEST_CUT_MS,
    VALID_CUT_MS,
    find_benchmark_sets,
    meta_files,
    parse_benchmark_csv,
    parse_meta_2023,
    parse_reviews_2023,
    review_files,
    seconds_text,
)
from etl.engine import Engine
from etl.errors import EtlError
from etl.official_splits import build_benchmark_datasets
from etl.readers import BadRows

QUIET = Engine(progress=False)

REVIEW = {
    "rating": 5.0,
    "title": "Such a lovely scent",
    "text": "Smells great, lasts all day.",
    "images": [],
    "asin": "B00YQ6X8EO",
    "parent_asin": "B00YQ6X8EO",
    "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
    "timestamp": 1588687728923,
    "helpful_vote": 0,
    "verified_purchase": True,
}


def _line(rec: dict) -> bytes:
    return json.dumps(rec).encode()


def test_reviews_good_block_is_parsed_in_milliseconds() -> None:
    other = {**REVIEW, "user_id": "AHZ", "parent_asin": "B0X", "rating": 3.0, "timestamp": 5}
    block = _line(REVIEW) + b"\n" + _line(other) + b"\n"
    bad = BadRows()
    assert parse_reviews_2023(block, "All_Beauty.jsonl", bad).to_pylist() == [
        {"user": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "item": "B00YQ6X8EO", "rating": 5.0,
         "timestamp": 1588687728923},
        {"user": "AHZ", "item": "B0X", "rating": 3.0, "timestamp": 5},
    ]  # fmt: skip
    assert bad.total() == 0


def test_reviews_bad_rows_counted_per_reason() -> None:
    lines = [
        _line(REVIEW),
        b'{"rating": 5.0, "user_id": "A',  # malformed JSON (cut line)
        _line({k: v for k, v in REVIEW.items() if k != "parent_asin"}),  # missing item
        _line({**REVIEW, "rating": "five"}),  # non-numeric rating
        _line({**REVIEW, "timestamp": "2020-05-05"}),  # non-numeric timestamp
        _line({**REVIEW, "timestamp": 1588687728923.5}),  # not a whole millisecond
        _line({**REVIEW, "timestamp": -1}),
        _line({**REVIEW, "user_id": 'AG"K'}),  # a quote in an id breaks the atomic files
        _line({**REVIEW, "text": "caf\u00e9"}).replace(b"caf\\u00e9", b"caf\xe9"),  # latin-1 byte
        _line({**REVIEW, "user_id": "AKEEP", "rating": "4"}),  # a numeric string is fine
        b"[1, 2]",  # JSON, but not an object
    ]
    bad = BadRows()
    table = parse_reviews_2023(b"\n".join(lines) + b"\n", "Beauty.jsonl", bad)
    assert table.column("user").to_pylist() == ["AGKHLEW2SOWHNMFQIJGBECAF7INQ", "AKEEP"]
    assert table.column("rating").to_pylist() == [5.0, 4.0]
    assert bad.as_dict() == {
        "Beauty.jsonl": {
            "bad_id": 1,
            "bad_rating": 1,
            "bad_timestamp": 3,
            "malformed_json": 2,
            "missing_field": 1,
            "non_utf8": 1,
        }
    }


META = {
    "main_category": "All Beauty",
    "title": "Howard LC0008 Leather Conditioner, 8-Ounce (4-Pack)",
    "average_rating": 4.8,
    "rating_number": 10,
    "features": ["Cleans & conditions", "Safe on leather"],
    "description": ["Restores old leather."],
    "price": None,
    "images": [{"thumb": "https://x/1.jpg", "large": "https://x/2.jpg", "variant": "MAIN",
                "hi_res": None}],
    "videos": [],
    "store": "Howard Products",
    "categories": ["Beauty & Personal Care", "Skin Care", "Body", "Moisturizers"],
    "details": {"Package Dimensions": "7.1 x 5.5 x 3 inches", "UPC": "617390882781"},
    "parent_asin": "B01CUPMQZE",
    "bought_together": None,
}  # fmt: skip


def test_meta_maps_fields_and_optional_text() -> None:
    bare = {"parent_asin": "B0NOTEXT", "title": None, "store": None, "categories": []}
    block = _line(META) + b"\n" + _line(bare) + b"\n"
    bad = BadRows()
    rows = parse_meta_2023(block, "meta_All_Beauty.jsonl", bad).to_pylist()
    assert rows == [
        {"asin": "B01CUPMQZE", "title": META["title"], "brand": "Howard Products",
         "category_l1": "Beauty & Personal Care", "category_l2": "Skin Care",
         "category_l3": "Body"},
        {"asin": "B0NOTEXT", "title": "", "brand": "", "category_l1": "", "category_l2": "",
         "category_l3": ""},
    ]  # fmt: skip
    extra = parse_meta_2023(block, "m", bad, extra_fields=("features", "description"))
    assert extra.column("features").to_pylist() == ["Cleans & conditions Safe on leather", ""]
    assert extra.column("description").to_pylist() == ["Restores old leather.", ""]
    assert bad.total() == 0
    with pytest.raises(ValueError, match="unknown item text field"):
        parse_meta_2023(block, "m", bad, extra_fields=("price",))


def test_meta_bad_records_counted() -> None:
    lines = [
        _line(META),
        _line({**META, "parent_asin": None}),  # no item key
        _line({**META, "parent_asin": "B0\tX"}),  # a tab in the key
        b'{"parent_asin": "B0CUT", "title": "cut',  # malformed
        _line({**META, "parent_asin": "B0SECOND", "categories": "Beauty"}),  # not a list: kept
    ]
    bad = BadRows()
    table = parse_meta_2023(b"\n".join(lines) + b"\n", "meta_X.jsonl", bad)
    assert table.column("asin").to_pylist() == ["B01CUPMQZE", "B0SECOND"]
    assert table.column("category_l1").to_pylist() == ["Beauty & Personal Care", ""]
    assert bad.as_dict() == {"meta_X.jsonl": {"bad_id": 1, "malformed_json": 1, "missing_field": 1}}


def test_benchmark_csv_rows_and_bad_rows() -> None:
    block = (
        b"user_id,parent_asin,rating,timestamp,history\n"
        b"AE1,B01,5.0,1600000000000,\n"
        b"AE1,B02,4.0,1628643414041,B01\n"
        b"AE1,B03,3.0,1628643414042,B01 B02\n"
        b"AE1,B04,x,1658002729837,B01 B02 B03\n"  # non-numeric rating
        b"AE1,B05,5.0,1658002729837.5,B01\n"  # non-integer timestamp
        b"AE1,B06,5.0,1\n"  # 4 columns in a 5-column file
        b"AE\xe91,B07,5.0,1,\n"  # latin-1 byte in a UTF-8 file
        b",B08,5.0,1,\n"  # empty user
    )
    bad = BadRows()
    table = parse_benchmark_csv(block, "X.train.csv", bad, history=True)
    assert table.to_pylist() == [
        {"user": "AE1", "item": "B01", "rating": 5.0, "timestamp": 1600000000000,
         "his_len": 0, "his_last": ""},
        {"user": "AE1", "item": "B02", "rating": 4.0, "timestamp": 1628643414041,
         "his_len": 1, "his_last": "B01"},
        {"user": "AE1", "item": "B03", "rating": 3.0, "timestamp": 1628643414042,
         "his_len": 2, "his_last": "B02"},
    ]  # fmt: skip
    assert bad.as_dict() == {
        "X.train.csv": {
            "bad_rating": 1,
            "bad_timestamp": 1,
            "missing_field": 1,
            "non_utf8": 1,
            "wrong_column_count": 1,
        }
    }
    plain = parse_benchmark_csv(b"user_id,parent_asin,rating,timestamp\nU,I,1.0,7\n", "f", bad)
    assert plain.to_pylist() == [
        {"user": "U", "item": "I", "rating": 1.0, "timestamp": 7, "his_len": -1, "his_last": ""}
    ]


def test_seconds_keep_the_milliseconds_exactly() -> None:
    text = seconds_text(pa.array([VALID_CUT_MS, TEST_CUT_MS, 1500000000000, 7], pa.int64()))
    assert text.to_pylist() == ["1628643414.042", "1658002729.837", "1500000000.000", "0.007"]
    # Read back as a float (as RecBole reads timestamp:float), the cut is the same number.
    assert float(text[0].as_py()) == VALID_CUT_MS / 1000


# The rows of one category after the release's de-duplication, in its order (users by first
# appearance, each by timestamp). Ties: AE1's B04 and B05 (at the test cut), AE2's B01/B02.
ROWS = [
    ("AE1", "B01", "5.0", 1600000000000),
    ("AE1", "B02", "4.0", VALID_CUT_MS - 1),
    ("AE1", "B03", "3.0", VALID_CUT_MS),
    ("AE1", "B04", "2.0", TEST_CUT_MS),
    ("AE1", "B05", "5.0", TEST_CUT_MS),
    ("AE2", "B01", "1.0", 1500000000000),
    ("AE2", "B02", "5.0", 1500000000000),
    ("AE2", "B06", "4.0", 1700000000000),
    ("AE3", "B07", "3.0", 1690000000000),
]
# The official files, by the scripts' rules (index into ROWS).
LAST_OUT = {"train": [0, 1, 2, 5], "valid": [3, 6], "test": [4, 7, 8]}
TIMESTAMP = {"train": [0, 1, 5, 6], "valid": [2], "test": [3, 4, 7, 8]}
# Users in the atomic files are ordered by (hash of the id, id): AE2, AE1, AE3.
EXPECTED_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "AE2\tB01\t1\t1500000000.000\n"
    "AE2\tB02\t5\t1500000000.000\n"
    "AE2\tB06\t4\t1700000000.000\n"
    "AE1\tB01\t5\t1600000000.000\n"
    "AE1\tB02\t4\t1628643414.041\n"
    "AE1\tB03\t3\t1628643414.042\n"
    "AE1\tB04\t2\t1658002729.837\n"
    "AE1\tB05\t5\t1658002729.837\n"
    "AE3\tB07\t3\t1690000000.000\n"
)
EXPECTED_ITEM = (
    "item_id:token\ttitle:token_seq\tbrand:token_seq\tcategory_l1:token\tcategory_l2:token\t"
    "category_l3:token\n"
    "B01\t\u2581lip \u2581balm\t\u2581acme\tBeauty\t\t\n"
    "B02\t\t\t\t\t\n"
    "B03\t\t\t\t\t\n"
    "B04\t\t\t\t\t\n"
    "B05\t\t\t\t\t\n"
    "B06\t\u2581soap\t\t\t\t\n"
    "B07\t\t\t\t\t\n"
)


def _history(rows: list[int], upto: int) -> str:
    user = ROWS[upto][0]
    return " ".join(ROWS[i][1] for i in rows if ROWS[i][0] == user and i < upto)


def write_official(raw: Path, split: str, history: bool, category: str = "Toy") -> Path:
    """Write one split's three files (gzip, header) as the release publishes them."""
    rule = LAST_OUT if split == "last_out" else TIMESTAMP
    folder = raw / "benchmark" / "5core" / (f"{split}_w_his" if history else split)
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id,parent_asin,rating,timestamp" + (",history" if history else "")
    for part, indices in rule.items():
        lines = [header]
        for i in indices:
            user, item, rating, ts = ROWS[i]
            line = f"{user},{item},{rating},{ts}"
            if history:
                line += "," + _history(list(range(len(ROWS))), i)
            lines.append(line)
        data = ("\n".join(lines) + "\n").encode()
        (folder / f"{category}.{part}.csv.gz").write_bytes(gzip.compress(data, mtime=0))
    return folder


def write_items(path: Path) -> Path:
    """A tokenised items.parquet as step tokenize_metadata writes it (two items known)."""
    table = pa.table(
        {
            "asin": ["B01", "B06"],
            "title": ["\u2581lip \u2581balm", "\u2581soap"],
            "brand": ["\u2581acme", ""],
            "category_l1": ["Beauty", ""],
            "category_l2": ["", ""],
            "category_l3": ["", ""],
            "usable": [True, True],
        }
    )
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("split", ["last_out", "timestamp"])
@pytest.mark.parametrize("history", [False, True])
def test_official_split_becomes_one_dataset(tmp_path: Path, split: str, history: bool) -> None:
    raw = tmp_path / "raw"
    write_official(raw, split, history)
    sets = find_benchmark_sets(raw)
    assert [(s.name, s.history) for s in sets] == [(f"amazon2023-Toy-5core-{split}", history)]
    out = tmp_path / "out"
    summary = build_benchmark_datasets(
        sets, write_items(tmp_path / "items.parquet"), out, tmp_path / "work", engine=QUIET
    )
    name = f"amazon2023-Toy-5core-{split}"
    assert (out / name / f"{name}.inter").read_text() == EXPECTED_INTER
    assert (out / name / f"{name}.item").read_text() == EXPECTED_ITEM
    assert summary["checks"][name] == {
        "duplicates": 0, "split_mismatch": 0, "history_mismatch": 0,
        "items_without_metadata": 5, "parts": 1, "history_column": history,
    }  # fmt: skip
    assert summary["bad_rows"] == {}
    assert [c["interactions"] for c in summary["counts"]] == [9, 9]
    assert list((tmp_path / "work").iterdir()) == []  # no scratch left behind


def _reproduce(inter: str, split: str) -> dict[str, list[tuple]]:
    """Apply the release's split rule to the atomic rows, users in the order they appear."""
    users: dict[str, list[tuple]] = {}
    for line in inter.splitlines()[1:]:
        user, item, rating, ts = line.split("\t")
        users.setdefault(user, []).append((user, item, float(rating), round(float(ts) * 1000)))
    out: dict[str, list[tuple]] = {"train": [], "valid": [], "test": []}
    for rows in users.values():
        for i, row in enumerate(rows):
            if split == "last_out":
                part = "test" if i == len(rows) - 1 else "valid" if i == len(rows) - 2 else "train"
            else:
                part = (
                    "test"
                    if row[3] >= TEST_CUT_MS
                    else "valid"
                    if row[3] >= VALID_CUT_MS
                    else "train"
                )
            out[part].append(row)
    return out


@pytest.mark.parametrize("split", ["last_out", "timestamp"])
def test_split_rule_on_the_dataset_gives_back_the_official_files(split: str) -> None:
    rule = LAST_OUT if split == "last_out" else TIMESTAMP
    got = _reproduce(EXPECTED_INTER, split)
    for part, indices in rule.items():
        want = [(u, i, float(r), t) for u, i, r, t in (ROWS[k] for k in indices)]
        assert sorted(got[part]) == sorted(want), part


def test_wrong_history_is_reported_not_dropped(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = write_official(raw, "last_out", True)
    test = folder / "Toy.test.csv.gz"
    text = gzip.decompress(test.read_bytes()).replace(
        b"AE3,B07,3.0,1690000000000,", b"AE3,B07,3.0,1690000000000,B99"
    )
    test.write_bytes(gzip.compress(text, mtime=0))
    summary = build_benchmark_datasets(
        find_benchmark_sets(raw), write_items(tmp_path / "i.parquet"), tmp_path / "out",
        tmp_path / "work", engine=QUIET,
    )  # fmt: skip
    assert summary["checks"]["amazon2023-Toy-5core-last_out"]["history_mismatch"] == 1
    assert summary["counts"][-1]["interactions"] == 9


def test_duplicate_pair_is_skipped_and_counted(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = write_official(raw, "timestamp", False)
    train = folder / "Toy.train.csv.gz"
    text = gzip.decompress(train.read_bytes()) + b"AE2,B01,2.0,1510000000000\n"
    train.write_bytes(gzip.compress(text, mtime=0))
    out = tmp_path / "out"
    summary = build_benchmark_datasets(
        find_benchmark_sets(raw), write_items(tmp_path / "i.parquet"), out, tmp_path / "w",
        engine=QUIET,
    )  # fmt: skip
    name = "amazon2023-Toy-5core-timestamp"
    assert summary["bad_rows"] == {name: {"duplicate": 1}}
    assert (out / name / f"{name}.inter").read_text() == EXPECTED_INTER


def test_parts_and_workers_give_the_same_bytes(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_official(raw, "last_out", True)
    items = write_items(tmp_path / "i.parquet")
    sets = find_benchmark_sets(raw)
    digests = []
    for k, (part_bytes, workers) in enumerate([(1 << 30, 1), (40, 2)]):
        out = tmp_path / f"out{k}"
        summary = build_benchmark_datasets(
            sets, items, out, tmp_path / "w", part_bytes=part_bytes, chunk_bytes=64,
            engine=Engine(workers=workers, progress=False),
        )  # fmt: skip
        digests.append((out / sets[0].name / f"{sets[0].name}.inter").read_bytes())
        parts = summary["checks"][sets[0].name]["parts"]
        assert parts == 1 if k == 0 else parts > 10
    assert digests[0] == digests[1] == EXPECTED_INTER.encode()


def test_missing_split_file_and_misplaced_files_are_named(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = write_official(raw, "last_out", False)
    (folder / "Toy.valid.csv.gz").unlink()
    with pytest.raises(EtlError, match=r"Toy.valid.csv missing"):
        find_benchmark_sets(raw)
    raw2 = tmp_path / "raw2"
    folder = write_official(raw2, "last_out", True)
    # a _w_his file copied into the folder of the files without history
    plain = raw2 / "benchmark" / "5core" / "last_out"
    plain.mkdir()
    for part in ("train", "valid", "test"):
        (plain / f"Toy.{part}.csv.gz").write_bytes((folder / f"Toy.{part}.csv.gz").read_bytes())
    with pytest.raises(
        EtlError,
        match=r"last_out/Toy.train.csv.gz holds an Amazon Reviews 2023 benchmark CSV with history column, not .* without",
    ):
        find_benchmark_sets(raw2)


def test_other_release_in_place_of_2023_files_is_named(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    old = {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1}
    (raw / "Books.jsonl").write_bytes(_line(old) + b"\n")
    with pytest.raises(EtlError, match=r"Books.jsonl holds Amazon 2014/2018 review JSON lines"):
        review_files(raw)
    (raw / "Books.jsonl").write_bytes(_line(REVIEW) + b"\n")
    (raw / "meta_Books.jsonl.gz").write_bytes(gzip.compress(_line(REVIEW) + b"\n"))
    assert review_files(raw) == [raw / "Books.jsonl"]
    with pytest.raises(EtlError, match=r"meta_Books.jsonl.gz holds Amazon Reviews 2023 review"):
        meta_files(raw)
    folder = raw / "benchmark" / "5core" / "timestamp"
    folder.mkdir(parents=True)
    for part in ("train", "valid", "test"):
        (folder / f"Books.{part}.csv").write_text("B01,AE1,5.0,1500000000\n")  # a 2018 CSV
    with pytest.raises(EtlError, match=r"holds the Amazon 2018 ratings CSV"):
        find_benchmark_sets(raw)
