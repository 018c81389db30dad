"""MovieLens (GroupLens): the ml-1m `.dat` release and the csv releases (ml-20m, ml-25m, ml-32m).

- ml-1m: `ratings.dat` lines `UserID::MovieID::Rating::Timestamp` (whole stars, seconds),
  `movies.dat` lines `MovieID::Title::Genres` (genres `|`-separated), both ISO-8859-1
  (latin-1); `users.dat` is not used.
- ml-20m / ml-25m / ml-32m: UTF-8 CSV with one header row: `ratings.csv`
  `userId,movieId,rating,timestamp` (half stars, seconds), `movies.csv`
  `movieId,title,genres`, a field holding a comma being double-quoted (a quote inside is
  doubled); `(no genres listed)` means none.

A release sits in RAW either unpacked (`RAW/ml-1m/ratings.dat`, the folder the release's zip
holds) or as the zip the download step fetches (`RAW/ml-1m.zip`), read without unpacking.

Item text: the title (SentencePiece pieces, like an Amazon title), no brand, the first three
genres as `category_l1..l3`, and every genre as the `genres` token sequence. Ratings and
their order are kept: a user's history is ordered by (timestamp, line in the file).
"""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl.errors import EtlError
from etl.partition import _Work
from etl.readers import (
    BAD_ID,
    BAD_RATING,
    BAD_TIMESTAMP,
    BLOCK_BYTES,
    NON_UTF8,
    WRONG_COLUMN_COUNT,
    BadRows,
)
from etl.sniff import ML_MOVIES_HEADER, ML_RATINGS_HEADER, expect_format

SEPARATOR_IN_FIELD = "separator_in_field"  # a title holding the field separator, unquoted
UTF8_IN_LATIN1 = "utf8_in_latin1_file"  # UTF-8 bytes in a latin-1 file (would be mojibake)
NO_GENRES = "(no genres listed)"


@dataclass(frozen=True)
class Release:
    """One MovieLens release: its name, file kind and the files used."""

    name: str  # "ml-1m", ...; also the dataset name
    kind: str  # "dat" or "csv"
    ratings: str
    movies: str

    @property
    def zip_name(self) -> str:
        """The archive the release is published as."""
        return f"{self.name}.zip"


RELEASES: dict[str, Release] = {
    "ml-1m": Release("ml-1m", "dat", "ratings.dat", "movies.dat"),
    "ml-20m": Release("ml-20m", "csv", "ratings.csv", "movies.csv"),
    "ml-25m": Release("ml-25m", "csv", "ratings.csv", "movies.csv"),
    "ml-32m": Release("ml-32m", "csv", "ratings.csv", "movies.csv"),
}


@dataclass(frozen=True)
class Source:
    """Where one file of a release is: a plain file, or `member` inside the zip at `path`."""

    path: Path
    member: str | None = None

    @property
    def label(self) -> str:
        """The name bad rows are counted under."""
        return f"{self.path.name}:{self.member}" if self.member else self.path.name


def release_sources(raw_dir: Path, release: Release) -> tuple[Source, Source] | None:
    """(ratings, movies) of `release` in RAW: the unpacked folder first, else the zip; None
    when neither is there.

    Raises:
        EtlError: the zip is unreadable or lacks a file.
    """
    folder = raw_dir / release.name
    if (folder / release.ratings).is_file() and (folder / release.movies).is_file():
        return Source(folder / release.ratings), Source(folder / release.movies)
    archive = raw_dir / release.zip_name
    if not archive.is_file():
        return None
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise EtlError(f"{archive}: not a readable zip ({exc}); download it again") from exc
    members = []
    for file in (release.ratings, release.movies):
        matches = sorted(n for n in names if n.endswith("/" + file) or n == file)
        if not matches:
            raise EtlError(f"{archive} holds no {file}; it is not the {release.name} release")
        members.append(matches[0])
    return Source(archive, members[0]), Source(archive, members[1])


