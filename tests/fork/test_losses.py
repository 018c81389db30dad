"""Losses: logQ arithmetic, accidental hits, sampled softmax vs full CE, BCE by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recbole_fork.losses import (
    BCELoss,
    FullCELoss,
    LossSettings,
    SampledSoftmaxLoss,
    build_loss,
)
from recbole_fork.settings import ConfigError
from tests.conftest import settings_slice


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_logq_arithmetic_explicit_numbers():
    # D = 1: user 2, positive embedding 1 (score 2), shared negatives 0.5 and 1 (scores 1, 2).
    loss = SampledSoftmaxLoss(temperature=0.5, logq_correction=True)
    got = loss(
        t([[2.0]]),
        torch.tensor([1]),
        t([[1.0]]),
        torch.tensor([3, 4]),
        t([[0.5], [1.0]]),
        log_q_pos=t([math.log(0.5)]),
        log_q_neg=t([math.log(0.25), math.log(0.5)]),
    )
    # logits: score / 0.5 - log q -> positive 4 + ln 2, negatives 2 + ln 4 and 4 + ln 2.
    pos, n1, n2 = 4 + math.log(2), 2 + math.log(4), 4 + math.log(2)
    expected = math.log(math.exp(pos) + math.exp(n1) + math.exp(n2)) - pos
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Without the correction the log q terms are ignored.
    plain = SampledSoftmaxLoss(temperature=0.5)(
        t([[2.0]]), torch.tensor([1]), t([[1.0]]), torch.tensor([3, 4]), t([[0.5], [1.0]]),
        log_q_pos=t([math.log(0.5)]), log_q_neg=t([math.log(0.25), math.log(0.5)]),
    )  # fmt: skip
    assert plain.item() == pytest.approx(math.log(math.exp(4) + math.exp(2) + math.exp(4)) - 4)


def test_accidental_hits_are_masked():
    user, pos_emb = t([[1.0, 0.0]]), t([[1.0, 0.0]])
    neg_emb = t([[0.0, 1.0], [1.0, 0.0]])
    loss = SampledSoftmaxLoss()
    with_hit = loss(user, torch.tensor([7]), pos_emb, torch.tensor([2, 7]), neg_emb)
    without = loss(user, torch.tensor([7]), pos_emb, torch.tensor([2]), neg_emb[:1])
    assert with_hit.item() == pytest.approx(without.item(), rel=1e-12)
    assert without.item() == pytest.approx(math.log(math.e + 1) - 1, rel=1e-12)


def test_sampled_softmax_equals_full_ce_with_all_other_items():
    g = torch.Generator().manual_seed(0)
    n_items, n, d = 7, 5, 4
    table = torch.randn(n_items, d, generator=g, dtype=torch.float64)  # [n_items, D]
    user = torch.randn(n, d, generator=g, dtype=torch.float64)  # [N, D]
    pos = torch.tensor([1, 3, 3, 6, 2])
    full = FullCELoss(temperature=0.7)(user, pos, table[pos], None, None, all_item_emb=table)
    logits = user @ table[1:].T / 0.7  # padding excluded by hand
    assert full.item() == pytest.approx(F.cross_entropy(logits, pos - 1).item(), rel=1e-12)
    every = torch.arange(1, n_items)  # all real items; each example's own positive is a hit
    ssm = SampledSoftmaxLoss(temperature=0.7)
    shared = ssm(user, pos, table[pos], every, table[every])
    per = every.expand(n, -1)  # [N, K], per-example negatives
    per_example = ssm(user, pos, table[pos], per, table[per])
    assert shared.item() == pytest.approx(full.item(), rel=1e-12)
    assert per_example.item() == pytest.approx(full.item(), rel=1e-12)


def test_bce_by_hand():
    # user 1, positive embedding 2 -> s+ = 2; negatives 1, -1 and a hit (id 5 = positive).
    got = BCELoss()(
        t([[1.0]]),
        torch.tensor([5]),
        t([[2.0]]),
        torch.tensor([[3, 4, 5]]),
        t([[[1.0], [-1.0], [9.0]]]),
    )

    def sig(x):
        return 1 / (1 + math.exp(-x))

    expected = -math.log(sig(2)) - (math.log(1 - sig(1)) + math.log(1 - sig(-1))) / 2
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_gradients_flow_and_are_finite():
    user = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    table = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([1, 2, 3])
    loss = FullCELoss()(user, pos, table[pos], None, None, all_item_emb=table)
    loss.backward()
    assert torch.isfinite(user.grad).all() and table.grad[0].abs().sum().item() == 0.0


def _loss(**overrides):
    return build_loss(settings_slice(LossSettings, **overrides))


def test_build_loss_choices_and_errors():
    assert isinstance(_loss(loss_type="sampled_softmax"), SampledSoftmaxLoss)
    assert _loss().needs_negatives  # default (data.yaml): sampled_softmax
    assert _loss(loss_type="full_ce").needs_negatives is False
    ssm = _loss(loss_type="sampled_softmax", temperature=0.05, logq_correction=True)
    assert ssm.describe() == "ssm-t0.05-logq"
    with pytest.raises(
        ConfigError, match=r"unknown loss_type 'CE'; valid: \['sampled_softmax', 'bce', 'full_ce'\]"
    ):
        _loss(loss_type="CE")
    with pytest.raises(
        ConfigError, match="logq_correction applies to loss_type sampled_softmax only"
    ):
        _loss(loss_type="bce", logq_correction=True)
    with pytest.raises(ConfigError, match="temperature=0.0"):
        _loss(temperature=0)
