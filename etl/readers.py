"""Readers for the Amazon raw files: ratings CSV, JSON lines, 2014 Python-literal lines.

Every reader works on one *chunk* of one file (a byte range of a plain file, or a whole
gzip file, which cannot be split), so the steps can map them over a worker pool. Bad rows
are skipped and counted in a `BadRows` per file and reason; a file that cannot be read at
all (truncated gzip, unreadable) raises `EtlError` naming it.

Row order: each good row gets `order = (chunk index << 32) | row index in the chunk`, so
sorting by `order` gives the order of the input files, whatever the number of workers.
A gzip file cannot be split by byte range; the parent decompresses it and hands out its
blocks of whole lines instead (`read_block`), each numbered like a chunk.
"""

from __future__ import annotations

import ast
import gzip
import math
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from etl.errors import EtlError

CHUNK_BYTES = 64 << 20  # a plain file is split into byte ranges of about this size
BLOCK_BYTES = 16 << 20  # bytes parsed at once inside a chunk (bounds memory per worker)
# A ratings CSV chunk of the default size is parsed in one piece: its table is about as big as
# its bytes (JSON grows several-fold), and single-chunk columns make the partition step's
# dictionary encoding and take cheaper. The bound still holds a whole-gzip `read_file`.
CSV_BLOCK_BYTES = 4 * CHUNK_BYTES

# Reasons a row is skipped (the keys of BadRows.counts[file]).
WRONG_COLUMN_COUNT = "wrong_column_count"
NON_UTF8 = "non_utf8"
MISSING_FIELD = "missing_field"
BAD_ID = "bad_id"  # an id holding a double quote, tab or line break (breaks the atomic files)
BAD_RATING = "bad_rating"
BAD_TIMESTAMP = "bad_timestamp"
MALFORMED_JSON = "malformed_json"
MALFORMED_LITERAL = "malformed_literal"

# RecBole reads atomic files with pandas' default quoting: a field starting with '"' would
# be read as a quoted field, so ids must not hold quotes (nor tabs or line breaks).
_ID_FORBIDDEN = ('"', "\t", "\n", "\r")
_FLOAT_RE = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
# What Arrow's string-to-int64 parse accepts (hexadecimal too); negative values are then
# rejected. Mirroring it keeps a block's rows valid or not whatever other rows it holds.
_INT_RE = r"^(-?[0-9]+|0[xX][0-9a-fA-F]{1,16})$"

RATINGS_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("item", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),
        ("order", pa.int64()),
    ]
)
META_SCHEMA = pa.schema(
    [
        ("asin", pa.string()),
        ("title", pa.string()),
        ("brand", pa.string()),
        ("category_l1", pa.string()),
        ("category_l2", pa.string()),
        ("category_l3", pa.string()),
        ("order", pa.int64()),
    ]
)