def find_release(raw_dir: Path, name: str | None = None) -> tuple[Release, Source, Source]:
    """The MovieLens release to read: `name`, or the only one present in RAW.

    Raises:
        EtlError: `name` is unknown or absent, none is present, several are present without
            `name`, or a file holds another release's format.
    """
    if name is not None and name not in RELEASES:
        raise EtlError(f"unknown MovieLens release {name!r}; choose one of {', '.join(RELEASES)}")
    names = [name] if name else list(RELEASES)
    present = {n: s for n in names if (s := release_sources(raw_dir, RELEASES[n])) is not None}
    if not present:
        wanted = name or "ml-1m"
        raise EtlError(
            f"no MovieLens release{' ' + name if name else ''} in {raw_dir}: place "
            f"{wanted}.zip (or its unpacked {wanted}/ folder) there, or run --step "
            "download_raw_files"
        )
    if len(present) > 1:
        raise EtlError(
            f"several MovieLens releases in {raw_dir} ({', '.join(present)}); pass --release "
            "to choose one"
        )
    chosen, (ratings, movies) = next(iter(present.items()))
    release = RELEASES[chosen]
    kinds = {
        "dat": ("movielens-dat-ratings", "movielens-dat-movies"),
        "csv": ("movielens-csv-ratings", "movielens-csv-movies"),
    }[release.kind]
    hint = f"put the files of {release.name} there, or pass the --release they belong to"
    expect_format(ratings.path, (kinds[0],), hint, ratings.member)
    expect_format(movies.path, (kinds[1],), hint, movies.member)
    return release, ratings, movies


# ---------------------------------------------------------------------------- blocks of a zip


def iter_zip_work(
    source: Source, first_index: int, block_bytes: int = BLOCK_BYTES
) -> Iterator[_Work]:
    """Blocks of whole lines of a zip member, decompressed here, numbered from `first_index`.

    Raises:
        EtlError: a truncated or corrupt archive (raised while iterating).
    """
    index = first_index
    try:
        with zipfile.ZipFile(source.path) as zf, zf.open(str(source.member)) as stream:
            carry = b""
            while data := stream.read(block_bytes):
                data = carry + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                carry = data[cut:]
                yield _Work(index, source.label, data=data[:cut])
                index += 1
            if carry:
                yield _Work(index, source.label, data=carry)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise EtlError(
            f"{source.path}: truncated or corrupt zip ({exc}); download it again"
        ) from exc
    except OSError as exc:
        raise EtlError(f"cannot read {source.path}: {exc}; check the file") from exc


# ---------------------------------------------------------------------------- ratings

RATINGS_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("item", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),
    ]
)


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _rating_rows(rows: list[list[str]], label: str, bad: BadRows) -> pa.Table:
    """Validate split rating rows (user, movie, rating, timestamp) and count the bad ones."""
    users, items, ratings, stamps = [], [], [], []
    for fields in rows:
        if len(fields) != 4:
            bad.add(label, WRONG_COLUMN_COUNT)
            continue
        user, item, rating, stamp = (f.strip() for f in fields)
        if not (_is_id(user) and _is_id(item)):
            bad.add(label, BAD_ID)
            continue
        try:
            value = float(rating)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            bad.add(label, BAD_RATING)
            continue
        if not _is_id(stamp) or int(stamp) >= 2**63:
            bad.add(label, BAD_TIMESTAMP)
            continue
        # Ids as written without leading zeros: `007` and `7` are the same movie.
        users.append(str(int(user)))
        items.append(str(int(item)))
        ratings.append(value)
        stamps.append(int(stamp))
    return pa.table(
        [
            pa.array(users, pa.string()),
            pa.array(items, pa.string()),
            pa.array(ratings, pa.float64()),
            pa.array(stamps, pa.int64()),
        ],
        schema=RATINGS_SCHEMA,
    )


_TYPES = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}


def _ratings_fast(body: bytes, delimiter: str) -> pa.Table | None:
    """Typed C++ parse of a clean block; None when any row is bad (the slow path counts it)."""
    if b'"' in body or b" " in body or b"\t" in body or b"+" in body or b"-" in body:
        return None
    bad_shape = False

    def on_invalid(_row: object) -> str:
        nonlocal bad_shape
        bad_shape = True
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.py_buffer(body),
            read_options=pacsv.ReadOptions(
                column_names=list(_TYPES), use_threads=False, block_size=len(body) + 1
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char=False, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(column_types=_TYPES, strings_can_be_null=False),
        )
    except pa.ArrowInvalid:
        return None
    if bad_shape or any(table.column(c).null_count for c in _TYPES):
        return None
    if table.num_rows and not pc.all(pc.is_finite(table.column("rating"))).as_py():
        return None
    return pa.table(
        [
            pc.cast(table.column("user"), pa.string()).combine_chunks(),
            pc.cast(table.column("item"), pa.string()).combine_chunks(),
            table.column("rating").combine_chunks(),
            table.column("timestamp").combine_chunks(),
        ],
        schema=RATINGS_SCHEMA,
    )


def _lines(block: bytes) -> list[bytes]:
    return [line.rstrip(b"\r") for line in block.split(b"\n") if line.strip()]


