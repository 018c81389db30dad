"""Any MLflow store through a mapping file: an MLflow-2-schema store built here, never changed."""

from __future__ import annotations

import bz2
import hashlib
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from recbole_fork.scaling.mapping import MappingError, StoreMapping, load_mapping, sqlite_revision

pytest.importorskip("mlflow")

SCHEMA = Path(__file__).with_name("mlflow2_schema.sql")
OLD_REVISION = "3500859a5d39"  # MLflow 2.3
LAW = {"E": 0.85, "A": 2.0, "alpha": 0.3, "B": 3.0, "beta": 0.25}
SIZES_N = [1e4, 4e4, 1.6e5, 6.4e5]
SIZES_D = {"amz-100K": 8e4, "amz-1M": 8e5, "amz-10M": 8e6}
EXPERIMENT = "their-scaling-grid"


def law(n: float, d: float) -> float:
    return LAW["E"] + LAW["A"] * n ** -LAW["alpha"] + LAW["B"] * d ** -LAW["beta"]


def build_mlflow2_store(path: Path) -> int:
    """An MLflow 2.3 sqlite store: 4 N x 3 D, every run named 'run', NDCG = 1 - law; runs."""
    rng = np.random.default_rng(0)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.read_text())
        db.execute("INSERT INTO alembic_version VALUES (?)", (OLD_REVISION,))
        db.execute("INSERT INTO experiments VALUES (0, 'Default', '/x/0', 'active', 0, 0)")
        db.execute(f"INSERT INTO experiments VALUES (1, '{EXPERIMENT}', '/x/1', 'active', 0, 0)")
        runs = 0
        for dataset, d in SIZES_D.items():
            for n in SIZES_N:
                for _repeat in range(2 if n == 4e4 else 1):  # one shape run twice
                    rid = hashlib.md5(str(runs).encode()).hexdigest()  # 32 hex, like an id
                    db.execute(
                        "INSERT INTO runs VALUES (?, 'run', 'LOCAL', 'train.py', '', 'u', "
                        "'FINISHED', 1000, 2000, '', 'active', '/x/1/r', 1, NULL)",
                        (rid,),
                    )
                    ndcg = 1.0 - law(n, d) * float(np.exp(rng.normal(0.0, 0.002)))
                    params = {"model_non_emb_params": int(n), "n_inters": int(d), "epochs": 50,
                              "dataset": dataset, "hidden_size": 64, "n_layers": int(n // 1e4),
                              "seed": 2020}  # fmt: skip
                    db.executemany("INSERT INTO params VALUES (?, ?, ?)",
                                   [(k, str(v), rid) for k, v in params.items()])  # fmt: skip
                    metrics = [("test/ndcg_at_5", ndcg, 49), ("valid/ndcg_at_5", ndcg, 49)]
                    metrics += [("train/train_loss", 5.0 - e / 10, e) for e in range(3)]
                    for key, value, step in metrics:
                        db.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, 0)",
                                   (key, value, 1000 + step, rid, step))  # fmt: skip
                    for key, value, step in metrics:
                        db.execute("INSERT OR REPLACE INTO latest_metrics VALUES (?, ?, ?, ?, 0, ?)",
                                   (key, value, 1000 + step, step, rid))  # fmt: skip
                    db.execute("INSERT INTO tags VALUES ('mlflow.runName', 'run', ?)", (rid,))
                    runs += 1
    return runs


MAPPING = {
    "experiment": EXPERIMENT,
    "n": "params.model_non_emb_params",
    "d": "params.n_inters",
    "compute": None,
    "compute_k": 6,
    "epochs": "params.epochs",
    "metrics": ["test/ndcg_at_5"],
    "select": "valid/ndcg_at_5",
    "forms": {"test/ndcg_at_5": ["error-floor"]},
    "history": {"train_loss": "train/train_loss"},
    "protocol": "10,000 sampled items",
    "one_run_per_name": False,
}


@pytest.fixture(scope="module")
def old_store(tmp_path_factory) -> tuple[Path, int, str]:
    folder = tmp_path_factory.mktemp("store")
    path = folder / "mlruns.sqlite"
    runs = build_mlflow2_store(path)
    return path, runs, hashlib.sha256(path.read_bytes()).hexdigest()


def write_mapping(folder: Path, **changes) -> Path:
    path = folder / "mapping.yaml"
    path.write_text(yaml.safe_dump({**MAPPING, **changes}, sort_keys=False))
    return path


