"""The run configuration: files, overrides, errors that name the culprit."""

from __future__ import annotations

import json

import pytest

from recbole_fork.config import ConfigError, build_config, load_config_file, parse_overrides


def _write(path, text):
    path.write_text(text)
    return path


def test_extension_is_optional_and_overrides_are_yaml_typed(tmp_path, tiny_dataset):
    _write(
        tmp_path / "run.yaml",
        f"model: SASRec\ndataset: tiny\ndata_path: {tiny_dataset}\nepochs: 3\n",
    )
    config = build_config(
        tmp_path / "run",
        [
            "epochs=7",
            "learning_rate=1e-3",
            "topk=[5, 10]",
            "scheduler.type=constant",
            "stopping_step=null",
        ],
    )
    assert config["epochs"] == 7
    assert config["learning_rate"] == 0.001 and isinstance(config["learning_rate"], float)
    assert config["topk"] == [5, 10]
    assert config["scheduler"]["type"] == "constant"
    assert config["scheduler"]["pct_start"] == 0.3  # the rest of the mapping keeps its defaults
    assert config["stopping_step"] is None


def test_json_config(tmp_path, tiny_dataset):
    _write(
        tmp_path / "run.json",
        json.dumps({"model": "SASRec", "dataset": "tiny", "data_path": str(tiny_dataset)}),
    )
    assert build_config(str(tmp_path / "run"))["dataset"] == "tiny"


def test_sys_argv_is_never_read(monkeypatch, tiny_dataset):
    monkeypatch.setattr("sys.argv", ["prog", "--epochs=99", "--learning_rate=5"])
    config = build_config({"model": "SASRec", "dataset": "tiny", "data_path": str(tiny_dataset)})
    assert config["epochs"] != 99


def test_strings_are_not_evaluated(tiny_dataset):
    config = build_config(
        {"model": "SASRec", "dataset": "tiny", "data_path": str(tiny_dataset), "hidden_act": "sum"}
    )
    assert config["hidden_act"] == "sum"  # RecBole's Config would eval() it into the builtin


def test_unknown_key_names_it_and_suggests(tmp_path):
    _write(tmp_path / "bad.yaml", "model: SASRec\ndataset: tiny\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError) as e:
        build_config(tmp_path / "bad.yaml")
    message = str(e.value)
    assert "learning_rat" in message and "learning_rate" in message and "bad.yaml" in message
    assert "\n" not in message


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="'epoch'.*epochs"):
        build_config({"model": "SASRec", "dataset": "tiny"}, ["epoch=3"])


def test_json_syntax_error_names_file_line_column(tmp_path):
    _write(tmp_path / "broken.json", '{\n  "model": "SASRec",\n  "epochs": 3,,\n}\n')
    with pytest.raises(ConfigError, match=r"broken\.json:3:15: JSON syntax error"):
        load_config_file(tmp_path / "broken")


def test_yaml_syntax_error_names_file_line_column(tmp_path):
    _write(tmp_path / "broken.yaml", "model: SASRec\nscheduler: {type: one_cycle\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:3:1: YAML syntax error"):
        load_config_file(tmp_path / "broken.yaml")


def test_missing_file_lists_what_is_there(tmp_path):
    _write(tmp_path / "amazon-100K.yaml", "model: SASRec\n")
    with pytest.raises(ConfigError, match=r"not found.*amazon-100K"):
        build_config(tmp_path / "amazon-1M")


def test_unknown_model_suggests():
    with pytest.raises(ConfigError, match="SASRec"):
        build_config({"model": "SASRek", "dataset": "tiny"})


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_ce_loss_trap_is_defused(tiny_dataset):
    config = build_config(
        {"model": "SASRec", "dataset": "tiny", "data_path": str(tiny_dataset), "loss_type": "CE"}
    )
    assert config["train_neg_sample_args"]["distribution"] == "none"


@pytest.mark.parametrize(("use_gpu", "device"), [(False, "cpu"), (True, "cuda")])
def test_use_gpu_decides_the_device_where_cuda_is_visible(monkeypatch, use_gpu, device):
    # RecBole 1.2.1 alone picks CUDA whenever a GPU is visible, whatever use_gpu says.
    import torch

    from recbole_fork.settings import RunSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # RecBole writes gpu_id here; restored after
    config = build_config({"model": "SASRecX", "dataset": "tiny", "use_gpu": use_gpu})
    assert config["device"] == torch.device(device)
    assert RunSettings.from_config(config).device == device


def test_one_run_name_from_the_resolved_settings(tiny_dataset):
    from recbole_fork.naming import run_name
    from recbole_fork.settings import RunSettings

    def name(**kw):
        config = build_config({"model": "SASRecX", "dataset": "tiny", "seed": 42, **kw})
        return RunSettings.from_config(config)

    assert run_name(name()) == "sasrec-d64-l2-h2-id-tiny-s42"
    varied = name(item_encoder="id+text", num_negatives=300, learning_rate=1e-3)
    assert run_name(varied, vary=["num_negatives", "learning_rate", "hidden_size"]) == (
        "sasrec-d64-l2-h2-id+text-neg300-lr0.001-tiny-s42"
    )
    assert run_name(name(), strategy="ewc") == "sasrec-d64-l2-h2-id-tiny-ewc-s42"
    assert run_name(name(run_name="mine")) == "mine"
    hstu = RunSettings.from_config(build_config({"model": "HSTU", "dataset": "tiny"}))
    assert run_name(hstu) == "hstu-d50-l2-h1-id-tiny-s2020"  # d width, l layers, h heads
    wukong = RunSettings.from_config(build_config({"model": "WukongSeq", "dataset": "tiny"}))
    assert run_name(wukong) == "wukong-d64-l3-w16-f16-c16-k24-id-tiny-s2020"  # no letter reused
    stock = RunSettings.from_config(build_config({"model": "SASRec", "dataset": "tiny"}))
    assert run_name(stock) == "recbole-sasrec-d64-l2-tiny-s2020"
