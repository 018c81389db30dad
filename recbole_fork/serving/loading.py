"""A checkpoint made ready to serve: its model rebuilt from the checkpoint alone, the dataset
it was trained on (token maps, user histories) read from the data path, both checked.

A checkpoint (``SeqTrainer``'s format) carries the resolved config as plain data, the text
vocabulary and the model's state dict, in which a text model's token tables are buffers: the
model is rebuilt from those, never from the dataset's own text, so a fine-tuned model whose
pieces were re-encoded into its pre-training vocabulary (``finetune.transfer``) comes back
exactly as it was trained. The dataset supplies what the checkpoint does not hold: the raw
item and user tokens behind the ids, and the users' histories.

Every problem found here is a ``UserError`` with a one-line message, raised before the
server binds its port.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recbole_fork.checkpoint import CheckpointError, load_checkpoint
from recbole_fork.errors import UserError
from recbole_fork.settings import ConfigError, RunSettings

logger = logging.getLogger(__name__)

# Keys RecBole derives while it builds its Config (the device, the process's rank, the
# dataset's own folder under data_path): rebuilt on this machine, never fed back.
_DERIVED_KEYS = frozenset({"data_path", "device", "local_rank", "single_spec", "use_gpu", "gpu_id"})


class ServingError(UserError):
    """The server cannot start: bad device, data that does not fit the checkpoint, ..."""


@dataclass
class Servable:
    """Everything the server needs, loaded and checked.

    Attributes:
        model: the ``ForkSeqModel`` in eval mode on ``device``.
        dataset: the ``SeqDataset`` the model was trained on (token maps, histories).
        settings: the run's settings, from the checkpoint's config.
        config: the run's RecBole ``Config`` rebuilt over ``data_path`` (``SeqData`` and
            the offline evaluation read it).
        checkpoint: where the checkpoint came from (its path, or the MLflow run).
        ckpt: the checkpoint dict, without its optimizer and scheduler states.
        version: the first 12 hex digits of the checkpoint file's SHA-256: any change of
            weights gives another version.
        run_name: the training run's name (``naming.run_name``, or the MLflow run's).
        data_path: the folder holding ``<dataset>/<dataset>.inter``.
        device: where the model and the item matrix live.
    """

    model: torch.nn.Module
    dataset: Any
    settings: RunSettings
    config: Any
    checkpoint: str
    ckpt: dict[str, Any]
    version: str
    run_name: str
    data_path: Path
    device: torch.device


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a fork model's training checkpoint and check it can be served.

    Raises:
        CheckpointError: missing, unreadable, or not written by the fork's trainer for one
            of the fork's models (a stock RecBole model's checkpoint, for one).
    """
    from recbole_fork.models import is_fork_model
    from recbole_fork.trainer import WEIGHT_FORMATS

    ckpt = load_checkpoint(path)
    config = ckpt.get("config")
    if (
        ckpt.get("format") not in WEIGHT_FORMATS
        or not isinstance(config, dict)
        or not isinstance(ckpt.get("model_state"), dict)
    ):
        raise CheckpointError(
            f"checkpoint {path} was not written by the fork's trainer (format "
            f"{ckpt.get('format')!r}); serve a checkpoint of pre_train.py or fine_tune.py"
        )
    model = str(config.get("model"))
    if not is_fork_model(model):
        raise CheckpointError(
            f"checkpoint {path} holds {model}, not one of the fork's models; only those are served"
        )
    return ckpt


def dataset_root(ckpt_config: dict[str, Any], data_path: str | Path | None) -> Path:
    """The folder holding ``<dataset>/<dataset>.inter``: ``data_path`` (that folder or the
    dataset's own), else the one the checkpoint was trained from.

    Raises:
        ServingError: no ``.inter`` file of the checkpoint's dataset there.
    """
    name = str(ckpt_config["dataset"])
    if data_path is None:
        trained = Path(str(ckpt_config.get("data_path", ".")))
        # RecBole's resolved data_path already ends in the dataset's own folder.
        data_path = trained.parent if trained.name == name else trained
    root = Path(data_path)
    if not (root / name / f"{name}.inter").is_file() and (root / f"{name}.inter").is_file():
        root = root.parent  # the dataset's own folder was given
    inter = root / name / f"{name}.inter"
    if not inter.is_file():
        raise ServingError(
            f"dataset {name!r} of the checkpoint not found: no {inter}; pass --data-path the "
            f"folder holding {name}/{name}.inter (the data the model was trained on)"
        )
    return root


