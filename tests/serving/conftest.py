"""Serving fixtures: a small shop dataset whose item text went through the ETL's own text
path (a SentencePiece model trained on it, pieces written as the ETL writes them), and tiny
models trained one epoch on it through the real run assembly (so the checkpoints carry
their config, vocabulary and final metrics as real runs do)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_config

DATASET = "shop"
COLOURS = ["red", "blue", "green", "black", "white", "pink"]
NOUNS = ["lipstick", "shampoo", "serum", "mascara", "conditioner", "cream", "polish", "gel"]
CLUSTER_WORDS = ["matte", "volume", "hydrating"]
CATEGORIES = ["Makeup", "Hair Care", "Skin Care"]
BRANDS = ["Acme Beauty", "Lumi", "Northwind", "Orla & Co"]


@dataclass(frozen=True)
class ShopItem:
    """Raw text of one item, as a user of POST /items would send it."""

    item_id: str
    title: str
    brand: str
    category_l1: str


def shop_items(n_items: int, prefix: str = "p", extra: str = "") -> list[ShopItem]:
    """Items ``p0 .. p{n-1}``: item i belongs to cluster ``i % 3`` (its title word and
    category); titles carry HTML entities as raw metadata does, and ``extra`` words."""
    out = []
    for i in range(n_items):
        c = i % 3
        title = f"{COLOURS[i % 6].title()} {NOUNS[i % 8]} &amp; {CLUSTER_WORDS[c]} no.{i}{extra}"
        out.append(ShopItem(f"{prefix}{i}", title, BRANDS[i % 4], CATEGORIES[c]))
    return out


def write_shop_dataset(
    root: Path,
    n_users: int = 40,
    n_items: int = 30,
    per_user: int = 8,
    seed: int = 0,
    name: str = DATASET,
    prefix: str = "p",
    extra: str = "",
) -> list[ShopItem]:
    """Write ``root/<name>/<name>.{inter,item}`` and, unless there is one,
    ``root/sentencepiece/spm.model`` (the ETL's layout); returns the items' raw text.

    Each user stays mostly (80%) within one cluster of items; timestamps increase by a day.
    """
    from etl.text import Tokenizer, clean_text, clean_token, train_sentencepiece, words

    rng = random.Random(seed)
    items = shop_items(n_items, prefix, extra)
    spm = root / "sentencepiece" / "spm.model"
    if not spm.is_file():
        sentences = [
            words(clean_text(t)) for it in items for t in (it.title, it.brand, it.category_l1)
        ]
        train_sentencepiece(sentences, spm, vocab_size=120)
    tok = Tokenizer(spm)
    titles = tok.pieces([it.title for it in items], 40)
    brands = tok.pieces([it.brand for it in items], 8)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["item_id:token\ttitle:token_seq\tbrand:token_seq\tcategory_l1:token"]
    for it, t, b in zip(items, titles, brands):
        rows.append(f"{it.item_id}\t{t}\t{b}\t{clean_token(it.category_l1)}")
    (folder / f"{name}.item").write_text("\n".join(rows) + "\n")
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, n_users + 1):
        cluster = rng.randrange(3)
        seen: list[int] = []
        while len(seen) < per_user:
            c = cluster if rng.random() < 0.8 else rng.randrange(3)
            i = rng.randrange(c, n_items, 3)
            if i not in seen:
                seen.append(i)
        for t, i in enumerate(seen):
            # Uneven gaps, so that a model reading time gaps sees different buckets.
            time = 1_000_000 + 86_400 * t + 3_600 * rng.randrange(24)
            lines.append(f"c{u}\t{prefix}{i}\t{time}")
    # A user with 2 interactions: training only, no held-out valid or test item.
    lines += [f"short1\t{prefix}0\t1000000", f"short1\t{prefix}3\t1086400"]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return items


TINY = {"hidden_size": 16, "n_layers": 1, "n_heads": 1, "max_seq_length": 5}
MODELS = {
    "sasrec-id": {"model": "SASRecX", "inner_size": 16, **TINY},
    "sasrec-text": {
        "model": "SASRecX",
        "inner_size": 16,
        "item_encoder": "text",
        "text_fields": ["title", "brand", "category_l1"],
        "text_embedding_size": 8,
        **TINY,
    },
    "hstu-id": {"model": "HSTU", "attention_dim": 8, "linear_dim": 8, **TINY},
}


def train_checkpoint(data_path: Path, out: Path, name: str, **overrides) -> Path:
    """One epoch of ``MODELS[name]`` on the shop data through ``session.train``."""
    import torch

    from recbole_fork.session import train

    settings = {"epochs": 1, "num_negatives": 5, "seed": 7, **MODELS[name], **overrides}
    config = run_config(data_path, dataset=DATASET, **settings)
    path = out / f"{name}.pth"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config, path)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session")
def shop(tmp_path_factory) -> tuple[Path, list[ShopItem]]:
    """(data path holding ``shop`` and ``sentencepiece/``, the items' raw text)."""
    root = tmp_path_factory.mktemp("serving") / "data"
    return root, write_shop_dataset(root)


@pytest.fixture(scope="session")
def checkpoints(shop, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of every model of ``MODELS``, trained once per test session."""
    out = tmp_path_factory.mktemp("ckpt")
    return {name: train_checkpoint(shop[0], out, name) for name in MODELS}


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_for_serving():
    """One torch thread for the whole serving suite: the server runs inside the test
    process, and on a loaded 2-core machine OpenMP threads stall small batches."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
