"""Tell the raw formats of the releases apart by their first lines, before parsing a file.

Every reader states which formats it accepts (`expect_format`); a file of another release
placed where it does not belong (a MovieLens CSV named `ratings.dat`, an Amazon 2018 review
file among the 2023 ones, a `_w_his` benchmark file in a `last_out` folder) then stops the
step with one line naming the file and what it holds, instead of being half parsed into
skipped rows. A file whose first lines match no known format is left to the reader, whose
bad-row counts then say what was wrong.
"""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from pathlib import Path

import orjson

from etl.errors import EtlError

# Format name -> what it is, as said in error messages.
FORMATS: dict[str, str] = {
    "amazon2018-ratings": "the Amazon 2018 ratings CSV (item,user,rating,timestamp, no header)",
    "amazon2018-reviews": "Amazon 2014/2018 review JSON lines (reviewerID, asin, overall)",
    "amazon2018-meta": "Amazon 2018 item metadata JSON lines (asin, category, brand)",
    "amazon2014-meta": "Amazon 2014 item metadata (Python literals)",
    "amazon2023-reviews": "Amazon Reviews 2023 review JSON lines (user_id, parent_asin, rating)",
    "amazon2023-meta": "Amazon Reviews 2023 item metadata JSON lines (parent_asin, store)",
    "amazon2023-benchmark": "an Amazon Reviews 2023 benchmark CSV without history column",
    "amazon2023-benchmark-history": "an Amazon Reviews 2023 benchmark CSV with history column",
    "movielens-dat-ratings": "MovieLens ml-1m ratings (UserID::MovieID::Rating::Timestamp)",
    "movielens-dat-movies": "MovieLens ml-1m movies (MovieID::Title::Genres)",
    "movielens-dat-users": "MovieLens ml-1m users (UserID::Gender::Age::Occupation::Zip)",
    "movielens-csv-ratings": "MovieLens CSV ratings (userId,movieId,rating,timestamp)",
    "movielens-csv-movies": "MovieLens CSV movies (movieId,title,genres)",
}

BENCHMARK_HEADER = b"user_id,parent_asin,rating,timestamp"
BENCHMARK_HISTORY_HEADER = BENCHMARK_HEADER + b",history"
ML_RATINGS_HEADER = b"userId,movieId,rating,timestamp"
ML_MOVIES_HEADER = b"movieId,title,genres"

_NUM = rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ML_DAT_RATING = re.compile(rb"^\d+::\d+::" + _NUM + rb"::\d+$")
_ML_DAT_MOVIE = re.compile(rb"^\d+::.*::[^:]*$")
_ML_DAT_USER = re.compile(rb"^\d+::[MF]::\d+::\d+::[^:]*$")
_COMMA4 = re.compile(rb"^([^,]+),([^,]+)," + _NUM + rb",(\d+)(,.*)?$")
_SNIFF_LINES = 50
_SNIFF_BYTES = 1 << 20


def _first_lines(path: Path, member: str | None = None) -> list[bytes]:
    """Up to `_SNIFF_LINES` non-empty lines from the start of a plain, gzip or zip-member file.

    Raises:
        EtlError: the file cannot be opened or its compression is broken at the start.
    """
    try:
        if member is not None:
            with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
                head = stream.read(_SNIFF_BYTES)
        else:
            with open(path, "rb") as raw:
                magic = raw.read(2)
                raw.seek(0)
                if magic == b"\x1f\x8b":
                    with gzip.GzipFile(fileobj=raw) as stream:
                        head = _read_some(stream)
                else:
                    head = raw.read(_SNIFF_BYTES)
    except (zipfile.BadZipFile, zlib.error, gzip.BadGzipFile, KeyError) as exc:
        raise EtlError(f"{path}: unreadable archive ({exc}); download it again") from exc
    except OSError as exc:
        raise EtlError(f"cannot read {path}: {exc.strerror or exc}; check the file") from exc
    lines = head.split(b"\n")
    if len(head) >= _SNIFF_BYTES:
        lines = lines[:-1]  # the last one may be cut
    return [line.rstrip(b"\r") for line in lines if line.strip()][:_SNIFF_LINES]


def _read_some(stream: gzip.GzipFile) -> bytes:
    """The first bytes of a gzip stream; a file shorter than that may end without its trailer."""
    try:
        return stream.read(_SNIFF_BYTES)
    except EOFError:
        return b""  # truncated right at the start: the reader raises with the file's name


def classify_line(line: bytes) -> str | None:
    """The format a single line belongs to, or None when it matches none."""
    if line.startswith(b"{'"):
        return "amazon2014-meta"
    if line.startswith(b"{"):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(rec, dict):
            return None
        if "user_id" in rec and "parent_asin" in rec:
            return "amazon2023-reviews"
        if "parent_asin" in rec:
            return "amazon2023-meta"
        if "reviewerID" in rec:
            return "amazon2018-reviews"
        if "asin" in rec:
            return "amazon2018-meta"
        return None
    if line == BENCHMARK_HISTORY_HEADER:
        return "amazon2023-benchmark-history"
    if line == BENCHMARK_HEADER:
        return "amazon2023-benchmark"
    if line == ML_RATINGS_HEADER:
        return "movielens-csv-ratings"
    if line == ML_MOVIES_HEADER:
        return "movielens-csv-movies"
    if b"::" in line:
        if _ML_DAT_RATING.match(line):
            return "movielens-dat-ratings"
        if _ML_DAT_USER.match(line):
            return "movielens-dat-users"
        if _ML_DAT_MOVIE.match(line):
            return "movielens-dat-movies"
        return None
    match = _COMMA4.match(line)
    if match:
        # The 2023 files count milliseconds (13 digits today), the 2018 one seconds (10).
        millis = len(match.group(3)) >= 12
        if match.group(4) is not None:
            return "amazon2023-benchmark-history" if millis else None
        return "amazon2023-benchmark" if millis else "amazon2018-ratings"
    return None


def sniff_format(path: Path, member: str | None = None) -> str | None:
    """The format of the first of the file's first lines that matches one, else None.

    Raises:
        EtlError: the file cannot be read.
    """
    for line in _first_lines(path, member):
        kind = classify_line(line)
        if kind is not None:
            return kind
    return None


def expect_format(
    path: Path, expected: tuple[str, ...], hint: str, member: str | None = None
) -> str | None:
    """Check that `path` holds one of the `expected` formats (or an unrecognised one).

    Returns:
        the format found (None when no line was recognised).

    Raises:
        EtlError: the file holds another known format; the message names the file, what it
            holds, what was expected here and `hint` (what to do).
    """
    found = sniff_format(path, member)
    if found is None or found in expected:
        return found
    where = f"{path}:{member}" if member else str(path)
    wanted = " or ".join(FORMATS[e] for e in expected)
    raise EtlError(f"{where} holds {FORMATS[found]}, not {wanted}; {hint}")
