"""Synthetic raw data in the exact formats of the Amazon review releases the ETL reads.

`generate(out_dir, interactions, seed)` writes into `out_dir`, under the real file names (those
of the raw file table, `etl.raw_files`):

- `all_csv_files.csv`: the 2018 ratings-only CSV, rows `item,user,rating,timestamp`, no header;
- `All_Amazon_Meta.json.gz`: 2018 metadata, strict JSON lines with the real field set;
- `reviews_Beauty_5.json.gz`, `reviews_Sports_and_Outdoors_5.json.gz`: 2014 5-core reviews;
- `meta_Beauty.json.gz`, `meta_Sports_and_Outdoors.json.gz`: 2014 metadata, one Python
  literal per line (as `str(dict)` writes it), covering only part of the items.

The data is built to be learnable and to look like the real thing:

- Items belong to latent clusters. Each cluster owns topic words and brands that appear in
  its items' titles and in its level-2/3 category names, so an item's text reveals its cluster.
- A user prefers a few clusters and moves between clusters by a sticky Markov chain; within the
  current cluster the item is drawn from a Zipf popularity law. The sequential signal therefore
  lives in the cluster structure that the text reveals.
- Pre-training items and fine-tuning (beauty-like, sports-like) items are disjoint ids drawn
  from the same clusters, so a text-based model pre-trained on the ratings transfers.
- Item popularity is a truncated Zipf law whose catalog size and exponent reproduce the item
  counts of the study's scaled datasets (REFERENCE section 1: 100K -> 87K items,
  1M -> 615K, 10M -> 3.07M); user activity is log-normal (median about 10, some users
  below 5); timestamps have day resolution with same-day ties.
- Faults the ETL must handle: asins repeated in the metadata, rated items with no metadata,
  empty titles, titles with HTML entities and tags, asins made of digits with a leading zero,
  5-core users who also appear in the ratings CSV.

Everything is drawn from `seed`: the same seed gives byte-identical files (gzip headers carry
no file name and mtime 0). Per-item attributes come from a keyed hash of the item index, so an
item looks the same whatever `interactions` is. Ratings are written user by user in time
order, in chunks, so memory stays bounded (the real CSV is grouped by item instead; the ETL
sorts by time either way); the 5-core files are ordered by asin, like the real ones.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from etl.raw_files import finetune_set, the_file

# The file names come from the raw file table.
RATINGS_FILE = the_file("ratings", "amazon-2018").name
META_2018_FILE = the_file("metadata", "amazon-2018").name


def _domain(dataset: str, root: str, main_cat: str) -> tuple[str, str, str, str]:
    files = finetune_set(dataset)
    assert files.meta is not None, f"the raw file table has no metadata file for {dataset}"
    return files.reviews.name, files.meta.name, root, main_cat


FINETUNE_DOMAINS = {
    # domain -> (2014 review file, 2014 metadata file, category root, main_cat in 2018 metadata)
    "Beauty": _domain("amazon-beauty", "Beauty", "All Beauty"),
    "Sports_and_Outdoors": _domain("amazon-sports", "Sports & Outdoors", "Sports & Outdoors"),
}

# Field order of the real 2018 metadata lines (meta_Magazine_Subscriptions.json.gz).
META_2018_FIELDS = (
    "category",
    "tech1",
    "description",
    "fit",
    "title",
    "also_buy",
    "tech2",
    "brand",
    "feature",
    "rank",
    "also_view",
    "details",
    "main_cat",
    "similar_item",
    "date",
    "price",
    "asin",
    "imageURL",
    "imageURLHighRes",
)
REVIEW_2014_FIELDS = (
    "reviewerID",
    "asin",
    "reviewerName",
    "helpful",
    "reviewText",
    "overall",
    "summary",
    "unixReviewTime",
    "reviewTime",
)

N_CLUSTERS = 48
# Truncated Zipf over this many pre-training items with this exponent: the expected number
# of distinct items in n draws, sum_i (1 - exp(-n p_i)), is then 0.88n, 0.67n and 0.30n at
# n = 100K, 1M and 10M, close to the study's 0.87, 0.62, 0.31 (fitted by a grid search over
# catalog size and exponent, least squares on log counts).
CATALOG_SIZE = 4_000_000
ZIPF_EXPONENT = 0.7
# Bestsellers: a share of draws comes from a steep Zipf law over the same items, so the head
# is heavier than the flat law alone gives (it costs about HEAD_SHARE of the distinct items).
HEAD_SHARE = 0.15
HEAD_EXPONENT = 1.1
# Users: log-normal activity, median exp(2.3) = 10 ratings, about 17% of users below 5.
ACTIVITY_LOG_MEAN = 2.3
ACTIVITY_LOG_SD = 0.85
MAX_ACTIVITY = 2_000
USERS_PER_CHUNK = 65_536
# Markov chain over clusters: keep the current cluster with STAY, else redraw from the user's
# preferred clusters (weights PREF_WEIGHTS), or with EXPLORE from the whole domain.
STAY = 0.7
EXPLORE = 0.05
PREF_WEIGHTS = np.array([0.6, 0.25, 0.15])
SAME_DAY = 0.3  # probability that the next rating falls on the same day as the previous one
MEAN_GAP_DAYS = 30.0
RATING_VALUES = np.array([5, 4, 3, 2, 1])
RATING_PROBS = np.array([0.58, 0.2, 0.1, 0.05, 0.07])

FIRST_DAY_2018 = 10_957  # 2000-01-01, in days since the epoch
LAST_DAY_2018 = 17_805  # 2018-10-01
FIRST_DAY_2014 = 14_245  # 2009-01-01
LAST_DAY_2014 = 16_274  # 2014-07-23, the end of the 2014 release

# Item index namespaces (disjoint, so asins never collide between pre-training and fine-tuning).
FINETUNE_ITEM_BASE = {"Beauty": 1 << 32, "Sports_and_Outdoors": (1 << 32) + (1 << 30)}
FINETUNE_USER_BASE = {"Beauty": 1 << 40, "Sports_and_Outdoors": (1 << 40) + (1 << 38)}
FINETUNE_CLUSTERS = 16  # clusters each fine-tune domain draws from
FINETUNE_ITEMS_PER_USER = 0.55  # real 2014 Beauty 5-core: 12,101 items for 22,363 users
FINETUNE_ZIPF_EXPONENT = 0.8
FINETUNE_OVERLAP = 0.1  # share of fine-tune users who also rate in the 2018 CSV

# Generic title words (not tied to a cluster) and the product nouns of each category root.
ADJECTIVES = (
    "Premium", "Classic", "Natural", "Original", "Deluxe", "Mini", "Pro", "Ultra", "Essential",
    "Travel", "Professional", "Everyday", "Organic", "Compact", "Large", "Soft", "Men's",
    "Women's", "Kids", "Vintage", "Modern", "Lightweight", "Heavy Duty", "Advanced",
)  # fmt: skip
SIZES = ("8 oz", "2 Pack", "Set of 3", "1.7 fl oz", "Small", "XL", "12 Count", "100 ml")
ROOT_NOUNS = {
    "Beauty": ("Serum", "Cream", "Lotion", "Mask", "Cleanser", "Shampoo", "Lipstick", "Palette"),
    "Sports & Outdoors": ("Bottle", "Gloves", "Backpack", "Jersey", "Tent", "Racket", "Mat"),
    "Home & Kitchen": ("Mug", "Skillet", "Blanket", "Lamp", "Towel Set", "Cutting Board"),
    "Toys & Games": ("Puzzle", "Action Figure", "Board Game", "Plush", "Building Set"),
    "Clothing, Shoes & Jewelry": ("T-Shirt", "Sneakers", "Necklace", "Jacket", "Socks"),
    "Electronics": ("Headphones", "Charger", "Cable", "Speaker", "Case", "Adapter"),
    "Grocery & Gourmet Food": ("Tea", "Coffee", "Snack Bar", "Sauce", "Spice Blend"),
    "Health & Personal Care": ("Vitamins", "Toothbrush", "Thermometer", "Bandages"),
    "Tools & Home Improvement": ("Drill Bit Set", "Wrench", "Tape Measure", "Flashlight"),
    "Pet Supplies": ("Dog Toy", "Cat Litter", "Leash", "Pet Bed", "Treats"),
    "Automotive": ("Floor Mats", "Wiper Blades", "Car Charger", "Seat Cover"),
    "Office Products": ("Notebook", "Pens", "Stapler", "Desk Organizer", "Labels"),
}
ROOTS = tuple(ROOT_NOUNS)
MAIN_CAT = {"Beauty": "All Beauty", "Health & Personal Care": "Health & Household"}
# The broken title the real 2018 metadata holds for some items (JSON-escaped here).
SPAN_TITLE = '<span class=\\"a-size-medium a-color-secondary\\"'
IMAGE_PREFIX = "https://images-na.ssl-images-amazon.com/images/I/"
REVIEW_WORDS = (
    "great", "works", "love", "quality", "price", "smell", "fits", "recommend", "again",
    "nice", "cheap", "broke", "perfect", "daily", "gift", "size", "color", "fast", "okay",
)  # fmt: skip
FIRST_NAMES = ("Anna", "Ben", "Carla", "Dev", "Emma", "Frank", "Grace", "Hiro", "Ines", "Jo")
LAST_NAMES = ("Smith", "Lee", "Garcia", "Brown", "Kim", "Novak", "Rossi", "Silva", "Khan")

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class _Vocab:
    """Per-cluster words: topic words and brands that make an item's cluster visible."""

    topics: tuple[tuple[str, ...], ...]  # [K][10] lower-case pseudo-words
    brands: tuple[tuple[str, ...], ...]  # [K][6]
    home_root: np.ndarray  # [K] index into ROOTS: the root most of a cluster's items carry

    def l2(self, c: int) -> str:
        """The level-2 category name of cluster `c` (unique per cluster)."""
        return f"{self.topics[c][0].title()} & {self.topics[c][1].title()}"

    def l3(self, c: int) -> str:
        """The level-3 category name of cluster `c`."""
        return f"{self.topics[c][2].title()} Collection"


