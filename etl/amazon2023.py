"""Amazon Reviews 2023 (McAuley Lab, Hou et al. 2024): readers and the official benchmark sets.

Raw files, per category (`<Category>` as the release spells it, e.g. `All_Beauty`):

- `<Category>.jsonl[.gz]`: reviews, one JSON object a line; used fields `user_id`,
  `parent_asin` (the item key), `rating` (1.0-5.0), `timestamp` (Unix milliseconds);
- `meta_<Category>.jsonl[.gz]`: item metadata; used fields `parent_asin`, `title`, `store`
  (kept as the brand), `categories` (list, root first) and, when asked for, `features` and
  `description` (lists of strings);
- `benchmark/<k>core/<split>/<Category>.{train,valid,test}.csv[.gz]` with `k` in {0, 5} and
  `split` in {last_out, timestamp, last_out_w_his, timestamp_w_his}: the release's official
  splits, CSV with the header `user_id,parent_asin,rating,timestamp` (plus `history`, the
  space-separated items before the row, in the `_w_his` files). The layout under RAW is
  the release's own (`.../amazon_2023/benchmark/5core/last_out/...`).

Timestamps stay in milliseconds inside the ETL (so ordering is exact) and are written to
the atomic files as seconds with three decimals (`1628643414.042`), so the official cuts
`VALID_CUT_MS` and `TEST_CUT_MS` stay exact in seconds.

An official benchmark set becomes one atomic dataset holding every row of its three files
(see `build_benchmark_datasets`): each user's rows ordered by (timestamp, file: train
before valid before test, row in file), which is the order the release's scripts split. A
leave-one-out split of a `last_out` dataset and a temporal split at the two cuts of a
`timestamp` dataset therefore give back the rows of the three files.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from etl.errors import EtlError
from etl.raw_files import CATEGORIES_2023
from etl.readers import (
    BAD_ID,
    BAD_RATING,
    BAD_TIMESTAMP,
    MALFORMED_JSON,
    MISSING_FIELD,
    NON_UTF8,
    WRONG_COLUMN_COUNT,
    BadRows,
    _id_ok,
    _number,
    _split_lines,
)
from etl.sniff import BENCHMARK_HEADER, BENCHMARK_HISTORY_HEADER, expect_format

RELEASE = "2023"
# The release's global temporal cuts (benchmark_scripts/timestamp_split.py), in milliseconds:
# a review at or after VALID_CUT_MS is valid, at or after TEST_CUT_MS test.
VALID_CUT_MS = 1628643414042
TEST_CUT_MS = 1658002729837
CATEGORIES = CATEGORIES_2023
KCORES = ("5core", "0core")
SPLITS = ("last_out", "timestamp")
SPLIT_FILES = ("train", "valid", "test")
OPTIONAL_TEXT_FIELDS = ("features", "description")

# Extra reasons a row is skipped (besides those of etl.readers).
DUPLICATE = "duplicate"  # a (user, item) pair seen before (the earliest is kept)

REVIEWS_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("item", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),  # milliseconds
    ]
)
META_COLUMNS = ("asin", "title", "brand", "category_l1", "category_l2", "category_l3")


def reviews_path_name(category: str) -> str:
    """File name of a category's reviews in RAW (without `.gz`)."""
    return f"{category}.jsonl"


def meta_path_name(category: str) -> str:
    """File name of a category's metadata in RAW (without `.gz`)."""
    return f"meta_{category}.jsonl"


def benchmark_relpath(category: str, kcore: str, split: str, part: str, history: bool) -> str:
    """Path of one official benchmark file under RAW (and under the release's base URL)."""
    folder = f"{split}_w_his" if history else split
    return f"benchmark/{kcore}/{folder}/{category}.{part}.csv.gz"


# ---------------------------------------------------------------------------- reviews


_REVIEW_JSON_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("parent_asin", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),
    ]
)


def _json_fast(block: bytes, schema: pa.Schema) -> pa.Table:
    """Columnar parse of a block of JSON lines (raises on any line pyarrow cannot type)."""
    return pajson.read_json(
        pa.py_buffer(block),
        read_options=pajson.ReadOptions(use_threads=False, block_size=len(block) + 1),
        parse_options=pajson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"
        ),
    )