def config_from_checkpoint(ckpt_config: dict[str, Any], root: Path, where: str) -> Any:
    """The run's RecBole ``Config`` rebuilt from the checkpoint's resolved config, over
    ``root``.

    Only the keys whose value differs from a fresh config's are passed on (what the run set),
    so RecBole derives the rest again; the rebuilt config must then equal the checkpoint's
    in every key but the derived ones (device, rank, data path), or the data would not be
    loaded as in training.

    Raises:
        CheckpointError: a key this version does not know, or one it resolves otherwise.
    """
    from recbole_fork.config import build_config

    base = {
        "model": ckpt_config["model"],
        "dataset": ckpt_config["dataset"],
        "data_path": str(root),
        "use_gpu": False,  # the data loads on the CPU; the model's device is chosen apart
        "show_progress": False,
    }
    try:
        fresh = build_config(base).to_dict()
        user = {
            k: v
            for k, v in ckpt_config.items()
            if k not in _DERIVED_KEYS and k not in base and fresh.get(k) != v
        }
        config = build_config({**base, **user})
    except ConfigError as e:
        raise CheckpointError(
            f"checkpoint {where} holds a config this version cannot rebuild ({e})"
        ) from None
    rebuilt = config.to_dict()
    for key in sorted(set(ckpt_config) | set(rebuilt)):
        if key in _DERIVED_KEYS or key == "show_progress":
            continue
        if rebuilt.get(key) != ckpt_config.get(key):
            raise CheckpointError(
                f"checkpoint {where}: its config key {key}={ckpt_config.get(key)!r} resolves to "
                f"{rebuilt.get(key)!r} in this version; serve it with the version that trained it"
            )
    return config


def _encoder_prefixes(item_encoder: str) -> tuple[str | None, str | None]:
    """(ID table module, text encoder module) of an item encoder kind, or None."""
    return {
        "id": ("item_encoder", None),
        "text": (None, "item_encoder"),
        "id+text": ("item_encoder.id", "item_encoder.text"),
    }[item_encoder]


def model_from_checkpoint(ckpt: dict[str, Any], settings: RunSettings, where: str):
    """The checkpoint's model, rebuilt from its own state dict and vocabulary (eval mode, CPU).

    Raises:
        CheckpointError: a state dict that does not fit the model its config describes.
    """
    from recbole_fork.encoders import Catalog
    from recbole_fork.models import get_model_class

    spec = settings.spec
    state: dict[str, torch.Tensor] = ckpt["model_state"]
    id_prefix, text_prefix = _encoder_prefixes(spec.encoder.item_encoder)
    tokens: dict[str, torch.Tensor] = {}
    n_rows: int | None = None
    if id_prefix is not None:
        table = state.get(f"{id_prefix}.item_embedding.weight")
        n_rows = None if table is None else int(table.shape[0])
    if text_prefix is not None:
        for i, field in enumerate(spec.encoder.text_fields):
            buf = state.get(f"{text_prefix}.tokens_{i}")
            if buf is not None:
                tokens[field] = buf
                n_rows = n_rows if n_rows is not None else int(buf.shape[0])
    if n_rows is None:
        raise CheckpointError(
            f"checkpoint {where}: its model state holds no item table for the "
            f"{spec.encoder.item_encoder!r} encoder its config names"
        )
    vocab = ckpt.get("vocab") or {}
    missing = [f for f in tokens if f not in vocab]
    if missing:
        raise CheckpointError(f"checkpoint {where} has no vocabulary for text field(s) {missing}")
    catalog = Catalog(
        n_items=n_rows, tokens=tokens, vocabs={f: vocab[f] for f in tokens}, name=settings.dataset
    )
    try:
        model = get_model_class(spec.model)(spec, catalog)
        model.load_state_dict(state)
    except (ConfigError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"checkpoint {where}: its weights do not fit the model its config describes ({first})"
        ) from None
    return model.eval()


