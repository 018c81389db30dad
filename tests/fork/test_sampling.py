"""Negative samplers: distributions (chi-square), shapes, padding never drawn, errors."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from recbole_fork.sampling import (
    InBatchSampler,
    PopularitySampler,
    SamplerSettings,
    UniformSampler,
    accidental_hit_mask,
    build_sampler,
)
from recbole_fork.settings import ConfigError
from tests.conftest import settings_slice

COUNTS = np.array([0, 10, 1, 0, 5, 4], dtype=np.int64)  # id 0 = padding, id 3 never trained on


def cfg(**over):
    base = {"neg_sampler": "uniform", "num_negatives": 4, "shared_negatives": False}
    return settings_slice(SamplerSettings, **{**base, **over})


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_uniform_goodness_of_fit_and_no_padding():
    s = build_sampler(cfg(num_negatives=5), COUNTS)
    assert isinstance(s, UniformSampler)
    draws = s.sample(torch.ones(20_000, dtype=torch.long), gen(1))  # [N, K]
    assert draws.shape == (20_000, 5) and draws.dtype == torch.int64
    freq = np.bincount(draws.flatten().numpy(), minlength=6)
    assert freq[0] == 0
    assert chisquare(freq[1:]).pvalue > 0.01  # expected: equal frequencies
    assert torch.allclose(s.log_q(torch.tensor([1, 5])), torch.full((2,), -math.log(5)))
    assert s.log_q(torch.tensor([0])).item() == float("-inf")


def test_popularity_goodness_of_fit_with_floor_and_alpha():
    # Built directly: build_sampler would refuse K above the 5-item catalog; we want many draws.
    s = PopularitySampler(COUNTS, num_negatives=50_000, shared=True, alpha=1.0)
    draws = s.sample(torch.ones(3, dtype=torch.long), gen(2))
    assert draws.shape == (50_000,)
    freq = np.bincount(draws.numpy(), minlength=6)
    assert freq[0] == 0 and freq[3] > 0  # unseen item 3 floored at count 1, never padding
    weights = np.array([10, 1, 1, 5, 4], dtype=np.float64)  # ids 1..5
    expected = weights / weights.sum() * len(draws)
    assert chisquare(freq[1:], expected).pvalue > 0.01
    # log q = log(weight / 21) exactly: ids 1 (10 / 21) and 3 (floor 1 / 21).
    got = s.log_q(torch.tensor([1, 3, 0]))
    assert got[:2].tolist() == pytest.approx([math.log(10 / 21), math.log(1 / 21)], rel=1e-6)
    assert got[2].item() == float("-inf")
    # alpha 0.5: weights sqrt(10), 1, 1, sqrt(5), 2.
    half = build_sampler(cfg(neg_sampler="popularity", neg_popularity_alpha=0.5), COUNTS)
    w = np.sqrt(weights)
    assert half.log_q(torch.tensor([4])).item() == pytest.approx(math.log(w[3] / w.sum()), rel=1e-6)


def test_popularity_is_seeded():
    s = build_sampler(cfg(neg_sampler="popularity", num_negatives=5), COUNTS)
    assert isinstance(s, PopularitySampler)
    pos = torch.tensor([1, 2, 4])
    assert torch.equal(s.sample(pos, gen(5)), s.sample(pos, gen(5)))
    assert not torch.equal(s.sample(pos, gen(5)), s.sample(pos, gen(6)))


def test_in_batch_shared_and_per_example():
    pos = torch.tensor([4, 1, 1, 5])
    shared = build_sampler(cfg(neg_sampler="in_batch", shared_negatives=True), COUNTS)
    assert isinstance(shared, InBatchSampler)
    assert shared.sample(pos, gen()).tolist() == [4, 1, 1, 5]
    per = build_sampler(cfg(neg_sampler="in_batch", num_negatives=3), COUNTS)
    neg = per.sample(pos, gen(3))
    assert neg.shape == (4, 3) and set(neg.flatten().tolist()) <= {1, 4, 5}
    # log q from training popularity: 10 / 21 for item 1.
    assert per.log_q(torch.tensor([1])).item() == pytest.approx(math.log(10 / 21), rel=1e-6)


def test_errors():
    with pytest.raises(
        ConfigError,
        match=r"unknown neg_sampler 'popular'; valid: \['uniform', 'popularity', 'in_batch'\]",
    ):
        build_sampler(cfg(neg_sampler="popular"), COUNTS)
    with pytest.raises(
        ConfigError, match=r"num_negatives=6 is larger than the catalog \(5 real items\)"
    ):
        build_sampler(cfg(num_negatives=6), COUNTS)
    build_sampler(cfg(num_negatives=5), COUNTS)  # exactly the catalog is fine
    with pytest.raises(ConfigError, match="num_negatives=0"):
        build_sampler(cfg(num_negatives=0), COUNTS)


def test_accidental_hit_mask_shapes():
    pos = torch.tensor([1, 2, 3])
    shared = accidental_hit_mask(pos, torch.tensor([2, 1, 2, 9]))
    assert shared.tolist() == [
        [False, True, False, False],
        [True, False, True, False],
        [False, False, False, False],
    ]
    per = accidental_hit_mask(pos, torch.tensor([[1, 1], [3, 2], [4, 5]]))
    assert per.tolist() == [[True, True], [False, True], [False, False]]


def test_shared_8192_from_large_catalog_is_cheap():
    counts = np.random.default_rng(0).zipf(1.5, size=1_000_001).clip(max=10**6)
    s = build_sampler(
        cfg(neg_sampler="popularity", num_negatives=8192, shared_negatives=True), counts
    )
    pos = torch.ones(6400, dtype=torch.long)
    g = gen(0)
    s.sample(pos, g)  # first call moves the CDF to the device
    t0 = time.perf_counter()
    for _ in range(10):
        neg = s.sample(pos, g)
    per_call = (time.perf_counter() - t0) / 10
    assert neg.shape == (8192,) and int(neg.min()) >= 1 and int(neg.max()) <= 1_000_000
    assert per_call < 0.05, f"shared 8192 negatives took {per_call * 1e3:.1f} ms"
