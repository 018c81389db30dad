"""Synthetic raw data in the formats of Amazon Reviews 2023 and MovieLens, for offline runs.

`python -m etl.synthetic --format amazon2023|movielens-1m|movielens-csv --out RAW ...` calls
`generate_amazon2023` or `generate_movielens`. Both reuse the latent structure of
`etl.synthetic` (items in clusters whose words show in their text; users walking between
a few preferred clusters; Zipf popularity within a cluster), so a text model can learn.

Amazon 2023 (`RAW` as the release lays it out):
- `<Category>.jsonl.gz`, reviews with the release's fields, timestamps in milliseconds
  from 2015 to September 2023 (across both official cuts), some ties to the millisecond and
  some repeated (user, item) reviews;
- `meta_<Category>.jsonl.gz`, item metadata with the release's fields (`store`,
  `categories`, `features`, `description`, `details`, ...), a few items without a record;
- `benchmark/{5core,0core}/{last_out,timestamp}[_w_his]/<Category>.{train,valid,test}.csv.gz`
  for the benchmark categories, made from the reviews by the release's documented rules
  (earliest review of a repeated pair kept, k-core filter, leave-last-out or the two cuts).

MovieLens: `ml-1m.zip` (`ml-1m/ratings.dat`, `movies.dat` in latin-1, `users.dat`; ids from
1, whole stars, each user's lines in no time order) or `ml-20m.zip` (or ml-25m / ml-32m:
`ratings.csv` sorted by user then movie, half stars, `movies.csv` with quoted titles).

The same seed gives the same bytes (gzip and zip entries carry fixed times).
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import orjson

from etl.amazon2023 import TEST_CUT_MS, VALID_CUT_MS
from etl.synthetic import (
    ADJECTIVES,
    N_CLUSTERS,
    RATING_PROBS,
    RATING_VALUES,
    _asins,
    _bijection,
    _Catalog,
    _cluster_walk,
    _digits,
    _make_vocab,
    _splitmix,
    _strings,
    _unit,
    _zipf_ranks,
)

FORMATS = ("amazon2023", "movielens-1m", "movielens-csv")
CATEGORIES = ("All_Beauty", "Video_Games")
MAIN_CATEGORY = {"All_Beauty": "All Beauty", "Video_Games": "Video Games"}
FIRST_MS = 1_420_070_400_000  # 2015-01-01
LAST_MS = 1_696_118_400_000  # 2023-10-01
DAY_MS = 86_400_000
TIE_SHARE = 0.05  # reviews written in the same millisecond as the user's previous one
ML_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
ACCENTED = ("Misérables", "Amélie", "Château", "Être", "Mädchen", "Señor")


def _gzip(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
    tmp.replace(path)


def _user_ids(users: np.ndarray, key: int) -> list[str]:
    """2023-style user ids: 'A' + 27 upper-case letters and digits."""
    high = _digits(_bijection(users, 61, key), 13, 36)
    low = _digits(_splitmix(users.astype(np.uint64), key), 14, 36)
    codes = np.concatenate([np.full((len(users), 1), ord("A"), np.uint8), high, low], axis=1)
    return _strings(codes).to_pylist()


def _walk(
    rng: np.random.Generator, interactions: int, catalog: _Catalog, mean_log: float, floor: int
) -> tuple[np.ndarray, np.ndarray]:
    """(lengths [U], items [n]) of users walking the catalog's clusters, `interactions` rows."""
    lengths: list[int] = []
    total = 0
    while total < interactions:
        n = int(floor + np.exp(rng.normal(mean_log, 0.9)))
        n = min(n, 2_000, interactions - total)
        lengths.append(n)
        total += n
    sizes = np.array(lengths, dtype=np.int64)
    clusters = _cluster_walk(rng, sizes, np.arange(N_CLUSTERS), catalog.weights)
    ranks = _zipf_ranks(rng.random(len(clusters)), catalog.sizes[clusters], 0.8)
    return sizes, catalog.offsets[clusters] + ranks


def _times(rng: np.random.Generator, lengths: np.ndarray, first: int, last: int, gap: float,
           tie: float) -> np.ndarray:  # fmt: skip
    """Non-decreasing times per user (users concatenated): a start, then gaps (0 with `tie`)."""
    n = int(lengths.sum())
    gaps = np.where(rng.random(n) < tie, 0, rng.exponential(gap, n).astype(np.int64) + 1)
    starts = np.cumsum(lengths) - lengths
    gaps[starts] = 0
    csum = np.cumsum(gaps)
    offset = csum - np.repeat(csum[starts], lengths)
    span = np.maximum(last - first - offset[starts + lengths - 1], 1)
    begin = first + (rng.random(len(lengths)) * span).astype(np.int64)
    return np.minimum(np.repeat(begin, lengths) + offset, last)


