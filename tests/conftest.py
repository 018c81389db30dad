"""Shared fixtures: where the real public data lives, tiny atomic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout, or $SHARED_DATA if set."""
    return Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The real public data folder; skips with a visible reason when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set SHARED_DATA to its location)")
    return path


def write_atomic_dataset(
    root: Path,
    name: str = "tiny",
    n_users: int = 30,
    n_items: int = 20,
    per_user: int = 8,
    seed: int = 0,
    item_text: bool = False,
) -> Path:
    """Write ``root/name/name.inter`` (and ``.item`` with text fields if asked); return root.

    Every user gets ``per_user`` distinct items at increasing timestamps, drawn from a
    simple "next item = previous + 1 (mod n)" chain with noise, so models can learn it.
    """
    import random

    rng = random.Random(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, n_users + 1):
        start = rng.randrange(n_items)
        seen: list[int] = []
        item = start
        while len(seen) < per_user:
            if item not in seen:
                seen.append(item)
            item = (item + 1) % n_items if rng.random() < 0.8 else rng.randrange(n_items)
        for t, i in enumerate(seen):
            lines.append(f"u{u}\ti{i}\t{rng.choice([3.0, 4.0, 5.0])}\t{1_000_000 + 86400 * t}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    if item_text:
        rows = ["item_id:token\ttitle:token_seq\tbrand:token_seq\tcategory_l1:token"]
        for i in range(n_items):
            rows.append(f"i{i}\t▁w{i % 5} ▁x{i % 3}\t▁b{i % 4}\tc{i % 2}")
        (folder / f"{name}.item").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A tiny learnable atomic dataset ``tiny`` under ``tmp_path/data``; returns the data path."""
    return write_atomic_dataset(tmp_path / "data")


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: the test machine's cores are shared, and one thread
    avoids oversubscription stalls. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RecordingTracker:
    """Records what the trainer logs; stands in for ``recbole_fork.tracking.Tracker``."""

    run_id = "run-123"
    run_name = "tiny-run"

    def __init__(self) -> None:
        self.params: dict = {}
        self.metrics: list[tuple[dict, int | None]] = []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def at(self, step: int) -> dict:
        """The metrics logged at ``step`` (the first call with that step)."""
        return next(m for m, s in self.metrics if s == step)


class FakeTracker(RecordingTracker):
    """Stands in for ``recbole_fork.tracking.Tracker`` in a whole run: its constructor (same
    signature, checked by ``test_fake_tracker_signature_matches``) and context manager, and it
    records params, metrics, dicts, artifacts and tags. ``FakeTracker.last`` is the newest."""

    last: FakeTracker | None = None
    uri = "memory"

    def __init__(
        self,
        experiment,
        run_name,
        tracking_uri=None,
        run_id=None,
        tags=None,
        fallback_uri=None,
        previous_uri=None,
    ) -> None:
        super().__init__()
        self.experiment, self.run_name, self.tags = experiment, run_name, dict(tags or {})
        self.dicts: dict[str, object] = {}
        FakeTracker.last = self

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def log_dict(self, obj, name) -> None:
        self.dicts[name] = obj

    def log_artifact(self, path, artifact_path=None) -> None:
        self.dicts[str(path)] = "file"

    def set_tags(self, tags) -> None:
        self.tags.update(tags)


@pytest.fixture
def fake_tracker(monkeypatch) -> type[FakeTracker]:
    """``recbole_fork.tracking.Tracker`` replaced by ``FakeTracker`` (no MLflow store)."""
    import recbole_fork.tracking

    FakeTracker.last = None
    monkeypatch.setattr(recbole_fork.tracking, "Tracker", FakeTracker)
    return FakeTracker


# ----- the fork's configs, settings and tiny models (one helper each for every test module) -


def run_config(data_path: Path | str | None = None, **settings):
    """``build_config`` of ``settings`` (over ``data_path`` when given), one process on the
    CPU, no progress bars: the test suite's one config builder."""
    from recbole_fork.config import build_config

    base: dict = {"use_gpu": False, "show_progress": False}
    if data_path is not None:
        base["data_path"] = str(data_path)
    return build_config({**base, **settings})


def model_spec(model: str = "SASRecX", **overrides):
    """A fork model's ``ModelSpec`` from its YAML defaults plus ``overrides`` (no data read)."""
    from recbole_fork.settings import RunSettings

    return RunSettings.from_config(run_config(model=model, dataset="tiny", **overrides)).spec


def backbone_settings(model: str = "SASRecX", **overrides):
    """The backbone slice of ``model_spec(model, **overrides)``."""
    return model_spec(model, **overrides).backbone


def tiny_fork_model(model: str, n_items: int, seed: int = 0, **overrides):
    """A fork model over ``n_items`` item ids (padding included), ids only, uniform negative
    counts, built after ``torch.manual_seed(seed)``; in eval mode."""
    import torch

    from recbole_fork.encoders import Catalog
    from recbole_fork.models import get_model_class

    spec = model_spec(model, **overrides)
    torch.manual_seed(seed)
    return get_model_class(model)(spec, Catalog(n_items=n_items, name="tiny")).eval()


def assert_backbone_learns(
    make_backbone, *, normalize: bool, temperature: float, with_time: bool, optimizer
) -> None:
    """A backbone with a plain item table learns a walk through the catalog in 30 steps.

    Each user walks the catalogue in steps of 1 from a random start (a learnable next item);
    a sampled softmax over 8 shared negatives must fall below half its starting value.

    Args:
        make_backbone: builds the backbone (called after ``torch.manual_seed(0)``).
        normalize: L2-normalise user states and items (HSTU) or not.
        temperature: scores are divided by it.
        with_time: pass hourly timestamps as ``time_seq``.
        optimizer: the optimizer class (lr 1e-2).
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    n_items, seq_len = 30, 6
    backbone = make_backbone()
    items = torch.nn.Embedding(n_items, backbone.hidden_size)
    start = torch.randint(1, n_items - seq_len - 1, (16, 1))
    seq = start + torch.arange(seq_len + 1)
    inputs, targets = seq[:, :-1], seq[:, 1:]
    mask = torch.ones_like(inputs, dtype=torch.bool)
    times = inputs * 3600 if with_time else None
    opt = optimizer([*backbone.parameters(), *items.parameters()], lr=1e-2)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if normalize else x

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        user = norm(backbone(items(inputs), mask, times))  # [B, L, D]
        negatives = torch.randint(1, n_items, (8,), generator=generator)  # shared by the batch
        pos = (user * norm(items(targets))).sum(-1, keepdim=True)  # [B, L, 1]
        neg = user @ norm(items(negatives)).T  # [B, L, 8]
        logits = torch.cat([pos, neg], dim=-1) / temperature
        logits[..., 1:] = logits[..., 1:].masked_fill(negatives == targets[..., None], -1e9)
        return F.cross_entropy(logits.flatten(0, 1), torch.zeros(logits.shape[0] * seq_len).long())

    backbone.eval()
    with torch.no_grad():
        first = loss_fn(torch.Generator().manual_seed(5)).item()
    backbone.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        opt.zero_grad()
        loss_fn(gen).backward()
        opt.step()
    backbone.eval()
    with torch.no_grad():
        last = loss_fn(torch.Generator().manual_seed(5)).item()
    assert last < 0.5 * first


def settings_slice(cls, **overrides):
    """A settings slice (``LossSettings``, ``SamplerSettings``, ...) from the fork's YAML
    defaults plus ``overrides``; no RecBole config, no data."""
    from recbole_fork.config import fork_defaults

    return cls.from_mapping({**fork_defaults("SASRecX"), **overrides})


def scheduler_settings(**overrides):
    """``SchedulerSettings`` from ``foundation.yaml`` plus ``overrides``."""
    from recbole_fork.config import fork_defaults
    from recbole_fork.schedulers import SchedulerSettings

    return SchedulerSettings.from_mapping({**fork_defaults("SASRecX")["scheduler"], **overrides})


def trainer_for(config, checkpoint_path, seed: int | None = None):
    """A ``SeqTrainer`` over the data and a fresh model of ``config`` (the model built after
    ``torch.manual_seed(seed)`` when a seed is given)."""
    import torch

    from recbole_fork.data import build_seq_data
    from recbole_fork.session import build_model
    from recbole_fork.settings import RunSettings
    from recbole_fork.trainer import SeqTrainer

    settings = RunSettings.from_config(config)
    data = build_seq_data(config, settings.data)
    if seed is not None:
        torch.manual_seed(seed)
    model = build_model(settings.spec, data)
    return SeqTrainer(
        model,
        data,
        training=settings.training,
        evaluation=settings.evaluation,
        checkpoint_path=checkpoint_path,
    )