def _make_vocab(rng: np.random.Generator) -> _Vocab:
    """Draw distinct pseudo-words (consonant-vowel syllables) for topics and brands."""
    consonants, vowels = list("bdfgklmnprstvz"), list("aeiouy")
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < N_CLUSTERS * 16:
        n_syll = int(rng.integers(2, 4))
        w = "".join(str(rng.choice(consonants)) + str(rng.choice(vowels)) for _ in range(n_syll))
        if w not in seen:
            seen.add(w)
            words.append(w)
    suffixes = ("", " Labs", " Co.", " & Sons", " Naturals", " Gear", "ia", "ex")
    topics, brands = [], []
    for c in range(N_CLUSTERS):
        block = words[c * 16 : (c + 1) * 16]
        topics.append(tuple(block[:10]))
        brands.append(
            tuple(w.title() + suffixes[int(rng.integers(len(suffixes)))] for w in block[10:])
        )
    return _Vocab(tuple(topics), tuple(brands), rng.integers(len(ROOTS), size=N_CLUSTERS))


def _unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values; sort-based, as numpy's hash-based `unique` is far slower here."""
    s = np.sort(x)
    if len(s) == 0:
        return s
    return s[np.concatenate([[True], s[1:] != s[:-1]])]


def _member(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean mask: which values of `x` are in `sorted_set` (sorted, distinct)."""
    if len(sorted_set) == 0:
        return np.zeros(len(x), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, x), len(sorted_set) - 1)
    return sorted_set[pos] == x


def _splitmix(x: np.ndarray, salt: int) -> np.ndarray:
    """A keyed 64-bit hash of uint64 values (splitmix64 finaliser), vectorised."""
    z = x.astype(_U64) + _U64((0x9E3779B97F4A7C15 * (salt + 1)) & _MASK64)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _unit(h: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats uniform in [0, 1)."""
    return (h >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _bijection(x: np.ndarray, bits: int, key: int) -> np.ndarray:
    """A keyed bijection of [0, 2**bits): xor, odd multiplications and xor-shifts mod 2**bits."""
    mask = _U64((1 << bits) - 1)
    z = (x.astype(_U64) ^ _U64(key & ((1 << bits) - 1))) & mask
    z = (z * _U64(0x9E3779B97F4A7C15 | 1)) & mask
    z ^= z >> _U64(bits // 2)
    z = (z * _U64(0xC2B2AE3D27D4EB4F | 1)) & mask
    z ^= z >> _U64(bits // 3)
    return z


_B36 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)


def _digits(values: np.ndarray, width: int, base: int) -> np.ndarray:
    """ASCII codes of `values` in `base` (36: 0-9A-Z), zero-padded to `width`: uint8 [n, width]."""
    out = np.empty((len(values), width), dtype=np.uint8)
    v = values.astype(_U64)
    for pos in range(width - 1, -1, -1):
        out[:, pos] = _B36[(v % _U64(base)).astype(np.int64)]
        v //= _U64(base)
    return out


def _strings(codes: np.ndarray, lengths: np.ndarray | None = None) -> pa.StringArray:
    """Build an Arrow string array from ASCII rows uint8 [n, w], each row cut to its length."""
    n, width = codes.shape
    if lengths is None:
        lengths = np.full(n, width, dtype=np.int64)
        data = codes.tobytes()
    else:
        data = codes[np.arange(width)[None, :] < lengths[:, None]].tobytes()
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _asins(items: np.ndarray, key: int) -> pa.StringArray:
    """ASIN-like ids of `items` as an Arrow string array (see `_asin_codes`)."""
    return _strings(_asin_codes(items, key))


def _asin_codes(items: np.ndarray, key: int) -> np.ndarray:
    """ASIN-like ids, uint8 [n, 10]: 'B0' + 8 base-36 chars, or (one item in 16) ten digits
    starting with 0, like the ISBN-based asins of books.

    Both forms are injective in the item index (keyed bijections), and they differ in their
    first character, so distinct items always get distinct asins.
    """
    items = items.astype(_U64)
    numeric = (items % _U64(16)) == 0
    codes = np.empty((len(items), 10), dtype=np.uint8)
    codes[:, 0], codes[:, 1] = ord("B"), ord("0")
    codes[:, 2:] = _digits(_bijection(items, 41, key), 8, 36)
    if numeric.any():
        num = _bijection(items[numeric] // _U64(16), 29, key >> 7)
        codes[numeric, 0] = ord("0")
        codes[numeric, 1:] = _digits(num, 9, 10)
    return codes


def _reviewer_ids(users: np.ndarray, key: int) -> pa.StringArray:
    """reviewerID-like ids: 'A' + a digit 1-3 + 12 base-36 chars (14), or 'A' + 12 chars (13)."""
    code = _bijection(users.astype(_U64), 61, key)
    codes = np.empty((len(users), 14), dtype=np.uint8)
    codes[:, 0] = ord("A")
    short = (_splitmix(users.astype(_U64), key) % _U64(10)) == 0
    body = _digits(code, 12, 36)
    codes[:, 1] = ord("1") + (code % _U64(3)).astype(np.uint8)
    codes[:, 2:] = body
    codes[short, 1:13] = body[short]
    lengths = np.where(short, 13, 14)
    return _strings(codes, lengths)


def _zipf_ranks(u: np.ndarray, sizes: np.ndarray, exponent: float) -> np.ndarray:
    """0-based ranks of a truncated Zipf law (exponent != 1) over `sizes` items, by inverse CDF.

    Uses the continuous density r**-a on [1, size + 1), whose CDF is proportional to
    r**(1 - a) - 1 for either sign of 1 - a; ranks in [0, size).
    """
    e = 1.0 - exponent
    top = (sizes.astype(np.float64) + 1.0) ** e
    ranks = np.floor((1.0 + u * (top - 1.0)) ** (1.0 / e)).astype(np.int64) - 1
    return np.minimum(ranks, sizes.astype(np.int64) - 1)


def _cluster_walk(
    rng: np.random.Generator,
    lengths: np.ndarray,
    clusters: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """The cluster of every interaction, users concatenated: int64 [sum(lengths)].

    Each user prefers 3 clusters (drawn by `weights` from `clusters`). A user's first cluster
    and every redraw come from the preferred ones (PREF_WEIGHTS), or with EXPLORE from the
    whole domain; between redraws the user stays. The walk is vectorised by drawing a
    candidate cluster at every position and forward-filling the last redraw of each user.
    """
    n_users, n = len(lengths), int(lengths.sum())
    pref = rng.choice(clusters, size=(n_users, 3), p=weights)  # [U, 3]
    user_of = np.repeat(np.arange(n_users), lengths)  # [n]
    starts = np.zeros(n, dtype=bool)
    starts[np.cumsum(lengths)[:-1][lengths[1:] > 0]] = True
    if n:
        starts[0] = True
    redraw = starts | (rng.random(n) >= STAY)
    candidate = pref[user_of, rng.choice(3, size=n, p=PREF_WEIGHTS)]
    explore = rng.random(n) < EXPLORE
    candidate[explore] = rng.choice(clusters, size=int(explore.sum()), p=weights)
    last = np.where(redraw, np.arange(n), 0)
    np.maximum.accumulate(last, out=last)  # index of the latest redraw at or before each position
    return candidate[last]


def _days(
    rng: np.random.Generator, lengths: np.ndarray, first: int, last: int, same_day: float
) -> np.ndarray:
    """Non-decreasing day numbers in [first, last] per user (users concatenated).

    Gaps between a user's ratings are 0 (same day) with probability `same_day`, else
    geometric with mean MEAN_GAP_DAYS. Each history starts at a random day chosen so that it
    ends by `last` (later starts likelier, as the real catalog grows); only histories longer
    than the whole span are cut at `last`, which adds ties there.
    """
    n = int(lengths.sum())
    gaps = np.where(rng.random(n) < same_day, 0, rng.geometric(1.0 / MEAN_GAP_DAYS, size=n))
    gaps = gaps.astype(np.int64)
    has = lengths > 0
    first_pos = (np.cumsum(lengths) - lengths)[has]
    gaps[first_pos] = 0
    csum = np.cumsum(gaps)
    offset = csum - np.repeat(csum[first_pos], lengths[has])  # days since the user's start
    duration = np.zeros(len(lengths), dtype=np.int64)
    duration[has] = offset[first_pos + lengths[has] - 1]
    room = np.maximum(last - first - duration, 0)
    start = first + (room * np.sqrt(rng.random(len(lengths)))).astype(np.int64)
    return np.minimum(np.repeat(start[has], lengths[has]) + offset, last)


@dataclass(frozen=True)
class _Catalog:
    """Pre-training catalog: per-cluster item counts and the first item index of each cluster."""

    weights: np.ndarray  # [K] cluster popularity
    sizes: np.ndarray  # [K] items per cluster
    offsets: np.ndarray  # [K + 1] first global item index of each cluster, then the total

    @classmethod
    def build(cls, total: int, n_clusters: int, exponent: float = 0.5) -> _Catalog:
        weights = (np.arange(1, n_clusters + 1, dtype=np.float64)) ** -exponent
        weights /= weights.sum()
        sizes = np.maximum(50, np.round(total * weights)).astype(np.int64)
        return cls(weights, sizes, np.concatenate([[0], np.cumsum(sizes)]))

    def cluster_of(self, items: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, items, side="right") - 1


@contextmanager
def _atomic(path: Path, compress: bool, level: int = 6) -> Iterator[BinaryIO]:
    """Open `path` for writing under a temporary name; rename only when the block succeeds.

    gzip output (compression `level`) carries no file name and mtime 0, so equal content
    gives equal bytes.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as raw:
            if compress:
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=level
                ) as gz:
                    yield gz  # type: ignore[misc]
            else:
                yield raw
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _array_bytes(arr: pa.Array) -> memoryview:
    """The concatenated bytes of a (null-free) Arrow string array, without copying."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[
        arr.offset : arr.offset + len(arr) + 1
    ]
    return memoryview(arr.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def _take(values: Sequence[str], idx: np.ndarray) -> pa.Array:
    return pc.take(pa.array(list(values), type=pa.string()), pa.array(idx))


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _choose(mask: np.ndarray, yes: pa.Array | str, no: pa.Array | str) -> pa.Array:
    return pc.if_else(pa.array(mask), yes, no)


def _meta_2018_lines(
    items: np.ndarray,
    clusters: np.ndarray,
    roots: np.ndarray,
    vocab: _Vocab,
    key: int,
    neighbours: pa.Array,
) -> pa.Array:
    """2018 metadata JSON lines (with trailing newlines) for `items`: string [n].

    `clusters` and `roots` give each item's cluster and root index; `neighbours` holds two
    asins per item ([n, 2] flattened) used for `also_buy` / `also_view`. All text is built
    from JSON-safe words, so lines are assembled without a JSON encoder (fast, vectorised).
    """
    h = [_unit(_splitmix(items, key + s)) for s in range(12)]
    asin = _asins(items, key)
    n_topic, n_brand = 10, 6
    topic_flat = [w for ws in vocab.topics for w in ws]
    brand_flat = [b for bs in vocab.brands for b in bs]
    brand_idx = clusters * n_brand + (h[0] * n_brand).astype(np.int64)
    brand = _take(brand_flat, brand_idx)
    t1 = clusters * n_topic + (h[1] * n_topic).astype(np.int64)
    t2 = clusters * n_topic + (t1 % n_topic + 1 + (h[2] * (n_topic - 1)).astype(np.int64)) % n_topic
    nouns_flat = [f"{noun}" for r in ROOTS for noun in ROOT_NOUNS[r]]
    noun_base = np.cumsum([0] + [len(ROOT_NOUNS[r]) for r in ROOTS])
    noun_count = np.diff(noun_base)
    noun = _take(nouns_flat, noun_base[roots] + (h[3] * noun_count[roots]).astype(np.int64))
    adj = _take(ADJECTIVES, (h[4] * len(ADJECTIVES)).astype(np.int64))
    size = _take(SIZES, (h[5] * len(SIZES)).astype(np.int64))
    cap = pc.utf8_capitalize
    title = _join(
        _choose(h[6] < 0.4, _join(brand, " "), ""),
        _choose(h[7] < 0.7, _join(adj, " "), ""),
        cap(_take(topic_flat, t1)),
        _choose((h[8] > 0.01) & (h[8] < 0.03), " &amp; ", " "),
        cap(_take(topic_flat, t2)),
        " ",
        noun,
        _choose(h[9] < 0.5, _join(", ", size), ""),
    )
    title = _choose((h[10] >= 0.01) & (h[10] < 0.02), _join("<b>", title, "</b>"), title)
    title = _choose(h[10] < 0.005, SPAN_TITLE, title)
    title = _choose((h[10] >= 0.005) & (h[10] < 0.01), "", title)  # empty titles
    brand_out = _choose(h[11] < 0.03, "", brand)

    # Category lists depend only on (cluster, root, depth): build each once, then take.
    depth = np.where(h[9] % 0.1 < 0.01, 2, np.where(h[9] % 0.1 > 0.09, 4, 3))
    combos: list[str] = []
    for c in range(N_CLUSTERS):
        for r in ROOTS:
            full = [r, vocab.l2(c), vocab.l3(c), f"{vocab.topics[c][3].title()} Sets"]
            combos.extend(json.dumps(full[:d]) for d in (2, 3, 4))
    category = _take(combos, (clusters * len(ROOTS) + roots) * 3 + depth - 2)
    main_cat = _take([MAIN_CAT.get(r, r) for r in ROOTS], roots)
    description = _choose(
        h[0] < 0.6,
        _join('["', cap(adj), " ", pc.utf8_lower(noun), " from ", brand, '."]'),
        "[]",
    )
    return meta_2018_record(
        asin, h, category=category, description=description, title=title, brand=brand_out,
        main_cat=main_cat, neighbours=neighbours,
    )  # fmt: skip


def meta_2018_record(
    asin: pa.Array, h: list[np.ndarray], *, category: pa.Array, description: pa.Array,
    title: pa.Array, brand: pa.Array, main_cat: pa.Array, neighbours: pa.Array,
) -> pa.Array:  # fmt: skip
    """2018 metadata JSON lines of items whose text fields are given, in the real field order;
    the other fields (also_buy/also_view from `neighbours`, two per item; rank, details,
    price, images) drawn from the item's hash draws `h[1..9]`. Shared by both synthetic modes.
    """
    n = len(asin)
    pair = _join('["', pc.take(neighbours, pa.array(2 * np.arange(n))), '", "',
                 pc.take(neighbours, pa.array(2 * np.arange(n) + 1)), '"]')  # fmt: skip
    also_buy = _choose(h[1] < 0.3, pair, "[]")
    also_view = _choose(h[2] < 0.4, pair, "[]")
    rank_n = pc.cast(pa.array((h[3] * 2_000_000).astype(np.int64) + 1), pa.string())
    rank = _choose(h[4] < 0.5, _join('"', rank_n, " in ", main_cat, ' ("'), "[]")
    details = _choose(h[5] < 0.5, _join('{"ASIN: ": "', asin, '"}'), "{}")
    dollars = pc.cast(pa.array((h[6] * 80).astype(np.int64) + 1), pa.string())
    cents = _take([f"{c:02d}" for c in range(100)], (h[7] * 100).astype(np.int64))
    price = _choose(h[8] < 0.6, _join("$", dollars, ".", cents), "")
    has_img = h[9] < 0.3
    image = _choose(
        has_img, _join(f'["{IMAGE_PREFIX}', asin, '._SX38_SY50_CR,0,0,38,50_.jpg"]'), "[]"
    )
    image_hr = _choose(has_img, _join(f'["{IMAGE_PREFIX}', asin, '.jpg"]'), "[]")
    return _join(
        '{"category": ', category,
        ', "tech1": "", "description": ', description,
        ', "fit": "", "title": "', title,
        '", "also_buy": ', also_buy,
        ', "tech2": "", "brand": "', brand,
        '", "feature": [], "rank": ', rank,
        ', "also_view": ', also_view,
        ', "details": ', details,
        ', "main_cat": "', main_cat,
        '", "similar_item": "", "date": "", "price": "', price,
        '", "asin": "', asin,
        '", "imageURL": ', image,
        ', "imageURLHighRes": ', image_hr,
        "}\n",
    )  # fmt: skip


def _pretrain_chunk(
    rng: np.random.Generator, n_users: int, budget: int, catalog: _Catalog
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of users: (lengths [U], items [n], ratings [n], days [n]), at most `budget` rows."""
    lengths = np.clip(
        np.round(np.exp(rng.normal(ACTIVITY_LOG_MEAN, ACTIVITY_LOG_SD, n_users))), 1, MAX_ACTIVITY
    ).astype(np.int64)
    ends = np.cumsum(lengths)
    if ends[-1] > budget:  # last chunk: keep whole users until the budget, cut the last one
        keep = int(np.searchsorted(ends, budget)) + 1
        lengths = lengths[:keep].copy()
        lengths[-1] -= int(ends[keep - 1] - budget)
    n = int(lengths.sum())
    clusters = _cluster_walk(rng, lengths, np.arange(N_CLUSTERS), catalog.weights)
    sizes = catalog.sizes[clusters]
    ranks = np.where(
        rng.random(n) < HEAD_SHARE,
        _zipf_ranks(rng.random(n), sizes, HEAD_EXPONENT),
        _zipf_ranks(rng.random(n), sizes, ZIPF_EXPONENT),
    )
    items = catalog.offsets[clusters] + ranks
    ratings = rng.choice(RATING_VALUES, size=n, p=RATING_PROBS)
    days = _days(rng, lengths, FIRST_DAY_2018, LAST_DAY_2018, SAME_DAY)
    return lengths, items, ratings, days


def five_core(user_local: np.ndarray, item_local: np.ndarray, n_users: int, n_items: int):
    """Rows kept by the 5-core filter: the first of each (user, item) pair, then, repeatedly,
    only rows whose user and item both keep at least 5 (each pass can push others below 5)."""
    pair = user_local * (1 << 33) + item_local
    _, first = np.unique(pair, return_index=True)
    keep = np.zeros(len(item_local), dtype=bool)
    keep[first] = True
    while True:
        u_count = np.bincount(user_local[keep], minlength=n_users)
        i_count = np.bincount(item_local[keep], minlength=n_items)
        ok = keep & (u_count[user_local] >= 5) & (i_count[item_local] >= 5)
        if ok.sum() == keep.sum():
            return keep
        keep = ok


def _finetune(
    rng: np.random.Generator,
    domain: str,
    n_users: int,
    domain_clusters: np.ndarray,
    weights: np.ndarray,
    overlap_pool: np.ndarray,
) -> dict[str, np.ndarray]:
    """A fine-tune domain's 5-core interactions, in user-time order.

    Returns arrays (one entry per interaction) `user` (global user index), `item` (global item
    index), `day`, `rating`, plus `cluster_of_item` ([n_items] for the domain's item range).
    A share FINETUNE_OVERLAP of users are pre-training users taken from `overlap_pool`.
    """
    w = weights[domain_clusters] / weights[domain_clusters].sum()
    n_items = max(FINETUNE_CLUSTERS, int(n_users * FINETUNE_ITEMS_PER_USER))
    sizes = np.maximum(2, np.round(n_items * w)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    lengths = (5 + np.floor(np.exp(rng.normal(np.log(3.0), 1.0, n_users)))).astype(np.int64)
    lengths = np.minimum(lengths, 200)
    local = _cluster_walk(rng, lengths, np.arange(len(domain_clusters)), w)
    ranks = _zipf_ranks(rng.random(len(local)), sizes[local], FINETUNE_ZIPF_EXPONENT)
    item = FINETUNE_ITEM_BASE[domain] + offsets[local] + ranks
    user_local = np.repeat(np.arange(n_users), lengths)
    days = _days(rng, lengths, FIRST_DAY_2014, LAST_DAY_2014, SAME_DAY / 2)
    ratings = rng.choice(RATING_VALUES, size=len(item), p=RATING_PROBS)
    users = FINETUNE_USER_BASE[domain] + np.arange(n_users)
    # Capped so that a small pre-training pool does not lose most of its users.
    n_overlap = min(len(overlap_pool) // 10, int(round(n_users * FINETUNE_OVERLAP)))
    if n_overlap:
        users[rng.choice(n_users, n_overlap, replace=False)] = rng.choice(
            overlap_pool, n_overlap, replace=False
        )
    user = users[user_local]
    # One review per (user, item), the earliest; then the 5-core: drop users and items with
    # fewer than 5 reviews until none is left (each pass can push others below 5).
    keep = five_core(user_local, item - FINETUNE_ITEM_BASE[domain], n_users, int(offsets[-1]))
    cluster_of_item = domain_clusters[np.searchsorted(offsets, np.arange(offsets[-1]), "right") - 1]
    return {
        "user": user[keep],
        "item": item[keep],
        "day": days[keep],
        "rating": ratings[keep],
        "cluster_of_item": cluster_of_item,
    }


def _review_times(days: np.ndarray) -> list[str]:
    """`reviewTime` as the real files write it: month zero-padded, day not ("09 1, 2016")."""
    dates = days.astype("datetime64[D]")
    years = dates.astype("datetime64[Y]")
    months = dates.astype("datetime64[M]")
    year = (years.astype(np.int64) + 1970).tolist()
    month = (months - years).astype(np.int64) + 1
    day = (dates - months).astype(np.int64) + 1
    return [f"{m:02d} {d}, {y}" for m, d, y in zip(month.tolist(), day.tolist(), year, strict=True)]


# An item's text in the 2014 metadata: (j, local item, adjective, noun, hash draws) ->
# (brand, title, the word its description names, its category path).
ItemText = Callable[[int, int, str, str, list[np.ndarray]], tuple[str, str, str, list[str]]]


def write_finetune_domain(
    out_dir: Path,
    domain: str,
    data: dict[str, np.ndarray],
    rng: np.random.Generator,
    key: int,
    *,
    n_catalog: int,
    item_text: ItemText,
) -> tuple[dict[str, int], np.ndarray]:
    """Write the 2014 5-core review file and 2014 metadata of one domain (both modes: the
    mode gives the size of the domain's catalog and each item's text).

    Returns the counts and the item indices that also get a 2018 metadata line.
    """
    review_file, meta_file, root, _ = FINETUNE_DOMAINS[domain]
    base = FINETUNE_ITEM_BASE[domain]
    users = _reviewer_ids(data["user"], key).to_pylist()
    item_idx = data["item"]
    asins = _asins(item_idx, key).to_pylist()
    # The real 5-core files are grouped by asin; a stable sort keeps each item's reviews in
    # user-time order, so ties on the day keep the generation order within an item.
    order = np.argsort(_asin_codes(item_idx, key).view("S10").ravel(), kind="stable")
    n = len(order)
    words = rng.integers(len(REVIEW_WORDS), size=(n, 6)).tolist()
    names = rng.integers(len(FIRST_NAMES) * len(LAST_NAMES), size=n).tolist()
    votes = rng.integers(0, 4, size=(n, 2)).tolist()
    no_name = (rng.random(n) < 0.02).tolist()
    review_times = _review_times(data["day"])
    overall = data["rating"].astype(np.float64).tolist()
    unix = (data["day"] * 86_400).tolist()
    lines = []
    for j in order.tolist():
        w = [REVIEW_WORDS[k] for k in words[j]]
        row: dict[str, object] = {"reviewerID": users[j], "asin": asins[j]}
        if not no_name[j]:
            first, last = divmod(names[j], len(LAST_NAMES))
            row["reviewerName"] = f"{FIRST_NAMES[first]} {LAST_NAMES[last][0]}."
        up, extra = votes[j]
        row["helpful"] = [up, up + extra]
        row["reviewText"] = f"{w[0].title()} {w[1]}, {w[2]} {w[3]}. Would {w[4]} {w[5]}."
        row["overall"] = overall[j]
        row["summary"] = f"{w[0].title()} {w[2]}"
        row["unixReviewTime"] = unix[j]
        row["reviewTime"] = review_times[j]
        lines.append(json.dumps(row) + "\n")
    with _atomic(out_dir / review_file, compress=True) as f:
        f.write("".join(lines).encode())

    # 2014 metadata: most rated items, plus unrated items of the same catalog (the real
    # meta files cover a whole category, far beyond its 5-core items).
    rated = _unique(item_idx)
    extra = base + rng.choice(n_catalog, size=min(n_catalog, len(rated) // 3), replace=False)
    meta_items = _unique(np.concatenate([rated, extra]))
    h = _unit(_splitmix(meta_items, key + 101))
    items_2014 = meta_items[h < 0.85]
    meta_asins = _asins(items_2014, key).to_pylist()
    hh = [_unit(_splitmix(items_2014, key + 200 + s)) for s in range(8)]
    nouns = ROOT_NOUNS[root]
    rows = []
    for j, (asin, local) in enumerate(zip(meta_asins, (items_2014 - base).tolist(), strict=True)):
        adj = ADJECTIVES[int(hh[3][j] * len(ADJECTIVES))]
        noun = nouns[int(hh[4][j] * len(nouns))]
        brand, title, fan_word, categories = item_text(j, local, adj, noun, hh)
        row: dict[str, object] = {"asin": asin}
        if hh[5][j] < 0.5:
            row["description"] = f"A {noun.lower()} from {brand} for {fan_word} fans."
        if hh[5][j] < 0.95:
            row["title"] = title
        if hh[6][j] < 0.85:
            row["price"] = round(1.0 + float(hh[7][j]) * 60.0, 2)
        row["imUrl"] = f"http://ecx.images-amazon.com/images/I/{asin}L._SY300_.jpg"
        if hh[6][j] < 0.6:
            row["related"] = {"also_bought": [meta_asins[(j + 1) % len(meta_asins)]]}
        row["salesRank"] = {root: 1 + int(hh[7][j] * 500_000)}
        if hh[4][j] * 10 % 1 < 0.8:
            row["brand"] = brand
        row["categories"] = [categories]
        rows.append(str(row) + "\n")
    with _atomic(out_dir / meta_file, compress=True) as f:
        f.write("".join(rows).encode())

    in_2018 = ((h >= 0.10) & (h < 0.30)) | ((h >= 0.85) & (h < 0.95))
    return {
        f"{domain}_reviews": n,
        f"{domain}_users": len(_unique(data["user"])),
        f"{domain}_items": len(rated),
        f"{domain}_meta_2014": len(items_2014),
        f"{domain}_items_in_meta_2018": int(_member(rated, meta_items[in_2018]).sum()),
        f"{domain}_items_without_meta": int(_member(rated, meta_items[h >= 0.95]).sum()),
    }, meta_items[in_2018]


def _write_finetune(
    out_dir: Path,
    domain: str,
    data: dict[str, np.ndarray],
    vocab: _Vocab,
    rng: np.random.Generator,
    key: int,
) -> tuple[dict[str, int], np.ndarray]:
    """The default mode's domain files: titles from two of the item cluster's topics."""
    root = FINETUNE_DOMAINS[domain][2]
    clusters = data["cluster_of_item"]

    def item_text(j: int, local: int, adj: str, noun: str, hh: list[np.ndarray]):
        c = clusters[local]
        topics, brands = vocab.topics[c], vocab.brands[c]
        t1 = int(hh[0][j] * 10)
        t2 = (t1 + 1 + int(hh[1][j] * 9)) % 10
        title = f"{adj} {topics[t1].title()} {topics[t2].title()} {noun}"
        return brands[int(hh[2][j] * 6)], title, topics[t1], [root, vocab.l2(c), vocab.l3(c)]

    return write_finetune_domain(
        out_dir, domain, data, rng, key, n_catalog=len(clusters), item_text=item_text
    )


# One chunk of pre-training users: (chunk index, interactions still to write) ->
# (history lengths, items, ratings, days), each chunk from its own generator.
RatingsChunk = Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def write_ratings_csv(
    out_dir: Path, interactions: int, key: int, chunk_of: RatingsChunk, progress: bool
) -> tuple[int, np.ndarray, np.ndarray]:
    """Write the 2018 ratings CSV (`item,user,rating,timestamp`), chunk by chunk, users
    `USERS_PER_CHUNK` to a chunk, until `interactions` rows (both modes).

    Returns:
        rows written, every user's history length, the distinct rated items.
    """
    rated_parts: list[np.ndarray] = []
    user_lengths: list[np.ndarray] = []
    rating_text = pa.array(["0.0", "1.0", "2.0", "3.0", "4.0", "5.0"])
    written, chunk = 0, 0
    bar = tqdm(total=interactions, unit="row", disable=not progress, desc="ratings")
    with _atomic(out_dir / RATINGS_FILE, compress=False) as f:
        while written < interactions:
            lengths, items, ratings, days = chunk_of(chunk, interactions - written)
            user = _reviewer_ids(chunk * USERS_PER_CHUNK + np.arange(len(lengths)), key)
            lines = _join(
                _asins(items, key),
                ",",
                pc.take(user, pa.array(np.repeat(np.arange(len(lengths)), lengths))),
                ",",
                pc.take(rating_text, pa.array(ratings)),
                ",",
                pc.cast(pa.array(days * 86_400), pa.string()),
                "\n",
            )
            f.write(_array_bytes(lines))
            rated_parts.append(_unique(items))
            user_lengths.append(lengths)
            written += len(items)
            bar.update(len(items))
            chunk += 1
    bar.close()
    return written, np.concatenate(user_lengths), _unique(np.concatenate(rated_parts))


def generate(
    out_dir: Path,
    interactions: int,
    seed: int = 42,
    finetune_users: int = 3_000,
    progress: bool = False,
) -> dict[str, int]:
    """Write synthetic Amazon raw files (real names and formats) into `out_dir`.

    Args:
        out_dir: folder to write into (created if missing); existing files of the same names
            are replaced atomically.
        interactions: number of rows of the 2018 ratings CSV (pre-training interactions).
        seed: random seed; the same seed gives byte-identical files.
        finetune_users: users drawn for each fine-tune domain (Beauty, Sports); the 5-core
            filter keeps most of them from about 300 up (95% at 3,000), few below 100.
        progress: show a tqdm bar over the ratings chunks.

    Returns:
        counts: `ratings`, `users`, `items` (distinct rated), `meta_lines`, `meta_asins`,
        `rated_items_without_meta`, `duplicated_meta_asins`, `overlap_users`, and per domain
        `<Domain>_reviews`, `_users`, `_items`, `_meta_2014`, `_items_in_meta_2018`,
        `_items_without_meta`.

    Raises:
        ValueError: if `interactions` < 1 or `finetune_users` < 10.
    """
    if interactions < 1:
        raise ValueError(f"interactions must be >= 1, got {interactions}")
    if finetune_users < 10:
        raise ValueError(f"finetune_users must be >= 10, got {finetune_users}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = int(np.random.default_rng([seed, 7]).integers(1 << 62))
    vocab = _make_vocab(np.random.default_rng([seed, 1]))
    catalog = _Catalog.build(CATALOG_SIZE, N_CLUSTERS)

    # Ratings, chunk by chunk: each chunk has its own generator, so a chunk's content does not
    # depend on how many chunks follow.
    def chunk_of(chunk: int, budget: int):
        rng = np.random.default_rng([seed, 2, chunk])
        return _pretrain_chunk(rng, USERS_PER_CHUNK, budget, catalog)

    written, lengths_all, rated = write_ratings_csv(out_dir, interactions, key, chunk_of, progress)

    counts: dict[str, int] = {
        "ratings": written,
        "users": len(lengths_all),
        "items": len(rated),
    }

    # Fine-tune domains: same clusters as pre-training, disjoint item ids.
    rng = np.random.default_rng([seed, 3])
    perm = rng.permutation(N_CLUSTERS)
    k = FINETUNE_CLUSTERS
    finetune_clusters = {
        "Beauty": np.sort(perm[:k]),
        # Sports shares a quarter of its clusters with Beauty.
        "Sports_and_Outdoors": np.sort(perm[k * 3 // 4 : k * 7 // 4]),
    }
    overlap_pool = np.flatnonzero(lengths_all >= 5)  # users the ETL keeps, then must exclude
    finetune_meta: list[tuple[np.ndarray, np.ndarray, int]] = []
    overlap: list[np.ndarray] = []
    for d, domain in enumerate(FINETUNE_DOMAINS):
        drng = np.random.default_rng([seed, 4, d])
        data = _finetune(
            drng, domain, finetune_users, finetune_clusters[domain], catalog.weights, overlap_pool
        )
        users = _unique(data["user"])
        overlap.append(users[_member(users, overlap_pool)])
        stats, in_2018 = _write_finetune(out_dir, domain, data, vocab, drng, key)
        counts.update(stats)
        root = ROOTS.index(FINETUNE_DOMAINS[domain][2])
        local = in_2018 - FINETUNE_ITEM_BASE[domain]
        finetune_meta.append((in_2018, data["cluster_of_item"][local], root))
    counts["overlap_users"] = len(_unique(np.concatenate(overlap)))
    counts.update(_write_meta_2018(out_dir, rated, catalog, vocab, key, finetune_meta, seed))
    return counts


def _write_meta_2018(
    out_dir: Path,
    rated: np.ndarray,
    catalog: _Catalog,
    vocab: _Vocab,
    key: int,
    finetune: list[tuple[np.ndarray, np.ndarray, int]],
    seed: int,
) -> dict[str, int]:
    """Write All_Amazon_Meta.json.gz: rated items (minus 2%), some unrated ones, repeats.

    `finetune` holds (item indices, their clusters, root index) of fine-tune items that also
    have 2018 metadata.
    """
    rng = np.random.default_rng([seed, 5])
    unrated = rng.integers(CATALOG_SIZE, size=max(1, len(rated) // 30))
    items = _unique(np.concatenate([rated, unrated]))
    # About 2% of rated items have no metadata at all: the ETL must drop their ratings.
    items = items[_unit(_splitmix(items, key + 300)) >= 0.02]
    n_missing = int((~_member(rated, items)).sum())
    clusters = catalog.cluster_of(items)
    h = _unit(_splitmix(items, key + 301))
    roots = np.where(h < 0.7, vocab.home_root[clusters], (h * 1000).astype(np.int64) % len(ROOTS))
    items = np.concatenate([items, *(f[0] for f in finetune)])
    clusters = np.concatenate([clusters, *(f[1] for f in finetune)])
    roots = np.concatenate([roots, *(np.full(len(f[0]), f[2]) for f in finetune)])
    n = len(items)
    codes = _asin_codes(items, key)
    asin_bytes = codes.view("S10").ravel()
    order = np.argsort(asin_bytes, kind="stable")  # the real file is roughly asin-ordered
    # About 0.5% of asins appear twice: an identical line appended at the end.
    repeat = order[_unit(_splitmix(items[order], key + 302)) < 0.005]
    rows_all = np.concatenate([order, repeat])
    chunk = 262_144
    # Level 1: the big metadata file is otherwise dominated by compression time.
    with _atomic(out_dir / META_2018_FILE, compress=True, level=1) as f:
        for start in range(0, len(rows_all), chunk):
            rows = rows_all[start : start + chunk]
            # also_buy / also_view: the next two items by index, mostly of the same cluster.
            nb = np.stack([(rows + 1) % n, (rows + 2) % n], axis=1).reshape(-1)
            neighbours = _strings(codes[nb])
            lines = _meta_2018_lines(
                items[rows].astype(_U64), clusters[rows], roots[rows], vocab, key, neighbours
            )
            f.write(_array_bytes(lines))
    return {
        "meta_lines": len(rows_all),
        "meta_asins": n,
        "rated_items_without_meta": n_missing,
        "duplicated_meta_asins": len(repeat),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m etl.synthetic [--format F] --out RAW --interactions N --seed S`."""
    parser = argparse.ArgumentParser(
        prog="python -m etl.synthetic",
        description="Write synthetic raw files in the real formats: Amazon 2018 (ratings CSV "
        "and metadata, 2014 5-core reviews and metadata; the default), Amazon 2023 (reviews, "
        "metadata, official splits) or MovieLens (ml-1m .dat or a csv release).",
    )
    parser.add_argument(
        "--format",
        choices=("amazon2018", "amazon2023", "movielens-1m", "movielens-csv"),
        default="amazon2018",
        help="which release's files to write (default amazon2018)",
    )
    parser.add_argument(
        "--mode",
        choices=("default", "capacity"),
        default="default",
        help="amazon2018: default (48 latent clusters; the demo and tests) or capacity "
        "(thousands of fine clusters, order-two transitions, drift: structure that rewards "
        "model size, etl/synthetic_capacity.py)",
    )
    parser.add_argument(
        "--release",
        default="ml-20m",
        choices=("ml-20m", "ml-25m", "ml-32m"),
        help="movielens-csv: the release name of the zip (default ml-20m)",
    )
    parser.add_argument(
        "--categories",
        default="All_Beauty,Video_Games",
        help="amazon2023: categories (the first gets the official split files)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    parser.add_argument(
        "--interactions",
        type=int,
        required=True,
        help="rows of the 2018 ratings CSV, reviews (2023) or ratings (MovieLens)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--finetune-users",
        type=int,
        default=None,
        help="users per fine-tune domain before the 5-core filter (default 3000; "
        "capacity mode 23500, about the real Beauty 5-core's size)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="capacity mode: set one of etl.synthetic_capacity.CapacityParams (repeatable), "
        "e.g. --param finetune_jump=0.3 to rebuild data made before a recalibration",
    )
    args = parser.parse_args(argv)
    if args.param and args.mode != "capacity":
        parser.error("--param sets the capacity mode's knobs: add --mode capacity")
    if args.mode != "default" and args.format != "amazon2018":
        parser.error(f"--mode {args.mode} writes the amazon2018 format only, not {args.format}")
    from etl import synthetic_formats  # here: it builds on this module

    try:
        if args.format == "amazon2023":
            categories = tuple(c for c in args.categories.split(",") if c)
            counts = synthetic_formats.generate_amazon2023(
                args.out, args.interactions, args.seed, categories
            )
        elif args.format.startswith("movielens"):
            release = "ml-1m" if args.format == "movielens-1m" else args.release
            counts = synthetic_formats.generate_movielens(
                args.out, args.interactions, args.seed, release
            )
        elif args.mode == "capacity":
            from etl.synthetic_capacity import CapacityParams, generate_capacity

            params = CapacityParams().with_overrides(args.param)
            users = 23_500 if args.finetune_users is None else args.finetune_users
            counts = generate_capacity(
                args.out, args.interactions, args.seed, users, params, progress=True
            )
        else:
            users = 3_000 if args.finetune_users is None else args.finetune_users
            counts = generate(args.out, args.interactions, args.seed, users, progress=True)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
