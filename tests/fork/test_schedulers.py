"""LR schedules: equal to torch's OneCycleLR at every step, also across a resume."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from recbole_fork.schedulers import build_scheduler
from recbole_fork.settings import ConfigError
from tests.conftest import scheduler_settings


def _optimizer(lr=1e-2):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=lr)


def _lrs(opt, sched, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_one_cycle_equals_torch_reference():
    total = 40
    ref_opt = _optimizer()
    ref = OneCycleLR(ref_opt, max_lr=1e-2, total_steps=total, pct_start=0.3, div_factor=25.0,
                     final_div_factor=1e4, anneal_strategy="cos", cycle_momentum=False)  # fmt: skip
    opt = _optimizer()
    sched = build_scheduler(opt, scheduler_settings(type="one_cycle"), total)
    expected = _lrs(ref_opt, ref, total)
    got = _lrs(opt, sched, total)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[0] == pytest.approx(1e-2 / 25)  # starts at max / div_factor
    assert max(got) == pytest.approx(1e-2, rel=1e-6)  # peaks at learning_rate


def test_one_cycle_resumes_at_the_same_lr():
    total, cut = 30, 11
    opt = _optimizer()
    sched = build_scheduler(opt, scheduler_settings(type="one_cycle", pct_start=0.25), total)
    uninterrupted = _lrs(opt, sched, total)

    opt1 = _optimizer()
    sched1 = build_scheduler(opt1, scheduler_settings(type="one_cycle", pct_start=0.25), total)
    first = _lrs(opt1, sched1, cut)
    saved_opt, saved_sched = opt1.state_dict(), sched1.state_dict()

    opt2 = _optimizer()  # a new process: fresh optimizer, schedule built first, then the states
    sched2 = build_scheduler(opt2, scheduler_settings(type="one_cycle", pct_start=0.25), total)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    second = _lrs(opt2, sched2, total - cut)
    assert first + second == pytest.approx(uninterrupted, rel=1e-12)


def test_constant_and_warmup_cosine():
    opt = _optimizer(0.5)
    assert _lrs(opt, build_scheduler(opt, scheduler_settings(type="constant"), 5), 5) == [0.5] * 5
    opt = _optimizer(1.0)
    lrs = _lrs(
        opt, build_scheduler(opt, scheduler_settings(type="warmup_cosine", warmup_steps=4), 12), 12
    )
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(
        0.5 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item())
    )


def test_unknown_type_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="'one_cycle', 'constant', 'warmup_cosine'"):
        scheduler_settings(type="cyclic")