def _clean_ids(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array; raises ValueError on a null, empty or unsafe id (slow path)."""
    values = column.combine_chunks()
    if values.null_count or (len(values) and pc.min(pc.binary_length(values)).as_py() == 0):
        raise ValueError("missing id")
    forbidden = pc.match_substring_regex(values, '["\t\n\r]')
    if pc.any(forbidden).as_py():
        raise ValueError("unsafe id")
    return values


def _reviews_fast(block: bytes) -> pa.Table:
    table = _json_fast(block, _REVIEW_JSON_SCHEMA)
    user = _clean_ids(table.column("user_id"))
    item = _clean_ids(table.column("parent_asin"))
    rating = table.column("rating").combine_chunks()
    stamp = table.column("timestamp").combine_chunks()
    if rating.null_count or stamp.null_count:
        raise ValueError("missing rating or timestamp")
    if len(stamp) and (pc.min(stamp).as_py() < 0 or not pc.all(pc.is_finite(rating)).as_py()):
        raise ValueError("bad number")
    return pa.table([user, item, rating, stamp], schema=REVIEWS_SCHEMA)


def _json_record(line: bytes, label: str, bad: BadRows) -> dict | None:
    """One JSON object, or None after counting why the line is bad."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(label, NON_UTF8)
            return None
        bad.add(label, MALFORMED_JSON)
        return None
    if not isinstance(rec, dict):
        bad.add(label, MALFORMED_JSON)
        return None
    return rec


def parse_reviews_2023(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse 2023 review JSON lines into (user, item, rating, timestamp in ms).

    `user_id` -> user, `parent_asin` -> item. Bad lines are skipped and counted in `bad`
    under `file_label` (malformed JSON, invalid UTF-8, missing field, unsafe id, rating not a
    finite number, timestamp not a whole non-negative number). A clean block is parsed by
    pyarrow in C++; a block with any bad line is parsed line by line.
    """
    try:
        return _reviews_fast(block)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    for line in _split_lines(block):
        rec = _json_record(line, file_label, bad)
        if rec is None:
            continue
        user, item = rec.get("user_id"), rec.get("parent_asin")
        if not isinstance(user, str) or not isinstance(item, str) or not user or not item:
            bad.add(file_label, MISSING_FIELD)
            continue
        if not (_id_ok(user) and _id_ok(item)):
            bad.add(file_label, BAD_ID)
            continue
        if "rating" not in rec or "timestamp" not in rec:
            bad.add(file_label, MISSING_FIELD)
            continue
        rating = _number(rec["rating"])
        if rating is None or not math.isfinite(rating):
            bad.add(file_label, BAD_RATING)
            continue
        stamp = _number(rec["timestamp"])
        if stamp is None or not math.isfinite(stamp) or stamp < 0 or stamp != int(stamp):
            bad.add(file_label, BAD_TIMESTAMP)
            continue
        users.append(user)
        items.append(item)
        ratings.append(rating)
        stamps.append(int(stamp))
    return pa.table(
        [
            pa.array(users, pa.string()),
            pa.array(items, pa.string()),
            pa.array(ratings, pa.float64()),
            pa.array(stamps, pa.int64()),
        ],
        schema=REVIEWS_SCHEMA,
    )


# ---------------------------------------------------------------------------- metadata


def meta_schema(extra_fields: tuple[str, ...] = ()) -> pa.Schema:
    """Columns of parsed metadata: asin, title, brand, category_l1..l3, then `extra_fields`."""
    return pa.schema([(c, pa.string()) for c in (*META_COLUMNS, *extra_fields)])


def _meta_json_schema(extra_fields: tuple[str, ...]) -> pa.Schema:
    fields = [
        ("parent_asin", pa.string()),
        ("title", pa.string()),
        ("store", pa.string()),
        ("categories", pa.list_(pa.string())),
    ]
    return pa.schema(fields + [(f, pa.list_(pa.string())) for f in extra_fields])


def _joined(column: pa.ChunkedArray) -> pa.Array:
    """A list<string> column as one space-joined string per row ('' for null or empty)."""
    return pc.fill_null(pc.binary_join(column.combine_chunks(), " "), "")


def _meta_fast(block: bytes, extra_fields: tuple[str, ...]) -> pa.Table:
    table = _json_fast(block, _meta_json_schema(extra_fields))
    out = {
        "asin": _clean_ids(table.column("parent_asin")),
        "title": pc.fill_null(table.column("title").combine_chunks(), ""),
        "brand": pc.fill_null(table.column("store").combine_chunks(), ""),
    }
    categories = table.column("categories").combine_chunks()
    for level in range(3):
        sliced = pc.list_slice(categories, level, level + 1, return_fixed_size_list=True)
        out[f"category_l{level + 1}"] = pc.fill_null(pc.list_flatten(sliced), "")
    for name in extra_fields:
        out[name] = _joined(table.column(name))
    return pa.table(out, schema=meta_schema(extra_fields))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _text_list(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def parse_meta_2023(
    block: bytes, file_label: str, bad: BadRows, extra_fields: tuple[str, ...] = ()
) -> pa.Table:
    """Parse 2023 metadata JSON lines into (asin, title, brand, category_l1..l3[, extras]).

    `parent_asin` -> asin, `store` -> brand, the first three `categories` -> the category
    levels; each of `extra_fields` (from `OPTIONAL_TEXT_FIELDS`) is its list of strings joined
    by spaces. Text stays raw here (cleaned when tokenised). A record without a usable
    `parent_asin` is skipped and counted; repeated asins are kept (the first wins later).
    """
    unknown = [f for f in extra_fields if f not in OPTIONAL_TEXT_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown item text field(s) {unknown}; choose from {OPTIONAL_TEXT_FIELDS}"
        )
    try:
        return _meta_fast(block, extra_fields)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass
    rows: list[tuple[str, ...]] = []
    for line in _split_lines(block):
        rec = _json_record(line, file_label, bad)
        if rec is None:
            continue
        asin = rec.get("parent_asin")
        if not isinstance(asin, str) or not asin:
            bad.add(file_label, MISSING_FIELD)
            continue
        if not _id_ok(asin):
            bad.add(file_label, BAD_ID)
            continue
        cats = (_text_list(rec.get("categories")) + ["", "", ""])[:3]
        extras = tuple(" ".join(_text_list(rec.get(f))) for f in extra_fields)
        rows.append((asin, _text(rec.get("title")), _text(rec.get("store")), *cats, *extras))
    schema = meta_schema(extra_fields)
    return pa.table(
        [pa.array([r[i] for r in rows], pa.string()) for i in range(len(schema))], schema=schema
    )


def meta_parser(extra_fields: tuple[str, ...] = ()) -> Any:
    """`parse_meta_2023` with its extra fields bound (picklable, for worker processes)."""
    return partial(parse_meta_2023, extra_fields=tuple(extra_fields))


# ---------------------------------------------------------------------------- benchmark files

BENCHMARK_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("item", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),  # milliseconds
        ("his_len", pa.int64()),  # items in the history column (-1: no such column)
        ("his_last", pa.string()),  # its last item ('' when empty or absent)
    ]
)
_BENCH_NAMES = ["user", "item", "rating", "timestamp"]
_BENCH_TYPES = {"user": pa.string(), "item": pa.string(), "rating": pa.float64(),
                "timestamp": pa.int64(), "history": pa.string()}  # fmt: skip


def _history_columns(history: pa.Array | None, n: int) -> tuple[pa.Array, pa.Array]:
    if history is None:
        return pa.array(np.full(n, -1, np.int64)), pa.array([""] * n, pa.string())
    stripped = pc.utf8_trim_whitespace(history)
    empty = pc.equal(pc.utf8_length(stripped), 0)
    # The release joins the items with single spaces.
    lengths = pc.if_else(empty, 0, pc.add(pc.count_substring(stripped, " "), 1))
    last = pc.replace_substring_regex(stripped, pattern=r"^.* ", replacement="")
    return pc.cast(lengths, pa.int64()), last


def _benchmark_fast(body: bytes, history: bool) -> pa.Table | None:
    names = _BENCH_NAMES + (["history"] if history else [])
    if b'"' in body or b"\t" in body:
        return None
    bad_shape = False

    def on_invalid(_row: Any) -> str:
        nonlocal bad_shape
        bad_shape = True
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.py_buffer(body),
            read_options=pacsv.ReadOptions(
                column_names=names, use_threads=False, block_size=len(body) + 1
            ),
            parse_options=pacsv.ParseOptions(quote_char=False, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: _BENCH_TYPES[n] for n in names}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid:
        return None
    if bad_shape or table.column("rating").null_count or table.column("timestamp").null_count:
        return None
    if table.num_rows and (
        pc.min(pc.binary_length(table.column("user"))).as_py() == 0
        or pc.min(pc.binary_length(table.column("item"))).as_py() == 0
        or pc.min(table.column("timestamp")).as_py() < 0
        or not pc.all(pc.is_finite(table.column("rating"))).as_py()
        or pc.any(pc.match_substring(table.column("user"), " ")).as_py()
        or pc.any(pc.match_substring(table.column("item"), " ")).as_py()
    ):
        return None
    his = table.column("history").combine_chunks() if history else None
    his_len, his_last = _history_columns(his, table.num_rows)
    return pa.table(
        [
            table.column("user").combine_chunks(),
            table.column("item").combine_chunks(),
            table.column("rating").combine_chunks(),
            table.column("timestamp").combine_chunks(),
            his_len,
            his_last,
        ],
        schema=BENCHMARK_SCHEMA,
    )


def _parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_benchmark_csv(
    block: bytes, file_label: str, bad: BadRows, history: bool = False
) -> pa.Table:
    """Parse official benchmark CSV lines into BENCHMARK_SCHEMA (header lines are dropped).

    Rows have 4 columns (`user_id,parent_asin,rating,timestamp`), or 5 with the history
    column when `history`. Bad rows are skipped and counted: wrong column count, invalid
    UTF-8, empty or unsafe id, non-numeric rating, timestamp not a whole non-negative
    number. A history column is kept as its length and last item, to check the order later.
    """
    header = BENCHMARK_HISTORY_HEADER if history else BENCHMARK_HEADER
    lines = [line.rstrip(b"\r") for line in block.split(b"\n")]
    lines = [line for line in lines if line.strip() and line != header]
    if not lines:
        return BENCHMARK_SCHEMA.empty_table()
    fast = _benchmark_fast(b"\n".join(lines) + b"\n", history)
    if fast is not None:
        return fast
    n_cols = 5 if history else 4
    cols: list[list[Any]] = [[] for _ in range(6)]
    for line in lines:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(file_label, NON_UTF8)
            continue
        fields = text.split(",")
        if len(fields) != n_cols:
            bad.add(file_label, WRONG_COLUMN_COUNT)
            continue
        user, item = fields[0], fields[1]
        if not user or not item:
            bad.add(file_label, MISSING_FIELD)
            continue
        if not (_id_ok(user) and _id_ok(item)) or " " in user or " " in item:
            bad.add(file_label, BAD_ID)
            continue
        rating = _parse_float(fields[2])
        if rating is None:
            bad.add(file_label, BAD_RATING)
            continue
        stamp = fields[3]
        if not stamp.isascii() or not stamp.isdigit() or int(stamp) >= 2**63:
            bad.add(file_label, BAD_TIMESTAMP)
            continue
        his = fields[4].split() if history else None
        cols[0].append(user)
        cols[1].append(item)
        cols[2].append(rating)
        cols[3].append(int(stamp))
        cols[4].append(len(his) if his is not None else -1)
        cols[5].append(his[-1] if his else "")
    return pa.table(
        [pa.array(c, t.type) for c, t in zip(cols, BENCHMARK_SCHEMA)], schema=BENCHMARK_SCHEMA
    )


def parse_benchmark_plain(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """`parse_benchmark_csv` of a file without history column."""
    return parse_benchmark_csv(block, file_label, bad, history=False)


def parse_benchmark_history(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """`parse_benchmark_csv` of a `_w_his` file."""
    return parse_benchmark_csv(block, file_label, bad, history=True)


def benchmark_parser(history: bool) -> Any:
    """The parser of a benchmark file with or without history (picklable)."""
    return parse_benchmark_history if history else parse_benchmark_plain


# ---------------------------------------------------------------------------- finding files


@dataclass(frozen=True)
class BenchmarkSet:
    """One official split of one category: its three files, train, valid, test."""

    category: str
    kcore: str  # "5core" or "0core"
    split: str  # "last_out" or "timestamp"
    history: bool  # read from the `_w_his` files
    files: tuple[Path, Path, Path]

    @property
    def name(self) -> str:
        """Dataset name: `amazon2023-<Category>-<k>core-<split>`."""
        return f"amazon2023-{self.category}-{self.kcore}-{self.split}"


def _present(path_without_gz: Path) -> Path | None:
    for cand in (path_without_gz.with_name(path_without_gz.name + ".gz"), path_without_gz):
        if cand.is_file():
            return cand
    return None


def find_benchmark_sets(raw_dir: Path) -> list[BenchmarkSet]:
    """The official benchmark sets under `raw_dir/benchmark`, one per (category, k, split).

    A split present with and without the history column is read from the `_w_his` files
    (the same rows, and their history can be checked). The files' content is checked
    against the folder they are in.

    Raises:
        EtlError: one or two of a set's three files are missing, or a file holds another
            format than its folder's (e.g. a `_w_his` file in `last_out/`).
    """
    sets: list[BenchmarkSet] = []
    root = raw_dir / "benchmark"
    for kcore in KCORES:
        for split in SPLITS:
            chosen: dict[str, BenchmarkSet] = {}
            for history in (False, True):
                folder = root / kcore / (f"{split}_w_his" if history else split)
                if not folder.is_dir():
                    continue
                stems = sorted(
                    {p.name.split(".")[0] for p in folder.glob("*.csv*") if p.name.count(".") >= 2}
                )
                for category in stems:
                    paths = [_present(folder / f"{category}.{part}.csv") for part in SPLIT_FILES]
                    missing = [
                        f"{category}.{part}.csv" for part, p in zip(SPLIT_FILES, paths) if p is None
                    ]
                    if missing:
                        raise EtlError(
                            f"{folder}: {', '.join(missing)} missing beside the other files of "
                            f"{category}; download them (--step download_raw_files) or remove "
                            "the set"
                        )
                    files = tuple(p for p in paths if p is not None)
                    kind = "amazon2023-benchmark-history" if history else "amazon2023-benchmark"
                    for path in files:
                        expect_format(
                            path, (kind,), f"move it to the folder of its kind under {root}"
                        )
                    chosen[category] = BenchmarkSet(category, kcore, split, history, files)  # type: ignore[arg-type]
            sets.extend(chosen[c] for c in sorted(chosen))
    return sets


def review_files(raw_dir: Path) -> list[Path]:
    """The 2023 review files in RAW (`<Category>.jsonl[.gz]`), sorted by name.

    Raises:
        EtlError: a file holds another release's reviews or metadata.
    """
    found = sorted(
        p
        for pattern in ("*.jsonl", "*.jsonl.gz")
        for p in raw_dir.glob(pattern)
        if not p.name.startswith("meta_")
    )
    for path in found:
        expect_format(
            path,
            ("amazon2023-reviews",),
            "2023 reviews are <Category>.jsonl(.gz); move the file out of RAW or pass "
            "the --release it belongs to",
        )
    return found


def meta_files(raw_dir: Path) -> list[Path]:
    """The 2023 metadata files in RAW (`meta_<Category>.jsonl[.gz]`), sorted by name.

    Raises:
        EtlError: a file holds another release's metadata or reviews.
    """
    found = sorted(
        p for pattern in ("meta_*.jsonl", "meta_*.jsonl.gz") for p in raw_dir.glob(pattern)
    )
    for path in found:
        expect_format(
            path,
            ("amazon2023-meta",),
            "2023 metadata is meta_<Category>.jsonl(.gz); move the file out of RAW or pass "
            "the --release it belongs to",
        )
    return found


# ---------------------------------------------------------------------------- timestamps


def seconds_text(millis: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Milliseconds (int64, not negative) as seconds with three decimals: 1628643414042 ->
    '1628643414.042' (exact, no float rounding)."""
    if isinstance(millis, pa.ChunkedArray):
        millis = millis.combine_chunks()
    seconds = pc.divide(millis, 1000)  # integer division (truncates; values are not negative)
    rest = pc.subtract(millis, pc.multiply(seconds, 1000))
    # 1000 + rest has four digits: dropping the leading '1' zero-pads the milliseconds.
    frac = pc.utf8_slice_codeunits(pc.cast(pc.add(rest, 1000), pa.string()), 1)
    return pc.binary_join_element_wise(pc.cast(seconds, pa.string()), frac, ".")


# ---------------------------------------------------------------------------- helpers for steps


def range_part(hashes: np.ndarray, n_parts: int) -> np.ndarray:
    """The part of each uint64 hash when [0, 2^64) is cut into `n_parts` equal ranges (int64).

    Unlike `hash % n`, parts are ranges of the hash: rows sorted by hash within each part and
    parts taken in order are sorted by hash overall, whatever `n_parts`.
    """
    return ((hashes >> np.uint64(32)) * np.uint64(n_parts) >> np.uint64(32)).astype(np.int64)


def parts_for(total_bytes: int, part_bytes: int, minimum: int = 1) -> int:
    """How many parts keep each near `part_bytes` of input (at least `minimum`)."""
    return max(minimum, -(-int(total_bytes) // max(1, int(part_bytes))))


def input_bytes(paths: list[Path]) -> int:
    """Estimated uncompressed bytes of `paths` (a gzip file counts five times its size)."""
    total = 0
    for path in paths:
        size = path.stat().st_size
        with open(path, "rb") as f:
            total += size * 5 if f.read(2) == b"\x1f\x8b" else size
    return total


def copy_into(dst: Any, src: Path) -> None:
    """Append the bytes of file `src` to the open binary file `dst`."""
    with open(src, "rb") as f:
        shutil.copyfileobj(f, dst, 1 << 20)
