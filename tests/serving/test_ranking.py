"""The ranking engine over a precomputed item matrix (the serving path) ranks exactly as over
an ``item_fn`` (the offline path)."""

from __future__ import annotations

import pytest
import torch

from recbole_fork.evaluation import target_ranks, topk_items


def _setup(n_items: int = 50, dim: int = 8, users: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(n_items, dim, generator=g)
    matrix[0] = 0.0
    user = torch.randn(users, dim, generator=g)
    lengths = torch.tensor([0, 3, 1, 5, 2, 0, 4])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    hist = torch.randint(1, n_items, (int(indptr[-1]),), generator=g)
    return matrix, user, indptr, hist


@pytest.mark.parametrize(("item_chunk", "user_chunk"), [(7, 3), (64, 64), (1, 2)])
def test_topk_over_the_matrix_equals_topk_over_item_fn(item_chunk, user_chunk):
    matrix, user, indptr, hist = _setup()
    args = dict(hist_indptr=indptr, hist_items=hist, item_chunk=item_chunk, user_chunk=user_chunk)
    calls = []

    def item_fn(ids):
        calls.append(ids.numel())
        return matrix[ids]

    want = topk_items(user, item_fn, 50, 10, **args)
    got = topk_items(user, matrix, 50, 10, **args)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert sum(calls) == 49  # the item_fn path embeds every real item once
    # The brute-force answer: scores of every real item, history masked.
    scores = user @ matrix[1:].T
    for u in range(7):
        scores[u, hist[indptr[u] : indptr[u + 1]] - 1] = -torch.inf
    assert torch.equal(got[1], scores.topk(10, dim=1).indices + 1)


@pytest.mark.parametrize("mode", ["full", "sampled:20"])
def test_target_ranks_over_the_matrix_equal_those_over_item_fn(mode):
    matrix, user, indptr, hist = _setup(seed=1)
    targets = torch.tensor([1, 5, 9, 13, 20, 33, 49])
    kw = dict(mode=mode, hist_indptr=indptr, hist_items=hist, item_chunk=8, user_chunk=4)
    want = target_ranks(
        user, lambda i: matrix[i], 50, targets, **kw, generator=torch.Generator().manual_seed(3)
    )
    got = target_ranks(user, matrix, 50, targets, **kw, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, want)


def test_a_matrix_of_the_wrong_shape_is_refused():
    matrix, user, _, _ = _setup()
    with pytest.raises(ValueError, match=r"item matrix must be float \[n_items, D\]=\[51, 8\]"):
        topk_items(user, matrix, 51, 5)
    with pytest.raises(ValueError, match="item matrix"):
        topk_items(user, matrix.long(), 50, 5)
