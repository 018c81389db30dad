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
