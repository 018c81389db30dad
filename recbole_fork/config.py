"""Run configuration: one file (JSON or YAML) plus ``--set key=value`` overrides -> a RecBole Config.

Layers, later wins: RecBole's own defaults < the fork's defaults
(``recbole_fork/properties/*.yaml``) < the model's defaults
(``recbole_fork/properties/model/<Model>.yaml``) < the config file < the overrides.

Unlike RecBole's ``Config()``, nothing here reads ``sys.argv`` or ``eval``s a string, and an
unknown key is an error that names it and suggests the closest valid keys, raised before
any data is loaded.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from recbole.config import Config

from recbole_fork import compat
from recbole_fork.settings import ConfigError

compat.apply()  # RecBole's numpy 2 / pandas 3 fixes, before RecBole is used

PROPERTIES = Path(__file__).parent / "properties"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

# Keys RecBole reads with config[...] that none of its default files defines.
_RECBOLE_CODE_KEYS = {
    "CROP_ITEM_SEQ", "CROP_ITEM_SEQ_LEN", "INVERSE_ITEM_SEQ", "MASK_INDEX", "MASK_ITEM_SEQ",
    "MODEL_INPUT_TYPE", "MODEL_TYPE", "NEG_ITEMS", "POS_ITEMS", "REORDER_ITEM_SEQ", "dataset",
    "device", "encoding", "eval_type", "local_rank", "model", "single_spec",
    "test_neg_sample_args", "valid_neg_sample_args", "world_size",
}  # fmt: skip

# RecBole keys that make it pickle a filtered dataset or the split dataloaders and, worse,
# unpickle whatever file sits at the path they name (or at <checkpoint_dir>/<dataset>-*.pth):
# loading a pickle runs its code. The fork never saves or loads them; each key must stay off.
PICKLE_KEYS = {
    "save_dataset": False,
    "save_dataloaders": False,
    "dataset_save_path": None,
    "dataloaders_save_path": None,
}


class ForkConfig(Config):
    """RecBole's ``Config`` built only from the arguments given: no ``sys.argv``, no ``eval``,
    and ``data_path`` always the one given (RecBole swaps in its bundled copy of ml-100k)."""

    def _load_cmd_line(self) -> dict:
        return {}

    def _set_default_parameters(self):
        data_path = self.final_config_dict["data_path"]
        super()._set_default_parameters()
        # RecBole points ml-100k at the copy inside its package whatever data_path says, so a
        # run would train on other data than the folder it names. <data_path>/<dataset>, as
        # RecBole does for every other dataset.
        self.final_config_dict["data_path"] = os.path.join(data_path, self.dataset)

    def _load_variable_config_dict(self, config_dict):
        # RecBole eval()s every string value; ours are already typed by YAML rules.
        return dict(config_dict) if config_dict else {}

    def _init_device(self) -> None:
        # RecBole 1.2.1 sets `device` to CUDA whenever a GPU is visible: only its stock
        # trainer reads `use_gpu`. `use_gpu: false` must mean the CPU for the fork's models
        # too (the tests and the CPU halves of benchmarks rely on it on a GPU machine).
        super()._init_device()
        if self.final_config_dict.get("single_spec") and not self.final_config_dict.get(
            "use_gpu", True
        ):
            import torch

            self.final_config_dict["device"] = torch.device("cpu")

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (for checkpoints and MLflow params)."""
        return {k: _plain(v) for k, v in self.final_config_dict.items()}


def _plain(value: Any) -> Any:
    """Turn enums, devices, tuples and numpy scalars into plain JSON-able data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "value") and not callable(value.value):  # Enum
        return _plain(value.value)
    return str(value)


def resolve_config_path(path: str | Path) -> Path:
    """Find a config file given with or without its extension (``confs/pre_train/amazon-100K``).

    Raises:
        ConfigError: no such file, listing the configs found in that folder.
    """
    path = Path(path)
    if path.is_file():
        return path
    for suffix in CONFIG_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    folder = path.parent if path.parent.is_dir() else Path(".")
    found = sorted(p.stem for p in folder.iterdir() if p.suffix in CONFIG_SUFFIXES)
    raise ConfigError(
        f"config file {path} not found (tried {list(CONFIG_SUFFIXES)}); in {folder}: {found}"
    )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or YAML config file into a dict.

    Raises:
        ConfigError: missing file, syntax error (with file, line and column), or not a mapping.
    """
    path = resolve_config_path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: JSON syntax error: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of key: value")
    return data


