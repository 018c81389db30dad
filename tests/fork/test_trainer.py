"""SeqTrainer: clipping, accumulation, exact resume, NaN stop, best-epoch test, bad input."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from recbole_fork.checkpoint import load_checkpoint
from recbole_fork.data import DataError, build_seq_data
from recbole_fork.errors import UserError
from recbole_fork.flops import TRAIN_FLOPS_MULTIPLIER, step_flops
from recbole_fork.models.sasrec import SASRecX
from recbole_fork.session import build_model, train
from recbole_fork.settings import RunSettings
from recbole_fork.trainer import SeqTrainer, TrainingDivergedError, TrainState
from tests.conftest import RecordingTracker, run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_dataset(root: Path, name: str = "tiny", n_users: int = 30, min_len: int = 4) -> Path:
    """``root/name/name.inter``: users with 4..10 time-ordered interactions over 25 items."""
    rng = random.Random(7)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        for t in range(rng.randint(min_len, max(min_len, 10))):
            lines.append(f"u{u}\ti{rng.randint(1, 25)}\t{1000 + 60 * t}")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return root


SETTINGS = {
    "model": "SASRecX",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "epochs": 3,
    "train_batch_size": 16,
    "eval_batch_size": 64,
    "hidden_size": 16,
    "inner_size": 32,
    "max_seq_length": 6,
    "num_negatives": 5,
    "hidden_dropout_prob": 0.2,  # dropout on: its RNG state must survive a resume
    "attn_dropout_prob": 0.2,
    "learning_rate": 0.01,
    "valid_metric": "NDCG@10",
    "stopping_step": 10,
}


def _config(root: Path, name: str = "tiny", **overrides):
    return run_config(root, **{**SETTINGS, "dataset": name, **overrides})


# ----- optimisation mechanics on hand-made batches ------------------------------------------


class _Batches:
    """A stand-in for SeqData that yields the given training batches every epoch."""

    n_users = 4

    def __init__(self, batches: list[dict[str, torch.Tensor]], n_items: int) -> None:
        self.batches = batches
        self.n_items = n_items

    def num_train_batches(self, batch_size: int) -> int:
        return len(self.batches)

    def train_loader(self, batch_size: int, epoch: int):
        return iter(self.batches)


def _model_and_data(root: Path, **overrides):
    config = _config(
        _write_dataset(root), hidden_dropout_prob=0.0, attn_dropout_prob=0.0, **overrides
    )
    settings = RunSettings.from_config(config)
    data = build_seq_data(config, settings.data)
    torch.manual_seed(0)
    model = build_model(settings.spec, data)
    return settings, model, data.n_items


def _trainer(settings, model, batches, path) -> SeqTrainer:
    return SeqTrainer(
        model,
        batches,
        training=settings.training,
        evaluation=settings.evaluation,
        checkpoint_path=path,
    )


def _spy_grads(trainer: SeqTrainer) -> list[dict[str, torch.Tensor]]:
    """Record the gradients the optimizer sees at each step."""
    seen: list[dict[str, torch.Tensor]] = []
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.append(
            {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        )
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    return seen


FULL = {
    "item_seq": torch.tensor(
        [[1, 2, 3, 0, 0, 0], [4, 5, 0, 0, 0, 0], [6, 7, 8, 9, 0, 0], [2, 4, 0, 0, 0, 0]]
    ),
    # one target per row, so each half batch has the same number of supervised positions
    "target": torch.tensor(
        [[0, 0, 4, 0, 0, 0], [0, 6, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 3, 0, 0, 0, 0]]
    ),
}


# The spy replaces optimizer.step after the LR scheduler wrapped it; torch warns about that.
SPY_WARNING = "ignore:Seems like `optimizer.step\\(\\)` has been overridden"


@pytest.mark.filterwarnings(SPY_WARNING)
def test_grad_accumulation_equals_full_batch(tmp_path):
    grads = []
    for accum, batches in [
        (1, [FULL]),
        (2, [{k: v[:2] for k, v in FULL.items()}, {k: v[2:] for k, v in FULL.items()}]),
    ]:
        # full_ce: no sampled negatives, so the two runs see the same loss function.
        settings, model, n_items = _model_and_data(
            tmp_path, loss_type="full_ce", grad_accum_steps=accum
        )
        trainer = _trainer(settings, model, _Batches(batches, n_items), tmp_path / "c.pth")
        seen = _spy_grads(trainer)
        trainer._train_epoch(0)
        assert len(seen) == 1 and trainer.state.global_step == 1  # one optimizer step either way
        grads.append(seen[0])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings(SPY_WARNING)
@pytest.mark.parametrize("max_norm", [0.01, None])
def test_gradient_clipping_is_applied(tmp_path, max_norm):
    settings, model, n_items = _model_and_data(
        tmp_path, loss_type="full_ce", max_grad_norm=max_norm
    )
    trainer = _trainer(settings, model, _Batches([FULL, FULL], n_items), tmp_path / "c.pth")
    seen = _spy_grads(trainer)
    trainer._train_epoch(0)
    norms = [
        torch.linalg.vector_norm(torch.stack([g.norm() for g in s.values()])).item() for s in seen
    ]
    assert len(norms) == 2
    if max_norm is None:
        assert min(norms) > 0.01  # unclipped gradients of this model are larger than 0.01
    else:
        assert max(norms) <= 0.01 * (1 + 1e-4)
        assert max(norms) == pytest.approx(0.01, rel=1e-4)  # clipped exactly to the limit


# ----- full runs on a tiny atomic dataset ---------------------------------------------------


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch, capsys):
    root = _write_dataset(tmp_path)
    whole = train(_config(root), tmp_path / "whole.pth", tracker=RecordingTracker())

    original = SeqTrainer._train_epoch

    def killed_at_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(SeqTrainer, "_train_epoch", killed_at_epoch_2)
    ckpt = tmp_path / "killed.pth"
    with pytest.raises(KeyboardInterrupt):
        train(_config(root), ckpt, tracker=RecordingTracker())
    message = capsys.readouterr().out
    assert f"interrupted during epoch 2; the checkpoint {ckpt} holds epoch 1" in message
    assert "--resume" in message
    assert load_checkpoint(ckpt)["state"]["epoch_done"] == 1

    monkeypatch.setattr(SeqTrainer, "_train_epoch", original)
    resumed = train(_config(root), ckpt, tracker=RecordingTracker(), resume=True)
    assert resumed == whole  # exact equality, every metric
    assert load_checkpoint(ckpt)["state"]["final_metrics"] == whole
    # A finished run resumed again returns its stored result without training.
    assert train(_config(root), ckpt, tracker=RecordingTracker(), resume=True) == whole


def test_checkpoint_contents_and_logged_names(tmp_path, monkeypatch):
    tracker = RecordingTracker()
    ckpt = tmp_path / "run.pth"
    trained = []
    original = SeqTrainer._train_epoch

    def recording(self, epoch):
        out = original(self, epoch)
        trained.append(out["train_loss"])
        return out

    monkeypatch.setattr(SeqTrainer, "_train_epoch", recording)
    result = train(_config(_write_dataset(tmp_path), epochs=1), ckpt, tracker=tracker)
    state = load_checkpoint(ckpt)  # weights_only=True
    for key in ("model_state", "optimizer_state", "scheduler_state", "rng", "state", "config",
                "vocab"):  # fmt: skip
        assert key in state
    assert set(state["state"]) == {f.name for f in dataclasses.fields(TrainState)}
    assert state["state"]["epoch_done"] == 0 and state["state"]["best_state"] is not None
    assert state["mlflow_run_id"] == "run-123"
    assert state["model_description"] == "sasrec-d16-l2-h2-id"
    assert state["config"]["hidden_size"] == 16 and state["vocab"] == {}
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python", "sample_generator"}
    epoch0 = tracker.at(0)
    for name in ("train_loss", "valid_loss", "test_loss", "lr", "epoch_time_s", "sequences_per_s",
                 "tokens_per_s", "train_ndcg_at_10", "valid_hr_at_10", "test_mrr_at_10",
                 "train_eval_loss"):  # fmt: skip
        assert name in epoch0
    # train_loss is the epoch's training loss (the mean of its batches' losses), not the
    # train-phase evaluation loss, which has its own name (an evaluated epoch used to log
    # the evaluation loss under train_loss).
    assert epoch0["train_loss"] == trained[0] != epoch0["train_eval_loss"]
    assert set(result) == {
        "best_epoch", "best_valid_loss", "best_test_loss", "total_flops", "total_tokens",
        "total_flops_backbone", "total_flops_item_encoder", "total_flops_scoring",
        *(f"best_{p}_{m}_at_10" for p in ("valid", "test") for m in ("hr", "ndcg", "mrr")),
    }  # fmt: skip
    assert tracker.params["params_embedding"] == 26 * 16  # 25 items + padding, D = 16
    assert tracker.params["run_name"] == "tiny-run"
    assert tracker.params["eval_protocol"] == "full"
    assert tracker.params["dataset_users"] == 30  # real users, the padding id not counted


def test_best_epoch_weights_are_used_for_test(tmp_path, monkeypatch):
    scripted = iter([0.2, 0.9, 0.1])  # valid NDCG@10 of epochs 0, 1, 2: epoch 1 is best
    original = SeqTrainer.evaluate

    def scripted_valid(self, phase):
        out = original(self, phase)
        if phase == "valid":
            out["ndcg@10"] = next(scripted)
        return out

    monkeypatch.setattr(SeqTrainer, "evaluate", scripted_valid)
    tracker = RecordingTracker()
    result = train(_config(_write_dataset(tmp_path)), tmp_path / "b.pth", tracker=tracker)
    assert result["best_epoch"] == 1
    assert result["best_valid_ndcg_at_10"] == 0.9
    # The final test ran with epoch 1's weights: its figures equal that epoch's, not the last.
    assert result["best_test_loss"] == tracker.at(1)["test_loss"]
    assert result["best_test_loss"] != tracker.at(2)["test_loss"]
    assert result["best_test_hr_at_10"] == tracker.at(1)["test_hr_at_10"]


def test_nan_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
    config = _config(_write_dataset(tmp_path))
    per_epoch = build_seq_data(config).num_train_batches(16)
    calls = {"n": 0}
    original = SASRecX.training_loss

    def nan_in_epoch_1(self, batch, generator=None):
        calls["n"] += 1
        loss = original(self, batch, generator)
        return loss * float("nan") if calls["n"] == per_epoch + 2 else loss

    monkeypatch.setattr(SASRecX, "training_loss", nan_in_epoch_1)
    ckpt = tmp_path / "nan.pth"
    with pytest.raises(TrainingDivergedError) as err:
        train(config, ckpt)
    assert str(err.value) == (
        f"loss is nan at epoch 1, batch 1, optimizer step {per_epoch + 1}; last good checkpoint: "
        f"{ckpt} (resume from it with a lower learning_rate or a max_grad_norm: "
        "--resume --allow-change KEY --set KEY=...)"
    )
    assert load_checkpoint(ckpt)["state"]["epoch_done"] == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learner": "sgd"}, r"unknown learner 'sgd'; valid: \['adam', 'adamw'\]"),
        ({"eval_mode": "sampled:x"}, "valid forms are 'full' and 'sampled:N'"),
        (
            {"valid_metric": "Recall@10"},
            r"valid_metric 'Recall@10' is not computed; valid: \['hr@10'",
        ),
        (
            {"num_negatives": 1000},
            r"num_negatives=1000 is larger than the catalog \(25 real items\)",
        ),
        (
            {"item_encoder": "bert"},
            r"unknown item_encoder 'bert'; valid: \['id', 'text', 'id\+text'\]",
        ),
        ({"loss_type": "hinge"}, "unknown loss_type 'hinge'"),
        ({"neg_sampler": "hard"}, "unknown neg_sampler 'hard'"),
        ({"hidden_size": "big"}, "config key 'hidden_size' must be an integer, got 'big'"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        train(_config(_write_dataset(tmp_path), **overrides), tmp_path / "x.pth", tracker=None)
    assert not (tmp_path / "x.pth").exists()


def test_dataset_without_evaluation_users(tmp_path):
    root = tmp_path / "d"
    folder = root / "short"
    folder.mkdir(parents=True)
    rows = [f"u{u}\ti{u + t}\t{100 + t}" for u in range(5) for t in range(2)]
    (folder / "short.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows)
    )
    with pytest.raises(DataError, match="dataset 'short': no user has the 3 interactions"):
        train(_config(root, name="short"), tmp_path / "x.pth", tracker=None)


def test_text_encoder_run_keeps_vocabulary(tmp_path):
    root = _write_dataset(tmp_path)
    words = ["red", "blue", "shoe", "hat", "sock"]
    rows = [f"i{i}\t{words[i % 5]} {words[(i + 2) % 5]}\tbrand{i % 3}" for i in range(1, 26)]
    header = "item_id:token\ttitle:token_seq\tbrand:token_seq\n"
    (root / "tiny" / "tiny.item").write_text(header + "\n".join(rows) + "\n")
    config = _config(
        root,
        epochs=1,
        item_encoder="text",
        text_embedding_size=4,
        load_col={
            "inter": ["user_id", "item_id", "timestamp"],
            "item": ["item_id", "title", "brand"],
        },
    )
    tracker = RecordingTracker()
    train(config, tmp_path / "text.pth", tracker=tracker)
    state = load_checkpoint(tmp_path / "text.pth")
    assert state["model_description"] == "sasrec-d16-l2-h2-text"
    assert state["vocab"]["title"][0] == "[PAD]"
    assert sorted(state["vocab"]["title"][1:]) == sorted(words)
    assert sorted(state["vocab"]["brand"][1:]) == ["brand0", "brand1", "brand2"]
    # No per-item rows: the embedding parameters are the two token tables only.
    assert tracker.params["params_embedding"] == (6 + 4) * 4


# ----- compute as spent, and compute budgets --------------------------------------------------


def test_logged_flops_are_the_sum_of_what_each_step_ran(tmp_path, monkeypatch):
    """Each epoch's ``flops`` is 3 x the forward FLOPs every batch recorded (its trimmed width,
    its embedded ids, its negatives), and ``total_flops`` their sum over the epochs."""
    steps: list[int] = []
    original = SASRecX.training_loss

    def recording(self, batch, generator=None):
        loss = original(self, batch, generator)
        count = self.last_step_flops
        assert count == step_flops(self, self.last_step_shape)
        # The trimmed batch: the width the step ran is the longest real row.
        assert self.last_step_shape.width == int((batch["item_seq"] > 0).sum(1).max())
        steps.append(count.total * TRAIN_FLOPS_MULTIPLIER)
        return loss

    monkeypatch.setattr(SASRecX, "training_loss", recording)
    tracker = RecordingTracker()
    result = train(_config(_write_dataset(tmp_path), epochs=2), tmp_path / "f.pth", tracker=tracker)
    per_epoch = [tracker.at(e)["flops"] for e in (0, 1)]
    assert sum(per_epoch) == sum(steps) == result["total_flops"]
    parts = ("total_flops_backbone", "total_flops_item_encoder", "total_flops_scoring")
    assert sum(result[k] for k in parts) == result["total_flops"]
    assert result["total_flops_scoring"] > 0 and result["total_flops_backbone"] > 0


@pytest.mark.parametrize("item_encoder", ["id", "text"])
def test_budgeted_run_stops_within_one_step_of_its_budget(tmp_path, item_encoder):
    root = _write_dataset(tmp_path, n_users=60)
    extra = {}
    if item_encoder == "text":
        rows = [f"i{i}\tw{i % 7} w{i % 5}\tb{i % 3}" for i in range(1, 26)]
        (root / "tiny" / "tiny.item").write_text(
            "item_id:token\ttitle:token_seq\tbrand:token_seq\n" + "\n".join(rows) + "\n"
        )
        extra = {
            "item_encoder": "text",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "brand"]},
        }  # fmt: skip
    one_epoch = RecordingTracker()
    train(_config(root, epochs=1, **extra), tmp_path / "one.pth", tracker=one_epoch)
    budget = 2.5 * one_epoch.at(0)["flops"]  # two and a half epochs' worth
    tracker = RecordingTracker()
    ckpt = tmp_path / "budget.pth"
    result = train(
        _config(root, epochs=1, train_flops_budget=budget, **extra), ckpt, tracker=tracker
    )
    state = load_checkpoint(ckpt)["state"]
    steps = state["global_step"]
    per_step = result["total_flops"] / steps
    # Stopped at the first step that reached the budget: within one step of it.
    assert budget <= result["total_flops"] < budget + 1.5 * per_step
    assert state["epoch_done"] == 2 and result["best_epoch"] in (0, 1, 2)  # the third epoch
    # The LR schedule was planned for about the steps the budget buys (the plan bounds the
    # ids the negatives add, so it may plan a few steps fewer than the run takes).
    assert 0.8 * steps <= state["total_steps"] <= steps


def test_eval_protocol_names_a_fixed_sample_of_users():
    from recbole_fork.session import _eval_protocol

    assert _eval_protocol("full", None, None) == "full"
    assert _eval_protocol("full", None, 4096) == "full; users<=4096"
    assert _eval_protocol("sampled", 100, 50) == "sampled100 (not comparable with full); users<=50"