@dataclass
class BadRows:
    """Skipped rows per file name and reason: `counts[file][reason] = n`."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, file: str, reason: str, n: int = 1) -> None:
        """Count `n` skipped rows of `file` for `reason`."""
        if n:
            per_file = self.counts.setdefault(file, {})
            per_file[reason] = per_file.get(reason, 0) + n

    def merge(self, other: BadRows) -> BadRows:
        """Add the counts of `other` into this one; returns self."""
        for file, reasons in other.counts.items():
            for reason, n in reasons.items():
                self.add(file, reason, n)
        return self

    def total(self) -> int:
        """All skipped rows."""
        return sum(n for reasons in self.counts.values() for n in reasons.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        """Plain sorted dict for manifests and summaries."""
        return {f: dict(sorted(r.items())) for f, r in sorted(self.counts.items())}


@dataclass(frozen=True)
class Chunk:
    """A piece of one input file: bytes [start, end) of a plain file, or a whole gzip file."""

    path: str
    index: int  # global chunk index: fixes the `order` of its rows
    start: int = 0
    end: int = -1  # -1: to the end (always for gzip)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_regular_file(path: Path) -> Path:
    """`path` when it is a regular file (or a link to one); inputs are never opened otherwise
    (opening a FIFO would block for ever).

    Raises:
        EtlError: `path` is missing, a broken link, a directory, a FIFO, a socket or a device.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        what = "a broken link" if os.path.islink(path) else "missing"
        raise EtlError(f"input {path} is {what}; place the file there") from None
    except OSError as exc:
        raise EtlError(f"cannot read {path}: {exc.strerror or exc}; check the file") from exc
    if not stat.S_ISREG(mode):
        raise EtlError(
            f"input {path} is {_kind_of(mode)}, not a regular file; replace it with the file"
        )
    return Path(path)


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its name).

    Raises:
        EtlError: `path` is not a regular file (see `check_regular_file`).
    """
    with open(check_regular_file(path), "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def find_raw_file(raw_dir: Path, name: str) -> Path | None:
    """`raw_dir/name` or `raw_dir/name.gz` (or without `.gz` when `name` has it), if present.

    Raises:
        EtlError: something other than a regular file (a directory, a FIFO, a broken link)
            has one of these names.
    """
    candidates = [name, name + ".gz"]
    if name.endswith(".gz"):
        candidates = [name, name[:-3]]
    for cand in candidates:
        path = raw_dir / cand
        if os.path.lexists(path):
            return check_regular_file(path)
    return None


def plan_chunks(paths: list[Path], chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """Split files into chunks at line boundaries; gzip files stay whole.

    Raises:
        EtlError: a file cannot be opened.
    """
    chunks: list[Chunk] = []
    for path in paths:
        check_regular_file(path)
        try:
            if is_gzip(path):
                chunks.append(Chunk(str(path), len(chunks)))
                continue
            size = path.stat().st_size
            bounds = [0]
            with open(path, "rb") as f:
                pos = chunk_bytes
                while pos < size:
                    f.seek(pos)
                    f.readline()  # the line holding `pos` belongs to the previous chunk
                    bound = f.tell()
                    if bound >= size:
                        break
                    if bound > bounds[-1]:
                        bounds.append(bound)
                    pos = bound + chunk_bytes
        except OSError as exc:
            raise EtlError(f"cannot read {path}: {exc.strerror or exc}; check the file") from exc
        bounds.append(size)
        for start, end in zip(bounds[:-1], bounds[1:]):
            chunks.append(Chunk(str(path), len(chunks), start, end))
    return chunks


def iter_blocks(chunk: Chunk, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Yield the chunk's bytes in blocks that end at a line boundary.

    Raises:
        EtlError: truncated or corrupt gzip, or an unreadable file.
    """
    path = Path(chunk.path)
    try:
        compressed = is_gzip(path)
        opener = gzip.open if compressed else open
        with opener(path, "rb") as stream:
            remaining = -1
            if not compressed:
                stream.seek(chunk.start)
                remaining = chunk.end - chunk.start if chunk.end >= 0 else -1
            carry = b""
            while remaining != 0:
                want = block_bytes if remaining < 0 else min(block_bytes, remaining)
                data = stream.read(want)
                if not data:
                    break
                if remaining > 0:
                    remaining -= len(data)
                data = carry + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                carry = data[cut:]
                yield data[:cut]
            if carry:
                yield carry
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise EtlError(
            f"{path}: truncated or corrupt gzip ({exc}); download it again or replace it"
        ) from exc
    except OSError as exc:
        raise EtlError(f"cannot read {path}: {exc}; check the file") from exc


