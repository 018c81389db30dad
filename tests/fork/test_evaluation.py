"""Chunked full ranking and sampled ranking: exact metrics, chunking invariance, exclusions."""

from __future__ import annotations

import math

import pytest
import torch

from recbole_fork.evaluation import (
    evaluate_ranking,
    metric_key,
    parse_eval_mode,
    ranking_metrics,
    sample_candidates,
    target_ranks,
    topk_items,
)

# ------------------------------------------------------------------ a hand-built example
# Users are one-hot vectors, so score(u, i) = TABLE[u][i]: the table is the item embedding
# matrix transposed. Item 0 (padding) outscores everything and must never count.
TABLE = [
    # item: 0      1    2    3    4    5
    [100.0, 0.5, 0.9, 0.1, 0.3, 0.7],  # user 0, target 1: items 2, 5 above -> rank 2
    [100.0, 0.2, 0.4, 0.8, 0.6, 0.0],  # user 1, target 3: nothing above -> rank 0
    [100.0, 0.9, 0.3, 0.5, 0.3, 0.1],  # user 2, target 4: 1, 3 above, 2 ties -> rank 3
]
TARGETS = torch.tensor([1, 3, 4])
N_ITEMS = 6


def _table_fn(calls: list[torch.Tensor] | None = None):
    emb = torch.tensor(TABLE).T.contiguous()  # [n_items, 3]

    def item_fn(ids: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(ids.clone())
        return emb[ids]

    return item_fn


def _csr(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    indptr = torch.tensor([0] + [len(x) for x in lists]).cumsum(0)
    items = torch.tensor([i for x in lists for i in x], dtype=torch.int64)
    return indptr, items


def test_hand_built_metrics_are_exact():
    out = evaluate_ranking(torch.eye(3), _table_fn(), N_ITEMS, TARGETS, ks=(1, 3, 5))
    # ranks 2, 0, 3
    assert out["count"] == 3.0
    assert out["hr@1"] == 1.0 and out["ndcg@1"] == 1.0 and out["mrr@1"] == 1.0
    assert out["hr@3"] == 2.0
    assert out["ndcg@3"] == 1.5  # 1/log2(4) + 1/log2(2)
    assert out["mrr@3"] == pytest.approx(1.3333333333333333, abs=1e-12)  # 1/3 + 1
    assert out["hr@5"] == 3.0
    assert out["ndcg@5"] == pytest.approx(1.930676558073393, abs=1e-12)  # + 1/log2(5)
    assert out["mrr@5"] == pytest.approx(1.5833333333333333, abs=1e-12)  # + 1/4
    assert list(out) == [f"{m}@{k}" for k in (1, 3, 5) for m in ("hr", "ndcg", "mrr")] + ["count"]


def test_history_is_excluded_exactly():
    # user 0 saw item 2 (above its target); user 1 saw its own target (a repeat: still
    # ranked); user 2 saw item 1 twice, padding, and item 5 (below its target).
    indptr, items = _csr([[2], [3], [1, 1, 0, 5]])
    ranks = target_ranks(
        torch.eye(3), _table_fn(), N_ITEMS, TARGETS, hist_indptr=indptr, hist_items=items
    )
    assert ranks.tolist() == [1, 0, 2]
    scores, ids = topk_items(
        torch.eye(3), _table_fn(), N_ITEMS, 3, hist_indptr=indptr, hist_items=items
    )
    assert ids[:2].tolist() == [[5, 1, 4], [4, 2, 1]]
    assert ids[2, 0] == 3 and sorted(ids[2, 1:].tolist()) == [2, 4]  # 2 and 4 tie
    assert scores[0].tolist() == pytest.approx([0.7, 0.5, 0.3])


def test_padding_is_never_ranked_nor_embedded():
    calls: list[torch.Tensor] = []
    ranks = target_ranks(torch.eye(3), _table_fn(calls), N_ITEMS, TARGETS, item_chunk=2)
    assert ranks.tolist() == [2, 0, 3]  # item 0's score 100 did not count
    _, ids = topk_items(torch.eye(3), _table_fn(calls), N_ITEMS, 5, item_chunk=4)
    assert sorted(ids[0].tolist()) == [1, 2, 3, 4, 5]
    assert all((c != 0).all() for c in calls)


def test_fewer_rankable_items_than_k_fill_with_padding():
    indptr, items = _csr([[1, 2, 3], [], [1, 2, 3, 4, 5]])
    scores, ids = topk_items(
        torch.eye(3), _table_fn(), N_ITEMS, 3, hist_indptr=indptr, hist_items=items
    )
    assert ids.tolist() == [[5, 4, 0], [3, 4, 2], [0, 0, 0]]
    assert scores[2].tolist() == [-math.inf] * 3


# ------------------------------------------------------------------ ties and NaN


def test_ties_count_against_the_target():
    # Every item has the same (non-integer) embedding: a degenerate model gets HR 0.
    gen = torch.Generator().manual_seed(3)
    n_items, dim = 50, 16
    item = torch.randn(dim, generator=gen)
    users = torch.randn(7, dim, generator=gen)
    targets = torch.randint(1, n_items, (7,), generator=gen)
    for item_chunk, user_chunk in [(65536, 4096), (7, 3), (1, 1)]:
        out = evaluate_ranking(
            users,
            lambda ids: item.expand(len(ids), dim),
            n_items,
            targets,
            ks=(10, 48, 49),
            item_chunk=item_chunk,
            user_chunk=user_chunk,
        )
        # rank = every other real item = 48
        assert (out["hr@10"], out["hr@48"], out["hr@49"]) == (0.0, 0.0, 7.0)
        assert out["mrr@49"] == pytest.approx(7 / 49)


def test_a_single_tie_adds_one_to_the_rank():
    emb = torch.tensor([[0.0], [1.0], [2.0], [2.0], [3.0]])  # items 2 and 3 tie
    ranks = target_ranks(torch.ones(2, 1), lambda ids: emb[ids], 5, torch.tensor([2, 3]))
    assert ranks.tolist() == [2, 2]


def test_nan_scores_count_against_the_target():
    emb = torch.tensor([[0.0], [1.0], [float("nan")], [3.0], [0.5]])
    ranks = target_ranks(torch.ones(2, 1), lambda ids: emb[ids], 5, torch.tensor([1, 2]))
    # target 1: NaN item 2 and item 3 above -> 2; NaN target: all 3 others above -> 3
    assert ranks.tolist() == [2, 3]


# ------------------------------------------------------------------ chunking invariance


def _random_case(seed: int, n_users: int = 37, n_items: int = 103, dim: int = 8):
    gen = torch.Generator().manual_seed(seed)
    users = torch.randn(n_users, dim, generator=gen)
    table = torch.randn(n_items, dim, generator=gen)
    targets = torch.randint(1, n_items, (n_users,), generator=gen)
    # Histories with repeats, padding ids and sometimes the target itself.
    lengths = torch.randint(0, 12, (n_users,), generator=gen)
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    items = torch.randint(0, n_items, (int(lengths.sum()),), generator=gen)
    return users, table, targets, indptr, items


def _brute_force(users, table, targets, indptr, items, candidates=None):
    """Ranks and top-10 ids from the whole score matrix, one user at a time."""
    n_items = table.shape[0]
    ids = torch.arange(1, n_items) if candidates is None else candidates
    ranks, tops = [], []
    for u in range(users.shape[0]):
        hist = set(items[indptr[u] : indptr[u + 1]].tolist())
        target = int(targets[u])
        t = float(users[u] @ table[target])
        rank = sum(
            1
            for i in ids.tolist()
            if i != target and i not in hist and float(users[u] @ table[i]) >= t
        )
        ranks.append(rank)
        allowed = [i for i in range(1, n_items) if i not in hist]
        s = (users[u] @ table[allowed].T).tolist()
        tops.append([allowed[j] for j in sorted(range(len(allowed)), key=lambda j: -s[j])[:10]])
    return ranks, tops


@pytest.mark.parametrize(
    ("item_chunk", "user_chunk"),
    [(1, 3), (1, 37), (13, 1), (7, 5), (10, 36), (101, 2), (102, 37), (500, 1000)],
)
def test_chunked_equals_brute_force(item_chunk, user_chunk):
    users, table, targets, indptr, items = _random_case(0)
    want_ranks, want_top = _brute_force(users, table, targets, indptr, items)
    kwargs = dict(
        hist_indptr=indptr, hist_items=items, item_chunk=item_chunk, user_chunk=user_chunk
    )
    ranks = target_ranks(users, lambda ids: table[ids], 103, targets, **kwargs)
    assert ranks.tolist() == want_ranks
    _, ids = topk_items(users, lambda ids: table[ids], 103, 10, **kwargs)
    assert ids.tolist() == want_top
    assert evaluate_ranking(
        users, lambda ids: table[ids], 103, targets, ks=(5, 20), **kwargs
    ) == ranking_metrics(torch.tensor(want_ranks), (5, 20))


def test_item_fn_called_once_per_chunk_and_never_beyond_item_chunk():
    users, table, targets, indptr, items = _random_case(1, n_users=25)
    calls: list[torch.Tensor] = []

    def item_fn(ids):
        calls.append(ids.clone())
        return table[ids]

    target_ranks(users, item_fn, 103, targets, item_chunk=10, user_chunk=4)
    # 102 real items -> 11 catalog chunks; 25 targets -> 3 calls of at most 10
    assert len(calls) == 11 + 3
    assert max(len(c) for c in calls) == 10
    seen = [c.tolist() for c in calls]
    for start in range(1, 103, 10):
        chunk = list(range(start, min(start + 10, 103)))
        assert seen.count(chunk) == 1
        seen.remove(chunk)
    assert sum(seen, []) == targets.tolist()  # the rest: the targets' own embeddings
    calls.clear()
    topk_items(users, item_fn, 103, 5, item_chunk=10, user_chunk=4)
    assert [c.tolist() for c in calls] == [
        list(range(s, min(s + 10, 103))) for s in range(1, 103, 10)
    ]


# ------------------------------------------------------------------ sampled mode


def test_sample_candidates_are_distinct_sorted_real_ids():
    sample = sample_candidates(1001, 300, torch.Generator().manual_seed(0))
    assert sample.shape == (300,)
    assert sample.unique().numel() == 300
    assert sample.tolist() == sorted(sample.tolist())
    assert sample.min() >= 1 and sample.max() <= 1000
    with pytest.raises(ValueError, match="sampled:1001"):
        sample_candidates(1001, 1001)


def test_sampled_mode_is_deterministic_and_matches_brute_force():
    users, table, targets, indptr, items = _random_case(2)

    def run(seed, item_chunk):
        return target_ranks(
            users,
            lambda ids: table[ids],
            103,
            targets,
            mode="sampled:40",
            hist_indptr=indptr,
            hist_items=items,
            item_chunk=item_chunk,
            generator=torch.Generator().manual_seed(seed),
        )

    first = run(5, 7)
    assert run(5, 7).tolist() == first.tolist()
    assert run(5, 1).tolist() == first.tolist()  # chunking changes nothing
    assert run(6, 7).tolist() != first.tolist()  # another draw, other ranks
    sample = sample_candidates(103, 40, torch.Generator().manual_seed(5))
    want, _ = _brute_force(users, table, targets, indptr, items, candidates=sample)
    assert first.tolist() == want
    full = target_ranks(
        users, lambda ids: table[ids], 103, targets, hist_indptr=indptr, hist_items=items
    )
    assert (first <= full).all() and first.sum() < full.sum()


def test_sampling_the_whole_catalog_equals_full_ranking():
    users, table, targets, indptr, items = _random_case(3)
    kwargs = dict(hist_indptr=indptr, hist_items=items, item_chunk=9)
    full = evaluate_ranking(users, lambda ids: table[ids], 103, targets, **kwargs)
    sampled = evaluate_ranking(
        users, lambda ids: table[ids], 103, targets, mode="sampled:102", **kwargs
    )
    assert sampled == full


# ------------------------------------------------------------------ agreement with RecBole


def test_agrees_with_recbole_metrics():
    from recbole.evaluator.collector import DataStruct
    from recbole.evaluator.metrics import MRR, NDCG, Hit

    users, table, targets, indptr, items = _random_case(4, n_users=60, n_items=40)
    n_users, n_items = 60, 40
    # RecBole's full-sort path with a history index (its general recommenders; for
    # sequential ones it passes none): score every item, padding and history to -inf,
    # top-k, then a 0/1 matrix of hits plus the number of positives (collector.py, rec.topk).
    scores = users @ table.T  # [U, n_items]
    scores[:, 0] = -math.inf
    rows = torch.repeat_interleave(torch.arange(n_users), indptr.diff())
    keep_target = items != targets[rows]  # RecBole would mask a repeated target: avoid that
    scores[rows[keep_target], items[keep_target]] = -math.inf
    topk_idx = scores.topk(10, dim=1).indices
    pos = (topk_idx == targets[:, None]).int()
    data = DataStruct()
    data.set("rec.topk", torch.cat([pos, torch.ones(n_users, 1, dtype=torch.int)], dim=1))
    config = {"topk": [1, 5, 10], "metric_decimal_place": 12}
    want = {}
    for metric in (Hit, NDCG, MRR):
        want.update(metric(config).calculate_metric(data))

    out = evaluate_ranking(
        users,
        lambda ids: table[ids],
        n_items,
        targets,
        ks=(1, 5, 10),
        hist_indptr=indptr,
        hist_items=items,
        item_chunk=6,
        user_chunk=7,
    )
    for k in (1, 5, 10):
        assert out[f"hr@{k}"] / n_users == pytest.approx(want[f"hit@{k}"], abs=1e-10)
        assert out[f"ndcg@{k}"] / n_users == pytest.approx(want[f"ndcg@{k}"], abs=1e-10)
        assert out[f"mrr@{k}"] / n_users == pytest.approx(want[f"mrr@{k}"], abs=1e-10)
    assert 0 < want["hit@10"] < 1  # a case where hits and misses both occur


# ------------------------------------------------------------------ modes, names, errors


@pytest.mark.parametrize(
    ("mode", "want"), [("full", ("full", None)), ("sampled:10000", ("sampled", 10000))]
)
def test_parse_eval_mode(mode, want):
    assert parse_eval_mode(mode) == want


@pytest.mark.parametrize(
    "mode",
    [
        "",
        "Full",
        "sampled",
        "sampled:",
        "sampled:0",
        "sampled:-3",
        "sampled:1e4",
        "sampled: 5",
        None,
    ],
)
def test_parse_eval_mode_rejects_with_the_valid_forms(mode):
    with pytest.raises(ValueError, match=r"'full' and 'sampled:N'"):
        parse_eval_mode(mode)


def test_metric_key():
    assert metric_key("valid", "ndcg@10") == "valid_ndcg_at_10"
    assert metric_key("best_test", "hr@5") == "best_test_hr_at_5"
    assert metric_key("train", "count") == "train_count"
    with pytest.raises(ValueError, match="phase"):
        metric_key("", "hr@10")


def test_empty_batch_gives_zero_sums_without_calling_item_fn():
    def item_fn(ids):
        raise AssertionError("not called")

    out = evaluate_ranking(torch.zeros(0, 4), item_fn, 10, torch.zeros(0, dtype=torch.int64))
    assert out == {"hr@10": 0.0, "ndcg@10": 0.0, "mrr@10": 0.0, "count": 0.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(targets=torch.tensor([0, 1, 2])), r"targets must be real item ids in 1\.\.5"),
        (dict(targets=torch.tensor([1, 6, 2])), r"targets must be real item ids"),
        (dict(targets=torch.tensor([1, 2])), r"targets must be an integer tensor \[U\]=3"),
        (dict(item_fn=lambda ids: torch.zeros(len(ids), 2)), r"item_fn must map ids"),
        (dict(mode="sampled:6"), r"sampled:6.*use a smaller N or 'full'"),
        (dict(mode="topk"), r"valid forms"),
        (dict(ks=(0,)), r"ks must be"),
        (dict(item_chunk=0), r"item_chunk must be a positive integer"),
        (dict(hist_items=torch.tensor([1])), r"pass both or neither"),
        (
            dict(hist_indptr=torch.tensor([0, 1, 1, 2]), hist_items=torch.tensor([1, 9])),
            r"hist_items must be item ids in 0\.\.5",
        ),
        (
            dict(hist_indptr=torch.tensor([0, 2, 1, 2]), hist_items=torch.tensor([1, 2])),
            r"hist_indptr must start at 0, never decrease",
        ),
    ],
)
def test_user_errors_are_clear(kwargs, message):
    args = dict(user_vecs=torch.eye(3), item_fn=_table_fn(), n_items=N_ITEMS, targets=TARGETS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_ranking(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    users, table, targets, indptr, items = _random_case(5, n_users=300, n_items=2000, dim=32)
    kwargs = dict(hist_indptr=indptr, hist_items=items, item_chunk=300, user_chunk=64)
    cpu = target_ranks(users, lambda ids: table[ids], 2000, targets, **kwargs)
    table_gpu = table.cuda()
    gpu = target_ranks(users.cuda(), lambda ids: table_gpu[ids], 2000, targets, **kwargs)
    assert gpu.cpu().tolist() == cpu.tolist()
    same = table_gpu[1].expand(1999, 32)
    tie = target_ranks(users.cuda(), lambda ids: same[: len(ids)], 2000, targets, item_chunk=512)
    assert tie.tolist() == [1998] * 300
    _, ids_cpu = topk_items(users, lambda ids: table[ids], 2000, 10, **kwargs)
    _, ids_gpu = topk_items(users.cuda(), lambda ids: table_gpu[ids], 2000, 10, **kwargs)
    assert ids_gpu.cpu().tolist() == ids_cpu.tolist()


def test_half_precision_users_are_scored_in_float32():
    users, table, targets, indptr, items = _random_case(6)
    half = users.half()
    ranks = target_ranks(half, lambda ids: table[ids].half(), 103, targets, item_chunk=10)
    want = target_ranks(half.float(), lambda ids: table[ids].half().float(), 103, targets)
    assert ranks.tolist() == want.tolist()


def test_yaml_defaults_match_the_function_defaults():
    import inspect
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "recbole_fork" / "properties" / "evaluation.yaml"
    defaults = yaml.safe_load(path.read_text())
    assert set(defaults) == {
        "eval_mode",
        "exclude_history",
        "stock_evaluator",
        "eval_item_chunk",
        "eval_user_chunk",
        "topk",
    }
    params = inspect.signature(evaluate_ranking).parameters
    assert parse_eval_mode(defaults["eval_mode"]) == ("full", None)
    assert defaults["exclude_history"] is True
    assert defaults["stock_evaluator"] == "fork"
    assert defaults["eval_item_chunk"] == params["item_chunk"].default
    assert defaults["eval_user_chunk"] == params["user_chunk"].default
    assert defaults["topk"] == [10]
    # every key documents itself: "# (type) meaning"
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            assert "# (" in line, line


def test_scores_within_dot_product_rounding_of_the_target_tie():
    # Item 2 is the target; item 3 is the target's embedding nudged by 1 ulp in one component
    # (a score difference far below D * eps * |u| * |v|): a tie, so it counts against the
    # target. Item 4 is clearly better (+1e-3 relative) and item 1 clearly worse.
    target = torch.tensor([0.3, -1.2, 0.7, 2.1])
    nudged = target.clone()
    nudged[3] = torch.nextafter(nudged[3], torch.tensor(10.0))
    emb = torch.stack([torch.zeros(4), 0.5 * target, target, nudged, 1.001 * target])
    user = torch.tensor([[1.0, -0.5, 0.25, 1.0]])
    assert float(user @ nudged) > float(user @ target)  # strictly higher in float32
    ranks = target_ranks(user, lambda ids: emb[ids], 5, torch.tensor([2]))
    assert ranks.tolist() == [2]  # items 3 and 4 count, item 1 does not
