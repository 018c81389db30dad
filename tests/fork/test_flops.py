"""FLOPs as spent (recbole_fork.flops): hand counts on a trimmed batch, and agreement with
``torch.utils.flop_counter.FlopCounterMode`` over real forward and backward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from recbole_fork.data.seq_data import _trim
from recbole_fork.encoders import Catalog
from recbole_fork.evaluation import evaluate_ranking
from recbole_fork.flops import (
    TRAIN_FLOPS_MULTIPLIER,
    FlopCount,
    StepShape,
    estimate_embedded_ids,
    estimate_step_flops,
    expected_new_ids_bound,
    item_encoder_flops_per_id,
    ranking_flops,
    scoring_flops,
    step_flops,
)
from recbole_fork.models.hstu import HSTU
from recbole_fork.models.sasrec import SASRecX
from recbole_fork.models.wukong import WukongSeq
from tests.conftest import model_spec
from tests.fork.test_hstu import TINY as HSTU_TINY
from tests.fork.test_wukong import TINY as WUKONG_TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ITEMS, D, E = 12, 8, 6
SASREC_TINY = dict(
    hidden_size=D,
    inner_size=12,
    n_layers=2,
    n_heads=2,
    max_seq_length=6,
    hidden_dropout_prob=0.0,
    attn_dropout_prob=0.0,
)
MODELS = {
    "sasrec": (SASRecX, SASREC_TINY),
    "hstu": (HSTU, {**HSTU_TINY, "temperature": 0.05}),
    "wukong": (WukongSeq, WUKONG_TINY),
}
LOSSES = {
    "ssm": {"loss_type": "sampled_softmax", "num_negatives": 4},
    "ssm-shared": {"loss_type": "sampled_softmax", "num_negatives": 4, "shared_negatives": True},
    "full_ce": {"loss_type": "full_ce"},
}


def _catalog() -> Catalog:
    """11 items with a two-piece title."""
    title = torch.zeros(N_ITEMS, 2, dtype=torch.long)
    title[1:, 0] = torch.arange(1, N_ITEMS) % 4 + 1  # pieces 1..4
    title[1:, 1] = torch.arange(1, N_ITEMS) % 3 + 1
    vocab = ["[PAD]", "a", "b", "c", "d"]
    return Catalog(n_items=N_ITEMS, tokens={"title": title}, vocabs={"title": vocab})


def _model(name: str, encoder: str = "id", loss: str = "ssm", **overrides):
    cls, tiny = MODELS[name]
    settings = {
        **tiny,
        "item_encoder": encoder,
        "text_fields": ["title"],
        "text_embedding_size": E,
        **LOSSES[loss],
        **overrides,
    }
    spec = model_spec(cls.__name__, **settings)
    torch.manual_seed(0)
    return cls(spec, _catalog())


def _train_batch() -> dict[str, torch.Tensor]:
    """Three right-padded windows of width 6, trimmed by the data loader's own ``_trim``
    to width 4 (the longest row has 4 items): 9 real positions, 9 targets; ids 9 and 11 are
    absent, so the negatives change how many ids a sampled step embeds."""
    item_seq = np.array([[1, 2, 3, 4, 0, 0], [5, 6, 0, 0, 0, 0], [7, 8, 3, 0, 0, 0]])
    target = np.array([[2, 3, 4, 10, 0, 0], [6, 2, 0, 0, 0, 0], [8, 3, 1, 0, 0, 0]])
    time_seq = np.where(item_seq > 0, item_seq * 86_400, 0)
    arrays = _trim({"item_seq": item_seq, "target": target, "time_seq": time_seq})
    return {k: torch.from_numpy(v).long() for k, v in arrays.items()}


def _eval_batch() -> dict[str, torch.Tensor]:
    batch = _train_batch()
    seq_len = (batch["item_seq"] > 0).sum(1)  # [B]
    rows = torch.arange(3)
    return {
        "item_seq": batch["item_seq"],
        "time_seq": batch["time_seq"],
        "seq_len": seq_len,
        "target": batch["target"][rows, seq_len - 1],  # [B] the item after the last input
    }


# ----- FlopCount and the counting functions --------------------------------------------


def test_flop_count_arithmetic_and_dict():
    a, b = FlopCount(10, 2, 3), FlopCount(1, 0, 5)
    assert a.total == 15
    assert a + b == FlopCount(11, 2, 8)
    assert sum([a, b]) == sum([a, b], FlopCount()) == FlopCount(11, 2, 8)
    assert 2 * a == a * 2 == FlopCount(20, 4, 6)
    assert a.training() == a * TRAIN_FLOPS_MULTIPLIER == FlopCount(30, 6, 9)
    assert TRAIN_FLOPS_MULTIPLIER == 3
    assert a.as_dict("train_flops_") == {
        "train_flops_backbone": 10,
        "train_flops_item_encoder": 2,
        "train_flops_scoring": 3,
        "train_flops_total": 15,
    }
    with pytest.raises(TypeError):
        a * 1.5  # counts stay exact integers
    with pytest.raises(TypeError):
        a + 1


def test_scoring_flops_shared_per_row_and_catalog():
    # 5 rows of D=8: positive + K=4 negatives, shared or per row alike; or 12 catalog items.
    assert scoring_flops(5, 8, negatives=(4,)) == 2 * 5 * 8 * 5 == 400
    assert scoring_flops(5, 8, negatives=(5, 4)) == 400
    assert scoring_flops(5, 8, catalog=12) == 2 * 5 * 8 * 12 == 960
    with pytest.raises(ValueError, match="exactly one of negatives"):
        scoring_flops(5, 8)
    with pytest.raises(ValueError, match="exactly one of negatives"):
        scoring_flops(5, 8, negatives=(4,), catalog=12)
    with pytest.raises(ValueError, match=r"neither \(K,\) nor \(N, K\) with N=5"):
        scoring_flops(5, 8, negatives=(3, 4))


def test_item_encoder_flops_per_id():
    assert item_encoder_flops_per_id(_model("sasrec", "id").item_encoder) == 0
    # The adapter: one title field of E=6 -> D=8.
    assert item_encoder_flops_per_id(_model("sasrec", "text").item_encoder) == 2 * 6 * 8 == 96
    assert item_encoder_flops_per_id(_model("sasrec", "id+text").item_encoder) == 96


def test_backbone_forward_flops_by_hand():
    b, width = 3, 4
    # SASRec D=8, I=12, 2 blocks: projections 8*B*L*D^2 = 8*3*4*64 = 6144, FFN
    # 4*B*L*D*I = 4*12*8*12 = 4608, attention 4*B*L^2*D = 4*3*16*8 = 1536, per block.
    sasrec = _model("sasrec").backbone
    assert sasrec.forward_flops(b, width, 9) == 2 * (6144 + 4608 + 1536) == 24576
    # HSTU D=8, H=2, dqk=4, dv=3: uvqk 2*B*L*8*(12+16) = 5376, Linear_o 2*B*L*6*8 = 1152,
    # q k^T 2*B*H*L^2*4 = 768, A v 2*B*H*L^2*3 = 576, per layer.
    hstu = _model("hstu").backbone
    assert hstu.forward_flops(b, width, 9) == 2 * (5376 + 1152 + 768 + 576) == 15744
    # Wukong: only the 9 real positions run, 5552 FLOPs each (test_wukong's closed form).
    wukong = _model("wukong").backbone
    assert wukong.forward_flops(b, width, 9) == 9 * 5552 == 49968
    for backbone in (sasrec, hstu):  # the per-token figure at the width actually run
        assert backbone.forward_flops(b, width, 9) == b * width * backbone.flops_per_token(width)


def test_training_step_matches_hand_count_on_trimmed_batch():
    """SASRecX, text encoder, full CE, on a batch trimmed from width 6 to 4."""
    model = _model("sasrec", "text", "full_ce").train()
    batch = _train_batch()
    assert tuple(batch["item_seq"].shape) == (3, 4)  # trimmed
    model.training_loss(batch).backward()
    assert model.last_step_shape == StepShape(
        batch_size=3, width=4, n_real=9, n_supervised=9, n_embedded=N_ITEMS, catalog=N_ITEMS
    )
    # backbone: 24576 (test_backbone_forward_flops_by_hand); item encoder: the whole
    # catalog, 12 ids x adapter 2*6*8 = 1152; scoring: 9 states x 12 items, 2*9*8*12 = 1728.
    flops = model.last_step_flops
    assert flops == FlopCount(backbone=24576, item_encoder=1152, scoring=1728)
    assert flops.total == 27456
    assert flops.training().total == 3 * 27456 == 82368
    # Untrimmed (width 6) the backbone would cost 2 * (9216 + 6912 + 3456) = 39168.
    assert model.backbone.forward_flops(3, 6, 9) == 39168


def test_sampled_step_counts_unique_ids_and_negatives_by_hand():
    """WukongSeq, text encoder, 4 shared negatives: U is the unique ids really embedded."""
    model = _model("wukong", "text", "ssm-shared").train()
    batch = _train_batch()
    model.training_loss(batch, torch.Generator().manual_seed(3)).backward()
    pos = batch["target"][batch["target"] > 0]  # [9]
    negs = model.sampler.sample(pos, torch.Generator().manual_seed(3))  # the same draw, [4]
    uniq = torch.unique(torch.cat([pos, negs, batch["item_seq"].flatten()])).numel()
    # Present: 0..8 and 10 (10 ids); this draw, [10, 9, 8, 4], adds 9 (11 stays absent).
    assert negs.tolist() == [10, 9, 8, 4] and uniq == 11
    assert model.last_step_shape == StepShape(3, 4, 9, 9, uniq, negatives=(4,))
    # backbone 9 real positions x 5552; encoder U x 96; scoring 2*9*8*(1 + 4) = 720.
    assert model.last_step_flops == FlopCount(9 * 5552, uniq * 96, 720)


def test_no_step_reads_none():
    model = _model("sasrec")
    assert model.last_step_shape is None and model.last_step_flops is None


# ----- agreement with FlopCounterMode ----------------------------------------------------


def _measure(model, run) -> tuple[dict[str, int], int, int]:
    """FlopCounterMode over ``run()`` (returns a loss, or None for forward only): the
    forward FLOPs per component, and the forward and forward + backward totals.

    CPU SDPA runs ``_scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode
    has no formula for (torch 2.13: it counts only the CUDA flash / efficient / cuDNN
    kernels), so SASRec's attention would read 0; the math backend computes the same
    products as bmm calls, which it counts, forward and backward.
    """
    parts = {
        "backbone": type(model.backbone).__name__,
        "item_encoder": type(model.item_encoder).__name__,
        "scoring": type(model.loss_fn).__name__,
    }
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        loss = run()
        forward = counter.get_total_flops()
        by_module = counter.get_flop_counts()
        components = {k: sum(by_module.get(name, {}).values()) for k, name in parts.items()}
        if loss is not None:
            loss.backward()
        total = counter.get_total_flops()
    assert sum(components.values()) == forward  # nothing runs outside the three parts
    return components, forward, total


def _unseen_positive_dot(model, shape: StepShape) -> int:
    """The positive's score of a sampled loss is ``(user * pos_emb).sum(-1)``: element-wise
    ops that FlopCounterMode (matmul-family ops only) does not see, 2*D per row. Full CE
    scores the positive inside its one matmul."""
    return 0 if shape.catalog is not None else 2 * shape.n_supervised * model.backbone.hidden_size


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("encoder", ["id", "text", "id+text"])
@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_agrees_with_flop_counter(name, encoder, loss):
    model = _model(name, encoder, loss).train()
    batch = _train_batch()
    components, forward, total = _measure(
        model, lambda: model.training_loss(batch, torch.Generator().manual_seed(1))
    )
    counted = model.last_step_flops
    unseen = _unseen_positive_dot(model, model.last_step_shape)
    # Forward: exact, per component.
    assert components == {
        "backbone": counted.backbone,
        "item_encoder": counted.item_encoder,
        "scoring": counted.scoring - unseen,
    }
    # Forward + backward against 3 x forward: within 5% (measured 3.00 x the counted
    # matmuls; the only gap is the unseen positive dot product, < 1% of these steps).
    assert total == pytest.approx(counted.training().total, rel=0.05)
    assert total == TRAIN_FLOPS_MULTIPLIER * forward  # every matmul's backward is 2 x


@pytest.mark.parametrize("loss", ["ssm-shared", "full_ce"])
@pytest.mark.parametrize("name", list(MODELS))
def test_eval_step_agrees_with_flop_counter(name, loss):
    model = _model(name, "text", loss).eval()
    batch = _eval_batch()

    def run() -> None:  # forward only: nothing to differentiate
        model.eval_step(batch, torch.Generator().manual_seed(2))

    with torch.no_grad():
        components, forward, _ = _measure(model, run)
    shape = model.last_step_shape
    assert (shape.batch_size, shape.width, shape.n_real, shape.n_supervised) == (3, 4, 9, 3)
    counted = model.last_step_flops
    assert forward == counted.total - _unseen_positive_dot(model, shape)
    assert components["backbone"] == counted.backbone


@pytest.mark.parametrize("mode", ["full", "sampled:7"])
def test_ranking_flops_agree_with_flop_counter(mode):
    model = _model("sasrec", "id+text").eval()
    users = torch.randn(5, D)
    targets = torch.tensor([1, 4, 9, 10, 11])
    kwargs = dict(ks=[2], mode=mode, item_chunk=4, user_chunk=2)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        evaluate_ranking(
            users,
            model.item_embeddings,
            N_ITEMS,
            targets,
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        )
    counted = ranking_flops(model, 5, mode, item_chunk=4, user_chunk=2)
    n_cand = 11 if mode == "full" else 7
    # Encoder on candidates + targets; per candidate chunk, users in chunks of 2, 2, 1,
    # each [u, 8] x [8, C + u]: 2*8*(5 * n_cand + chunks * (4 + 4 + 1)).
    chunks = -(-n_cand // 4)
    assert counted == FlopCount(0, (n_cand + 5) * 96, 2 * 8 * (5 * n_cand + chunks * 9))
    assert counter.get_total_flops() == counted.total


# ----- planning estimates ----------------------------------------------------------------


def test_estimate_is_exact_where_nothing_is_random():
    batch = _train_batch()
    for name, encoder, loss in [("hstu", "text", "full_ce"), ("sasrec", "id", "ssm")]:
        model = _model(name, encoder, loss).train()
        model.training_loss(batch, torch.Generator().manual_seed(0))
        planned = estimate_step_flops(model, batch_size=3, width=4, n_real=9, n_supervised=9)
        assert planned == model.last_step_flops  # id: U costs nothing; full CE: U = catalog


def test_estimate_for_in_batch_negatives_is_exact():
    model = _model("sasrec", "text", "ssm", neg_sampler="in_batch", shared_negatives=True)
    batch = _train_batch()
    model.train().training_loss(batch, torch.Generator().manual_seed(0))
    present = torch.unique(torch.cat([batch["item_seq"].flatten(), batch["target"].flatten()]))
    assert model.last_step_shape.negatives == (9,)  # the 9 targets are the negatives
    planned = estimate_step_flops(
        model, batch_size=3, width=4, n_real=9, n_supervised=9, n_present_ids=present.numel()
    )
    assert planned == model.last_step_flops


def test_estimated_unique_ids_bound_the_mean_of_real_draws():
    model = _model("sasrec", "text", "ssm", num_negatives=3, shared_negatives=True).train()
    batch = _train_batch()
    present = torch.unique(torch.cat([batch["item_seq"].flatten(), batch["target"].flatten()]))
    assert present.numel() == 10  # 0..8 and 10; 9 and 11 absent
    planned = estimate_embedded_ids(
        model, batch_size=3, width=4, n_real=9, n_supervised=9, n_present_ids=10
    )
    # 3 draws, 2 of the 11 real items absent: at most 2 * (1 - (1/2)^3) = 1.75 new ids.
    assert planned == 10 + 2
    # A smaller batch leaves ids absent: the bound holds for the mean over many draws.
    small = {k: v[1:2] for k, v in batch.items()}  # one row: items 5, 6; targets 6, 2
    seen = []
    for seed in range(200):
        model.training_loss(small, torch.Generator().manual_seed(seed))
        seen.append(model.last_step_shape.n_embedded)
    planned = estimate_embedded_ids(
        model, batch_size=1, width=4, n_real=2, n_supervised=2, n_present_ids=4
    )
    # Present: 0 (padding), 2, 5, 6; 3 uniform draws over 11 items, 8 of them absent:
    # bound 8 * (1 - (7/8)^3) = 2.64, so U <= 4 + 3 = 7 (an expectation, rounded up).
    assert expected_new_ids_bound(3, 3, 11) == pytest.approx(8 * (1 - (7 / 8) ** 3))
    assert planned == 7
    assert np.mean(seen) <= planned and max(seen) <= 4 + 3
    # Without the present ids the plan bounds them by inputs + targets + padding: 2 + 2 + 1.
    loose = estimate_embedded_ids(model, batch_size=1, width=4, n_real=2, n_supervised=2)
    assert loose == 5 + np.ceil(expected_new_ids_bound(4, 3, 11)) >= planned


def test_step_flops_from_shape_needs_no_model_run():
    model = _model("hstu", "text", "ssm")
    shape = StepShape(
        batch_size=3, width=4, n_real=9, n_supervised=9, n_embedded=20, negatives=(4,)
    )
    assert step_flops(model, shape) == FlopCount(15744, 20 * 96, 2 * 9 * 8 * 5)
