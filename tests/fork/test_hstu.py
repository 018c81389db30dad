"""HSTU backbone: time buckets, a layer against the paper's formula, causality, padding,
parameter and FLOP counts, a few training steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from recbole_fork.models.hstu import HSTU, HSTUBackbone, HSTUSettings, query_times, time_buckets
from recbole_fork.params import count_parameters
from recbole_fork.settings import ConfigError
from tests.conftest import assert_backbone_learns, tiny_fork_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


HSTU_YAML = Path(__file__).resolve().parents[2] / "recbole_fork/properties/model/HSTU.yaml"

# D=8, 2 heads, d_qk=4, d_v=3, N=6: small enough to count by hand.
TINY = dict(
    hidden_size=8,
    n_layers=2,
    n_heads=2,
    attention_dim=4,
    linear_dim=3,
    hidden_dropout_prob=0.0,
    attn_dropout_prob=0.0,
    max_seq_length=6,
    use_time_bias=True,
    use_position_bias=True,
    hstu_time_bias="own",  # the backbone tests below check t_i - t_j; `next` has its own
)


def tiny_backbone(**overrides) -> HSTUBackbone:
    torch.manual_seed(0)
    backbone = HSTUBackbone(HSTUSettings(**{**TINY, **overrides}))
    # Nonzero biases so the tests see the relative attention bias at work.
    for layer in backbone.layers:
        for weight in (layer.rab.position_weight, layer.rab.time_weight):
            if weight is not None:
                torch.nn.init.normal_(weight, std=0.5)
    return backbone.eval()


def tiny_batch(seq_len: int = 5):
    torch.manual_seed(1)
    x = torch.randn(2, seq_len, 8)
    mask = torch.zeros(2, seq_len, dtype=torch.bool)
    mask[0, :3] = True  # 3 real items, 2 padding
    mask[1, :] = True
    time_seq = torch.tensor([[100, 160, 5_000, 0, 0], [10, 10, 11, 1_000_000, 1_000_100]])
    return x, mask, time_seq[:, :seq_len]


def test_time_buckets_match_formula():
    gaps = torch.tensor([0, 1, 2, 10, 10**6, -10, 10**18])
    # ln(1)=0 -> 0; ln(2)/0.301=2.30 -> 2; ln(10)/0.301=7.65 -> 7; ln(1e6)/0.301=45.90 -> 45;
    # the sign is ignored; ln(1e18)/0.301=137.7 is clamped to 128.
    assert time_buckets(gaps).tolist() == [0, 0, 2, 7, 45, 7, 128]
    assert time_buckets(gaps).dtype == torch.int64


def reference_layer(layer, x, time_seq, n, query=None):
    """One HSTU layer written out entry by entry from REFERENCE.md section 2 (one sequence).

    The time bucket of query i and key j is of ``query[i] - time_seq[j]``; ``query``
    defaults to ``time_seq`` (``own``), the reference's ``next`` passes t_{i+1}.
    """
    query = time_seq if query is None else query
    seq_len, dim = x.shape
    heads, dq, dv = layer.n_heads, layer.attention_dim, layer.linear_dim
    normed = F.layer_norm(x, (dim,), eps=1e-6)
    proj = F.silu(normed @ layer.uvqk.weight.T)
    u, v = proj[:, : heads * dv], proj[:, heads * dv : 2 * heads * dv]
    q = proj[:, 2 * heads * dv : 2 * heads * dv + heads * dq]
    k = proj[:, 2 * heads * dv + heads * dq :]
    out = torch.zeros(seq_len, heads * dv)
    for h in range(heads):
        for i in range(seq_len):
            for j in range(i + 1):  # causal: keys j <= i
                score = q[i, h * dq : (h + 1) * dq] @ k[j, h * dq : (h + 1) * dq]
                score = score + layer.rab.position_weight[j - i + n - 1]
                bucket = int(math.floor(math.log(max(abs(query[i] - time_seq[j]), 1)) / 0.301))
                score = score + layer.rab.time_weight[min(max(bucket, 0), 128)]
                out[i, h * dv : (h + 1) * dv] += F.silu(score) / n * v[j, h * dv : (h + 1) * dv]
    gated = u * F.layer_norm(out, (heads * dv,), eps=1e-6)
    return x + gated @ layer.output.weight.T + layer.output.bias


def test_layer_matches_written_out_formula():
    backbone = tiny_backbone()
    x, _, time_seq = tiny_batch()
    x, time_seq = x[1:], time_seq[1:]  # the all-real row
    layer = backbone.layers[0]
    mask = torch.ones(5, 5).tril()[None, None]
    with torch.no_grad():
        got = layer(x, mask, time_buckets(time_seq[:, :, None] - time_seq[:, None, :]))[0]
        want = reference_layer(layer, x[0], time_seq[0].tolist(), n=6)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_output_shape_and_zero_padding():
    backbone = tiny_backbone()
    x, mask, time_seq = tiny_batch()
    with torch.no_grad():
        out = backbone(x, mask, time_seq)
    assert out.shape == (2, 5, 8)
    assert out[0, 3:].abs().sum().item() == 0.0
    assert out[0, :3].abs().sum().item() > 0.0


def test_causal_in_items_and_times():
    backbone = tiny_backbone()
    x, mask, time_seq = tiny_batch()
    with torch.no_grad():
        before = backbone(x, mask, time_seq)
        t = 2
        x2, time2 = x.clone(), time_seq.clone()
        x2[1, t + 1 :] = torch.randn(2, 8)
        time2[1, t + 1 :] = torch.tensor([77, 999_999_999])
        after = backbone(x2, mask, time2)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=0, rtol=0)
    assert not torch.allclose(after[1, t + 1 :], before[1, t + 1 :])
    # An earlier change does propagate forward: the test would catch a non-causal no-op.
    x3 = x.clone()
    x3[1, 0] = torch.randn(8)  # not a constant shift, which LayerNorm would remove
    with torch.no_grad():
        moved = backbone(x3, mask, time_seq)
    assert not torch.allclose(moved[1, 4], before[1, 4])


def test_time_changes_move_outputs():
    backbone = tiny_backbone()
    x, mask, time_seq = tiny_batch()
    time2 = time_seq.clone()
    time2[1, 1] = 10**7  # gap bucket of positions 0-1 and 1-2 changes
    with torch.no_grad():
        a, b = backbone(x, mask, time_seq), backbone(x, mask, time2)
    torch.testing.assert_close(a[1, 0], b[1, 0], atol=0, rtol=0)
    assert not torch.allclose(a[1, 1], b[1, 1])
    off = tiny_backbone(use_time_bias=False)
    with torch.no_grad():
        torch.testing.assert_close(off(x, mask, time_seq), off(x, mask, time2), atol=0, rtol=0)
        off(x, mask, None)  # no time bias: time_seq may be absent


def test_padding_does_not_affect_real_positions():
    backbone = tiny_backbone()
    x, mask, time_seq = tiny_batch()
    with torch.no_grad():
        before = backbone(x, mask, time_seq)
        x2, time2 = x.clone(), time_seq.clone()
        x2[0, 3:] = 100.0
        time2[0, 3:] = 123_456
        changed = backbone(x2, mask, time2)
        # One more padding column (L 5 -> 6): the 1/N scale is max_seq_length, so equal.
        longer = backbone(F.pad(x, (0, 0, 0, 1)), F.pad(mask, (0, 1)), F.pad(time_seq, (0, 1)))
    torch.testing.assert_close(changed[0], before[0], atol=0, rtol=0)
    torch.testing.assert_close(longer[:, :5], before, atol=1e-6, rtol=1e-6)


def test_parameter_count_closed_form():
    d, h, dq, dv, n, layers = 8, 2, 4, 3, 6, 2
    per_layer = (
        d * (2 * h * dv + 2 * h * dq)  # W_uvqk, no bias
        + h * dv * d
        + d  # Linear_o with bias
        + (2 * n - 1)  # position offsets
        + 129  # time buckets
    )
    expected = n * d + layers * per_layer  # absolute positions + blocks
    assert expected == 888
    count = sum(p.numel() for p in tiny_backbone().parameters())
    assert count == expected
    no_time = sum(p.numel() for p in tiny_backbone(use_time_bias=False).parameters())
    assert no_time == expected - layers * 129
    no_rab = tiny_backbone(use_time_bias=False, use_position_bias=False)
    assert sum(p.numel() for p in no_rab.parameters()) == expected - layers * (129 + 2 * n - 1)


def test_flops_per_token_closed_form():
    # Per layer: uvqk 2*8*(12+16)=448, q k^T 2*2*4*5=80, A v 2*2*3*5=60, o 2*6*8=96.
    assert tiny_backbone().flops_per_token(5) == 2 * (448 + 80 + 60 + 96)


def test_defaults_from_yaml_and_describe():
    config = yaml.safe_load(HSTU_YAML.read_text())
    backbone = HSTUBackbone(HSTUSettings.from_mapping(config))
    assert backbone.describe() == "hstu-d50-l2-h1"
    assert backbone.settings.hstu_time_bias == "next" and backbone.time_bias == "next"
    own = HSTUSettings.from_mapping({**config, "hstu_time_bias": "own"})
    assert own.describe() == "hstu-d50-l2-h1-own"
    assert HSTUSettings(**{**TINY, "use_time_bias": False}).describe() == "hstu-d8-l2-h2"
    with pytest.raises(ConfigError, match="hstu_time_bias"):
        HSTUSettings(**{**TINY, "hstu_time_bias": "query"})
    assert backbone.normalize is True
    del config["linear_dim"]
    with pytest.raises(ConfigError, match="config key 'linear_dim' is missing"):
        HSTUSettings.from_mapping(config)


def test_bad_inputs_raise_clear_errors():
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="max_seq_length 6"):
        backbone(torch.randn(1, 7, 8), torch.ones(1, 7, dtype=torch.bool), torch.zeros(1, 7).long())
    with pytest.raises(ValueError, match="time_seq"):
        backbone(torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool), None)
    with pytest.raises(ConfigError, match="n_heads"):
        HSTUSettings(**{**TINY, "n_heads": 0})


def test_few_training_steps_lower_sampled_softmax_loss():
    assert_backbone_learns(
        lambda: HSTUBackbone(HSTUSettings(**{**TINY, "hidden_dropout_prob": 0.1})),
        normalize=True,
        temperature=0.05,
        with_time=True,
        optimizer=torch.optim.AdamW,
    )


# ----- the HSTU model: item encoder + backbone + loss (recbole_fork.models.base) -----------

N_ITEMS = 12


def tiny_model(**overrides) -> HSTU:
    overrides = {**TINY, "num_negatives": 4, "temperature": 0.05, **overrides}
    return tiny_fork_model("HSTU", N_ITEMS, **overrides)


def model_batch():
    item_seq = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10]])
    target = torch.tensor([[2, 3, 4, 5, 0, 0], [6, 7, 8, 9, 10, 11]])
    time_seq = torch.where(item_seq > 0, item_seq * 86_400, 0)
    return {"item_seq": item_seq, "time_seq": time_seq, "target": target}


def test_model_counts_and_describe():
    model = tiny_model()
    counts = count_parameters(model)
    assert counts.embedding == N_ITEMS * 8 == 96
    assert counts.non_embedding == 888  # the backbone's closed form above
    assert model.describe() == "hstu-d8-l2-h2-own-id"
    assert model.normalize is True
    assert model.flops_per_token() == model.backbone.flops_per_token(6) == 2 * (448 + 96 + 72 + 96)


def test_model_item_rows_start_at_the_papers_scale():
    # The paper's item rows start at std 0.02 (ForkSeqModel's initializer_range default), the
    # scale its sqrt(D) input scaling assumes: items and positions (std sqrt(1/D)) then match.
    weight = tiny_model().item_encoder.item_embedding.weight
    assert weight[0].abs().sum().item() == 0.0  # padding row
    assert 0.015 < weight[1:].std().item() < 0.025


def test_model_trains_a_few_steps():
    model = tiny_model().train()
    batch = model_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(0)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model.training_loss(batch, torch.Generator().manual_seed(9)).item()
        model.train()
        return loss

    first = held_out_loss()
    for _ in range(15):
        opt.zero_grad()
        model.training_loss(batch, gen).backward()
        opt.step()
    assert held_out_loss() < 0.5 * first


def test_model_eval_and_recbole_hooks_use_time():
    model = tiny_model()
    batch = model_batch()
    eval_batch = {**batch, "seq_len": torch.tensor([4, 6]), "target": torch.tensor([5, 11])}
    with torch.no_grad():
        users, loss = model.eval_step(eval_batch, torch.Generator().manual_seed(1))
        torch.testing.assert_close(users.norm(dim=-1), torch.ones(2))  # L2-normalised
        interaction = {
            model.ITEM_SEQ: batch["item_seq"],
            model.ITEM_SEQ_LEN: torch.tensor([4, 6]),
            "timestamp_list": batch["time_seq"].double(),  # RecBole keeps float seconds
        }
        full = model.full_sort_predict(interaction)
    assert torch.isfinite(loss)
    torch.testing.assert_close(full, users @ model.item_embeddings(torch.arange(N_ITEMS)).T)
    with pytest.raises(ValueError, match="time_seq"):
        model.user_vectors({"item_seq": batch["item_seq"], "seq_len": torch.tensor([4, 6])})


# ----- hstu_time_bias: next (REFERENCE section 6.1: buckets of t_{i+1} - t_j) -------------


def test_next_time_bias_buckets_the_predicted_events_time():
    """A layer with `next` equals the written-out formula with q_i = t_{i+1}, and a
    backbone without query times refuses to guess."""
    backbone = tiny_backbone(hstu_time_bias="next")
    x, _, time_seq = tiny_batch(seq_len=5)
    x, time_seq = x[1:], time_seq[1:]  # the all-real row: times 10, 10, 11, 1e6, 1e6+100
    query = torch.tensor([[10, 11, 1_000_000, 1_000_100, 2_000_000]])  # t_{i+1}
    mask = torch.ones(5, 5).tril().view(1, 1, 5, 5)  # causal
    layer = backbone.layers[0]
    with torch.no_grad():
        got = layer(x, mask, time_buckets(query[:, :, None] - time_seq[:, None, :]))[0]
    want = reference_layer(layer, x[0], time_seq[0].tolist(), n=6, query=query[0].tolist())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="query_time"):
        backbone(x, torch.ones(1, 5, dtype=torch.bool), time_seq)


def test_query_times_of_training_and_evaluation_batches():
    item_seq = torch.tensor([[4, 5, 6, 0], [7, 8, 0, 0]])
    time_seq = torch.tensor([[10, 20, 30, 0], [5, 6, 0, 0]])
    # Evaluation: the held-out items come at 45 and 9; earlier positions predict inputs.
    batch = {"item_seq": item_seq, "time_seq": time_seq, "target_time": torch.tensor([45, 9])}
    assert query_times(batch).tolist() == [[20, 30, 45, 0], [6, 9, 0, 0]]
    # Training: target_time [B, L] is already t_{i+1}.
    train = {**batch, "target_time": torch.tensor([[20, 30, 45, 0], [6, 9, 0, 0]])}
    assert query_times(train) is train["target_time"]
    assert query_times({"item_seq": item_seq, "time_seq": time_seq}) is None


def test_training_windows_carry_the_next_items_time():
    from recbole_fork.data.windows import gather_windows

    items = torch.arange(10, 20).numpy()  # one user, 10 items
    times = (1000 + 10 * torch.arange(10)).numpy()
    out = gather_windows(items, times, start=torch.tensor([2]).numpy(), length=torch.tensor([4]).numpy(), max_len=5, last_only=False)  # fmt: skip
    assert out["item_seq"].tolist() == [[12, 13, 14, 0, 0]]
    assert out["target"].tolist() == [[13, 14, 15, 0, 0]]
    assert out["target_time"].tolist() == [[1030, 1040, 1050, 0, 0]]
    last = gather_windows(items, times, start=torch.tensor([2]).numpy(), length=torch.tensor([4]).numpy(), max_len=5, last_only=True)  # fmt: skip
    assert last["target"].tolist() == [[0, 0, 15, 0, 0]]
    assert last["target_time"].tolist() == [[1030, 1040, 1050, 0, 0]]


def test_nothing_after_the_predicted_event_reaches_the_query():
    """With `next`, position i's state depends on items and times up to i and on the time
    of the item it predicts (t_{i+1}); not on that item, nor on anything later."""
    model = tiny_model(hstu_time_bias="next")
    item_seq = torch.tensor([[1, 2, 3, 4, 5, 6]])
    time_seq = torch.tensor([[100, 200, 400, 800, 1600, 3200]])
    target_time = torch.tensor([[200, 400, 800, 1600, 3200, 6400]])  # t_{i+1}
    x = model.item_encoder(item_seq)
    i = 2  # predicts item 4 at time 800
    later_items = item_seq.clone()
    later_items[0, i + 1 :] = torch.tensor([9, 10, 11])
    later_times = time_seq.clone()
    later_times[0, i + 1 :] = torch.tensor([900, 5000, 99_999])
    later_targets = target_time.clone()
    later_targets[0, i + 1 :] = torch.tensor([7000, 8000, 10**7])
    later_targets[0, i] = 900  # the predicted event moved: its time is the only thing read

    def states(items, times, targets):
        batch = {"item_seq": items, "time_seq": times, "target_time": targets}
        with torch.no_grad():
            emb = model.item_encoder(items)
            return model._contextualise(emb, items, model._time_inputs(batch))[0]

    base = states(item_seq, time_seq, target_time)
    # Items and times after the predicted event, and the predicted item itself: no effect.
    after = states(later_items, later_times, target_time.where(
        torch.arange(6) <= i, later_targets))  # fmt: skip
    torch.testing.assert_close(after[: i + 1], base[: i + 1], atol=0, rtol=0)
    # The predicted event's time does reach position i (and nothing earlier).
    moved = target_time.clone()
    moved[0, i] = 10**6
    shifted = states(item_seq, time_seq, moved)
    torch.testing.assert_close(shifted[:i], base[:i], atol=0, rtol=0)
    assert not torch.allclose(shifted[i], base[i])
    # `own` ignores target_time altogether.
    own = tiny_model(hstu_time_bias="own")
    own.load_state_dict(model.state_dict())
    with torch.no_grad():
        a = own._contextualise(x, item_seq, own._time_inputs({"time_seq": time_seq, "target_time": target_time, "item_seq": item_seq}))  # fmt: skip
        b = own._contextualise(x, item_seq, own._time_inputs({"time_seq": time_seq, "target_time": moved, "item_seq": item_seq}))  # fmt: skip
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_next_evaluation_uses_the_held_out_items_time_only():
    """An evaluation batch's user vector (last position) reads the target's time; the
    training batch's state at the same position gives the same vector (one convention)."""
    model = tiny_model(hstu_time_bias="next")
    item_seq = torch.tensor([[1, 2, 3, 0, 0, 0]])
    time_seq = torch.tensor([[100, 200, 400, 0, 0, 0]])
    eval_batch = {"item_seq": item_seq, "time_seq": time_seq, "seq_len": torch.tensor([3]), "target_time": torch.tensor([800])}  # fmt: skip
    train_times = torch.tensor([[200, 400, 800, 0, 0, 0]])
    with torch.no_grad():
        user = model.user_vectors(eval_batch)
        states = model._contextualise(
            model.item_encoder(item_seq),
            item_seq,
            model._time_inputs({"item_seq": item_seq, "time_seq": time_seq, "target_time": train_times}),
        )  # fmt: skip
        later = model.user_vectors({**eval_batch, "target_time": torch.tensor([10**7])})
    torch.testing.assert_close(user[0], model._norm(states[0, 2]), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(user, later)
    with pytest.raises(ValueError, match="query_time"):
        model.user_vectors({k: v for k, v in eval_batch.items() if k != "target_time"})
