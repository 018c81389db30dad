"""The synthetic generator: real formats field for field, determinism, and the statistics
(long tail, user activity, catalog growth, 5-core, sequential signal) it promises."""

from __future__ import annotations

import ast
import csv
import datetime as dt
import gzip
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from etl import synthetic
from etl.synthetic import (
    META_2018_FIELDS,
    META_2018_FILE,
    RATINGS_FILE,
    REVIEW_2014_FIELDS,
    ROOTS,
    generate,
)

N = 20_000
FT_USERS = 600
ALL_FILES = sorted(
    [RATINGS_FILE, META_2018_FILE]
    + [name for files in synthetic.FINETUNE_DOMAINS.values() for name in files[:2]]
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("raw")
    return out, generate(out, N, seed=5, finetune_users=FT_USERS)


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _ratings(raw_dir: Path) -> list[list[str]]:
    with open(raw_dir / RATINGS_FILE, newline="") as f:
        return list(csv.reader(f))


def _meta_2018(raw_dir: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(raw_dir / META_2018_FILE)]


def test_writes_exactly_the_real_file_names_and_no_temporaries(raw):
    raw_dir, _ = raw
    assert sorted(p.name for p in raw_dir.iterdir()) == ALL_FILES


def test_ratings_csv_format(raw):
    raw_dir, counts = raw
    rows = _ratings(raw_dir)
    assert len(rows) == N == counts["ratings"]
    assert all(len(r) == 4 for r in rows)
    assert all(re.fullmatch(r"[0-9A-Z]{10}", r[0]) for r in rows)
    assert all(re.fullmatch(r"A[0-9A-Z]{12,13}", r[1]) for r in rows)
    assert {r[2] for r in rows} == {"1.0", "2.0", "3.0", "4.0", "5.0"}
    ts = np.array([int(r[3]) for r in rows])
    assert (ts % 86_400 == 0).all()  # day resolution, like the real files
    assert ts.min() >= 946_684_800 and ts.max() <= 1_538_352_000  # 2000-01-01 .. 2018-10-01
    assert len({r[1] for r in rows}) == counts["users"]
    assert len({r[0] for r in rows}) == counts["items"]
    # Some asins are digits with a leading zero: a reader that infers integers loses them.
    assert any(r[0].startswith("0") and r[0].isdigit() for r in rows)
    # Both reviewerID lengths of the real data occur.
    assert {len(r[1]) for r in rows} == {13, 14}


def test_meta_2018_format_and_faults(raw):
    raw_dir, counts = raw
    meta = _meta_2018(raw_dir)
    assert len(meta) == counts["meta_lines"]
    assert all(tuple(m) == META_2018_FIELDS for m in meta)
    assert all(isinstance(m["category"], list) and m["category"][0] in ROOTS for m in meta)
    assert all(isinstance(m[k], list) for m in meta for k in ("description", "feature"))
    assert all(isinstance(m["details"], dict) for m in meta)
    assert all(m["price"] == "" or re.fullmatch(r"\$\d+\.\d\d", m["price"]) for m in meta)
    titles = [m["title"] for m in meta]
    assert any("&amp;" in t for t in titles)
    assert any(t.startswith('<span class="a-size-medium') for t in titles)
    assert any(t.startswith("<b>") for t in titles)
    assert "" in titles
    asins = Counter(m["asin"] for m in meta)
    assert len(asins) == counts["meta_asins"]
    assert sum(c - 1 for c in asins.values()) == counts["duplicated_meta_asins"] > 0
    rated = {r[0] for r in _ratings(raw_dir)}
    assert len(rated - set(asins)) == counts["rated_items_without_meta"] > 0
    assert set(asins) - rated  # unrated items have metadata too


def test_meta_2018_fields_match_the_real_file(shared_data):
    real = _lines(shared_data / "amazon2018" / "meta_Magazine_Subscriptions.json.gz")
    assert tuple(json.loads(real[0])) == META_2018_FIELDS


def test_review_2014_fields_match_the_real_2018_ones_minus_the_2018_extras(shared_data):
    real = _lines(shared_data / "amazon2018" / "All_Beauty_5.json.gz")
    keys = set().union(*(json.loads(line) for line in real))
    # README: the 2014 release has the 2018 fields except these four, plus `helpful`.
    expected = (keys - {"verified", "style", "vote", "image"}) | {"helpful"}
    assert set(REVIEW_2014_FIELDS) == expected


@pytest.mark.parametrize("domain", list(synthetic.FINETUNE_DOMAINS))
def test_reviews_2014_format_and_5_core(raw, domain):
    raw_dir, counts = raw
    review_file, _, _, _ = synthetic.FINETUNE_DOMAINS[domain]
    rows = [json.loads(line) for line in _lines(raw_dir / review_file)]
    assert len(rows) == counts[f"{domain}_reviews"]
    optional = {"reviewerName"}
    for r in rows:
        assert tuple(k for k in REVIEW_2014_FIELDS if k in r) == tuple(r)
        assert set(REVIEW_2014_FIELDS) - set(r) <= optional
        up, total = r["helpful"]
        assert 0 <= up <= total
        assert isinstance(r["overall"], float)
        day = dt.datetime.fromtimestamp(r["unixReviewTime"], dt.UTC)
        assert r["reviewTime"] == f"{day.month:02d} {day.day}, {day.year}"
        assert r["unixReviewTime"] <= 1_406_073_600  # 2014-07-23
    assert any("reviewerName" not in r for r in rows)
    users = Counter(r["reviewerID"] for r in rows)
    items = Counter(r["asin"] for r in rows)
    assert min(users.values()) >= 5 and min(items.values()) >= 5  # truly 5-core
    assert len({(r["reviewerID"], r["asin"]) for r in rows}) == len(rows)  # no repeated pair
    assert len(users) == counts[f"{domain}_users"] and len(items) == counts[f"{domain}_items"]
    assert [r["asin"] for r in rows] == sorted(r["asin"] for r in rows)  # grouped by asin


@pytest.mark.parametrize("domain", list(synthetic.FINETUNE_DOMAINS))
def test_meta_2014_python_literals_cover_part_of_the_items(raw, domain):
    raw_dir, counts = raw
    review_file, meta_file, root, _ = synthetic.FINETUNE_DOMAINS[domain]
    lines = _lines(raw_dir / meta_file)
    metas = [ast.literal_eval(line) for line in lines]
    assert len(metas) == counts[f"{domain}_meta_2014"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])  # single quotes: not JSON
    allowed = {"asin", "description", "title", "price", "imUrl", "related", "salesRank"}
    allowed |= {"brand", "categories"}
    assert all(set(m) <= allowed and {"asin", "categories"} <= set(m) for m in metas)
    assert all(m["categories"][0][0] == root and len(m["categories"][0]) == 3 for m in metas)
    assert any('"' in line for line in lines)  # str() switches quotes around apostrophes
    assert any("brand" not in m for m in metas) and any("title" not in m for m in metas)
    rated = {json.loads(line)["asin"] for line in _lines(raw_dir / review_file)}
    in_2014 = {m["asin"] for m in metas}
    in_2018 = {m["asin"] for m in _meta_2018(raw_dir)}
    assert rated - in_2014  # only part of the items has 2014 metadata
    assert len(rated & in_2018) == counts[f"{domain}_items_in_meta_2018"] > 0
    assert len(rated - in_2014 - in_2018) == counts[f"{domain}_items_without_meta"] > 0


