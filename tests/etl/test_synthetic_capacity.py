"""The capacity mode of the synthetic generator (etl/synthetic_capacity.py): real formats,
determinism, the structure it promises (fine clusters named by the text, successors, order
two, drift, popularity tail), the ETL reading it end to end, and the default mode's bytes
left unchanged."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from etl import synthetic
from etl.synthetic import META_2018_FIELDS, META_2018_FILE, REVIEW_2014_FIELDS
from etl.synthetic_capacity import CapacityParams, build_world, generate_capacity, walk
from tests.etl.test_synthetic import ALL_FILES, _lines, _ratings

N = 20_000
FT_USERS = 2_000


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("capacity")
    return out, generate_capacity(out, N, seed=5, finetune_users=FT_USERS)


def test_default_mode_bytes_are_unchanged(tmp_path):
    """`etl.synthetic.generate` (the default mode) writes the same bytes for a seed as before
    the capacity mode existed (digests recorded from main at 1ced46b)."""
    synthetic.generate(tmp_path, 3000, seed=7, finetune_users=200)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert digests == {
        "All_Amazon_Meta.json.gz": "353986d5f541200a3fa1164fde5cc4d2c1546afc3a3afceda3fce6a96017e489",
        "all_csv_files.csv": "5ab5bf9ee1e1a42bcce91d1f907ac6bc2a656e88f836d1d4d03295f7168e662e",
        "meta_Beauty.json.gz": "851a7306ae77313105a2e14d190da6df8ecc4a765cc9879339459524ad63108b",
        "meta_Sports_and_Outdoors.json.gz": (
            "e7a73aff3909320b8f8d8a97db2d22efc532033a6e3c4665111332627ad18a33"
        ),
        "reviews_Beauty_5.json.gz": (
            "0963e76ef7178ed1bb0d9e1074fd63e154cb5184055cfdf6ddbf716e23e38918"
        ),
        "reviews_Sports_and_Outdoors_5.json.gz": (
            "16e82b9ae588a231c8470ab382987fbc73d5abbe88902737e4c0a4425d263f43"
        ),
    }


def test_writes_the_real_file_names_and_formats(raw):
    raw_dir, counts = raw
    assert sorted(p.name for p in raw_dir.iterdir()) == ALL_FILES
    rows = _ratings(raw_dir)
    assert len(rows) == N == counts["ratings"]
    assert all(len(r) == 4 and re.fullmatch(r"[0-9A-Z]{10}", r[0]) for r in rows)
    assert all(re.fullmatch(r"A[0-9A-Z]{12,13}", r[1]) for r in rows)
    assert len({r[1] for r in rows}) == counts["users"]
    meta = [json.loads(line) for line in _lines(raw_dir / META_2018_FILE)]
    assert len(meta) == counts["meta_lines"]
    assert all(tuple(m) == META_2018_FIELDS for m in meta)
    assert all(len(m["category"]) == 3 and m["category"][2].endswith(" Collection") for m in meta)
    for domain, (review_file, meta_file, _, _) in synthetic.FINETUNE_DOMAINS.items():
        reviews = [json.loads(line) for line in _lines(raw_dir / review_file)]
        assert len(reviews) == counts[f"{domain}_reviews"] > 0
        assert all(set(r) <= set(REVIEW_2014_FIELDS) for r in reviews)
        users = Counter(r["reviewerID"] for r in reviews)
        items = Counter(r["asin"] for r in reviews)
        assert min(users.values()) >= 5 and min(items.values()) >= 5  # 5-core
        assert [r["asin"] for r in reviews] == sorted(r["asin"] for r in reviews)
        literals = [ast.literal_eval(line) for line in _lines(raw_dir / meta_file)]
        assert len(literals) == counts[f"{domain}_meta_2014"]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate_capacity(tmp_path / "a", 3_000, seed=11, finetune_users=2_000)
    b = generate_capacity(tmp_path / "b", 3_000, seed=11, finetune_users=2_000)
    c = generate_capacity(tmp_path / "c", 3_000, seed=12, finetune_users=2_000)
    assert a == b and c["ratings"] == 3_000
    for name in ALL_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name


def test_the_command_line_writes_the_capacity_mode(tmp_path, capsys):
    """`python -m etl.synthetic --mode capacity` writes what `generate_capacity` writes; the
    mode is refused beside another format."""
    argv = ["--interactions", "3000", "--seed", "11", "--finetune-users", "2000"]
    assert synthetic.main(["--mode", "capacity", "--out", str(tmp_path / "cli"), *argv]) == 0
    generate_capacity(tmp_path / "api", 3_000, seed=11, finetune_users=2_000)
    for name in ALL_FILES:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes()
    with pytest.raises(SystemExit):
        synthetic.main(["--mode", "capacity", "--format", "movielens-1m", "--out", "x", *argv])
    assert "--mode capacity writes the amazon2018 format only" in capsys.readouterr().err


def test_param_sets_the_knobs_and_names_the_bad_ones(tmp_path, capsys):
    """`--param NAME=VALUE` rebuilds data with other knobs (a study pinned before a
    recalibration); a bad name or value is a one-line error naming the known names."""
    argv = ["--interactions", "3000", "--seed", "11", "--finetune-users", "2000"]
    old = ["--param", "finetune_jump=0.3", "--param", "finetune_item_zipf=0.6"]
    out = tmp_path / "cli"
    assert synthetic.main(["--mode", "capacity", "--out", str(out), *old, *argv]) == 0
    params = CapacityParams(finetune_jump=0.3, finetune_item_zipf=0.6)
    generate_capacity(tmp_path / "api", 3_000, seed=11, finetune_users=2_000, params=params)
    for name in ALL_FILES:
        assert (out / name).read_bytes() == (tmp_path / "api" / name).read_bytes()
    assert CapacityParams().with_overrides(["successor_weights=0.5,0.5"]).n_successors == 2
    for bad, message in [
        ("finetune_jmp=0.3", "expected NAME=VALUE with NAME one of n_coarse, "),
        ("finetune_jump", "expected NAME=VALUE"),
        ("n_coarse=many", "'many' is not a int"),
    ]:
        with pytest.raises(SystemExit):
            synthetic.main(["--mode", "capacity", "--out", str(out), "--param", bad, *argv])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(out), "--param", "jump=0.1", *argv])
    assert "--param sets the capacity mode's knobs: add --mode capacity" in capsys.readouterr().err


def test_titles_name_the_fine_cluster(raw):
    """Every non-empty title carries its item's fine word and one of its coarse words."""
    raw_dir, _ = raw
    world = build_world(5, CapacityParams())
    fine_words = {w.title(): f for f, w in enumerate(world.fine_words)}
    meta = [json.loads(line) for line in _lines(raw_dir / META_2018_FILE)]
    checked = 0
    for m in meta:
        words = set(re.sub(r"<.*?>|,", " ", m["title"]).split())
        named = words & set(fine_words)
        if not m["title"]:
            continue
        assert len(named) == 1, m["title"]
        f = fine_words[named.pop()]
        assert m["category"][2] == f"{world.fine_words[f].title()} Collection"
        coarse = {w.title() for w in world.coarse_words[f // 64]}
        assert words & coarse
        checked += 1
    assert checked > 0.98 * len(meta)


def test_the_walk_follows_rotated_successors_and_drifts():
    """Pre-training walk: about 1 - jump of the steps go to a successor of the last fine
    cluster; among those, the slot (rotated by the fine cluster before the last) follows the
    successor weights; jumps land in the user's preferred coarse clusters."""
    params = CapacityParams()
    world = build_world(3, params)
    rng = np.random.default_rng(0)
    lengths = np.full(4000, 30)
    fine = walk(rng, world, lengths).reshape(4000, 30)
    prev2, prev1, nxt = fine[:, :-2].ravel(), fine[:, 1:-1].ravel(), fine[:, 2:].ravel()
    succ = world.successors[prev1]  # [n, S]
    slot = (np.arange(4)[None, :] - world.rotation[prev2][:, None]) % 4  # weight index per slot
    is_succ = succ == nxt[:, None]
    follow = is_succ.any(axis=1)
    # A jump lands on a successor by chance only rarely: the follow share is ~ 1 - jump.
    assert 0.84 < follow.mean() < 0.90
    first = is_succ.argmax(axis=1)[follow]
    k = slot[follow, first]
    shares = np.bincount(k, minlength=4) / len(k)
    np.testing.assert_allclose(shares, params.successor_weights, atol=0.02)
    # Without the rotation the slots would be near uniform: order two matters.
    assert np.abs(np.bincount(first, minlength=4) / len(first) - 0.25).max() < 0.05
    # The coarse cluster of a user's items changes slowly: most steps stay in it.
    coarse = fine // params.fine_per_coarse
    assert (coarse[:, 1:] == coarse[:, :-1]).mean() > 0.6


def test_popularity_tail_and_sizes(raw):
    raw_dir, counts = raw
    items = Counter(r[0] for r in _ratings(raw_dir))
    top = sorted(items.values(), reverse=True)
    assert top[0] > 10 * np.median(top)  # a head and a long tail
    assert counts["catalog_items"] > counts["items"] > 0.3 * counts["catalog_items"]
    assert counts["fine_clusters"] == 2048


def test_beauty_default_matches_the_real_benchmark_size(tmp_path):
    """The default fine-tuning size gives about the real Beauty 5-core's 22,363 users,
    12,101 items and 198,502 interactions (within 10%)."""
    counts = generate_capacity(tmp_path, 2_000, seed=42)
    assert abs(counts["Beauty_users"] / 22_363 - 1) < 0.1
    assert abs(counts["Beauty_items"] / 12_101 - 1) < 0.1
    assert abs(counts["Beauty_reviews"] / 198_502 - 1) < 0.1


def test_the_etl_builds_scaled_and_finetuning_sets_from_it(raw, tmp_path):
    from etl.engine import Engine
    from etl.pipeline import EtlOptions, run_pipeline

    raw_dir, counts = raw
    opts = EtlOptions(
        raw_dir=raw_dir,
        out_dir=tmp_path / "out",
        sizes=(2_000, 10_000),
        engine=Engine(progress=False),
        vocab_size=3_000,
    )
    results = run_pipeline("all", opts)
    status = {r.step: r.status for r in results}
    assert status["build_scaling_datasets"] == status["build_beauty_and_sports_datasets"] == "ran"
    for name in ("amazon-2K", "amazon-10K", "amazon-beauty", "amazon-sports"):
        inter = tmp_path / "out" / name / f"{name}.inter"
        lines = inter.read_text().splitlines()
        assert lines[0].startswith("user_id:token") and len(lines) > 1000, name
    beauty = (tmp_path / "out" / "amazon-beauty" / "amazon-beauty.inter").read_text()
    assert len(beauty.splitlines()) - 1 == counts["Beauty_reviews"]
