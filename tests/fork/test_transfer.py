"""Transfer to a new catalog: pieces remapped by string, unseen pieces counted, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from recbole_fork.checkpoint import CheckpointError, load_checkpoint
from recbole_fork.cli import fine_tune_main
from recbole_fork.config import ConfigError, build_config
from recbole_fork.data import build_seq_data
from recbole_fork.finetune import FineTuneError, check_dataset, fine_tune, fine_tune_config
from recbole_fork.finetune.transfer import TransferError, remap_tokens, transfer_weights
from recbole_fork.session import build_model, train
from recbole_fork.settings import RunSettings
from tests.conftest import write_atomic_dataset

ARCH = {
    "model": "SASRecX",
    "item_encoder": "text",
    "text_fields": ["title", "brand"],
    "text_embedding_size": 8,
    "hidden_size": 8,
    "inner_size": 16,
    "n_layers": 1,
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
    "scheduler": {"type": "constant"},
    "use_gpu": False,
    "show_progress": False,
    "epochs": 1,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _texts(root: Path, name: str, rows: list[tuple[str, str]]) -> None:
    lines = ["item_id:token\ttitle:token_seq\tbrand:token_seq"]
    lines += [f"i{i}\t{title}\t{brand}" for i, (title, brand) in enumerate(rows)]
    (root / name / f"{name}.item").write_text("\n".join(lines) + "\n")


# Pre-training domain: titles from {a0..a5, b0..b3}, brands {br0..br2}.
SRC = [(f"▁a{i % 6} ▁b{i % 4}", f"▁br{i % 3}") for i in range(20)]
# Target domain: titles from {a0..a7, c0, c1} (a6, a7, c0, c1 unseen), brands {br0..br4}
# (br3, br4 unseen): 15 pieces used, 6 unseen. Occurrences: 32 title + 16 brand = 48, unseen
# 4 (a6, a7) + 16 (c) + 6 (br3, br4 at i = 3, 4, 8, 9, 13, 14) = 26. Only item i14 (a6 c0,
# br4) has no known piece at all.
TGT = [(f"▁a{i % 8} ▁c{i % 2}", f"▁br{i % 5}") for i in range(16)]


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> tuple[Path, Path]:
    """(data path with ``src`` and ``tgt``, text model checkpoint pre-trained on ``src``)."""
    root = tmp_path_factory.mktemp("tr") / "data"
    write_atomic_dataset(root, "src", n_users=30, n_items=20, seed=1)
    write_atomic_dataset(root, "tgt", n_users=24, n_items=16, seed=2)
    _texts(root, "src", SRC)
    _texts(root, "tgt", TGT)
    ckpt = root.parent / "src.pth"
    train(build_config({**ARCH, **TRAIN, "dataset": "src", "data_path": str(root)}), ckpt)
    return root, ckpt


def _target_model(root: Path, ckpt: Path, **extra):
    config = fine_tune_config({**TRAIN, "data_path": str(root), **extra}, "tgt", pretrained=ckpt)
    data = build_seq_data(config)
    torch.manual_seed(0)
    return config, build_model(RunSettings.from_config(config).spec, data), data


def test_remap_tokens_by_string_drops_unseen_pieces() -> None:
    own = ["[PAD]", "▁x", "▁y", "▁new"]
    target = ["[PAD]", "▁y", "▁z", "▁x"]
    tokens = torch.tensor([[1, 2, 0], [3, 1, 0], [3, 0, 0]])
    remapped, unseen = remap_tokens(tokens, own, target)
    assert remapped.tolist() == [[3, 1, 0], [0, 3, 0], [0, 0, 0]]
    assert unseen == {3}


def test_unseen_pieces_are_counted_exactly(domains) -> None:
    root, ckpt = domains
    _, model, data = _target_model(root, ckpt)
    assert data.n_items == 17  # 16 items + padding: every target item is in the catalog
    report = transfer_weights(model, load_checkpoint(ckpt), dataset="tgt", where=str(ckpt))
    assert report.used_pieces == 15
    assert report.unseen_pieces == 6
    assert report.unseen_by_field == {"title": 4, "brand": 2}
    assert report.unseen_piece_share == 6 / 15
    assert (report.piece_occurrences, report.unseen_occurrences) == (48, 26)
    assert report.items_without_known_pieces == 1
    metrics = report.metrics()
    assert metrics["transfer_unseen_pieces"] == 6.0
    assert metrics["transfer_items_without_known_pieces"] == 1.0
    assert report.id_rows == "none" and report.fresh == []


def test_known_pieces_use_the_pretrained_rows(domains) -> None:
    root, ckpt = domains
    _, model, data = _target_model(root, ckpt)
    saved = load_checkpoint(ckpt)
    transfer_weights(model, saved, dataset="tgt")
    state, vocab = saved["model_state"], saved["vocab"]
    enc = model.item_encoder
    ids = data.dataset.field2id_token["item_id"]  # internal id -> 'i<k>'
    for field_index, field in enumerate(["title", "brand"]):
        table = state[f"item_encoder.tables.{field}.weight"]
        assert torch.equal(enc.tables[field].weight, table)  # the pre-trained table, unchanged
        tokens = getattr(enc, f"tokens_{field_index}")
        for internal in range(1, data.n_items):
            text = TGT[int(ids[internal][1:])][field_index].split()
            known = [p for p in text if p in vocab[field]]
            got = [vocab[field][t] for t in tokens[internal].tolist() if t]
            assert got == known
    # An item's embedding is the pre-trained adapter over the sums of its known pieces' rows.
    item = int(list(ids).index("i14"))  # no known piece: adapter bias only
    bias = state["item_encoder.adapter.bias"]
    assert torch.equal(enc(torch.tensor([item]))[0], bias)
    item = int(list(ids).index("i1"))  # a1 (known), c1 (unseen); br1 (known)
    title = state["item_encoder.tables.title.weight"][vocab["title"].index("▁a1")]
    brand = state["item_encoder.tables.brand.weight"][vocab["brand"].index("▁br1")]
    expected = torch.cat([title, brand]) @ state["item_encoder.adapter.weight"].T + bias
    torch.testing.assert_close(enc(torch.tensor([item]))[0], expected, rtol=0, atol=1e-6)


def test_new_id_rows_follow_the_pretrained_scale(domains, tmp_path) -> None:
    root, _ = domains
    config = build_config(
        {**ARCH, **TRAIN, "item_encoder": "id+text", "dataset": "src", "data_path": str(root)}
    )
    ckpt = tmp_path / "idtext.pth"
    train(config, ckpt)
    saved = load_checkpoint(ckpt)
    _, model, _ = _target_model(root, ckpt)
    report = transfer_weights(model, saved, dataset="tgt")
    key = "item_encoder.id.item_embedding.weight"
    assert report.id_rows == "new" and report.fresh == [key]
    assert report.metrics()["transfer_unseen_pieces"] == 6.0
    assert report.id_init_std == pytest.approx(float(saved["model_state"][key][1:].std()))
    rows = model.item_encoder.id.item_embedding.weight
    assert rows.shape[0] == 17 and torch.equal(rows[0], torch.zeros(8))
    assert "item_encoder.text.tables.title.weight" in report.loaded
    # The same catalog keeps its rows.
    same_config = fine_tune_config({**TRAIN, "data_path": str(root)}, "src", pretrained=ckpt)
    data = build_seq_data(same_config)
    same = build_model(RunSettings.from_config(same_config).spec, data)
    assert transfer_weights(same, saved, dataset="src").id_rows == "loaded"
    assert torch.equal(same.item_encoder.id.item_embedding.weight, saved["model_state"][key])


# ----- errors, each one line before any training ---------------------------------------------


def test_missing_checkpoint(domains, tmp_path) -> None:
    root, _ = domains
    with pytest.raises(CheckpointError, match=r"checkpoint .*nope.pth not found"):
        fine_tune_config({"data_path": str(root)}, "tgt", pretrained=tmp_path / "nope.pth")


def test_missing_dataset_lists_what_is_there(domains, tmp_path) -> None:
    root, ckpt = domains
    config = fine_tune_config({**TRAIN, "data_path": str(root)}, "beauty", pretrained=ckpt)
    with pytest.raises(FineTuneError, match=r"dataset 'beauty' not found.*\['src', 'tgt'\]"):
        fine_tune(config, tmp_path / "ft.pth", pretrained=ckpt)
    assert not (tmp_path / "ft.pth").exists()
    good = fine_tune_config({**TRAIN, "data_path": str(root)}, "tgt", pretrained=ckpt)
    assert check_dataset(good) == root / "tgt" / "tgt.inter"
    with pytest.raises(FineTuneError, match=r"dataset 'amazon-1M' not found"):
        check_dataset(good, "amazon-1M")


def test_pretrain_config_mismatch(domains, tmp_path) -> None:
    root, ckpt = domains
    pre = tmp_path / "pre.yaml"
    pre.write_text(
        "model: SASRecX\ndataset: src\nitem_encoder: text\ntext_embedding_size: 8\n"
        "hidden_size: 16\ninner_size: 16\nn_layers: 1\nn_heads: 2\nmax_seq_length: 6\n"
    )
    with pytest.raises(ConfigError, match=r"sets hidden_size=16 but checkpoint .* hidden_size=8"):
        fine_tune_config({"data_path": str(root)}, "tgt", pretrained=ckpt, pretrain_config=pre)
    pre.write_text(pre.read_text().replace("hidden_size: 16", "hidden_size: 8"))
    config = fine_tune_config({"data_path": str(root)}, "tgt", pretrained=ckpt, pretrain_config=pre)
    assert config["hidden_size"] == 8 and config["dataset"] == "tgt"


def test_incompatible_size_names_both_shapes(domains, tmp_path) -> None:
    root, ckpt = domains
    config = fine_tune_config(
        {**TRAIN, "data_path": str(root)}, "tgt", ["hidden_size=16"], pretrained=ckpt
    )
    message = (
        r"\(sasrec-d8-l1-h2-text\) does not fit the configured sasrec-d16-l1-h2-text: "
        r"backbone.blocks.0.attention.key.bias is \[8\] there, \[16\] here"
    )
    with pytest.raises(TransferError, match=message):
        fine_tune(config, tmp_path / "ft.pth", pretrained=ckpt)
    assert not (tmp_path / "ft.pth").exists()


def test_text_fields_must_be_the_checkpoints_in_its_order(domains, tmp_path) -> None:
    """Reordered fields would load the adapter's columns permuted; other fields would not
    fit either: both are a one-line error naming the two lists."""
    root, ckpt = domains
    for fields in (["brand", "title"], ["title"]):
        config = fine_tune_config(
            {**TRAIN, "data_path": str(root), "text_fields": fields}, "tgt", pretrained=ckpt
        )
        model = build_model(RunSettings.from_config(config).spec, build_seq_data(config))
        message = re.escape(
            f"text_fields {fields} differ from checkpoint {ckpt}'s ['title', 'brand']: the "
            "adapter reads the fields in the checkpoint's order"
        )
        with pytest.raises(TransferError, match=message) as err:
            transfer_weights(model, load_checkpoint(ckpt), dataset="tgt", where=str(ckpt))
        assert "\n" not in str(err.value)


def test_checkpoint_of_another_model(domains, tmp_path) -> None:
    root, ckpt = domains
    with pytest.raises(ConfigError, match=r"holds a SASRecX model, but the config sets HSTU"):
        fine_tune_config({**TRAIN, "data_path": str(root), "model": "HSTU"}, "tgt", pretrained=ckpt)
    config = fine_tune_config({**TRAIN, "data_path": str(root)}, "tgt", pretrained=ckpt)
    config["model"] = "HSTU"  # a config built elsewhere reaches fine_tune directly
    with pytest.raises(ConfigError, match=r"holds a SASRecX .* but the config builds HSTU"):
        fine_tune(config, tmp_path / "ft.pth", pretrained=ckpt)


def test_cli_reports_one_line_errors(domains, tmp_path, capsys) -> None:
    root, ckpt = domains
    conf = tmp_path / "ft.yaml"
    conf.write_text("fine_tune_strategy: full\nepochs: 1\n")
    argv = ["-c", str(conf), "-s", "beauty", "-o", str(tmp_path / "o.pth"), "-i", str(ckpt)]
    assert fine_tune_main([*argv, "--data-path", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dataset 'beauty' not found") and "\n" not in err
    assert fine_tune_main(["-c", str(conf), "-s", "tgt", "-o", "o.pth", "-i", "x.pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: checkpoint x.pth not found; train one first or check the path"


@pytest.mark.slow  # a real MLflow sqlite store: about 15 s of schema migrations on 2 cores
def test_cli_fine_tunes_and_tracks_in_mlflow(domains, tmp_path, capsys) -> None:
    from recbole_fork.tracking import metric_history, search_runs

    root, ckpt = domains
    conf = tmp_path / "ft.yaml"
    conf.write_text(
        "fine_tune_strategy: frozen_embeddings\nepochs: 2\nnum_negatives: 5\nshow_progress: false\n"
    )
    uri = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    out = tmp_path / "ft.pth"
    argv = ["-c", str(conf), "-s", "tgt", "-o", str(out), "-l", "src", "-i", str(ckpt)]
    assert fine_tune_main([*argv, "--data-path", str(root), "--tracking-uri", uri]) == 0
    (run,) = search_runs("fine_tune-tgt", uri)
    assert run["run_name"] == "sasrec-d8-l1-h2-text-tgt-frozen_embeddings-s2020"
    assert run["params"]["transfer_unseen_pieces"] == "6.0"
    assert run["metrics"]["transfer_unseen_pieces"] == 6.0
    assert run["metrics"]["transfer_items_without_known_pieces"] == 1.0
    assert run["tags"]["stage_0"] == "frozen_embeddings: 2 tensors frozen"
    history = metric_history(run["run_id"], "trainable_params", uri)
    assert [step for step, _ in history] == [0, 1]
    assert history[0][1] == history[1][1] > 0
    assert load_checkpoint(out)["fine_tune"]["strategy"] == "frozen_embeddings"
    written = json.loads(out.with_suffix(".metrics.json").read_text())
    assert written["transfer_unseen_pieces"] == 6.0 and "best_test_ndcg_at_10" in written