def _valid_utf8(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary column -> (string column with bad rows as '', bool mask [N] of valid UTF-8)."""
    try:
        return column.cast(pa.string()), np.ones(len(column), dtype=bool)
    except pa.ArrowInvalid:
        # Rare: decode row by row only for a block that holds invalid bytes.
        ok = np.ones(len(column), dtype=bool)
        values = []
        for i, raw in enumerate(column.to_pylist()):
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                ok[i] = False
                values.append("")
        return pa.array(values, pa.string()), ok


_TYPED = {"item": pa.string(), "user": pa.string(), "rating": pa.float64(), "timestamp": pa.int64()}


def _bad_id(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """True where an id holds a character that would break a RecBole atomic file (CSV ids)."""
    # In a comma-separated line only '"' and a tab can occur; line breaks cannot.
    return pc.or_(pc.match_substring(column, '"'), pc.match_substring(column, "\t"))


def _id_ok(value: str) -> bool:
    return not any(ch in value for ch in _ID_FORBIDDEN)


def _ratings_csv_fast(block: bytes) -> pa.Table | None:
    """Typed C++ parse of a clean block; None when any row is bad (the slow path counts it)."""
    # One memchr per byte value over the raw block clears every row at once: a quote or tab
    # in an id breaks the atomic files, and the typed parser trims spaces and tabs around a
    # number that the slow path rejects (the two paths must agree on every row).
    if b'"' in block or b"\t" in block or b" " in block:
        return None
    try:
        # No invalid-row handler: pyarrow decodes a row's text to hand it over, which fails
        # on invalid UTF-8; any bad row raises here instead and the slow path counts it.
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(
                column_names=list(_TYPED), use_threads=False, block_size=len(block) + 1
            ),
            parse_options=pacsv.ParseOptions(quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=_TYPED, strings_can_be_null=False),
        )
    except pa.ArrowInvalid:  # a wrong column count, a non-numeric value or invalid UTF-8
        return None
    table = table.select(["user", "item", "rating", "timestamp"])
    if any(table.column(c).null_count for c in ("rating", "timestamp")):
        return None
    if table.num_rows == 0:
        return table
    # Whole-column reductions, one pass each: no per-row mask is built for a clean block.
    if (
        pc.min(pc.binary_length(table.column("item"))).as_py() == 0
        or pc.min(pc.binary_length(table.column("user"))).as_py() == 0
        or pc.min(table.column("timestamp")).as_py() < 0
        or not pc.all(pc.is_finite(table.column("rating"))).as_py()
    ):
        return None
    return table


def _keep_four_field_lines(block: bytes) -> tuple[bytes, int]:
    """The block without its lines of other than 4 comma-separated fields, and their number.

    Done on the bytes (numpy), never decoding: a bad line may hold invalid UTF-8. Lines end
    at '\n' or '\r' as for pyarrow's CSV reader; empty lines are kept (it skips them).
    """
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero((data == ord("\n")) | (data == ord("\r")))  # [L] terminators
    if len(data) and (not len(ends) or ends[-1] != len(data) - 1):
        ends = np.append(ends, len(data))  # a last line without terminator
    starts = np.concatenate([[0], ends[:-1] + 1])
    commas = np.flatnonzero(data == ord(","))
    fields = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1  # [L]
    wrong = (fields != 4) & (ends > starts)
    n_wrong = int(wrong.sum())
    if not n_wrong:
        return block, 0
    lengths = np.diff(np.append(starts, len(data)))  # each line with its terminator
    return data[np.repeat(~wrong, lengths)].tobytes(), n_wrong


def parse_ratings_csv(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse `item,user,rating,timestamp` lines (no header) into (user, item, rating, timestamp).

    Bad rows (wrong column count, non-UTF-8, empty id, non-numeric rating or timestamp) are
    skipped and counted in `bad` under `file_label`. The returned table has no `order` yet.
    """

    names = ["item", "user", "rating", "timestamp"]
    if not block or block.isspace():
        return RATINGS_SCHEMA.remove(RATINGS_SCHEMA.get_field_index("order")).empty_table()
    fast = _ratings_csv_fast(block)
    if fast is not None:
        return fast
    block, wrong_shape = _keep_four_field_lines(block)
    bad.add(file_label, WRONG_COLUMN_COUNT, wrong_shape)
    if not block or block.isspace():
        return RATINGS_SCHEMA.remove(RATINGS_SCHEMA.get_field_index("order")).empty_table()
    table = pacsv.read_csv(
        pa.py_buffer(block),
        read_options=pacsv.ReadOptions(
            column_names=names, use_threads=False, block_size=max(len(block), 1 << 20) + 1
        ),
        # No quoting in these files; a stray quote must not swallow the following lines.
        parse_options=pacsv.ParseOptions(quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in names}),
    )
    n = table.num_rows
    keep = np.ones(n, dtype=bool)
    cols: dict[str, pa.Array] = {}
    utf8_ok = np.ones(n, dtype=bool)
    for name in names:
        col, ok = _valid_utf8(table.column(name).combine_chunks())
        cols[name] = col
        utf8_ok &= ok
    bad.add(file_label, NON_UTF8, int((~utf8_ok).sum()))
    keep &= utf8_ok
    missing = np.zeros(n, dtype=bool)
    for name in ("item", "user"):
        missing |= pc.equal(pc.utf8_length(cols[name]), 0).to_numpy(zero_copy_only=False)
    bad.add(file_label, MISSING_FIELD, int((missing & keep).sum()))
    keep &= ~missing
    bad_id = np.zeros(n, dtype=bool)
    for name in ("item", "user"):
        bad_id |= _bad_id(cols[name]).to_numpy(zero_copy_only=False)
    bad.add(file_label, BAD_ID, int((bad_id & keep).sum()))
    keep &= ~bad_id
    rating, rating_ok = _to_number(cols["rating"], pa.float64(), _FLOAT_RE)
    bad.add(file_label, BAD_RATING, int((~rating_ok & keep).sum()))
    keep &= rating_ok
    stamp, ts_ok = _to_number(cols["timestamp"], pa.int64(), _INT_RE)
    bad.add(file_label, BAD_TIMESTAMP, int((~ts_ok & keep).sum()))
    keep &= ts_ok
    table = pa.table(
        {"user": cols["user"], "item": cols["item"], "rating": rating, "timestamp": stamp}
    )
    return table if keep.all() else table.filter(pa.array(keep))


