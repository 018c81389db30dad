"""What differs between the sources the pipeline reads: inputs, parsers, names, rules.

The steps are the same for every source (partition, SentencePiece, tokenise, pool, scaled
datasets); a `SourceSpec` says where a source's rating and item files are, how to parse
them, how its datasets are named and which rules apply:

| source, release | ratings | items | datasets | pool rules |
|---|---|---|---|---|
| amazon 2018 | all_csv_files.csv (or per-category) | All_Amazon_Meta.json | amazon-<size>, amazon-beauty/-sports | Amazon |
| amazon 2023 | <Category>.jsonl | meta_<Category>.jsonl | amazon2023-<size>, the official splits | Amazon |
| movielens ml-1m ... | ratings.dat / ratings.csv | movies.dat / movies.csv | ml-1m (whole), ml-1m-<size> | every rating kept |

Amazon rules: (user, item) duplicates, items without usable text, users of the 2014
fine-tuning sets (2018 only) and users with fewer than 5 ratings are removed. MovieLens keeps
every rating (only a repeated (user, movie) pair is dropped, counted) and every movie.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from etl import amazon2023, movielens
from etl.errors import EtlError
from etl.partition import _Work, count_work, iter_work, metadata_sources, ratings_sources
from etl.raw_files import the_file
from etl.readers import Parser, parse_meta_2018_lines, parse_ratings_csv, parse_review_lines
from etl.sniff import expect_format

SOURCES = ("amazon", "movielens")
AMAZON_RELEASES = ("2018", "2023")


@dataclass(frozen=True)
class FileSet:
    """The files of one kind (ratings or items) and how to read them into work units."""

    paths: tuple[Path, ...]  # plain or gzip files (fingerprinted as the step's inputs)
    parser: Parser
    members: tuple[str | None, ...] = ()  # zip member per path (MovieLens zips), else empty

    def work(self, chunk_bytes: int) -> Iterator[_Work]:
        """Units of parsing in file order (see `etl.partition.iter_work`)."""
        if not any(self.members):
            yield from iter_work(list(self.paths), chunk_bytes)
            return
        index = 0
        for path, member in zip(self.paths, self.members):
            for unit in movielens.iter_zip_work(movielens.Source(path, member), index):
                index = unit.index + 1
                yield unit

    def total(self, chunk_bytes: int) -> int | None:
        """Work units when known without decompressing (for the progress bar)."""
        return None if any(self.members) else count_work(list(self.paths), chunk_bytes)


@dataclass(frozen=True)
class SourceSpec:
    """One source and release, resolved against RAW."""

    source: str  # "amazon" or "movielens"
    release: str  # "2018", "2023", "ml-1m", ...
    prefix: str  # scaled datasets are <prefix>-<size>
    millis: bool  # timestamps in milliseconds (written as seconds with 3 decimals)
    amazon_rules: bool  # the Amazon pool filters (see the module docstring)
    whole_dataset: str | None  # MovieLens: the whole release as one dataset of this name
    finetune_2014: bool  # build amazon-beauty / amazon-sports from the 2014 5-core files
    official_splits: bool  # build the Amazon 2023 benchmark sets found in RAW


def resolve(source: str, release: str | None, raw_dir: Path) -> SourceSpec:
    """The spec of `source` and `release` (None: Amazon 2018, or the MovieLens release in RAW,
    ml-1m when RAW holds none yet).

    Raises:
        EtlError: unknown source or release, or several MovieLens releases in RAW.
    """
    if source == "amazon":
        release = release or "2018"
        if release not in AMAZON_RELEASES:
            raise EtlError(
                f"unknown Amazon release {release!r}; choose one of {', '.join(AMAZON_RELEASES)}"
            )
        new = release == "2023"
        return SourceSpec(
            "amazon", release, "amazon2023" if new else "amazon", new, True, None, not new, new
        )
    if source == "movielens":
        if release is None:
            present = [
                n for n, r in movielens.RELEASES.items()
                if movielens.release_sources(raw_dir, r) is not None
            ]  # fmt: skip
            if len(present) > 1:
                raise EtlError(
                    f"several MovieLens releases in {raw_dir} ({', '.join(present)}); pass "
                    "--release to choose one"
                )
            release = present[0] if present else "ml-1m"
        if release not in movielens.RELEASES:
            raise EtlError(
                f"unknown MovieLens release {release!r}; choose one of "
                f"{', '.join(movielens.RELEASES)}"
            )
        return SourceSpec("movielens", release, release, False, False, release, False, False)
    raise EtlError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")


def ratings_files(spec: SourceSpec, raw_dir: Path) -> FileSet:
    """The interaction files of `spec` in RAW (empty `paths` when there are none).

    Raises:
        EtlError: a file holds another release's format, or a zip is unreadable.
    """
    if spec.source == "movielens":
        found = movielens.release_sources(raw_dir, movielens.RELEASES[spec.release])
        if found is None:
            return FileSet((), movielens.parse_ml_dat_ratings)
        release, ratings, _ = movielens.find_release(raw_dir, spec.release)
        parser = movielens.PARSERS[release.kind][0]
        return FileSet((ratings.path,), parser, (ratings.member,))
    if spec.release == "2023":
        return FileSet(tuple(amazon2023.review_files(raw_dir)), amazon2023.parse_reviews_2023)
    kind, files = ratings_sources(raw_dir)
    return FileSet(tuple(files), parse_ratings_csv if kind == "csv" else parse_review_lines)


def metadata_files(spec: SourceSpec, raw_dir: Path, item_text: tuple[str, ...] = ()) -> FileSet:
    """The item files of `spec` in RAW; `item_text` adds optional 2023 text fields.

    Raises:
        EtlError: a file holds another release's format, or a zip is unreadable.
    """
    if spec.source == "movielens":
        found = movielens.release_sources(raw_dir, movielens.RELEASES[spec.release])
        if found is None:
            return FileSet((), movielens.parse_ml_dat_movies)
        release, _, movies = movielens.find_release(raw_dir, spec.release)
        return FileSet((movies.path,), movielens.PARSERS[release.kind][1], (movies.member,))
    if spec.release == "2023":
        return FileSet(tuple(amazon2023.meta_files(raw_dir)), amazon2023.meta_parser(item_text))
    return FileSet(tuple(metadata_sources(raw_dir)), parse_meta_2018_lines)


def missing_inputs_message(spec: SourceSpec, raw_dir: Path, what: str) -> str:
    """One line saying which `what` ('ratings' or 'metadata') files to place in RAW."""
    if spec.source == "movielens":
        return (
            f"no MovieLens {spec.release} in {raw_dir}: place {spec.release}.zip (or its "
            f"unpacked {spec.release}/ folder) there, or run --step download_raw_files"
        )
    if spec.release == "2023":
        name = "<Category>.jsonl.gz" if what == "ratings" else "meta_<Category>.jsonl.gz"
        return (
            f"no Amazon 2023 {what} in {raw_dir}: place {name} there, or run --step "
            "download_raw_files --categories ..."
        )
    if what == "ratings":
        return (
            f"no 2018 ratings in {raw_dir}: place {the_file('ratings', 'amazon-2018').name} "
            "(or <Category>.csv) there, or run --step download_raw_files"
        )
    return (
        f"no 2018 metadata in {raw_dir}: place {the_file('metadata', 'amazon-2018').name} (or "
        "meta_<Category>.json.gz) there, or run --step download_raw_files"
    )


def check_2018_inputs(raw_dir: Path) -> None:
    """Name a file of another release among the Amazon 2018 inputs before any is parsed.

    Raises:
        EtlError: a 2018 ratings or metadata file holds another format, or RAW has no 2018
            ratings but another source's files (the message says which flag reads them).
    """
    hint = "move it out of RAW, or pass the --source / --release it belongs to"
    _, ratings = ratings_sources(raw_dir)
    for path in ratings:
        expect_format(path, ("amazon2018-ratings", "amazon2018-reviews"), hint)
    for path in metadata_sources(raw_dir):
        expect_format(path, ("amazon2018-meta",), hint)
    if ratings:
        return
    others = [p.name for p in sorted(raw_dir.glob("*.jsonl*")) if not p.name.startswith("meta_")]
    if others:
        raise EtlError(
            f"{raw_dir} holds Amazon 2023 reviews ({others[0]}) but no 2018 ratings; pass "
            "--release 2023 to read them"
        )
    present = [n for n, r in movielens.RELEASES.items() if movielens.release_sources(raw_dir, r)]
    if present:
        raise EtlError(
            f"{raw_dir} holds MovieLens {present[0]} but no Amazon ratings; pass --source "
            "movielens to read it"
        )