def test_report_reads_an_mlflow2_store_without_touching_it(old_store, tmp_path):
    """The script on a .bz2 of the store: decompressed and upgraded in a temporary copy."""
    from tests.scaling.scaling_scripts import scaling_report_main

    path, runs, digest = old_store
    store = tmp_path / "mlruns.sqlite.bz2"
    store.write_bytes(bz2.compress(path.read_bytes()))
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    out = tmp_path / "report"
    argv = ["--store", str(store), "--mapping", str(write_mapping(tmp_path)), "--out", str(out),
            "--bootstrap", "20", "--holdout", "largest-N"]  # fmt: skip
    assert scaling_report_main(argv) == 0
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before  # never changed
    text = (out / "report.md").read_text()
    assert f"{runs} finished runs" in text
    assert f"upgraded from schema revision {OLD_REVISION}" in text
    assert "C = 6·N·D·epochs, an estimate" in text
    alpha = float(re.search(r"\| alpha \| ([0-9.]+) \|", text).group(1))
    assert alpha == pytest.approx(LAW["alpha"], rel=0.15)
    assert "#### Extrapolation test: largest-N held out" in text
    assert "scaling-store-" not in text  # the temporary copy is never named
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_open_store_upgrades_a_copy_and_misnamed_keys_are_one_line_errors(old_store):
    from recbole_fork.scaling.mapping import open_store
    from recbole_fork.scaling.runs import load_runs

    path, runs, digest = old_store
    with open_store(str(path)) as opened:
        assert (opened.label, opened.revision, opened.upgraded) == (
            "mlruns.sqlite",
            OLD_REVISION,
            True,
        )
        assert str(path) not in opened.uri
        m = load_mapping_dict(MAPPING)
        records, duplicates = load_runs(None, opened.uri, m, store_label=opened.label)
        assert len(records) == runs and duplicates == []
        assert len({r.label for r in records}) == runs  # 'run-<id>': names repeat
        assert records[0].history["train_loss"] == [(0, 5.0), (1, 4.9), (2, 4.8)]
        assert records[0].compute == pytest.approx(
            6 * records[0].n_params * records[0].interactions * 50
        )
        assert records[0].compute_estimated

        with pytest.raises(MappingError) as err:
            load_runs(None, opened.uri, load_mapping_dict({**MAPPING, "n": "params.model_non_emb_parms"}),
                      store_label=opened.label)  # fmt: skip
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(
            "mapping key 'n': params.model_non_emb_parms not found in experiment 'their-scaling-grid' "
            "of mlruns.sqlite (did you mean model_non_emb_params?); the store's params: dataset, "
            "epochs, hidden_size, model_non_emb_params, n_inters, n_layers, seed"
        )
        with pytest.raises(
            MappingError, match=r"mapping key 'metrics': metrics.test/ndcg_at_10 not found"
        ):
            load_runs(
                None, opened.uri, load_mapping_dict({**MAPPING, "metrics": ["test/ndcg_at_10"]})
            )
        with pytest.raises(MappingError, match="experiment 'nope' in .* has no finished runs; the "
                           "store's experiments: Default, their-scaling-grid"):  # fmt: skip
            load_runs("nope", opened.uri, m)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sqlite_revision(path) == OLD_REVISION


def load_mapping_dict(values: dict) -> StoreMapping:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_mapping(write_mapping(Path(tmp), **values))


def test_mapping_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: x\nN: params.n\n")
    with pytest.raises(
        MappingError, match="unknown key 'N'; valid keys: budget, caption, compute, compute_k, d,"
    ):
        load_mapping(bad)
    bad.write_text("forms: {test/ndcg_at_5: [log]}\n")
    with pytest.raises(MappingError, match="form 'log' of 'test/ndcg_at_5' unknown"):
        load_mapping(bad)
    m = load_mapping(write_mapping(tmp_path))
    assert m.n == ("params.model_non_emb_params",) and m.compute == () and m.compute_k == 6.0
    assert "n" in m.explicit and "width" not in m.explicit
    assert StoreMapping().d == ("params.train_interactions", "params.dataset_interactions")


def test_store_that_is_no_store(tmp_path):
    from recbole_fork.scaling.mapping import open_store

    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(MappingError, match="not an sqlite file"), open_store(str(junk)):
        pass
    missing = str(tmp_path / "missing.sqlite")
    with pytest.raises(MappingError, match="no such file or folder"), open_store(missing):
        pass