def _to_number(column: pa.Array, dtype: pa.DataType, pattern: str) -> tuple[pa.Array, np.ndarray]:
    """Cast strings to numbers: (values, bool mask [N] of valid ones; invalid values are 0).

    Valid: the string matches `pattern` and its value is finite (floats) or fits int64 and is
    not negative (integers), whichever other rows the block holds.
    """
    try:
        values = column.cast(dtype)  # fast path: a clean block casts in one call
        ok = np.ones(len(column), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.match_substring_regex(column, pattern).to_numpy(zero_copy_only=False)
        if pa.types.is_integer(dtype):
            ok &= _fits_int64(column, ok)
        values = pc.if_else(pa.array(ok), column, pa.scalar("0")).cast(dtype)
    if pa.types.is_floating(dtype):
        valid = pc.is_finite(values)  # '1e999' parses, as inf
    else:
        valid = pc.greater_equal(values, 0)
    ok &= pc.fill_null(valid, False).to_numpy(zero_copy_only=False)
    return values, ok


def _fits_int64(column: pa.Array, digits_ok: np.ndarray) -> np.ndarray:
    """False where an integer string is out of the int64 range (it fails the cast); bool [N]."""
    fits = np.ones(len(column), dtype=bool)
    # Fewer than 19 characters always fit (hexadecimal ones have at most 18); longer decimal
    # ones (rare) are checked one by one.
    long = np.flatnonzero(digits_ok & (pc.utf8_length(column).to_numpy(zero_copy_only=False) >= 19))
    for i in long:
        fits[i] = -(2**63) <= int(column[int(i)].as_py()) < 2**63
    return fits


def _split_lines(block: bytes) -> list[bytes]:
    lines = block.split(b"\n")
    return [line for line in lines if line.strip()]


# Conversion errors a malformed field can raise; each is counted as a bad row, never raised.
_CONVERSION_ERRORS = (TypeError, ValueError, OverflowError, UnicodeError)
_INT64_LIMIT = 1 << 63


def _number(value: Any) -> float | None:
    """A JSON number or numeric string as a finite float; None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except _CONVERSION_ERRORS:
        return None
    return number if math.isfinite(number) else None


def _timestamp(value: Any) -> int | None:
    """Unix seconds as an int in [0, 2**63): a JSON integer, an integral finite number or a
    numeric string; None otherwise (NaN, infinity, fractional, negative, out of int64)."""
    if isinstance(value, int) and not isinstance(value, bool):
        stamp = value  # exact, however large
    elif isinstance(value, str) and value.strip().isdigit():
        try:
            stamp = int(value)
        except _CONVERSION_ERRORS:
            return None
    else:
        number = _number(value)
        if number is None or number != int(number):
            return None
        stamp = int(number)
    return stamp if 0 <= stamp < _INT64_LIMIT else None


def parse_review_lines(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse review JSON lines (2014 or 2018) into (user, item, rating, timestamp).

    Uses `reviewerID`, `asin`, `overall`, `unixReviewTime`; other fields are ignored.
    """
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    for line in _split_lines(block):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.add(file_label, NON_UTF8)
                continue
            bad.add(file_label, MALFORMED_JSON)
            continue
        if not isinstance(rec, dict):
            bad.add(file_label, MALFORMED_JSON)
            continue
        user, item = rec.get("reviewerID"), rec.get("asin")
        if not isinstance(user, str) or not isinstance(item, str) or not user or not item:
            bad.add(file_label, MISSING_FIELD)
            continue
        if not (_id_ok(user) and _id_ok(item)):
            bad.add(file_label, BAD_ID)
            continue
        if "overall" not in rec or "unixReviewTime" not in rec:
            bad.add(file_label, MISSING_FIELD)
            continue
        rating = _number(rec["overall"])
        if rating is None:
            bad.add(file_label, BAD_RATING)
            continue
        stamp = _timestamp(rec["unixReviewTime"])
        if stamp is None:
            bad.add(file_label, BAD_TIMESTAMP)
            continue
        users.append(user)
        items.append(item)
        ratings.append(rating)
        stamps.append(stamp)
    return pa.table(
        {
            "user": pa.array(users, pa.string()),
            "item": pa.array(items, pa.string()),
            "rating": pa.array(ratings, pa.float64()),
            "timestamp": pa.array(stamps, pa.int64()),
        }
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _meta_row(asin: Any, title: Any, brand: Any, categories: Any) -> tuple[tuple | None, str]:
    """(asin, title, brand, category_l1..l3) and '', or None and the reason to skip the row."""
    if not isinstance(asin, str) or not asin or not _id_ok(asin):
        return None, MISSING_FIELD
    cats = [c for c in categories if isinstance(c, str)] if isinstance(categories, list) else []
    row = (asin, _text(title), _text(brand), *(cats + ["", "", ""])[:3])
    try:
        # A Python literal can hold a lone surrogate ('\ud800'), which UTF-8 cannot encode.
        "".join(row).encode("utf-8")
    except UnicodeEncodeError:
        return None, NON_UTF8
    return row, ""


def _meta_table(rows: list[tuple]) -> pa.Table:
    names = [f.name for f in META_SCHEMA][:-1]
    return pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})