# ---------------------------------------------------------------------------- Amazon 2023


def _official_rows(rows: list[tuple[str, str, float, int]]) -> list[tuple[str, str, float, int]]:
    """The release's rating_only order: users by first appearance, each user's reviews by
    timestamp (ties in file order), a repeated item's later reviews dropped."""
    by_user: dict[str, list[tuple[str, str, float, int]]] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    out = []
    for user_rows in by_user.values():
        seen: set[str] = set()
        for row in sorted(user_rows, key=lambda r: r[3]):
            if row[1] not in seen:
                seen.add(row[1])
                out.append(row)
    return out


def _kcore(rows: list[tuple[str, str, float, int]], k: int) -> list[tuple[str, str, float, int]]:
    """Drop users and items with fewer than `k` rows until none is left (order kept)."""
    while k:
        users: dict[str, int] = {}
        items: dict[str, int] = {}
        for u, i, _, _ in rows:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            break
        rows = kept
    return rows


def _write_splits(out_dir: Path, category: str, kcore: str, rows: list) -> dict[str, int]:
    """The four split variants of one k-core set, as the release's scripts write them."""
    by_user: dict[str, list] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    counts = {}
    for split in ("last_out", "timestamp"):
        parts: dict[str, list[tuple]] = {"train": [], "valid": [], "test": []}
        for user_rows in by_user.values():
            for i, row in enumerate(user_rows):
                history = " ".join(r[1] for r in user_rows[:i])
                if split == "last_out":
                    n = len(user_rows)
                    part = "test" if i == n - 1 else "valid" if i == n - 2 else "train"
                else:
                    ts = row[3]
                    part = (
                        "test" if ts >= TEST_CUT_MS else "valid" if ts >= VALID_CUT_MS else "train"
                    )
                parts[part].append((*row, history))
        for his in (False, True):
            folder = out_dir / "benchmark" / kcore / (f"{split}_w_his" if his else split)
            header = "user_id,parent_asin,rating,timestamp" + (",history" if his else "")
            for part, part_rows in parts.items():
                lines = [header] + [
                    f"{u},{i},{r},{t}" + (f",{h}" if his else "") for u, i, r, t, h in part_rows
                ]
                _gzip(folder / f"{category}.{part}.csv.gz", ("\n".join(lines) + "\n").encode())
                counts[f"{kcore}/{split}/{part}"] = len(part_rows)
    return counts