def parse_ml_dat_ratings(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse ml-1m `ratings.dat` lines into (user, item, rating, timestamp in seconds).

    Bad rows are skipped and counted: not four `::`-separated fields, a non-integer id, a
    non-numeric rating, a timestamp that is not a whole non-negative number.
    """
    lines = _lines(block)
    if not lines:
        return RATINGS_SCHEMA.empty_table()
    # '::' becomes one ',' so that pyarrow's one-byte delimiter parses the clean blocks.
    body = b"\n".join(lines).replace(b"::", b",") + b"\n"
    if b"," not in b"\n".join(lines).replace(b"::", b""):
        fast = _ratings_fast(body, ",")
        if fast is not None:
            return fast
    rows = [line.decode("latin-1").split("::") for line in lines]
    return _rating_rows(rows, file_label, bad)


def parse_ml_csv_ratings(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse `ratings.csv` lines (header dropped) into (user, item, rating, timestamp).

    Bad rows are skipped and counted: invalid UTF-8, wrong column count, a non-integer id, a
    non-numeric rating, a timestamp that is not a whole non-negative number.
    """
    lines = [line for line in _lines(block) if line != ML_RATINGS_HEADER]
    if not lines:
        return RATINGS_SCHEMA.empty_table()
    fast = _ratings_fast(b"\n".join(lines) + b"\n", ",")
    if fast is not None:
        return fast
    rows = []
    for line in lines:
        try:
            rows.append(line.decode("utf-8").split(","))
        except UnicodeDecodeError:
            bad.add(file_label, NON_UTF8)
    return _rating_rows(rows, file_label, bad)


# ---------------------------------------------------------------------------- movies

MOVIES_SCHEMA = pa.schema(
    [
        ("asin", pa.string()),  # the movie id, under the column name the item steps use
        ("title", pa.string()),
        ("brand", pa.string()),
        ("category_l1", pa.string()),
        ("category_l2", pa.string()),
        ("category_l3", pa.string()),
        ("genres", pa.string()),  # every genre, '|'-separated as in the release
    ]
)


def _movie_rows(rows: list[tuple[str, str, str]], label: str, bad: BadRows) -> pa.Table:
    out: list[tuple[str, ...]] = []
    for movie, title, genres in rows:
        movie = movie.strip()
        if not _is_id(movie):
            bad.add(label, BAD_ID)
            continue
        listed = [] if genres.strip() == NO_GENRES else [g for g in genres.split("|") if g]
        levels = (listed + ["", "", ""])[:3]
        out.append((str(int(movie)), title, "", *levels, "|".join(listed)))
    return pa.table(
        [pa.array([r[i] for r in out], pa.string()) for i in range(len(MOVIES_SCHEMA))],
        schema=MOVIES_SCHEMA,
    )


def parse_ml_dat_movies(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse ml-1m `movies.dat` lines (latin-1) into MOVIES_SCHEMA.

    Skipped and counted: a line of other than three `::` fields (`separator_in_field` when
    more: a title holding `::` cannot be told from the fields around it), a non-integer id,
    and a line whose non-ASCII bytes are valid UTF-8 (`utf8_in_latin1_file`: a UTF-8 copy
    of the file, which read as latin-1 would turn every accent into two wrong characters).
    """
    rows = []
    for line in _lines(block):
        if not line.isascii():
            try:
                line.decode("utf-8")
                bad.add(file_label, UTF8_IN_LATIN1)
                continue
            except UnicodeDecodeError:
                pass  # latin-1, as expected
        fields = line.decode("latin-1").split("::")
        if len(fields) != 3:
            bad.add(file_label, SEPARATOR_IN_FIELD if len(fields) > 3 else WRONG_COLUMN_COUNT)
            continue
        rows.append((fields[0], fields[1], fields[2]))
    return _movie_rows(rows, file_label, bad)


def parse_ml_csv_movies(block: bytes, file_label: str, bad: BadRows) -> pa.Table:
    """Parse `movies.csv` lines (UTF-8, quoted titles, header dropped) into MOVIES_SCHEMA.

    Skipped and counted: invalid UTF-8 (e.g. latin-1 bytes), more than three fields
    (`separator_in_field`: an unquoted title holding a comma), fewer than three, a
    non-integer id.
    """
    rows = []
    for line in _lines(block):
        if line == ML_MOVIES_HEADER:
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(file_label, NON_UTF8)
            continue
        fields = next(csv.reader(io.StringIO(text)), [])
        if len(fields) != 3:
            bad.add(file_label, SEPARATOR_IN_FIELD if len(fields) > 3 else WRONG_COLUMN_COUNT)
            continue
        rows.append((fields[0], fields[1], fields[2]))
    return _movie_rows(rows, file_label, bad)


PARSERS = {
    "dat": (parse_ml_dat_ratings, parse_ml_dat_movies),
    "csv": (parse_ml_csv_ratings, parse_ml_csv_movies),
}