_META_JSON_SCHEMA = pa.schema(
    [
        ("asin", pa.string()),
        ("title", pa.string()),
        ("brand", pa.string()),
        ("category", pa.list_(pa.string())),
    ]
)


def _any_forbidden(column: pa.Array) -> pa.Array:
    mask = pc.match_substring(column, _ID_FORBIDDEN[0])
    for ch in _ID_FORBIDDEN[1:]:
        mask = pc.or_(mask, pc.match_substring(column, ch))
    return mask


def _meta_2018_fast(block: bytes) -> pa.Table:
    """Columnar parse of a clean block with pyarrow's JSON reader (raises on any bad line)."""
    table = pajson.read_json(
        pa.py_buffer(block),
        read_options=pajson.ReadOptions(use_threads=False, block_size=len(block) + 1),
        parse_options=pajson.ParseOptions(
            explicit_schema=_META_JSON_SCHEMA, unexpected_field_behavior="ignore"
        ),
    )
    asin = table.column("asin").combine_chunks()
    if asin.null_count or pc.any(pc.equal(pc.utf8_length(asin), 0)).as_py():
        raise ValueError("a record without asin")  # the slow path counts it
    if not all(_id_ok(a) for a in pc.unique(pc.filter(asin, _any_forbidden(asin))).to_pylist()):
        raise ValueError("an asin with a forbidden character")
    category = table.column("category").combine_chunks()
    out = {
        "asin": asin,
        "title": pc.fill_null(table.column("title").combine_chunks(), ""),
        "brand": pc.fill_null(table.column("brand").combine_chunks(), ""),
    }
    for level in range(3):
        # [N, 1] fixed-size slices, padded with nulls where the path is shorter.
        sliced = pc.list_slice(category, level, level + 1, return_fixed_size_list=True)
        out[f"category_l{level + 1}"] = pc.fill_null(pc.list_flatten(sliced), "")
    return pa.table(out)


