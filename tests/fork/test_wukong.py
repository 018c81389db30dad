"""Wukong-style backbone: optimised FM against the pairwise form, the sliding window,
causality, padding, parameter and FLOP counts, a few training steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from recbole_fork.models.wukong import (
    WukongBackbone,
    WukongSeq,
    WukongSettings,
    fm_naive,
    fm_optimized,
)
from recbole_fork.params import count_parameters
from recbole_fork.settings import ConfigError
from tests.conftest import assert_backbone_learns, backbone_settings, tiny_fork_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


WUKONG_YAML = Path(__file__).resolve().parents[2] / "recbole_fork/properties/model/WukongSeq.yaml"

# d=8, window 3, n_F=2, n_L=3 (so n_F + n_L = 5 differs from the window: residual projected).
TINY = dict(
    hidden_size=8,
    n_layers=2,
    n_features=3,
    num_emb_fmb=2,
    num_emb_lcb=3,
    fmb_rank=4,
    # Widths of 16: with only ~5 ReLU units whole rows go dead and the output turns constant.
    fmb_mlp_sizes=[16],
    head_mlp_sizes=[16, 12],
    hidden_dropout_prob=0.0,
    max_seq_length=6,
)


def tiny_backbone(**overrides) -> WukongBackbone:
    torch.manual_seed(0)
    return WukongBackbone(WukongSettings(**{**TINY, **overrides})).eval()


def tiny_batch():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True  # 2 real items, 3 padding
    mask[1, :] = True
    return x, mask


def test_fm_optimized_equals_pairwise():
    torch.manual_seed(0)
    x, y = torch.randn(4, 5, 6, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(fm_optimized(x, y), fm_naive(x, y), atol=1e-12, rtol=1e-12)
    # One entry by hand: out[0, 0, 0] = sum_j <x0, xj> y[j, 0].
    by_hand = sum(float(x[0, 0] @ x[0, j]) * float(y[j, 0]) for j in range(5))
    assert fm_naive(x, y)[0, 0, 0].item() == pytest.approx(by_hand, rel=1e-12)


def test_windows_hold_the_last_items_newest_first():
    backbone = tiny_backbone()
    x, mask = tiny_batch()
    pos = backbone.position_embedding.weight  # [3, 8]
    with torch.no_grad():
        win = backbone.windows(x, mask)  # [2, 5, 3, 8]
    assert win.shape == (2, 5, 3, 8)
    # Row 1 (all real), position 3: slots hold items 3, 2, 1.
    for j in range(3):
        torch.testing.assert_close(win[1, 3, j], x[1, 3 - j] + pos[j], atol=0, rtol=0)
    # Position 0: only slot 0 is present; slots 1, 2 precede the sequence and are zero.
    torch.testing.assert_close(win[1, 0, 0], x[1, 0] + pos[0], atol=0, rtol=0)
    assert win[1, 0, 1:].abs().sum().item() == 0.0


def test_output_shape_and_zero_padding():
    backbone = tiny_backbone()
    x, mask = tiny_batch()
    with torch.no_grad():
        out = backbone(x, mask)
    assert out.shape == (2, 5, 8)
    assert out[0, 2:].abs().sum().item() == 0.0
    assert out[0, :2].abs().sum().item() > 0.0
    assert backbone.normalize is False


def test_causal_and_windowed():
    backbone = tiny_backbone()
    x, mask = tiny_batch()
    with torch.no_grad():
        before = backbone(x, mask)
        later = x.clone()
        later[1, 3:] = torch.randn(2, 8)
        after = backbone(later, mask)
        earliest = x.clone()
        earliest[1, 0] = torch.randn(8)
        moved = backbone(earliest, mask)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=0, rtol=0)
    assert not torch.allclose(after[1, 3:], before[1, 3:])
    # Item 0 is in the windows of positions 0, 1, 2 only (window 3).
    assert not torch.allclose(moved[1, 2], before[1, 2])
    torch.testing.assert_close(moved[1, 3:], before[1, 3:], atol=0, rtol=0)


def test_padding_does_not_affect_real_positions():
    backbone = tiny_backbone()
    x, mask = tiny_batch()
    with torch.no_grad():
        before = backbone(x, mask)
        x2 = x.clone()
        x2[0, 2:] = 100.0
        changed = backbone(x2, mask)
        longer = backbone(F.pad(x, (0, 0, 0, 1)), F.pad(mask, (0, 1)))
    torch.testing.assert_close(changed, before, atol=0, rtol=0)
    torch.testing.assert_close(longer[:, :5], before, atol=1e-6, rtol=1e-6)


def test_parameter_count_closed_form():
    d, w, n_f, n_l, k = 8, 3, 2, 3, 4
    n = n_f + n_l  # 5 features after every layer

    def mlp(*sizes):
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

    def layer(n_in):
        return (
            n_in * k  # Y
            + 2 * n_in * k  # LayerNorm over the flattened FM output
            + mlp(n_in * k, 16, n_f * d)  # FMB MLP
            + n_l * n_in  # W_L
            + (n * n_in if n != n_in else 0)  # W_R, only when the width changes
            + 2 * d  # output LayerNorm
        )

    expected = w * d + layer(w) + layer(n) + mlp(n * d, 16, 12, d)
    # layer(3) = 12 + 24 + (12*16+16) + (16*16+16) + 9 + 15 + 16 = 556
    # layer(5) = 20 + 40 + (20*16+16) + (16*16+16) + 15 + 0 + 16 = 699
    # head = (40*16+16) + (16*12+12) + (12*8+8) = 964
    assert expected == 24 + 556 + 699 + 964 == 2243
    assert sum(p.numel() for p in tiny_backbone().parameters()) == expected


def test_flops_per_token_closed_form():
    # Layer 1 (n=3): FM 2*2*3*8*4=384, MLP 2*(12*16+16*16)=896, LCB 2*3*3*8=144, W_R 2*5*3*8=240.
    # Layer 2 (n=5): FM 640, MLP 2*(20*16+16*16)=1152, LCB 240, no W_R.
    # Head: 2*(40*16+16*12+12*8)=1856.
    expected = (384 + 896 + 144 + 240) + (640 + 1152 + 240) + 1856
    assert tiny_backbone().flops_per_token(5) == expected == 5552
    assert tiny_backbone().flops_per_token(50) == expected  # fixed window: no L term


def test_defaults_from_yaml_and_describe():
    defaults = backbone_settings("WukongSeq")
    assert set(yaml.safe_load(WUKONG_YAML.read_text())) <= {*defaults.as_dict(), "loss_type"}
    assert WukongBackbone(defaults).describe() == "wukong-d64-l3-w16-f16-c16-k24"
    config = {k: v for k, v in TINY.items() if k != "fmb_rank"}
    with pytest.raises(ConfigError, match="config key 'fmb_rank' is missing"):
        WukongSettings.from_mapping(config)
    with pytest.raises(ConfigError, match="head_mlp_sizes"):
        WukongSettings(**{**TINY, "head_mlp_sizes": (0,)})


def test_few_training_steps_lower_sampled_softmax_loss():
    assert_backbone_learns(
        lambda: WukongBackbone(WukongSettings(**{**TINY, "hidden_dropout_prob": 0.1})),
        normalize=False,
        temperature=1.0,
        with_time=False,
        optimizer=torch.optim.Adam,
    )


# ----- the WukongSeq model: item encoder + backbone + loss (recbole_fork.models.base) ------

N_ITEMS = 12


def tiny_model(**overrides) -> WukongSeq:
    return tiny_fork_model("WukongSeq", N_ITEMS, **{**TINY, "num_negatives": 4, **overrides})


def model_batch():
    item_seq = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10]])
    target = torch.tensor([[2, 3, 4, 5, 0, 0], [6, 7, 8, 9, 10, 11]])
    return {"item_seq": item_seq, "target": target}


def test_model_counts_and_describe():
    model = tiny_model()
    counts = count_parameters(model)
    assert counts.embedding == N_ITEMS * 8 == 96
    assert counts.non_embedding == 2243  # the backbone's closed form above
    assert model.describe() == "wukong-d8-l2-w3-f2-c3-k4-id"
    assert model.normalize is False
    assert model.flops_per_token() == 5552


def test_model_trains_a_few_steps():
    # Item rows start at std 0.02 (ForkSeqModel), so raw dot products start near 0 and the
    # loss needs a few more steps to move than with HSTU's cosine / temperature scores.
    model = tiny_model().train()
    batch = model_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model.training_loss(batch, torch.Generator().manual_seed(9)).item()
        model.train()
        return loss

    first = held_out_loss()
    for _ in range(40):
        opt.zero_grad()
        model.training_loss(batch, gen).backward()
        opt.step()
    assert held_out_loss() < 0.5 * first


def test_model_user_vectors_and_recbole_scores():
    model = tiny_model()
    batch = {"item_seq": model_batch()["item_seq"], "seq_len": torch.tensor([4, 6])}
    with torch.no_grad():
        states = model.encode(batch["item_seq"])  # [2, 6, 8]
        users = model.user_vectors(batch)
        full = model.full_sort_predict(
            {model.ITEM_SEQ: batch["item_seq"], model.ITEM_SEQ_LEN: batch["seq_len"]}
        )
    torch.testing.assert_close(users, torch.stack([states[0, 3], states[1, 5]]))
    torch.testing.assert_close(full, users @ model.item_embeddings(torch.arange(N_ITEMS)).T)


def test_cpu_training_repeats_bit_for_bit_with_two_threads():
    """With ``reproducibility`` the run's seeding turns on torch's deterministic kernels on the
    CPU: without them this model's item-table gradient changed in its last bits from one
    identical backward pass to the next when torch used 2 threads."""
    from recbole_fork.session import seed
    from recbole_fork.settings import RunSettings
    from tests.conftest import run_config

    before, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        settings = RunSettings.from_config(run_config(model="WukongSeq", dataset="tiny"))
        seed(settings)
        assert torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(2)
        model = tiny_fork_model("WukongSeq", 12102, hidden_size=64, n_layers=2).train()
        gen = torch.Generator().manual_seed(0)
        seq = torch.randint(1, 12102, (256, 50), generator=gen)
        seq[:, 30:] = 0
        target = torch.roll(seq, -1, 1)
        target[:, 29:] = 0
        grads = []
        for _ in range(3):
            model.zero_grad()
            torch.manual_seed(1)  # the same dropout masks each time
            batch = {"item_seq": seq, "target": target}
            model.training_loss(batch, torch.Generator().manual_seed(3)).backward()
            grads.append(model.item_encoder.item_embedding.weight.grad.clone())
        assert all(torch.equal(grads[0], g) for g in grads[1:])
    finally:
        torch.use_deterministic_algorithms(before)
        torch.set_num_threads(threads)
