"""Typed run settings: read once from the resolved config, then passed down as frozen slices.

The resolved config (``recbole_fork.config.build_config``: RecBole's defaults < the fork's
``properties/*.yaml`` < the model's file < the user's file < ``--set``) is read ONCE, here,
into frozen dataclasses. Each part of the library receives its own slice and never looks a
key up in RecBole's ``Config`` (which answers None for any key it does not know):

==================  ===================================  ==============================
slice               class (defined beside its user)       read by
==================  ===================================  ==============================
``data``            ``data.seq_data.DataSettings``        ``SeqData`` (windows, split)
``sampler``         ``sampling.SamplerSettings``          ``build_sampler``
``loss``            ``losses.LossSettings``               ``build_loss``
``encoder``         ``encoders.EncoderSettings``          ``build_item_encoder``
``backbone``        the model file's settings class       the backbone (``SASRecSettings``, ...)
``training``        ``trainer.TrainingSettings``          ``SeqTrainer`` (optimizer, schedule)
``evaluation``      ``evaluation.EvalSettings``           ``SeqTrainer`` (ranking protocol)
``finetune``        ``finetune.settings.FineTuneSettings`` the fine-tuning recipe
==================  ===================================  ==============================

YAML stays the one home of every default: the dataclasses have no defaults of their own, a
key missing from the resolved config is an error naming it, and every value is checked
against the field's declared type (``--set hidden_size=big`` names ``hidden_size``) and by
the slice's own ``__post_init__`` (choices, ranges), all before any data is loaded.
RecBole's ``Config`` itself stays at the RecBole edge: loading a dataset
(``data.dataset.SeqDataset``) and RecBole's stock models.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from recbole_fork.errors import UserError

if TYPE_CHECKING:  # imported lazily at run time: each lives beside the code that reads it
    from recbole_fork.data.seq_data import DataSettings
    from recbole_fork.encoders import EncoderSettings
    from recbole_fork.evaluation import EvalSettings
    from recbole_fork.finetune.settings import FineTuneSettings
    from recbole_fork.losses import LossSettings
    from recbole_fork.sampling import SamplerSettings
    from recbole_fork.trainer import TrainingSettings


class ConfigError(UserError):
    """A user-caused configuration error; the message is one line naming the culprit."""


def check_choice(key: str, value: str, valid: Iterable[str]) -> None:
    """Raise ConfigError unless ``value`` is one of ``valid`` (listed in the message)."""
    valid = list(valid)
    if value not in valid:
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {key} {value!r}; valid: {valid}{hint}")


def check_range(key: str, value: float | int, *, low: float | None = None, high=None) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (either bound may be None)."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        )
        raise ConfigError(f"{key}={value!r}: must be {bounds}")


@dataclass(frozen=True)
class Settings:
    """Base of every settings slice: ``from_mapping`` reads and type-checks its fields.

    A subclass declares typed fields named like the config keys (no defaults: the defaults
    live in YAML) and checks choices and ranges in ``__post_init__`` with ``ConfigError``.
    """

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], where: str = "config") -> Self:
        """Read this slice's keys from a resolved config (a RecBole ``Config`` or a dict).

        Raises:
            ConfigError: a key is missing, or a value is not of the declared type.
        """
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            value = _lookup(cfg, f.name)
            if value is _MISSING:
                raise ConfigError(
                    f"{where}: config key {f.name!r} is missing ({cls.__name__}); "
                    "every default lives in recbole_fork/properties/*.yaml"
                )
            kwargs[f.name] = coerce(f.name, value, hints[f.name], where)
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (nested slices as dicts, tuples as lists)."""
        return _plain(dataclasses.asdict(self))


_MISSING = object()


def _lookup(cfg: Mapping[str, Any], key: str) -> Any:
    # RecBole's Config answers None for an unknown key and has no .get with a default; a key
    # it does hold may legitimately be None (e.g. max_grad_norm), told apart by `in`.
    try:
        present = key in cfg
    except TypeError:
        present = False
    if not present:
        final = getattr(cfg, "final_config_dict", None)
        present = final is not None and key in final
    return cfg[key] if present else _MISSING


