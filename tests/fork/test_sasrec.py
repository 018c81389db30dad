"""SASRecX: causality, exact parameter and FLOP counts, single-pass embedding, RecBole hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_fork.encoders import Catalog
from recbole_fork.models.sasrec import SASRecX
from recbole_fork.params import count_parameters
from recbole_fork.settings import ConfigError
from tests.conftest import backbone_settings, model_spec

N_ITEMS, D, INNER, L, LAYERS, HEADS = 10, 8, 12, 5, 2, 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _catalog() -> Catalog:
    """9 items with a two-piece title."""
    title = torch.zeros(N_ITEMS, 2, dtype=torch.long)
    title[1:, 0] = torch.arange(1, N_ITEMS) % 4 + 1  # pieces 1..4
    title[1:, 1] = torch.arange(1, N_ITEMS) % 3 + 1
    vocab = ["[PAD]", "a", "b", "c", "d"]
    return Catalog(n_items=N_ITEMS, tokens={"title": title}, vocabs={"title": vocab})


def _model(**overrides) -> SASRecX:
    spec = model_spec(
        "SASRecX",
        **{
            "hidden_size": D,
            "inner_size": INNER,
            "n_layers": LAYERS,
            "n_heads": HEADS,
            "max_seq_length": L,
            "hidden_dropout_prob": 0.0,
            "attn_dropout_prob": 0.0,
            "num_negatives": 4,
            "text_fields": ["title"],
            "text_embedding_size": 6,
            **overrides,
        },
    )
    torch.manual_seed(0)
    return SASRecX(spec, _catalog()).eval()


def _backbone_params(d: int, inner: int, seq: int, layers: int) -> int:
    """Closed form: position table + one LayerNorm + per block 4 projections, 2 LNs, FFN."""
    per_block = 4 * (d * d + d) + 2 * (2 * d) + (d * inner + inner) + (inner * d + d)
    return seq * d + 2 * d + layers * per_block


def test_parameter_counts_match_closed_form():
    model = _model()
    counts = count_parameters(model)
    # 1200 = 10*8 item rows + 5*8 positions + 16 LN + 2 * 532 per block.
    assert counts.total == N_ITEMS * D + _backbone_params(D, INNER, L, LAYERS) == 1200
    assert counts.embedding == N_ITEMS * D == 80
    assert counts.non_embedding == 1120
    pre = count_parameters(_model(layer_norm_position="pre"))
    assert pre.total == counts.total


def test_text_encoder_parameter_counts():
    counts = count_parameters(_model(item_encoder="text"))
    table, adapter = 5 * 6, 6 * D + D  # 5 title pieces x E=6; adapter E -> D
    assert counts.embedding == table == 30
    assert counts.total == table + adapter + _backbone_params(D, INNER, L, LAYERS)


def test_describe_and_flops():
    model = _model(item_encoder="text")
    assert model.describe() == "sasrec-d8-l2-h2-text"
    per_block = 8 * D * D + 4 * L * D + 4 * D * INNER  # projections, attention, FFN
    assert model.flops_per_token() == LAYERS * per_block + 2 * 6 * D == 2 * 1056 + 96


@pytest.mark.parametrize("position", ["post", "pre"])
def test_causal(position):
    model = _model(layer_norm_position=position)
    seq = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 0, 0, 0]])
    changed = seq.clone()
    changed[0, 3:] = torch.tensor([9, 2])  # items after t = 2 replaced
    changed[1, 2] = 6  # padding after t = 1 replaced by a real item
    with torch.no_grad():
        a, b = model.encode(seq), model.encode(changed)
    torch.testing.assert_close(a[0, :3], b[0, :3], rtol=0, atol=0)
    torch.testing.assert_close(a[1, :2], b[1, :2], rtol=0, atol=0)
    assert not torch.allclose(a[0, 3:], b[0, 3:])


def test_reverse_positions_count_back_from_the_last_item():
    fwd, rev = _model(), _model(position_order="reverse")
    rev.load_state_dict(fwd.state_dict())  # same weights; only the position indices differ
    seq = torch.tensor([[3, 1, 4, 0, 0], [2, 5, 0, 0, 0]])
    # Forward order on the same items written at positions 2, 1, 0 (and 1, 0): the reverse
    # order's embeddings of a row equal the forward order's with the table read backwards.
    table = rev.backbone.position_embedding.weight.detach().clone()
    with torch.no_grad():
        states = rev.encode(seq)
        for row, n in ((0, 3), (1, 2)):
            index = torch.arange(n - 1, -1, -1)  # n - 1 - t
            fwd.backbone.position_embedding.weight[:n].copy_(table[index])
            torch.testing.assert_close(fwd.encode(seq)[row, :n], states[row, :n])
            fwd.backbone.position_embedding.weight.copy_(table)
    # Causal in the items: later items' identities do not change earlier outputs.
    changed = seq.clone()
    changed[0, 2] = 9
    with torch.no_grad():
        torch.testing.assert_close(rev.encode(changed)[0, :2], states[0, :2], rtol=0, atol=0)
    assert count_parameters(rev).total == count_parameters(fwd).total
    assert rev.describe() == "sasrec-d8-l2-h2-rev-id"
    assert _model(layer_norm_position="pre").describe() == "sasrec-d8-l2-h2-pre-id"
    with pytest.raises(ConfigError, match=r"valid: \['forward', 'reverse'\]"):
        backbone_settings(position_order="backward")


def test_user_vectors_take_last_real_position():
    model = _model()
    batch = {
        "item_seq": torch.tensor([[3, 1, 4, 0, 0], [2, 0, 0, 0, 0]]),
        "seq_len": torch.tensor([3, 1]),
    }
    with torch.no_grad():
        states = model.encode(batch["item_seq"])
        users = model.user_vectors(batch)
    torch.testing.assert_close(users, torch.stack([states[0, 2], states[1, 0]]))


def test_training_loss_embeds_each_needed_item_once():
    model = _model(item_encoder="text", num_negatives=3, shared_negatives=True).train()
    calls: list[torch.Tensor] = []
    model.item_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0]))
    batch = {
        "item_seq": torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]),
        "target": torch.tensor([[2, 3, 9, 0, 0], [5, 6, 7, 8, 9]]),
    }
    gen = torch.Generator().manual_seed(0)
    negs = model.sampler.sample(torch.tensor([1]), torch.Generator().manual_seed(0))
    loss = model.training_loss(batch, gen)
    loss.backward()
    assert torch.isfinite(loss)
    assert len(calls) == 1  # one encoder call for inputs, targets and negatives together
    expected = torch.unique(
        torch.cat([batch["item_seq"].flatten(), batch["target"].flatten(), negs])
    )
    expected = expected[expected > 0]
    # Padding id 0 appears among the inputs and is embedded with them (it is masked later).
    assert sorted(calls[0].tolist()) == sorted([0, *expected.tolist()])


def test_training_loss_uses_only_target_positions():
    model = _model(loss_type="full_ce")
    batch = {"item_seq": torch.tensor([[1, 2, 3, 0, 0]]), "target": torch.tensor([[2, 3, 0, 0, 0]])}
    with torch.no_grad():
        loss = model.training_loss(batch)
        states = model.encode(batch["item_seq"])[0, :2]  # [2, D]: the supervised positions
        all_emb = model.item_embeddings(torch.arange(N_ITEMS))  # [n_items, D]
        expected = model.loss_fn(
            states, torch.tensor([2, 3]), None, None, None, all_item_emb=all_emb
        )
    torch.testing.assert_close(loss, expected)


def test_eval_step_matches_user_vectors():
    model = _model()
    batch = {
        "item_seq": torch.tensor([[3, 1, 4, 0, 0], [2, 5, 0, 0, 0]]),
        "seq_len": torch.tensor([3, 2]),
        "target": torch.tensor([7, 8]),
    }
    with torch.no_grad():
        users, loss = model.eval_step(batch, torch.Generator().manual_seed(1))
        torch.testing.assert_close(users, model.user_vectors(batch))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_recbole_interface():
    model = _model()
    interaction = {
        model.ITEM_SEQ: torch.tensor([[3, 1, 4, 0, 0], [2, 5, 0, 0, 0]]),
        model.ITEM_SEQ_LEN: torch.tensor([3, 2]),
        model.ITEM_ID: torch.tensor([7, 8]),
    }
    with torch.no_grad():
        full = model.full_sort_predict(interaction)
        point = model.predict(interaction)
    assert full.shape == (2, N_ITEMS)
    torch.testing.assert_close(point, full[[0, 1], [7, 8]])
    assert torch.isfinite(model.calculate_loss(interaction))


def test_bad_hyperparameters():
    with pytest.raises(ConfigError, match="divisible by n_heads 3"):
        backbone_settings(hidden_size=8, n_heads=3)
    with pytest.raises(ConfigError, match=r"valid: \['post', 'pre'\]"):
        backbone_settings(layer_norm_position="middle")
    with pytest.raises(ConfigError, match="unknown hidden_act 'elu'"):
        backbone_settings(hidden_act="elu")
    with pytest.raises(ConfigError, match="larger than the catalog"):
        _model(num_negatives=50)
    with pytest.raises(ConfigError, match="unknown loss_type 'hinge'"):
        _model(loss_type="hinge")


def test_initial_sampled_softmax_loss_is_near_log_k():
    # Small initial weights (RecBole's N(0, 0.02)) give logits near 0, so the loss of a fresh
    # model is close to log(1 + K); PyTorch's default N(0, 1) embeddings gave ~ 3x that.
    model = _model(num_negatives=8).train()
    batch = {"item_seq": torch.tensor([[1, 2, 3, 0, 0]]), "target": torch.tensor([[2, 3, 9, 0, 0]])}
    loss = model.training_loss(batch, torch.Generator().manual_seed(0))
    assert abs(loss.item() - np.log(9)) < 0.2
    assert torch.count_nonzero(model.item_encoder(torch.tensor([0]))) == 0
