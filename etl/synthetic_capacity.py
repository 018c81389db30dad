"""Synthetic Amazon raw files whose structure grows past what small models hold.

`etl.synthetic` (the default mode) draws items from 48 latent clusters with a sticky Markov
chain over them: a 16-wide model already captures that, so model size barely matters on it.
This module writes the same files, in the same real formats and under the same names
(2018 ratings CSV and metadata, 2014 5-core reviews and metadata of Beauty and Sports), from
a generator with a graded hierarchy of structure, each level harder to hold than the last:

1. Coarse clusters (32) with their own words, brands and category paths, and a popularity
   law over them: what the user browses, learnable by any model.
2. Fine clusters (64 per coarse one, 2,048 in all), each named by its own word in every item
   title and level-3 category. Every fine cluster has 4 successors (3 in 4 in the same coarse
   cluster): after an item, the next one is drawn from a successor of its fine cluster. A
   random sparse map of 2,048 states onto 4 of 2,048 is high-rank: a model of width d scores
   items through d-dimensional dot products, so it holds that map better the wider it is.
3. Order two: which of the 4 successors is likely (weights 0.55 / 0.25 / 0.13 / 0.07) is
   rotated by a per-cluster offset of the fine cluster BEFORE the last one, so the last two
   items together predict far better than the last one alone.
4. Slow per-user drift: with probability `jump` the next item instead comes from one of
   the user's 3 preferred coarse clusters (weights 0.6 / 0.25 / 0.15), a popular fine cluster
   there; each step a preferred cluster is replaced with probability `drift`, so the long
   history tells where a jump goes.
5. A popularity tail: fine clusters are Zipf-popular inside their coarse cluster, items are
   Zipf-popular inside their fine cluster, and fine clusters differ in size (log-normal).

The fine-tuning domains (Beauty, Sports) are drawn by the same process from a subset of
coarse clusters (8 each, 2 shared), over their own items (disjoint ids); successors outside
the domain become jumps. So a text model pre-trained on the ratings carries the fine
structure over to them, and their size and difficulty are set so that the frozen Beauty
SASRec config lands near its real-Beauty figures (BENCHMARKS.md, calibration: the
`finetune_*` knobs; the values before that recalibration, 35 / 0.3 / 0.6, rebuild the data
of the CPU study, `--param` on the command line).

Everything is drawn from `seed` (the world: clusters, words, successors, from fixed
sub-seeds, so the same seed gives the same world whatever `interactions` is; users in chunks
with their own generators): the same seed gives byte-identical files. Helpers for the file
formats (asins, reviewer ids, atomic gzip writes, day sequences) are `etl.synthetic`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import synthetic as base
from etl.synthetic import (
    ADJECTIVES,
    FINETUNE_DOMAINS,
    FINETUNE_ITEM_BASE,
    FINETUNE_USER_BASE,
    FIRST_DAY_2014,
    FIRST_DAY_2018,
    LAST_DAY_2014,
    LAST_DAY_2018,
    MAIN_CAT,
    META_2018_FILE,
    RATING_PROBS,
    RATING_VALUES,
    ROOT_NOUNS,
    ROOTS,
    SAME_DAY,
    SIZES,
    _array_bytes,
    _asin_codes,
    _asins,
    _atomic,
    _choose,
    _days,
    _join,
    _member,
    _splitmix,
    _strings,
    _take,
    _unique,
    _unit,
    _zipf_ranks,
)

_U64 = np.uint64
USERS_PER_CHUNK = 65_536
PREF_WEIGHTS = np.array([0.6, 0.25, 0.15])  # the user's 3 preferred coarse clusters
_BRAND_SUFFIXES = ("", " Labs", " Co.", " & Sons", " Naturals", " Gear", "ia", "ex")


@dataclass(frozen=True)
class CapacityParams:
    """The generator's knobs (defaults: the calibrated values of BENCHMARKS.md).

    Attributes:
        n_coarse, fine_per_coarse: the two levels of clusters.
        items_per_fine: mean pre-training items per fine cluster (log-normal sizes, >= 3).
        successor_weights: probabilities of a fine cluster's successors, before rotation.
        local_successors: share of successors inside the same coarse cluster.
        jump: probability that the next item comes from the user's preferred coarse
            clusters instead of a successor (pre-training).
        drift: per-step probability that one of the user's preferred clusters changes.
        fine_zipf, item_zipf, coarse_zipf: popularity exponents (fine clusters in a coarse
            one, items in a fine one, coarse clusters); none may be exactly 1.
        activity_log_mean, activity_log_sd, max_activity: log-normal history lengths.
        finetune_coarse: coarse clusters of each fine-tuning domain.
        finetune_items_per_fine: mean items per fine cluster of a fine-tuning domain drawn
            with `finetune_reference_users` users; the catalog scales with the users drawn,
            so a small domain still has a 5-core.
        finetune_jump: `jump` in the fine-tuning domains.
        finetune_item_zipf: `item_zipf` in the fine-tuning domains.
        finetune_length_log_mean, finetune_length_log_sd: fine-tuning history lengths
            (5 + a log-normal draw, before the 5-core filter).
    """

    n_coarse: int = 32
    fine_per_coarse: int = 64
    items_per_fine: float = 12.0
    successor_weights: tuple[float, ...] = (0.55, 0.25, 0.13, 0.07)
    local_successors: float = 0.75
    jump: float = 0.15
    drift: float = 0.02
    fine_zipf: float = 0.7
    item_zipf: float = 0.9
    coarse_zipf: float = 0.5
    activity_log_mean: float = 3.4
    activity_log_sd: float = 0.8
    max_activity: int = 1_000
    finetune_coarse: int = 8
    finetune_items_per_fine: float = 40.0
    finetune_reference_users: int = 23_500
    finetune_jump: float = 0.15
    finetune_item_zipf: float = 0.8
    finetune_length_log_mean: float = 1.1
    finetune_length_log_sd: float = 1.0

    @property
    def n_fine(self) -> int:
        return self.n_coarse * self.fine_per_coarse

    @property
    def n_successors(self) -> int:
        return len(self.successor_weights)

    def with_overrides(self, items: list[str]) -> CapacityParams:
        """A copy with `NAME=VALUE` items applied (the command line's `--param`), each
        value read as its field's type; a tuple field takes comma-separated numbers.

        Raises:
            ValueError: an item without `=`, an unknown name, or a value of the wrong type.
        """
        names = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        changes: dict[str, object] = {}
        for item in items:
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or name not in names:
                raise ValueError(
                    f"--param {item!r}: expected NAME=VALUE with NAME one of {', '.join(names)}"
                )
            kind = names[name]
            try:
                if kind is tuple:
                    changes[name] = tuple(float(v) for v in text.split(","))
                else:
                    changes[name] = kind(text)
            except ValueError:
                raise ValueError(f"--param {item!r}: {text!r} is not a {kind.__name__}") from None
        return replace(self, **changes)


@dataclass(frozen=True)
class World:
    """The fixed structure every user walks through (drawn once from the seed).

    Arrays are indexed by fine cluster f = coarse * fine_per_coarse + j unless noted.
    """

    params: CapacityParams
    successors: np.ndarray  # int64 [F, S]
    rotation: np.ndarray  # int64 [F], in [0, S)
    fine_cdf: np.ndarray  # float [C, P]: cumulative popularity of a coarse cluster's fine ones
    coarse_weights: np.ndarray  # float [C]
    sizes: np.ndarray  # int64 [F], pre-training items per fine cluster
    offsets: np.ndarray  # int64 [F + 1], first pre-training item index of each fine cluster
    fine_words: tuple[str, ...]  # [F]
    coarse_words: tuple[tuple[str, str], ...]  # [C]
    brands: tuple[tuple[str, ...], ...]  # [C][6]
    home_root: np.ndarray  # int64 [C], index into ROOTS

    def coarse_of(self, fine: np.ndarray) -> np.ndarray:
        return fine // self.params.fine_per_coarse

    def fine_of_item(self, items: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, items, side="right") - 1


def _pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct pronounceable pseudo-words of 3 or 4 syllables."""
    consonants = np.array(list("bdfgklmnprstvz"))
    vowels = np.array(list("aeiou"))
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        k = int(rng.integers(3, 5))
        w = "".join(
            str(c) + str(v)
            for c, v in zip(rng.choice(consonants, k), rng.choice(vowels, k), strict=True)
        )
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def build_world(seed: int, params: CapacityParams) -> World:
    """Draw the clusters, successors, popularity laws and words of `seed`."""
    p = params
    C, P, F, S = p.n_coarse, p.fine_per_coarse, p.n_fine, p.n_successors
    rng = np.random.default_rng([seed, 11])
    fine = np.arange(F)
    coarse = fine // P
    # Successors: a random fine cluster of the same coarse one (not itself) or of another.
    local = rng.random((F, S)) < p.local_successors
    same = coarse[:, None] * P + (fine[:, None] % P + rng.integers(1, P, (F, S))) % P
    other_coarse = (coarse[:, None] + rng.integers(1, C, (F, S))) % C
    other = other_coarse * P + rng.integers(0, P, (F, S))
    successors = np.where(local, same, other).astype(np.int64)
    rotation = rng.integers(0, S, F).astype(np.int64)
    # Popularity of fine clusters inside a coarse one: Zipf over a random order.
    ranks = np.argsort(rng.random((C, P)), axis=1)
    w = (ranks + 1.0) ** -p.fine_zipf
    w /= w.sum(axis=1, keepdims=True)
    fine_cdf = np.cumsum(w, axis=1)
    cw = (rng.permutation(C) + 1.0) ** -p.coarse_zipf
    coarse_weights = cw / cw.sum()
    sizes = np.maximum(3, np.round(p.items_per_fine * np.exp(rng.normal(-0.125, 0.5, F))))
    sizes = sizes.astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    words = _pseudo_words(np.random.default_rng([seed, 12]), F + 2 * C + 6 * C)
    fine_words = tuple(words[:F])
    coarse_words = tuple((words[F + 2 * c], words[F + 2 * c + 1]) for c in range(C))
    brand_words = words[F + 2 * C :]
    brands = tuple(
        tuple(
            brand_words[6 * c + b].title() + _BRAND_SUFFIXES[(c + 3 * b) % len(_BRAND_SUFFIXES)]
            for b in range(6)
        )
        for c in range(C)
    )
    home_root = rng.integers(len(ROOTS), size=C).astype(np.int64)
    return World(
        p, successors, rotation, fine_cdf, coarse_weights, sizes, offsets,
        fine_words, coarse_words, brands, home_root,
    )  # fmt: skip


def walk(
    rng: np.random.Generator,
    world: World,
    lengths: np.ndarray,
    allowed: np.ndarray | None = None,
    jump: float | None = None,
) -> np.ndarray:
    """The fine cluster of every interaction, users concatenated: int64 [sum(lengths)].

    Each user starts with 3 preferred coarse clusters (drawn by popularity from `allowed`,
    default all) and a jump; then at each step follows a successor of the last fine cluster
    (its weights rotated by the fine cluster before it) or, with probability `jump` or when
    the successor lies outside `allowed`, jumps to a popular fine cluster of a preferred
    coarse one. A preferred cluster is replaced with probability `drift` per step.
    """
    p = world.params
    jump = p.jump if jump is None else jump
    C, P, S = p.n_coarse, p.fine_per_coarse, p.n_successors
    allowed = np.arange(C) if allowed is None else np.asarray(allowed)
    aw = world.coarse_weights[allowed] / world.coarse_weights[allowed].sum()
    is_allowed = np.zeros(C, dtype=bool)
    is_allowed[allowed] = True
    n_users = len(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    taste = allowed[rng.choice(len(allowed), size=(n_users, 3), p=aw)]  # [U, 3]
    prev1 = np.full(n_users, -1, dtype=np.int64)
    prev2 = np.full(n_users, -1, dtype=np.int64)
    sw = np.asarray(p.successor_weights, dtype=np.float64)
    for t in range(int(lengths.max(initial=0))):
        act = np.flatnonzero(lengths > t)
        n = len(act)
        # Drift: one preferred cluster of some users changes.
        drifting = act[rng.random(n) < p.drift]
        if len(drifting):
            slot = rng.integers(0, 3, len(drifting))
            taste[drifting, slot] = allowed[rng.choice(len(allowed), len(drifting), p=aw)]
        # Successor of the last fine cluster, its weights rotated by the one before.
        k = rng.choice(S, size=n, p=sw)
        p1, p2 = prev1[act], prev2[act]
        rot = np.where(p2 >= 0, world.rotation[np.maximum(p2, 0)], 0)
        nxt = world.successors[np.maximum(p1, 0), (k + rot) % S]
        # Jump: a popular fine cluster of a preferred coarse cluster.
        c = taste[act, rng.choice(3, size=n, p=PREF_WEIGHTS)]
        j = (world.fine_cdf[c] < rng.random(n)[:, None]).sum(axis=1)
        jumped = c * P + np.minimum(j, P - 1)
        do_jump = (p1 < 0) | (rng.random(n) < jump) | ~is_allowed[nxt // P]
        f = np.where(do_jump, jumped, nxt)
        out[starts[act] + t] = f
        prev2[act] = p1
        prev1[act] = f
    return out


def _lengths(rng: np.random.Generator, n: int, p: CapacityParams) -> np.ndarray:
    raw = np.round(np.exp(rng.normal(p.activity_log_mean, p.activity_log_sd, n)))
    return np.clip(raw, 1, p.max_activity).astype(np.int64)


def _pretrain_chunk(
    rng: np.random.Generator, world: World, n_users: int, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of users: (lengths [U], items [n], ratings [n], days [n]), at most `budget` rows."""
    lengths = _lengths(rng, n_users, world.params)
    ends = np.cumsum(lengths)
    if ends[-1] > budget:  # last chunk: whole users until the budget, the last one cut
        keep = int(np.searchsorted(ends, budget)) + 1
        lengths = lengths[:keep].copy()
        lengths[-1] -= int(ends[keep - 1] - budget)
    fine = walk(rng, world, lengths)
    ranks = _zipf_ranks(rng.random(len(fine)), world.sizes[fine], world.params.item_zipf)
    items = world.offsets[fine] + ranks
    ratings = rng.choice(RATING_VALUES, size=len(items), p=RATING_PROBS)
    days = _days(rng, lengths, FIRST_DAY_2018, LAST_DAY_2018, SAME_DAY)
    return lengths, items, ratings, days


def _title_parts(world: World, fine: np.ndarray, h: list[np.ndarray]) -> dict[str, pa.Array]:
    """Per item: brand, adjective, fine word, coarse word, noun, size (Arrow strings)."""
    coarse = world.coarse_of(fine)
    brand_flat = [b for bs in world.brands for b in bs]
    brand = _take(brand_flat, coarse * 6 + (h[0] * 6).astype(np.int64))
    cw_flat = [w.title() for ws in world.coarse_words for w in ws]
    coarse_word = _take(cw_flat, coarse * 2 + (h[1] < 0.5).astype(np.int64))
    fine_word = _take([w.title() for w in world.fine_words], fine)
    return {"brand": brand, "coarse_word": coarse_word, "fine_word": fine_word}


def _meta_2018_lines(
    world: World, items: np.ndarray, fine: np.ndarray, roots: np.ndarray, key: int,
    neighbours: pa.Array,
) -> pa.Array:  # fmt: skip
    """2018 metadata JSON lines (trailing newlines) of `items`, the real field order.

    Titles always carry the fine cluster's word and one of its coarse cluster's two words,
    so the text names the fine cluster; faults as the default mode's (a few empty or tagged
    titles, missing brands).
    """
    h = [_unit(_splitmix(items, key + 500 + s)) for s in range(12)]
    asin = _asins(items, key)
    parts = _title_parts(world, fine, h)
    nouns_flat = list(_nouns_flat())
    noun_base = np.cumsum([0] + [len(ROOT_NOUNS[r]) for r in ROOTS])
    noun_count = np.diff(noun_base)
    noun = _take(nouns_flat, noun_base[roots] + (h[3] * noun_count[roots]).astype(np.int64))
    adj = _take(ADJECTIVES, (h[4] * len(ADJECTIVES)).astype(np.int64))
    size = _take(SIZES, (h[5] * len(SIZES)).astype(np.int64))
    title = _join(
        _choose(h[6] < 0.4, _join(parts["brand"], " "), ""),
        _choose(h[7] < 0.7, _join(adj, " "), ""),
        parts["fine_word"], " ", parts["coarse_word"], " ", noun,
        _choose(h[9] < 0.5, _join(", ", size), ""),
    )  # fmt: skip
    title = _choose((h[10] >= 0.01) & (h[10] < 0.02), _join("<b>", title, "</b>"), title)
    title = _choose(h[10] < 0.005, "", title)
    brand_out = _choose(h[11] < 0.03, "", parts["brand"])
    coarse = world.coarse_of(fine)
    root_name = _take(list(ROOTS), roots)
    l2 = _take([f"{a.title()} & {b.title()}" for a, b in world.coarse_words], coarse)
    l3 = _join(parts["fine_word"], " Collection")
    category = _join('["', root_name, '", "', l2, '", "', l3, '"]')
    main_cat = _take([MAIN_CAT.get(r, r) for r in ROOTS], roots)
    description = _choose(
        h[0] < 0.6,
        _join('["', adj, " ", pc.utf8_lower(noun), " from ", parts["brand"], '."]'),
        "[]",
    )
    return base.meta_2018_record(
        asin, h, category=category, description=description, title=title, brand=brand_out,
        main_cat=main_cat, neighbours=neighbours,
    )  # fmt: skip


def _nouns_flat() -> tuple[str, ...]:
    return tuple(noun for r in ROOTS for noun in ROOT_NOUNS[r])


def _write_meta_2018(
    out_dir: Path,
    world: World,
    rated: np.ndarray,
    key: int,
    finetune: list[tuple[np.ndarray, np.ndarray, int]],
    seed: int,
) -> dict[str, int]:
    """All_Amazon_Meta.json.gz: rated items (minus 2%), some unrated ones, repeated lines.

    `finetune` holds (item indices, their fine clusters, root index) of fine-tuning items
    that also have a 2018 line.
    """
    rng = np.random.default_rng([seed, 15])
    total = int(world.offsets[-1])
    unrated = rng.integers(total, size=max(1, len(rated) // 30))
    items = _unique(np.concatenate([rated, unrated]))
    items = items[_unit(_splitmix(items, key + 300)) >= 0.02]  # 2% of rated items: no metadata
    n_missing = int((~_member(rated, items)).sum())
    fine = world.fine_of_item(items)
    h = _unit(_splitmix(items, key + 301))
    home = world.home_root[world.coarse_of(fine)]
    roots = np.where(h < 0.7, home, (h * 1000).astype(np.int64) % len(ROOTS))
    items = np.concatenate([items, *(f[0] for f in finetune)])
    fine = np.concatenate([fine, *(f[1] for f in finetune)])
    roots = np.concatenate([roots, *(np.full(len(f[0]), f[2]) for f in finetune)])
    n = len(items)
    codes = _asin_codes(items, key)
    order = np.argsort(codes.view("S10").ravel(), kind="stable")
    repeat = order[_unit(_splitmix(items[order], key + 302)) < 0.005]
    rows_all = np.concatenate([order, repeat])
    chunk = 262_144
    with _atomic(out_dir / META_2018_FILE, compress=True, level=1) as f:
        for start in range(0, len(rows_all), chunk):
            rows = rows_all[start : start + chunk]
            nb = np.stack([(rows + 1) % n, (rows + 2) % n], axis=1).reshape(-1)
            lines = _meta_2018_lines(
                world, items[rows].astype(_U64), fine[rows], roots[rows], key, _strings(codes[nb])
            )
            f.write(_array_bytes(lines))
    return {
        "meta_lines": len(rows_all),
        "meta_asins": n,
        "rated_items_without_meta": n_missing,
        "duplicated_meta_asins": len(repeat),
    }


def _finetune(
    rng: np.random.Generator,
    world: World,
    domain: str,
    n_users: int,
    coarse: np.ndarray,
    overlap_pool: np.ndarray,
) -> dict[str, np.ndarray]:
    """A fine-tuning domain's 5-core interactions in user-time order (see `etl.synthetic`).

    Returns `user`, `item`, `day`, `rating` (one entry per interaction) and `fine_of_item`
    ([n_items] of the domain's item range).
    """
    p = world.params
    P = p.fine_per_coarse
    domain_fine = (coarse[:, None] * P + np.arange(P)[None, :]).ravel()  # [Fd]
    mean_size = p.finetune_items_per_fine * n_users / p.finetune_reference_users
    sizes = np.maximum(
        3, np.round(mean_size * np.exp(rng.normal(-0.125, 0.5, len(domain_fine))))
    ).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    local_of_fine = np.full(p.n_fine, -1, dtype=np.int64)
    local_of_fine[domain_fine] = np.arange(len(domain_fine))
    lengths = 5 + np.floor(
        np.exp(rng.normal(p.finetune_length_log_mean, p.finetune_length_log_sd, n_users))
    )
    lengths = np.minimum(lengths, 200).astype(np.int64)
    fine = walk(rng, world, lengths, allowed=coarse, jump=p.finetune_jump)
    local = local_of_fine[fine]
    ranks = _zipf_ranks(rng.random(len(local)), sizes[local], p.finetune_item_zipf)
    item = FINETUNE_ITEM_BASE[domain] + offsets[local] + ranks
    user_local = np.repeat(np.arange(n_users), lengths)
    days = _days(rng, lengths, FIRST_DAY_2014, LAST_DAY_2014, SAME_DAY / 2)
    ratings = rng.choice(RATING_VALUES, size=len(item), p=RATING_PROBS)
    users = FINETUNE_USER_BASE[domain] + np.arange(n_users)
    n_overlap = min(len(overlap_pool) // 10, int(round(n_users * base.FINETUNE_OVERLAP)))
    if n_overlap:
        users[rng.choice(n_users, n_overlap, replace=False)] = rng.choice(
            overlap_pool, n_overlap, replace=False
        )
    user = users[user_local]
    # One review per (user, item), the earliest; then the 5-core filter to a fixed point.
    keep = base.five_core(user_local, item - FINETUNE_ITEM_BASE[domain], n_users, int(offsets[-1]))
    fine_of_item = domain_fine[np.searchsorted(offsets, np.arange(offsets[-1]), "right") - 1]
    return {
        "user": user[keep],
        "item": item[keep],
        "day": days[keep],
        "rating": ratings[keep],
        "fine_of_item": fine_of_item,
    }


def _write_finetune(
    out_dir: Path,
    world: World,
    domain: str,
    data: dict[str, np.ndarray],
    rng: np.random.Generator,
    key: int,
) -> tuple[dict[str, int], np.ndarray]:
    """The domain's 2014 files (`etl.synthetic.write_finetune_domain`): each title and
    category path names the item's fine cluster and one of its coarse cluster's words."""
    root = FINETUNE_DOMAINS[domain][2]
    fine_of = data["fine_of_item"]

    def item_text(j: int, local: int, adj: str, noun: str, hh: list[np.ndarray]):
        f = int(fine_of[local])
        c = f // world.params.fine_per_coarse
        fine_word = world.fine_words[f].title()
        coarse_word = world.coarse_words[c][int(hh[0][j] < 0.5)].title()
        a, b = world.coarse_words[c]
        category = [root, f"{a.title()} & {b.title()}", f"{fine_word} Collection"]
        title = f"{adj} {fine_word} {coarse_word} {noun}"
        return world.brands[c][int(hh[2][j] * 6)], title, fine_word, category

    return base.write_finetune_domain(
        out_dir, domain, data, rng, key, n_catalog=len(fine_of), item_text=item_text
    )


def generate_capacity(
    out_dir: Path,
    interactions: int,
    seed: int = 42,
    finetune_users: int = 23_500,
    params: CapacityParams | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Write the capacity mode's synthetic Amazon raw files into `out_dir`.

    Args:
        out_dir: folder to write into (created if missing); files are replaced atomically.
        interactions: rows of the 2018 ratings CSV (pre-training interactions).
        seed: random seed; the same seed gives byte-identical files.
        finetune_users: users drawn for each fine-tuning domain before the 5-core filter
            (the default gives about the real Beauty 5-core's 22K users and 12K items).
        params: the generator's knobs (default: the calibrated `CapacityParams()`).
        progress: a tqdm bar over the ratings chunks.

    Returns:
        counts as `etl.synthetic.generate` returns them, plus `fine_clusters`,
        `catalog_items` (pre-training catalog size).

    Raises:
        ValueError: `interactions` < 1 or `finetune_users` < 10.
    """
    if interactions < 1:
        raise ValueError(f"interactions must be >= 1, got {interactions}")
    if finetune_users < 10:
        raise ValueError(f"finetune_users must be >= 10, got {finetune_users}")
    params = params or CapacityParams()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = int(np.random.default_rng([seed, 7]).integers(1 << 62))
    world = build_world(seed, params)

    def chunk_of(chunk: int, budget: int):
        rng = np.random.default_rng([seed, 13, chunk])
        return _pretrain_chunk(rng, world, USERS_PER_CHUNK, budget)

    written, lengths_all, rated = base.write_ratings_csv(
        out_dir, interactions, key, chunk_of, progress
    )
    counts: dict[str, int] = {
        "ratings": written,
        "users": len(lengths_all),
        "items": len(rated),
        "fine_clusters": params.n_fine,
        "catalog_items": int(world.offsets[-1]),
    }

    rng = np.random.default_rng([seed, 14])
    perm = rng.permutation(params.n_coarse)
    k = params.finetune_coarse
    domain_coarse = {
        "Beauty": np.sort(perm[:k]),
        "Sports_and_Outdoors": np.sort(perm[k * 3 // 4 : k * 7 // 4]),
    }
    overlap_pool = np.flatnonzero(lengths_all >= 5)
    finetune_meta: list[tuple[np.ndarray, np.ndarray, int]] = []
    overlap: list[np.ndarray] = []
    for d, domain in enumerate(FINETUNE_DOMAINS):
        drng = np.random.default_rng([seed, 16, d])
        data = _finetune(drng, world, domain, finetune_users, domain_coarse[domain], overlap_pool)
        users = _unique(data["user"])
        overlap.append(users[_member(users, overlap_pool)])
        stats, in_2018 = _write_finetune(out_dir, world, domain, data, drng, key)
        counts.update(stats)
        root = ROOTS.index(FINETUNE_DOMAINS[domain][2])
        local = in_2018 - FINETUNE_ITEM_BASE[domain]
        finetune_meta.append((in_2018, data["fine_of_item"][local], root))
    counts["overlap_users"] = len(_unique(np.concatenate(overlap)))
    counts.update(_write_meta_2018(out_dir, world, rated, key, finetune_meta, seed))
    return counts