def generate_amazon2023(
    out_dir: Path,
    interactions: int,
    seed: int = 42,
    categories: tuple[str, ...] = CATEGORIES,
    benchmark_categories: tuple[str, ...] | None = None,
) -> dict[str, int]:
    """Write synthetic Amazon Reviews 2023 raw files (see the module docstring).

    Args:
        interactions: reviews over all categories (before the official de-duplication).
        categories: category names (the release's spelling); clusters are dealt to them.
        benchmark_categories: categories that get official split files (default: the first).

    Returns:
        counts: reviews and items per category, rows per official split file.

    Raises:
        ValueError: `interactions` < 1 or no category.
    """
    if interactions < 1 or not categories:
        raise ValueError("need at least one interaction and one category")
    benchmark_categories = benchmark_categories or categories[:1]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2023])
    key = int(rng.integers(1 << 62))
    vocab = _make_vocab(np.random.default_rng([seed, 1]))
    catalog = _Catalog.build(max(400, interactions // 3), N_CLUSTERS)
    lengths, items = _walk(rng, interactions, catalog, np.log(8.0), 1)
    users = np.repeat(np.arange(len(lengths)), lengths)
    stamps = _times(rng, lengths, FIRST_MS, LAST_MS, 45.0 * DAY_MS, TIE_SHARE)
    # A share of reviews repeat an item the user reviewed just before (edited or re-posted).
    repeat = np.flatnonzero(rng.random(len(items)) < 0.02)
    repeat = repeat[(repeat > 0) & (users[repeat] == users[np.maximum(repeat - 1, 0)])]
    items[repeat] = items[repeat - 1]
    ratings = rng.choice(RATING_VALUES, size=len(items), p=RATING_PROBS).astype(float)
    cluster = catalog.cluster_of(items)
    category_of = cluster % len(categories)
    asins = _asins(items, key).to_pylist()
    user_ids = _user_ids(np.arange(len(lengths)), key)
    votes = rng.integers(0, 5, len(items)).tolist()
    verified = (rng.random(len(items)) < 0.9).tolist()
    counts: dict[str, int] = {}
    rows_by_cat: dict[str, list[tuple[str, str, float, int]]] = {c: [] for c in categories}
    lines_by_cat: dict[str, list[bytes]] = {c: [] for c in categories}
    for j in range(len(items)):
        cat = categories[int(category_of[j])]
        c = int(cluster[j])
        row = (user_ids[int(users[j])], asins[j], float(ratings[j]), int(stamps[j]))
        rows_by_cat[cat].append(row)
        topic = vocab.topics[c][j % 10]
        rec = {
            "rating": row[2], "title": f"{topic.title()} works", "text": f"Love the {topic}.",
            "images": [], "asin": row[1], "parent_asin": row[1], "user_id": row[0],
            "timestamp": row[3], "helpful_vote": votes[j], "verified_purchase": verified[j],
        }  # fmt: skip
        lines_by_cat[cat].append(orjson.dumps(rec))
    for cat in categories:
        _gzip(out_dir / f"{cat}.jsonl.gz", b"\n".join(lines_by_cat[cat]) + b"\n")
        counts[f"{cat}_reviews"] = len(lines_by_cat[cat])
        counts[f"{cat}_items_meta"] = _write_meta(
            out_dir, cat, categories, catalog, vocab, key, seed
        )
    for cat in benchmark_categories:
        rows = _official_rows(rows_by_cat[cat])
        for kcore, k in (("0core", 0), ("5core", 5)):
            for name, n in _write_splits(out_dir, cat, kcore, _kcore(rows, k)).items():
                counts[f"{cat}/{name}"] = n
    return counts


def _write_meta(out_dir: Path, cat: str, categories: tuple[str, ...], catalog: _Catalog,
                vocab, key: int, seed: int) -> int:  # fmt: skip
    """meta_<cat>.jsonl.gz: every catalog item of the category's clusters, 3% left out."""
    index = categories.index(cat)
    clusters = [c for c in range(N_CLUSTERS) if c % len(categories) == index]
    items = np.concatenate(
        [np.arange(catalog.offsets[c], catalog.offsets[c + 1]) for c in clusters]
    )
    h = [_unit(_splitmix(items.astype(np.uint64), key + 500 + s)) for s in range(6)]
    keep = h[0] >= 0.03
    items = items[keep]
    h = [x[keep] for x in h]
    asins = _asins(items, key).to_pylist()
    cluster = catalog.cluster_of(items)
    lines = []
    for j, asin in enumerate(asins):
        c = int(cluster[j])
        topics, brands = vocab.topics[c], vocab.brands[c]
        adj = ADJECTIVES[int(h[1][j] * len(ADJECTIVES))]
        title = f"{adj} {topics[int(h[2][j] * 10)].title()} {topics[(int(h[2][j] * 10) + 3) % 10]}"
        rec = {
            "main_category": MAIN_CATEGORY.get(cat, cat.replace("_", " ")),
            "title": title if h[3][j] > 0.02 else "",
            "average_rating": round(1 + 4 * float(h[4][j]), 1),
            "rating_number": int(h[5][j] * 1000),
            "features": [f"Made for {topics[4]} fans", f"{topics[5].title()} finish"]
            if h[4][j] < 0.6 else [],
            "description": [f"The {topics[6]} {topics[7]} by {brands[0]}."] if h[5][j] < 0.5 else [],
            "price": round(1 + 80 * float(h[1][j]), 2) if h[2][j] < 0.7 else None,
            "images": [{"thumb": f"https://m.media-amazon.com/images/I/{asin}._SS40_.jpg",
                        "large": f"https://m.media-amazon.com/images/I/{asin}.jpg",
                        "variant": "MAIN", "hi_res": None}],
            "videos": [],
            "store": brands[int(h[3][j] * 6)] if h[3][j] < 0.95 else None,
            "categories": [MAIN_CATEGORY.get(cat, cat), vocab.l2(c), vocab.l3(c)]
            if h[4][j] > 0.1 else [],
            "details": {"Date First Available": "March 1, 2019", "Item Weight": "8 ounces"},
            "parent_asin": asin,
            "bought_together": None,
        }  # fmt: skip
        lines.append(orjson.dumps(rec))
    _gzip(out_dir / f"meta_{cat}.jsonl.gz", b"\n".join(lines) + b"\n")
    return len(lines)


# ---------------------------------------------------------------------------- MovieLens


def _zip(path: Path, files: dict[str, bytes]) -> None:
    """A zip with fixed entry times (same bytes for the same content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2003, 2, 28, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(path)


def _movie_titles(rng: np.random.Generator, n: int, vocab, cluster: np.ndarray) -> list[str]:
    titles = []
    for m in range(n):
        words = vocab.topics[int(cluster[m])]
        title = f"{words[m % 10].title()} {words[(m * 7) % 10].title()}"
        roll = rng.random()
        if roll < 0.1:
            title = f"{title}, The"
        elif roll < 0.15:
            title = f"{ACCENTED[m % len(ACCENTED)]} {title}"
        elif roll < 0.2:
            title = f'{title}: "{words[3].title()}"'
        titles.append(f"{title} ({1930 + (m * 13) % 70})")
    return titles


def generate_movielens(
    out_dir: Path, interactions: int, seed: int = 42, release: str = "ml-1m"
) -> dict[str, int]:
    """Write a synthetic MovieLens release zip `out_dir/<release>.zip` (module docstring).

    Args:
        release: 'ml-1m' (the `.dat` format) or 'ml-20m', 'ml-25m', 'ml-32m' (csv).

    `interactions` is reached with whole users (the last one may pass it).

    Returns:
        counts: ratings, users, movies listed, movies rated, equal-timestamp pairs.

    Raises:
        ValueError: unknown release, or `interactions` < 20.
    """
    if release not in ("ml-1m", "ml-20m", "ml-25m", "ml-32m"):
        raise ValueError(f"unknown MovieLens release {release!r}")
    if interactions < 20:
        raise ValueError("MovieLens users have at least 20 ratings: ask for 20 or more")
    rng = np.random.default_rng([seed, 1995])
    vocab = _make_vocab(np.random.default_rng([seed, 1]))
    n_movies = max(60, interactions // 150)
    catalog = _Catalog.build(n_movies, N_CLUSTERS)
    n_movies = int(catalog.offsets[-1])
    # Twice the draws: a user rates a movie once, so repeated draws are dropped (keeping the
    # first of each (user, movie)); whole users are then kept up to `interactions` ratings.
    lengths, items = _walk(rng, 2 * interactions, catalog, np.log(60.0), 20)
    users = np.repeat(np.arange(len(lengths)), lengths)
    _, first = np.unique(users * n_movies + items, return_index=True)
    keep = np.zeros(len(items), dtype=bool)
    keep[first] = True
    users, items = users[keep], items[keep]
    lengths = np.bincount(users, minlength=len(lengths))
    n_users = int(np.searchsorted(np.cumsum(lengths), interactions)) + 1
    keep = users < n_users
    users, items, lengths = users[keep], items[keep], lengths[:n_users]
    csv_release = release != "ml-1m"
    first_s, last_s = (789_652_009, 1_697_164_800) if csv_release else (956_703_932, 1_046_454_590)
    stamps = _times(rng, lengths, first_s, last_s, 3 * 86_400.0, 0.15)
    values = np.arange(1, 11) / 2 if csv_release else np.arange(1, 6, dtype=float)
    ratings = rng.choice(values, size=len(items))
    cluster = catalog.cluster_of(np.arange(n_movies))
    genres = [
        [ML_GENRES[(c * 5 + g * 7) % len(ML_GENRES)] for g in range(1 + c % 3)]
        for c in cluster.tolist()
    ]
    titles = _movie_titles(rng, n_movies, vocab, cluster)
    ties = int(((users[1:] == users[:-1]) & (stamps[1:] == stamps[:-1])).sum())
    movie_ids = np.arange(1, n_movies + 1)
    if csv_release:
        order = np.lexsort((items, users))  # by user, then movie id (the csv README's order)
        lines = ["userId,movieId,rating,timestamp"] + [
            f"{u + 1},{m + 1},{r:.1f},{t}"
            for u, m, r, t in zip(users[order].tolist(), items[order].tolist(),
                                  ratings[order].tolist(), stamps[order].tolist())
        ]  # fmt: skip
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        for m in range(n_movies):
            listed = "(no genres listed)" if m % 97 == 5 else "|".join(genres[m])
            writer.writerow([int(movie_ids[m]), titles[m], listed])
        files = {
            f"{release}/ratings.csv": ("\n".join(lines) + "\n").encode(),
            f"{release}/movies.csv": buffer.getvalue().encode("utf-8"),
        }
    else:
        # ml-1m lists each user's ratings together but not in time order.
        order = np.lexsort((rng.random(len(items)), users))
        lines = [
            f"{u + 1}::{m + 1}::{int(r)}::{t}"
            for u, m, r, t in zip(users[order].tolist(), items[order].tolist(),
                                  ratings[order].tolist(), stamps[order].tolist())
        ]  # fmt: skip
        movies = [f"{movie_ids[m]}::{titles[m]}::{'|'.join(genres[m])}" for m in range(n_movies)]
        people = [
            f"{u + 1}::{'MF'[u % 2]}::{(18, 25, 35)[u % 3]}::{u % 21}::{10000 + u}"
            for u in range(len(lengths))
        ]
        files = {
            "ml-1m/movies.dat": ("\n".join(movies) + "\n").encode("latin-1"),
            "ml-1m/ratings.dat": ("\n".join(lines) + "\n").encode(),
            "ml-1m/users.dat": ("\n".join(people) + "\n").encode(),
        }
    _zip(Path(out_dir) / f"{release}.zip", files)
    return {
        "ratings": len(items),
        "users": len(lengths),
        "movies_listed": n_movies,
        "movies_rated": len(np.unique(items)),
        "equal_timestamp_neighbours": ties,
    }