def check_dataset_fits(model, dataset, where: str, root: Path) -> None:
    """The dataset must be the one the model was trained on: the same number of items and,
    for a text model, the same text on every item (re-encoded into the model's vocabulary
    by string, as fine-tuning does).

    Raises:
        ServingError: another catalog.
    """
    from recbole_fork.data import catalog_from_dataset
    from recbole_fork.finetune.transfer import remap_tokens, text_encoders

    name = str(dataset.dataset_name)
    if int(dataset.item_num) != int(model.n_items):
        raise ServingError(
            f"dataset {name!r} under {root} has {dataset.item_num - 1} items, the model of "
            f"{where} was trained on {model.n_items - 1}; pass --data-path the training data"
        )
    for enc in text_encoders(model).values():
        catalog = catalog_from_dataset(dataset, enc.fields)
        for i, field in enumerate(enc.fields):
            own = catalog.tokens[field].long()
            own = own.unsqueeze(1) if own.dim() == 1 else own
            mapped, _ = remap_tokens(own, catalog.vocabs[field], enc.vocab()[field])
            served = getattr(enc, f"tokens_{i}")
            width = max(mapped.shape[1], served.shape[1])
            if not torch.equal(_pad(mapped, width), _pad(served, width)):
                differs = (_pad(mapped, width) != _pad(served, width)).any(dim=1).nonzero()
                raise ServingError(
                    f"dataset {name!r} under {root}: the {field!r} text of item id "
                    f"{int(differs[0])} is not what the model of {where} was trained on; "
                    "pass --data-path the training data"
                )


def _pad(tokens: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad ``[n, T]`` token ids with 0 (the padding piece) to ``[n, width]``."""
    return torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]))


def file_version(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda`` (``cuda:N``) as a torch device.

    Raises:
        ServingError: an unknown name, or CUDA asked on a machine without it.
    """
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ServingError(f"--device {device!r}: use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ServingError(f"--device {device!r}: use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ServingError("--device cuda: no CUDA device is available here; use --device cpu")
    return dev


def load_servable(
    checkpoint: str | Path,
    *,
    data_path: str | Path | None = None,
    device: str = "cpu",
    run_name: str | None = None,
) -> Servable:
    """Load and check everything a server needs from a checkpoint and its dataset.

    Args:
        checkpoint: a fork model's checkpoint (``pre_train.py`` / ``fine_tune.py``).
        data_path: the folder holding ``<dataset>/<dataset>.inter``; default: the
            checkpoint's own ``data_path``.
        device: ``cpu`` or ``cuda``.
        run_name: the run's name when known (an MLflow run's); default: rebuilt from the
            config (``naming.run_name``).

    Raises:
        CheckpointError: missing, unreadable, foreign or inconsistent checkpoint.
        ServingError: bad device, dataset not found, or a dataset other than the training one.
        DataError: a dataset that cannot be loaded.
    """
    from recbole_fork.data.dataset import SeqDataset
    from recbole_fork.naming import run_name as make_run_name

    dev = resolve_device(device)
    path = Path(checkpoint)
    where = str(path)
    ckpt = read_checkpoint(path)
    root = dataset_root(ckpt["config"], data_path)
    config = config_from_checkpoint(ckpt["config"], root, where)
    try:
        settings = RunSettings.from_config(config, where)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {where}: {e}") from None
    model = model_from_checkpoint(ckpt, settings, where)
    dataset = SeqDataset(config)
    check_dataset_fits(model, dataset, where, root)
    strategy = (ckpt.get("fine_tune") or {}).get("strategy")
    kept = {k: v for k, v in ckpt.items() if k not in ("optimizer_state", "scheduler_state", "rng")}
    return Servable(
        model=model.to(dev),
        dataset=dataset,
        settings=settings,
        config=config,
        checkpoint=str(path),
        ckpt=kept,
        version=file_version(path),
        run_name=run_name or make_run_name(settings, strategy=strategy),
        data_path=root,
        device=dev,
    )


def checkpoint_of_run(
    run_id: str, tracking_uri: str | None, dst_dir: str | Path
) -> tuple[Path, str | None]:
    """The checkpoint an MLflow training run recorded, and the run's name
    (``tracking.run_checkpoint``).

    Raises:
        CheckpointError: no such run, or no checkpoint recorded or reachable.
    """
    from recbole_fork.tracking import run_checkpoint

    return run_checkpoint(run_id, tracking_uri, dst_dir)


__all__ = [
    "Servable",
    "ServingError",
    "checkpoint_of_run",
    "config_from_checkpoint",
    "load_servable",
    "model_from_checkpoint",
    "read_checkpoint",
]