def parse_overrides(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["a=1", "scheduler.type=constant"]`` -> ``{"a": 1, "scheduler": {"type": "constant"}}``.

    Values are typed by YAML rules (``1`` int, ``1e-3`` float, ``[1, 2]`` list, ``null`` None).

    Raises:
        ConfigError: an item without ``=``.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str):
            value = _maybe_number(value)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _maybe_number(text: str) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; a researcher means a float."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return {k: _maybe_number(v) if isinstance(v, str) else v for k, v in (data or {}).items()}


def fork_defaults(model: str) -> dict[str, Any]:
    """The fork's defaults for ``model``: every ``properties/*.yaml`` then the model's file."""
    out: dict[str, Any] = {}
    for path in sorted(PROPERTIES.glob("*.yaml")):
        out.update(_read_yaml(path))
    out.update(_read_yaml(PROPERTIES / "model" / f"{model}.yaml"))
    return out


def recbole_model_defaults(model: str) -> dict[str, Any]:
    """RecBole's own defaults file for a stock model (empty for the fork's models)."""
    import recbole

    return _read_yaml(Path(recbole.__file__).parent / "properties" / "model" / f"{model}.yaml")


def recbole_keys(model: str, dataset: str | None) -> set[str]:
    """Every key RecBole itself understands for this model and dataset."""
    import recbole

    props = Path(recbole.__file__).parent / "properties"
    files = [
        props / "overall.yaml",
        props / "dataset" / "sample.yaml",
        props / "model" / f"{model}.yaml",
    ]
    files += sorted((props / "quick_start_config").glob("*.yaml"))
    if dataset:
        files.append(props / "dataset" / f"{dataset}.yaml")
    keys = set(_RECBOLE_CODE_KEYS)
    for path in files:
        keys |= set(_read_yaml(path))
    return keys


def check_keys(user: Mapping[str, Any], valid: set[str], source: str) -> None:
    """Raise ConfigError naming the first unknown key and the closest valid ones."""
    for key in user:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown config key {key!r}{hint}")


def check_no_pickles(user: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError when ``user`` turns on one of RecBole's pickled dataset caches.

    Every key of ``PICKLE_KEYS`` may only hold its off value (``false`` / ``null``).
    """
    for key, off in PICKLE_KEYS.items():
        if key in user and user[key] != off:
            raise ConfigError(
                f"{source}: config key {key!r}={user[key]!r} is not supported: the fork never "
                "saves or loads RecBole's pickled datasets or dataloaders (loading a pickle "
                f"runs its code); remove the key or set it to {'null' if off is None else 'false'}"
            )


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``top`` over ``base``; a nested mapping (e.g. ``scheduler``) is merged key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def build_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    dataset: str | None = None,
) -> ForkConfig:
    """Build the run configuration.

    Args:
        source: a config file path (extension optional) or a dict of settings.
        overrides: ``--set`` items (``key=value``; dotted keys reach into mappings) or a dict.
        model, dataset: override the file's ``model`` / ``dataset``.

    Returns:
        A RecBole ``Config`` (``ForkConfig``) with every layer resolved.

    Raises:
        ConfigError: unreadable file, syntax error, unknown key, missing model or dataset, a
            key of ``PICKLE_KEYS`` turned on.
    """
    from recbole_fork.models import get_model_class, is_fork_model

    if source is None:
        user, where = {}, "config"
    elif isinstance(source, Mapping):
        user, where = dict(source), "config"
    else:
        where = str(resolve_config_path(source))
        user = load_config_file(where)
    user = _merge(user, parse_overrides(overrides))
    model = model or user.get("model")
    dataset = dataset or user.get("dataset")
    if not model or not dataset:
        raise ConfigError(
            f"{where}: set both 'model' and 'dataset' (got model={model!r}, dataset={dataset!r})"
        )
    try:
        model_class = get_model_class(model)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None

    defaults = fork_defaults(model)
    check_keys(user, recbole_keys(model, dataset) | set(defaults), where)
    check_no_pickles(user, where)
    merged = _merge(defaults, user)
    merged.update(PICKLE_KEYS)  # off whatever RecBole's own defaults say
    merged["model"], merged["dataset"] = model, dataset
    if "max_seq_length" in merged:
        merged["MAX_ITEM_LIST_LENGTH"] = merged["max_seq_length"]
    # Config trap (REFERENCE 5): RecBole samples one negative by default, which breaks
    # CE losses; the fork's models sample their own negatives in one pass.
    loss_type = merged.get("loss_type") or recbole_model_defaults(model).get("loss_type")
    if "train_neg_sample_args" not in user and (
        is_fork_model(model) or str(loss_type).upper() == "CE"
    ):
        merged["train_neg_sample_args"] = None
    return ForkConfig(model=model_class, dataset=dataset, config_dict=merged)
