"""The one table of raw files: name, release, format, where it comes from, what reads it.

Every module that names a raw file takes the name from here: the readers (which files of
RAW are inputs of which step), the downloader (URLs, expected size and checksum), the
synthetic generator and the reference writer (which names they write) and the demo.

A new source is one `Release` (its base URL) plus one `RawFile` per file; a new file
layout is one entry of `FORMATS` plus its parser in `etl.readers.PARSERS`. This module
imports nothing heavy, so scripts can read the table without loading pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    """A published collection of raw files, all under one base URL."""

    key: str
    base_url: str
    description: str


RELEASES: dict[str, Release] = {
    r.key: r
    for r in (
        # The 2018 release ("amazon_v2", Ni, Li, McAuley), on the McAuley lab's public host.
        Release(
            "amazon-2018",
            "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/",
            "Amazon Review Data 2018 (Ni, Li, McAuley): ratings CSV and metadata JSON lines",
        ),
        # The 2014 release (McAuley et al.), on the SNAP mirror that the S3-Rec/SASRec line of
        # work uses.
        Release(
            "amazon-2014",
            "https://snap.stanford.edu/data/amazon/productGraph/",
            "Amazon product data 2014 (McAuley et al.): 5-core reviews, Python-literal metadata",
        ),
        # Amazon Reviews 2023 (Hou et al. 2024), on the McAuley lab's public host: the paths
        # raw/review_categories/, raw/meta_categories/ and benchmark/ of the release's README.
        Release(
            "amazon-2023",
            "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/",
            "Amazon Reviews 2023 (Hou et al.): reviews and item metadata per category, "
            "official benchmark splits",
        ),
        # MovieLens (Harper and Konstan 2015), the zips GroupLens publishes.
        Release(
            "movielens",
            "https://files.grouplens.org/datasets/movielens/",
            "MovieLens ml-1m, ml-20m, ml-25m, ml-32m (GroupLens)",
        ),
    )
}

# How a file's lines are written; `etl.readers.PARSERS` holds the parser of each.
FORMATS: dict[str, str] = {
    "ratings_csv": "item,user,rating,timestamp lines, no header, no quoting (2018 ratings)",
    "reviews_json": "one JSON object per line with reviewerID, asin, overall, unixReviewTime",
    "meta_json": "one strict JSON object per line with asin, title, brand, category (2018)",
    "meta_literal": "one Python dict literal per line with asin, title, brand, categories (2014)",
    "reviews_2023_json": "one JSON object per line with user_id, parent_asin, rating, timestamp (ms)",
    "meta_2023_json": "one JSON object per line with parent_asin, title, store, categories (2023)",
    "benchmark_2023_csv": "CSV, header user_id,parent_asin,rating,timestamp (2023 official split)",
    "benchmark_2023_his_csv": "the same plus a history column of space-separated items (_w_his)",
    "ml_dat_ratings": "UserID::MovieID::Rating::Timestamp lines (ml-1m ratings.dat)",
    "ml_dat_movies": "MovieID::Title::Genres lines in latin-1 (ml-1m movies.dat)",
    "ml_csv_ratings": "CSV, header userId,movieId,rating,timestamp (ml-20m/25m/32m)",
    "ml_csv_movies": "CSV, header movieId,title,genres, quoted titles (ml-20m/25m/32m)",
    "movielens_zip": "a MovieLens release zip holding ml_* files (ratings and movies)",
}
# Formats of archives: no line parser of their own, their members have one.
CONTAINER_FORMATS = ("movielens_zip",)

# What the ETL uses a file for, and the steps that read it.
ROLES: dict[str, tuple[str, ...]] = {
    "ratings": ("partition_big_files",),  # the pre-training interactions
    "metadata": ("partition_big_files",),  # the pre-training catalog's text
    # A fine-tuning set's interactions; its users are also kept out of pre-training.
    "finetune_reviews": ("post_process_ratings", "build_beauty_and_sports_datasets"),
    "finetune_meta": ("build_beauty_and_sports_datasets",),  # text of its items
    "benchmark": ("build_benchmark_datasets",),  # an official 2023 split, kept whole
    "archive": ("partition_big_files",),  # ratings and items in one archive (MovieLens)
}


@dataclass(frozen=True)
class RawFile:
    """One raw file.

    `name` is the file name in RAW as published (a reader also accepts it with `.gz` added
    or removed, see `etl.readers.find_raw_file`). `source` is its path under the base URL of
    its release (None: it is not downloadable). `size` (bytes) and `sha256` (hex) are None
    where the real value is not known; they are then not checked (the server's length still
    is). `dataset` names the fine-tuning set a `finetune_*` file feeds.
    """

    name: str
    release: str  # a key of RELEASES
    format: str  # a key of FORMATS
    role: str  # a key of ROLES
    source: str | None
    dataset: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def read_by(self) -> tuple[str, ...]:
        """The ETL steps that read this file."""
        return ROLES[self.role]

    @property
    def stem(self) -> str:
        """The name without a trailing `.gz` (the readers accept either form)."""
        return self.name[:-3] if self.name.endswith(".gz") else self.name

    @property
    def url(self) -> str | None:
        """Where the file is downloaded from (None when it is not downloadable)."""
        if self.source is None:
            return None
        return join_url(RELEASES[self.release].base_url, self.source)


def join_url(base: str, path: str) -> str:
    """`base` and `path` joined by exactly one slash."""
    return base.rstrip("/") + "/" + path.lstrip("/")


# No size or checksum is recorded here: none has been measured on the real files by this
# project, and a guessed value would reject a good download. Fill them in once measured.
_TABLE = (
    RawFile(
        "all_csv_files.csv",
        "amazon-2018",
        "ratings_csv",
        "ratings",
        "categoryFilesSmall/all_csv_files.csv",
    ),
    RawFile(
        "All_Amazon_Meta.json.gz",
        "amazon-2018",
        "meta_json",
        "metadata",
        "metaFiles/All_Amazon_Meta.json.gz",
    ),
    RawFile(
        "reviews_Beauty_5.json.gz",
        "amazon-2014",
        "reviews_json",
        "finetune_reviews",
        "categoryFiles/reviews_Beauty_5.json.gz",
        dataset="amazon-beauty",
    ),
    RawFile(
        "reviews_Sports_and_Outdoors_5.json.gz",
        "amazon-2014",
        "reviews_json",
        "finetune_reviews",
        "categoryFiles/reviews_Sports_and_Outdoors_5.json.gz",
        dataset="amazon-sports",
    ),
    RawFile(
        "meta_Beauty.json.gz",
        "amazon-2014",
        "meta_literal",
        "finetune_meta",
        "categoryFiles/meta_Beauty.json.gz",
        dataset="amazon-beauty",
    ),
    RawFile(
        "meta_Sports_and_Outdoors.json.gz",
        "amazon-2014",
        "meta_literal",
        "finetune_meta",
        "categoryFiles/meta_Sports_and_Outdoors.json.gz",
        dataset="amazon-sports",
    ),
)


# Amazon Reviews 2023: per category, its reviews and metadata, and the official splits
# (k-core 5 or 0; leave-last-out or timestamp; with or without history; train/valid/test).
CATEGORIES_2023 = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive",
    "Baby_Products", "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music",
    "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food", "Handmade_Products",
    "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV",
    "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies",
    "Software", "Sports_and_Outdoors", "Subscription_Boxes", "Tools_and_Home_Improvement",
    "Toys_and_Games", "Unknown", "Video_Games",
)  # fmt: skip
BENCHMARK_VARIANTS_2023 = tuple(
    f"{k}/{split}{his}"
    for k in ("5core", "0core")
    for split in ("last_out", "timestamp")
    for his in ("", "_w_his")
)


def _table_2023() -> tuple[RawFile, ...]:
    files = []
    for cat in CATEGORIES_2023:
        files.append(
            RawFile(f"{cat}.jsonl.gz", "amazon-2023", "reviews_2023_json", "ratings",
                    f"raw/review_categories/{cat}.jsonl.gz", dataset=cat)
        )  # fmt: skip
        files.append(
            RawFile(f"meta_{cat}.jsonl.gz", "amazon-2023", "meta_2023_json", "metadata",
                    f"raw/meta_categories/meta_{cat}.jsonl.gz", dataset=cat)
        )  # fmt: skip
        for variant in BENCHMARK_VARIANTS_2023:
            fmt = "benchmark_2023_his_csv" if variant.endswith("_w_his") else "benchmark_2023_csv"
            for part in ("train", "valid", "test"):
                path = f"benchmark/{variant}/{cat}.{part}.csv.gz"
                files.append(RawFile(path, "amazon-2023", fmt, "benchmark", path, dataset=cat))
    return tuple(files)


MOVIELENS_RELEASES = ("ml-1m", "ml-20m", "ml-25m", "ml-32m")
_TABLE_MOVIELENS = tuple(
    RawFile(f"{r}.zip", "movielens", "movielens_zip", "archive", f"{r}.zip", dataset=r)
    for r in MOVIELENS_RELEASES
)


def download_selection(
    source: str,
    release: str,
    categories: Iterable[str] = (),
    benchmarks: Iterable[str] = (),
) -> list[str]:
    """Names of the table's files that `--step download_raw_files` fetches for a source.

    Amazon 2018: its ratings and metadata and the 2014 fine-tuning files. Amazon 2023: the
    reviews and metadata of `categories` ('all' for every one) and the official split files
    of `benchmarks` (variants such as '5core/last_out') for them. MovieLens: the release zip.

    Raises:
        ValueError: an unknown category, variant or release, or 2023 without categories.
    """
    if source == "movielens":
        if release not in MOVIELENS_RELEASES:
            raise ValueError(
                f"unknown MovieLens release {release!r}; choose from {MOVIELENS_RELEASES}"
            )
        return [f"{release}.zip"]
    if release != "2023":
        return [f.name for f in RAW_FILES.values() if f.release in ("amazon-2018", "amazon-2014")]
    cats = list(categories)
    if cats == ["all"]:
        cats = list(CATEGORIES_2023)
    if not cats:
        raise ValueError(
            "Amazon 2023 is published per category: pass --categories (e.g. All_Beauty,"
            "Video_Games, or all)"
        )
    unknown = sorted(set(cats) - set(CATEGORIES_2023)) + sorted(
        set(benchmarks) - set(BENCHMARK_VARIANTS_2023)
    )
    if unknown:
        raise ValueError(
            f"unknown Amazon 2023 category or split {unknown}; categories: "
            f"{', '.join(CATEGORIES_2023)}; splits: {', '.join(BENCHMARK_VARIANTS_2023)}"
        )
    names = []
    for cat in cats:
        names += [f"{cat}.jsonl.gz", f"meta_{cat}.jsonl.gz"]
        for variant in benchmarks:
            names += [
                f"benchmark/{variant}/{cat}.{part}.csv.gz" for part in ("train", "valid", "test")
            ]
    return names


def _check(table: Iterable[RawFile]) -> dict[str, RawFile]:
    """The table keyed by name; raises ValueError on a duplicate name or an unknown key."""
    out: dict[str, RawFile] = {}
    for f in table:
        if f.name in out:
            raise ValueError(f"raw file {f.name} is listed twice")
        if f.release not in RELEASES or f.format not in FORMATS or f.role not in ROLES:
            raise ValueError(f"raw file {f.name}: unknown release, format or role")
        if f.role.startswith("finetune_") and not f.dataset:
            raise ValueError(f"raw file {f.name}: a fine-tuning file needs its dataset")
        out[f.name] = f
    return out


RAW_FILES: dict[str, RawFile] = _check((*_TABLE, *_table_2023(), *_TABLE_MOVIELENS))


def files_with(role: str, release: str | None = None) -> list[RawFile]:
    """The table's files of `role` (and `release` when given), in table order."""
    return [f for f in RAW_FILES.values() if f.role == role and release in (None, f.release)]


def the_file(role: str, release: str) -> RawFile:
    """The single file of `role` in `release` (raises LookupError when not exactly one)."""
    found = files_with(role, release)
    if len(found) != 1:
        raise LookupError(f"{len(found)} raw files of role {role} in release {release}")
    return found[0]


@dataclass(frozen=True)
class FinetuneSet:
    """A fine-tuning dataset and the raw files it is built from."""

    dataset: str  # the RecBole dataset name, e.g. amazon-beauty
    reviews: RawFile
    meta: RawFile | None


def finetune_sets() -> list[FinetuneSet]:
    """The fine-tuning datasets in table order, each with its reviews and metadata files."""
    sets = []
    for reviews in files_with("finetune_reviews"):
        metas = [f for f in files_with("finetune_meta") if f.dataset == reviews.dataset]
        sets.append(FinetuneSet(str(reviews.dataset), reviews, metas[0] if metas else None))
    return sets


def finetune_set(dataset: str) -> FinetuneSet:
    """The fine-tuning set named `dataset` (raises LookupError for an unknown name)."""
    for s in finetune_sets():
        if s.dataset == dataset:
            return s
    raise LookupError(f"no fine-tuning set {dataset} in the raw file table")
