"""Loading a checkpoint for serving: the config rebuilt exactly, every incompatible or missing
piece a one-line UserError before anything is served."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from recbole_fork.checkpoint import CheckpointError
from recbole_fork.errors import UserError
from recbole_fork.serving.loading import ServingError, load_servable, resolve_device
from tests.serving.conftest import DATASET, write_shop_dataset


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, UserError)
    return message


def _edit_checkpoint(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_the_rebuilt_config_equals_the_checkpoints(checkpoints, shop):
    sv = load_servable(checkpoints["sasrec-text"])
    saved = sv.ckpt["config"]
    rebuilt = sv.config.to_dict()
    derived = {"data_path", "device", "local_rank", "single_spec", "use_gpu", "gpu_id"}
    assert {k: v for k, v in rebuilt.items() if k not in derived | {"show_progress"}} == {
        k: v for k, v in saved.items() if k not in derived | {"show_progress"}
    }
    assert sv.data_path == shop[0] and sv.dataset.item_num == 31
    assert sv.run_name == "sasrec-d16-l1-h1-text-shop-s7" and len(sv.version) == 12
    assert not sv.model.training and "optimizer_state" not in sv.ckpt
    # The dataset's own folder works as --data-path too.
    assert load_servable(checkpoints["sasrec-id"], data_path=shop[0] / DATASET).data_path == shop[0]


def test_missing_unreadable_and_foreign_checkpoints(checkpoints, tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_servable(tmp_path / "none.pth")
    assert "not found" in _one_line(e)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        load_servable(tmp_path / "junk.pth")
    assert "cannot be read as a plain-dict checkpoint" in _one_line(e)
    torch.save({"format": "elsewhere/1", "weights": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as e:
        load_servable(tmp_path / "other.pth")
    assert "not written by the fork's trainer (format 'elsewhere/1')" in _one_line(e)

    def stock(ckpt):
        ckpt["config"]["model"] = "SASRec"

    _edit_checkpoint(checkpoints["sasrec-id"], tmp_path / "stock.pth", stock)
    with pytest.raises(CheckpointError) as e:
        load_servable(tmp_path / "stock.pth")
    assert "holds SASRec, not one of the fork's models" in _one_line(e)


def test_incompatible_checkpoints(checkpoints, tmp_path):
    def wider(ckpt):
        ckpt["config"]["hidden_size"] = 32

    _edit_checkpoint(checkpoints["sasrec-id"], tmp_path / "wider.pth", wider)
    with pytest.raises(CheckpointError) as e:
        load_servable(tmp_path / "wider.pth")
    assert "weights do not fit the model its config describes" in _one_line(e)

    def unknown_key(ckpt):
        ckpt["config"]["retired_setting"] = 3

    _edit_checkpoint(checkpoints["sasrec-id"], tmp_path / "key.pth", unknown_key)
    with pytest.raises(CheckpointError) as e:
        load_servable(tmp_path / "key.pth")
    assert "holds a config this version cannot rebuild" in _one_line(e)
    assert "retired_setting" in str(e.value)


def test_a_dataset_that_is_not_the_training_one(checkpoints, shop, tmp_path):
    with pytest.raises(ServingError) as e:
        load_servable(checkpoints["sasrec-id"], data_path=tmp_path)
    assert "dataset 'shop' of the checkpoint not found" in _one_line(e)
    bigger = tmp_path / "bigger"
    write_shop_dataset(bigger, n_items=33)
    with pytest.raises(ServingError) as e:
        load_servable(checkpoints["sasrec-id"], data_path=bigger)
    assert "has 33 items, the model of" in _one_line(e) and "trained on 30" in str(e.value)
    # Same items, one title changed: a text model notices.
    edited = tmp_path / "edited"
    shutil.copytree(shop[0], edited)
    item_file = edited / DATASET / f"{DATASET}.item"
    lines = item_file.read_text().splitlines()
    fields = lines[5].split("\t")
    fields[1] = "▁no"
    lines[5] = "\t".join(fields)
    item_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ServingError) as e:
        load_servable(checkpoints["sasrec-text"], data_path=edited)
    assert "the 'title' text of item id" in _one_line(e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ServingError) as e:
        resolve_device("cuda")
    assert "no CUDA device" in _one_line(e)
    with pytest.raises(ServingError):
        resolve_device("tpu")