def coerce(key: str, value: Any, hint: Any, where: str = "config") -> Any:
    """``value`` checked (and, where lossless, converted) to the declared type ``hint``.

    ints accept integral floats (YAML reads ``1e6`` as a float); floats accept ints; bools
    accept only booleans; ``tuple[T, ...]`` accepts a list or tuple (a lone scalar for a
    one-element tuple); ``X | None`` accepts None; a ``Settings`` subclass reads a mapping.

    Raises:
        ConfigError: naming ``key``, the expected type and the value.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner:
            try:
                return coerce(key, value, option, where)
            except ConfigError:
                if len(inner) == 1 and type(None) not in args:
                    raise
        expected = " or ".join(_type_name(a) for a in inner)
        if type(None) in args:
            expected += " or null"
        raise _type_error(key, value, expected, where)
    if origin is tuple:
        items = list(value) if isinstance(value, list | tuple) else [value]
        if isinstance(value, str | bytes) or value is None:
            raise _type_error(key, value, f"a list of {_type_name(args[0])}", where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(key, v, args[0], where) for v in items)
        if len(items) != len(args):
            raise _type_error(key, value, f"a list of {len(args)} values", where)
        return tuple(coerce(key, v, a, where) for v, a in zip(items, args))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, value, "a mapping", where)
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, Settings):
        if isinstance(value, str):  # `scheduler: constant` is short for {type: constant}
            value = {"type": value}
        if not isinstance(value, Mapping):
            raise _type_error(key, value, "a mapping", where)
        return hint.from_mapping(value, where=f"{where}: {key}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, "true or false", where)
    if hint is int:
        if isinstance(value, bool):
            raise _type_error(key, value, "an integer", where)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _type_error(key, value, "an integer", where)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, value, "a number", where)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, value, "a string", where)
    if hint is Any:
        return value
    raise TypeError(f"settings field {key!r} has an unsupported type {hint!r}")


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _type_error(key: str, value: Any, expected: str, where: str) -> ConfigError:
    return ConfigError(
        f"{where}: config key {key!r} must be {expected}, got {value!r} ({type(value).__name__})"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class RecBoleFields(Settings):
    """RecBole's field names, for the RecBole model interface (``calculate_loss``, ...)."""

    USER_ID_FIELD: str
    ITEM_ID_FIELD: str
    TIME_FIELD: str
    LIST_SUFFIX: str
    ITEM_LIST_LENGTH_FIELD: str
    NEG_PREFIX: str


@dataclass(frozen=True)
class ModelSpec:
    """Everything that builds a fork model: the model file's backbone slice, the item
    encoder, the loss, the negative sampler and RecBole's field names."""

    model: str
    backbone: Settings
    encoder: EncoderSettings
    loss: LossSettings
    sampler: SamplerSettings
    fields: RecBoleFields

    def describe(self) -> str:
        """``sasrec-d64-l2-h2-text``: the backbone's description and the item encoder."""
        return f"{self.backbone.describe()}-{self.encoder.item_encoder}"


@dataclass(frozen=True)
class RunSettings:
    """The whole run, read once: identity, tracking, and one slice per part.

    ``spec`` (model building) and ``finetune`` are None for RecBole's stock models, which
    read RecBole's ``Config`` themselves (the fork's evaluator scores them with the
    ``evaluation`` and ``data`` slices). ``resolved`` is the resolved config
    as plain data (MLflow params, the checkpoint's ``config``).
    """

    model: str
    dataset: str
    data_path: str
    device: str
    seed: int
    experiment: str | None
    run_name: str | None
    training: TrainingSettings
    evaluation: EvalSettings
    data: DataSettings
    spec: ModelSpec | None
    finetune: FineTuneSettings | None
    resolved: Mapping[str, Any] = dataclasses.field(compare=False, repr=False)

    @property
    def is_fork_model(self) -> bool:
        return self.spec is not None

    @classmethod
    def from_config(cls, config: Any, where: str = "config") -> RunSettings:
        """Read every slice from a resolved config (``build_config``'s ``ForkConfig``).

        Raises:
            ConfigError: a missing key, a value of the wrong type, an unknown choice or a
                value out of range; the message names the key.
        """
        from recbole_fork.data.seq_data import DataSettings
        from recbole_fork.encoders import EncoderSettings
        from recbole_fork.evaluation import EvalSettings
        from recbole_fork.finetune.settings import FineTuneSettings
        from recbole_fork.losses import LossSettings
        from recbole_fork.models import get_model_class, is_fork_model
        from recbole_fork.sampling import SamplerSettings
        from recbole_fork.trainer import TrainingSettings

        resolved = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        model = str(config["model"])
        fork = is_fork_model(model)
        spec = None
        if fork:
            spec = ModelSpec(
                model=model,
                backbone=get_model_class(model).settings_class.from_mapping(config, where),
                encoder=EncoderSettings.from_mapping(config, where),
                loss=LossSettings.from_mapping(config, where),
                sampler=SamplerSettings.from_mapping(config, where),
                fields=RecBoleFields.from_mapping(config, where),
            )
        return cls(
            model=model,
            dataset=str(config["dataset"]),
            data_path=str(config["data_path"]),
            device=str(config["device"] or "cpu"),
            seed=coerce("seed", config["seed"], int, where),
            experiment=coerce("experiment", config["experiment"], str | None, where),
            run_name=coerce("run_name", config["run_name"], str | None, where),
            training=TrainingSettings.from_mapping(config, where),
            evaluation=EvalSettings.from_mapping(config, where),
            data=DataSettings.from_mapping(config, where),
            spec=spec,
            finetune=FineTuneSettings.from_mapping(config, where) if fork else None,
            resolved=resolved,
        )


__all__ = [
    "ConfigError",
    "ModelSpec",
    "RecBoleFields",
    "RunSettings",
    "Settings",
    "check_choice",
    "check_range",
    "coerce",
]