def parse_meta_2018_lines(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse 2018 metadata JSON lines into (asin, title, brand, category_l1..l3), raw text.

    `category` is root first; the first three levels are kept. Duplicated asins are kept
    here (de-duplicated later, first occurrence wins). A clean block is parsed by pyarrow
    in C++; a block with any bad line is parsed line by line to skip and count it.
    """
    try:
        return _meta_2018_fast(block)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass
    rows: list[tuple] = []
    for line in _split_lines(block):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.add(file_label, NON_UTF8)
                continue
            bad.add(file_label, MALFORMED_JSON)
            continue
        if not isinstance(rec, dict):
            bad.add(file_label, MALFORMED_JSON)
            continue
        row, reason = _meta_row(
            rec.get("asin"), rec.get("title"), rec.get("brand"), rec.get("category")
        )
        if row is None:
            bad.add(file_label, reason)
            continue
        rows.append(row)
    return _meta_table(rows)


def parse_meta_2014_lines(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse 2014 metadata lines (Python literals, via `ast.literal_eval`, never `eval`).

    `categories` is a list of category paths; the first path's first three levels are kept.
    """
    rows: list[tuple] = []
    for line in _split_lines(block):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(file_label, NON_UTF8)
            continue
        try:
            # Some copies of the 2014 metadata were converted to strict JSON: accept both.
            rec = orjson.loads(line) if text.startswith('{"') else ast.literal_eval(text)
        except (*_CONVERSION_ERRORS, SyntaxError, MemoryError, RecursionError):
            # TypeError: a dict literal with an unhashable key ({[1]: 2}).
            bad.add(file_label, MALFORMED_LITERAL)
            continue
        if not isinstance(rec, dict):
            bad.add(file_label, MALFORMED_LITERAL)
            continue
        paths = rec.get("categories")
        first = paths[0] if isinstance(paths, list) and paths and isinstance(paths[0], list) else []
        row, reason = _meta_row(rec.get("asin"), rec.get("title"), rec.get("brand"), first)
        if row is None:
            bad.add(file_label, reason)
            continue
        rows.append(row)
    return _meta_table(rows)


def sniff_json_lines(path: Path) -> bool:
    """True when the file's first non-empty line is strict JSON (2018), False for 2014 literals.

    Raises:
        EtlError: the file cannot be read.
    """
    for block in iter_blocks(Chunk(str(path), 0), block_bytes=1 << 16):
        for line in _split_lines(block):
            try:
                orjson.loads(line)
                return True
            except orjson.JSONDecodeError:
                return False
    return True


Parser = Callable[[bytes, str, BadRows], pa.Table]


@dataclass(frozen=True)
class _Deferred:
    """A parser of another module, imported on first call (those modules import this one)."""

    module: str
    name: str

    def __call__(self, block: bytes, file_label: str, bad: BadRows) -> pa.Table:
        import importlib

        return getattr(importlib.import_module(self.module), self.name)(block, file_label, bad)


# The parser of each format of the raw file table (`etl.raw_files.FORMATS`; a zip archive's
# format has none, its members' formats do).
PARSERS: dict[str, Parser] = {
    "ratings_csv": parse_ratings_csv,
    "reviews_json": parse_review_lines,
    "meta_json": parse_meta_2018_lines,
    "meta_literal": parse_meta_2014_lines,
    "reviews_2023_json": _Deferred("etl.amazon2023", "parse_reviews_2023"),
    "meta_2023_json": _Deferred("etl.amazon2023", "parse_meta_2023"),
    "benchmark_2023_csv": _Deferred("etl.amazon2023", "parse_benchmark_plain"),
    "benchmark_2023_his_csv": _Deferred("etl.amazon2023", "parse_benchmark_history"),
    "ml_dat_ratings": _Deferred("etl.movielens", "parse_ml_dat_ratings"),
    "ml_dat_movies": _Deferred("etl.movielens", "parse_ml_dat_movies"),
    "ml_csv_ratings": _Deferred("etl.movielens", "parse_ml_csv_ratings"),
    "ml_csv_movies": _Deferred("etl.movielens", "parse_ml_csv_movies"),
}


def _with_order(table: pa.Table, index: int) -> pa.Table:
    order = (np.int64(index) << np.int64(32)) + np.arange(table.num_rows, dtype=np.int64)
    return table.append_column("order", pa.array(order, pa.int64()))


def _empty(parser: Parser) -> pa.Table:
    schema = (
        META_SCHEMA if parser in (parse_meta_2018_lines, parse_meta_2014_lines) else RATINGS_SCHEMA
    )
    return schema.remove(schema.get_field_index("order")).empty_table()


def _parse(parser: Parser, block: bytes, label: str, bad: BadRows, where: str) -> pa.Table:
    """`parser(block, label, bad)`; input that pyarrow cannot parse at all names the file."""
    try:
        return parser(block, label, bad)
    except pa.ArrowInvalid as exc:
        cause = (str(exc).splitlines() or ["?"])[0][:200]
        fmt = next((name for name, p in PARSERS.items() if p is parser), parser.__name__)
        raise EtlError(
            f"{where}: cannot be parsed as {fmt} ({cause}); check that it is the right file, "
            "or download it again"
        ) from exc


def read_block(data: bytes, index: int, parser: Parser, label: str, bad: BadRows) -> pa.Table:
    """Parse one block of whole lines that a parent process read, with `order` from `index`.

    Raises:
        EtlError: pyarrow cannot parse the block at all (the message names `label`).
    """
    if not data or data.isspace():
        return _with_order(_empty(parser), index)
    return _with_order(_parse(parser, data, label, bad, label), index)


def read_chunk(chunk: Chunk, parser: Parser, bad: BadRows) -> pa.Table:
    """Parse one chunk block by block and add the `order` column (see module docstring).

    Raises:
        EtlError: the file is unreadable, a truncated gzip, or cannot be parsed at all.
    """
    label = os.path.basename(chunk.path)
    block_bytes = CSV_BLOCK_BYTES if parser is parse_ratings_csv else BLOCK_BYTES
    tables = [
        _parse(parser, block, label, bad, chunk.path) for block in iter_blocks(chunk, block_bytes)
    ]
    tables = [t for t in tables if t.num_rows]
    table = pa.concat_tables(tables) if tables else _empty(parser)
    return _with_order(table, chunk.index)


def read_file(path: Path, parser: Parser, bad: BadRows | None = None) -> pa.Table:
    """Read a whole file with `parser` in one process (small files, tests).

    Raises:
        EtlError: the file is missing, not a regular file, unreadable or a truncated gzip.
    """
    if not os.path.lexists(path):
        raise EtlError(f"input file not found: {path}; place it there or fix the path")
    check_regular_file(Path(path))
    bad = bad if bad is not None else BadRows()
    return read_chunk(Chunk(str(path), 0), parser, bad)
