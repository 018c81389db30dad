"""Fine-tuning strategies: which parameters move, stage by stage; EWC; run names; logging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recbole_fork.checkpoint import load_checkpoint
from recbole_fork.finetune import (
    EWCPenalty,
    FineTuneError,
    Stage,
    estimate_fisher,
    fine_tune,
    fine_tune_config,
    plan_stages,
)
from recbole_fork.naming import run_name
from recbole_fork.session import train
from recbole_fork.settings import RunSettings
from tests.conftest import run_config, write_atomic_dataset

ARCH = {
    "model": "SASRecX",
    "item_encoder": "text",
    "text_fields": ["title", "brand"],
    "text_embedding_size": 8,
    "hidden_size": 8,
    "inner_size": 16,
    "n_layers": 2,
    "n_heads": 2,
    "max_seq_length": 6,
}
TRAIN = {
    "num_negatives": 5,
    "train_batch_size": 16,
    "eval_batch_size": 64,
    "learning_rate": 0.01,
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
    "valid_metric": "NDCG@10",
    "stopping_step": 100,
    "scheduler": {"type": "constant"},
}
TABLES = ["item_encoder.tables.brand.weight", "item_encoder.tables.title.weight"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """(data path holding ``src`` and ``tgt``, checkpoint pre-trained on ``src``)."""
    root = tmp_path_factory.mktemp("ft") / "data"
    write_atomic_dataset(root, "src", n_users=30, n_items=20, seed=1, item_text=True)
    write_atomic_dataset(root, "tgt", n_users=24, n_items=16, seed=2, item_text=True)
    config = run_config(root, **ARCH, **TRAIN, dataset="src", epochs=1)
    ckpt = root.parent / "src.pth"
    train(config, ckpt)
    return root, ckpt


def _config(root: Path, ckpt: Path | None, strategy: str, **extra):
    settings = {
        **TRAIN, "fine_tune_strategy": strategy, "data_path": str(root), "use_gpu": False,
        "show_progress": False, **extra,
    }  # fmt: skip
    return fine_tune_config(settings, "tgt", pretrained=ckpt)


def _run(root, ckpt, strategy, tmp_path, **extra):
    """Fine-tune and record the weights at the start and end of every stage."""
    snaps: list[tuple[str, Stage, dict[str, torch.Tensor]]] = []

    def hook(event, stage, model):
        snaps.append((event, stage, {n: p.detach().clone() for n, p in model.named_parameters()}))

    config = _config(root, ckpt, strategy, **extra)
    result = fine_tune(
        config, tmp_path / "ft.pth", pretrained=ckpt, pretrain_dataset="src", stage_hook=hook
    )
    return result, snaps


def _changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def _pairs(snaps):
    """(stage, start weights, end weights) per stage."""
    assert [e for e, _, _ in snaps] == ["start", "end"] * (len(snaps) // 2)
    return [(snaps[i][1], snaps[i][2], snaps[i + 1][2]) for i in range(0, len(snaps), 2)]


def test_full_loads_everything_and_trains_everything(pretrained, tmp_path, fake_tracker):
    root, ckpt = pretrained
    _, snaps = _run(root, ckpt, "full", tmp_path, epochs=2)
    ((stage, start, end),) = _pairs(snaps)
    assert stage.name == "all" and stage.frozen == ()
    state = load_checkpoint(ckpt)["model_state"]
    # Every parameter starts at its pre-trained value (the text tables over the checkpoint's
    # vocabulary, so their shapes are the pre-training ones).
    for name, value in start.items():
        assert torch.equal(value, state[name]), name
    assert _changed(start, end) == set(start)
    tracker = fake_tracker.last
    assert tracker.experiment == "fine_tune-tgt"
    assert tracker.run_name == "sasrec-d8-l2-h2-text-tgt-full-s2020"
    assert tracker.tags["strategy"] == "full" and tracker.tags["pretrain_dataset"] == "src"
    assert tracker.params["fine_tune.strategy"] == "full"
    # The target's real users; the padding id is not counted (as in pre-training's params).
    assert tracker.params["dataset_users"] == 24
    assert tracker.params["eval_protocol"] == "full"
    epochs = [m for m, step in tracker.metrics if step is not None]
    total = sum(v.numel() for v in start.values())
    assert [m["trainable_params"] for m in epochs] == [total, total]


def test_frozen_embeddings_freezes_exactly_the_token_tables(pretrained, tmp_path, fake_tracker):
    root, ckpt = pretrained
    _, snaps = _run(root, ckpt, "frozen_embeddings", tmp_path, epochs=2)
    ((stage, start, end),) = _pairs(snaps)
    assert list(stage.frozen) == TABLES
    assert _changed(start, end) == set(start) - set(TABLES)
    frozen = sum(start[n].numel() for n in TABLES)
    total = sum(v.numel() for v in start.values())
    epochs = [m for m, step in fake_tracker.last.metrics if step is not None]
    assert [m["trainable_params"] for m in epochs] == [total - frozen] * 2
    record = fake_tracker.last.dicts["stages/stage_0_frozen_embeddings.json"]
    assert record["frozen"] == TABLES and record["trainable_params"] == total - frozen
    saved = load_checkpoint(tmp_path / "ft.pth")
    assert saved["fine_tune"]["strategy"] == "frozen_embeddings"
    assert saved["fine_tune"]["pretrain_dataset"] == "src"
    assert saved["fine_tune"]["stages"][0]["frozen"] == TABLES
    # The fine-tuned model keeps the pre-training vocabulary, so it can be transferred again.
    assert saved["vocab"] == load_checkpoint(ckpt)["vocab"]


def test_progressive_unfreezes_top_layers_one_stage_at_a_time(pretrained, tmp_path, fake_tracker):
    root, ckpt = pretrained
    _, snaps = _run(root, ckpt, "progressive", tmp_path, epochs=4, progressive_epochs_per_stage=1)
    stages = _pairs(snaps)
    assert [(s.name, s.start_epoch, s.end_epoch) for s, _, _ in stages] == [
        ("top_1", 0, 1),
        ("top_2", 1, 2),
        ("all", 2, 4),
    ]
    names = set(stages[0][1])
    block0 = {n for n in names if n.startswith("backbone.blocks.0.")}
    block1 = {n for n in names if n.startswith("backbone.blocks.1.")}
    assert block0 and block1
    assert _changed(stages[0][1], stages[0][2]) == block1
    assert _changed(stages[1][1], stages[1][2]) == block0 | block1
    assert _changed(stages[2][1], stages[2][2]) == names
    # Each stage starts where the previous one ended.
    for (_, _, end), (_, start, _) in zip(stages, stages[1:], strict=False):
        assert all(torch.equal(end[n], start[n]) for n in names)
    counts = [m["trainable_params"] for m, step in fake_tracker.last.metrics if step is not None]
    size0 = sum(stages[0][1][n].numel() for n in block0)
    size1 = sum(stages[0][1][n].numel() for n in block1)
    total = sum(v.numel() for v in stages[0][1].values())
    assert counts == [size1, size0 + size1, total, total]
    assert set(fake_tracker.last.dicts) >= {
        "stages/stage_0_top_1.json",
        "stages/stage_1_top_2.json",
        "stages/stage_2_all.json",
    }


def test_progressive_needs_an_epoch_for_the_last_stage(pretrained, tmp_path, fake_tracker):
    root, ckpt = pretrained
    config = _config(root, ckpt, "progressive", epochs=4, progressive_epochs_per_stage=2)
    with pytest.raises(FineTuneError, match=r"progressive: 2 layer stages .* epochs=4"):
        fine_tune(config, tmp_path / "ft.pth", pretrained=ckpt)
    assert not (tmp_path / "ft.pth").exists()


def test_from_scratch_loads_nothing(pretrained, tmp_path, fake_tracker):
    root, ckpt = pretrained
    _, snaps = _run(root, ckpt, "from_scratch", tmp_path, epochs=1)
    ((stage, start, end),) = _pairs(snaps)
    assert stage.frozen == ()
    # The target's own vocabulary (not the checkpoint's): tables sized by tgt's pieces.
    state = load_checkpoint(ckpt)["model_state"]
    assert not torch.equal(start["backbone.blocks.0.attention.query.weight"],
                           state["backbone.blocks.0.attention.query.weight"])  # fmt: skip
    assert _changed(start, end) == set(start)
    assert fake_tracker.last.run_name.endswith("-tgt-from_scratch-s2020")
    assert "transfer_unseen_pieces" not in fake_tracker.last.params


def test_ewc_penalty_value_is_exact() -> None:
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, -1.0]]))
    penalty = EWCPenalty(
        {"weight": torch.tensor([[1.0, 2.0]])}, {"weight": torch.tensor([[1.0, 1.0]])}, lam=4.0
    )
    # 4 / 2 * (1 * (3 - 1)^2 + 2 * (-1 - 1)^2) = 2 * (4 + 8) = 24
    assert float(penalty(lin).detach()) == 24.0
    penalty(lin).backward()
    # d/dw = lam * F * (w - w*) = 4 * [1 * 2, 2 * -2]
    assert lin.weight.grad.tolist() == [[8.0, -16.0]]


def test_fisher_of_one_batch_is_its_squared_gradient(pretrained) -> None:
    from recbole_fork.data import build_seq_data
    from recbole_fork.session import build_model
    from recbole_fork.settings import RunSettings

    root, _ = pretrained
    config = run_config(root, **ARCH, **TRAIN, dataset="src")
    data = build_seq_data(config)
    torch.manual_seed(0)
    model = build_model(RunSettings.from_config(config).spec, data)
    fisher = estimate_fisher(model, data, n_batches=1, batch_size=16, seed=3)
    batch = next(iter(data.train_loader(16, 0)))
    gen = torch.Generator().manual_seed(3 + 505)
    model.eval()
    model.zero_grad()
    model.training_loss(batch, gen).backward()
    for name, p in model.named_parameters():
        expected = p.grad**2 if p.grad is not None else torch.zeros_like(p)
        assert torch.equal(fisher[name], expected), name


def test_fisher_leaves_out_the_bucketed_loss_scale(pretrained) -> None:
    """With length-bucketed batches each batch carries a loss_scale (its share of the
    epoch's positions); the Fisher is of the plain mean loss, whatever the bucketing."""
    from recbole_fork.data import build_seq_data
    from recbole_fork.session import build_model
    from recbole_fork.settings import RunSettings

    root, _ = pretrained
    config = run_config(root, **ARCH, **TRAIN, dataset="src", train_bucket_batches=2)
    data = build_seq_data(config)
    torch.manual_seed(0)
    model = build_model(RunSettings.from_config(config).spec, data)
    fisher = estimate_fisher(model, data, n_batches=2, batch_size=16, seed=3)
    batches = list(data.train_loader(16, 0))[:2]
    scales = [float(b["loss_scale"]) for b in batches]
    assert any(abs(s - 1.0) > 0.05 for s in scales)  # the scales are not all 1
    gen = torch.Generator().manual_seed(3 + 505)
    model.eval()
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for batch in batches:
        model.zero_grad()
        plain = {k: v for k, v in batch.items() if k != "loss_scale"}
        model.training_loss(plain, gen).backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                expected[name] += p.grad**2
    for name in expected:
        torch.testing.assert_close(fisher[name], expected[name] / 2, rtol=1e-6, atol=0)


def test_ewc_trains_everything_and_stays_closer_than_full(pretrained, tmp_path, fake_tracker):
    root, ckpt = pretrained
    _, full = _run(root, ckpt, "full", tmp_path, epochs=1)
    _, ewc = _run(root, ckpt, "ewc", tmp_path, epochs=1, ewc_lambda=1.0e6, ewc_samples=2)
    ((_, start, end_full),) = _pairs(full)
    ((stage, start_ewc, end_ewc),) = _pairs(ewc)
    assert stage.frozen == ()
    assert all(torch.equal(start[n], start_ewc[n]) for n in start)
    assert _changed(start_ewc, end_ewc) == set(start_ewc)

    def drift(end):
        return sum(float(((end[n] - start[n]) ** 2).sum()) for n in start)

    assert drift(end_ewc) < drift(end_full)
    epochs = [m for m, step in fake_tracker.last.metrics if step is not None]
    assert epochs[0]["ewc_penalty"] > 0.0  # after the first step the weights have moved


def test_plan_rejects_unknown_strategy(pretrained) -> None:
    with pytest.raises(FineTuneError, match=r"unknown fine_tune_strategy 'partial'; valid: \["):
        plan_stages(torch.nn.Linear(1, 1), "partial", epochs=3)


def test_run_name_puts_the_strategy_before_the_seed(pretrained) -> None:
    root, ckpt = pretrained
    settings = RunSettings.from_config(_config(root, ckpt, "ewc", seed=42))
    assert run_name(settings, strategy="ewc") == "sasrec-d8-l2-h2-text-tgt-ewc-s42"
    named = RunSettings.from_config(_config(root, ckpt, "ewc", run_name="mine"))
    assert run_name(named, strategy="ewc") == "mine"