def test_finetune_items_disjoint_and_some_users_shared_with_pretraining(raw):
    raw_dir, counts = raw
    rows = _ratings(raw_dir)
    csv_users = Counter(r[1] for r in rows)
    csv_items = {r[0] for r in rows}
    ft_users: set[str] = set()
    for review_file, *_ in synthetic.FINETUNE_DOMAINS.values():
        reviews = [json.loads(line) for line in _lines(raw_dir / review_file)]
        assert not {r["asin"] for r in reviews} & csv_items
        ft_users |= {r["reviewerID"] for r in reviews}
    shared = ft_users & set(csv_users)
    assert len(shared) == counts["overlap_users"] > 0
    # They rate at least 5 times, so only the user-exclusion rule removes them.
    assert min(csv_users[u] for u in shared) >= 5


def test_long_tail_of_item_popularity(raw):
    raw_dir, _ = raw
    counts = np.sort(np.array(list(Counter(r[0] for r in _ratings(raw_dir)).values())))[::-1]
    top = counts[: len(counts) // 100].sum() / counts.sum()
    assert top > 0.05  # the top 1% of items holds over 5x its uniform share
    assert (counts == 1).mean() > 0.8  # and most items are rated once: a long tail
    assert counts[0] >= 10


def test_user_activity_is_heavy_tailed(raw):
    raw_dir, _ = raw
    activity = np.array(list(Counter(r[1] for r in _ratings(raw_dir)).values()))
    assert 5 <= np.median(activity) <= 20
    assert 0.05 < (activity < 5).mean() < 0.3  # users the ETL's >= 5 rule filters out
    assert activity.max() >= 5 * np.median(activity)


def test_catalog_grows_sublinearly(tmp_path):
    ratio = {}
    for n in (2_000, N):
        counts = generate(tmp_path / str(n), n, seed=5, finetune_users=20)
        ratio[n] = counts["items"] / n
    assert 0.8 < ratio[N] < 0.97  # fewer items than interactions ...
    assert ratio[N] < ratio[2_000]  # ... and relatively fewer as the data grows


def _same_cluster_rate(sequences: list[list[str]], cluster: dict[str, str]) -> tuple[float, float]:
    """Share of consecutive pairs within one cluster, and the chance rate from frequencies."""
    same = total = 0
    freq: Counter[str] = Counter()
    for seq in sequences:
        cs = [cluster[a] for a in seq if a in cluster]
        freq.update(cs)
        same += sum(a == b for a, b in zip(cs, cs[1:]))
        total += max(0, len(cs) - 1)
    p = np.array(list(freq.values())) / sum(freq.values())
    return same / total, float((p**2).sum())


def test_sequential_signal_lives_in_the_text_revealed_clusters(raw):
    raw_dir, _ = raw
    # The level-2 category names the latent cluster; titles carry the same topic words.
    cluster = {m["asin"]: m["category"][1] for m in _meta_2018(raw_dir) if len(m["category"]) > 1}
    histories: dict[str, list[tuple[int, str]]] = {}
    for item, user, _, ts in _ratings(raw_dir):
        histories.setdefault(user, []).append((int(ts), item))
    seqs = [[i for _, i in sorted(h, key=lambda x: x[0])] for h in histories.values()]
    rate, chance = _same_cluster_rate(seqs, cluster)
    assert rate > 0.6 and rate > 10 * chance


def test_finetune_clusters_are_pretraining_clusters(raw):
    raw_dir, _ = raw
    pre_l2 = {m["category"][1] for m in _meta_2018(raw_dir) if len(m["category"]) > 1}
    pre_words = {w.lower() for m in _meta_2018(raw_dir) for w in m["title"].split()}
    for review_file, meta_file, _, _ in synthetic.FINETUNE_DOMAINS.values():
        metas = [ast.literal_eval(line) for line in _lines(raw_dir / meta_file)]
        assert {m["categories"][0][1] for m in metas} <= pre_l2
        title_words = {w.lower() for m in metas if "title" in m for w in m["title"].split()}
        assert len(title_words - pre_words) == 0  # every fine-tune title word seen in pre-training
        cluster = {m["asin"]: m["categories"][0][1] for m in metas}
        seqs: dict[str, list[tuple[int, str]]] = {}
        for line in _lines(raw_dir / review_file):
            r = json.loads(line)
            seqs.setdefault(r["reviewerID"], []).append((r["unixReviewTime"], r["asin"]))
        # Same-day reviews come back in asin order, which blurs the signal a little.
        ordered = [[a for _, a in sorted(s, key=lambda x: x[0])] for s in seqs.values()]
        rate, chance = _same_cluster_rate(ordered, cluster)
        assert rate > 0.5 and rate > 4 * chance


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate(tmp_path / "a", 3_000, seed=11, finetune_users=100)
    b = generate(tmp_path / "b", 3_000, seed=11, finetune_users=100)
    c = generate(tmp_path / "c", 3_000, seed=12, finetune_users=100)
    assert a == b
    for name in ALL_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    assert c["ratings"] == 3_000


def test_cli_writes_files_and_prints_counts(tmp_path, capsys):
    out = tmp_path / "raw"
    args = ["--out", str(out), "--interactions", "500", "--seed", "3", "--finetune-users", "40"]
    assert synthetic.main(args) == 0
    assert json.loads(capsys.readouterr().out)["ratings"] == 500
    assert sorted(p.name for p in out.iterdir()) == ALL_FILES


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="interactions must be >= 1"):
        generate(tmp_path, 0)
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--out", str(tmp_path), "--interactions", "0"])
    assert exc.value.code == 2
    assert "interactions must be >= 1" in capsys.readouterr().err
