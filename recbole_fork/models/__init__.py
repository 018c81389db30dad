"""The fork's models, registered by name so a config's ``model:`` key finds them.

A name not in ``MODELS`` is looked up among RecBole's stock models (``SASRec``, ...), which
stay runnable through the same scripts for comparison.
"""

from __future__ import annotations

import importlib

# name -> "module:Class"; imported lazily so a config check does not build every model.
_REGISTRY = {
    "SASRecX": "recbole_fork.models.sasrec:SASRecX",
    "HSTU": "recbole_fork.models.hstu:HSTU",
    "WukongSeq": "recbole_fork.models.wukong:WukongSeq",
}

MODELS = tuple(_REGISTRY)


def is_fork_model(name: str) -> bool:
    """True when ``name`` is one of the fork's own models (not a stock RecBole model)."""
    return name in _REGISTRY


def get_model_class(name: str) -> type:
    """The model class for ``name``: a fork model, else a stock RecBole model.

    Raises:
        ValueError: no such model, with the closest names.
    """
    if name in _REGISTRY:
        module, cls = _REGISTRY[name].split(":")
        return getattr(importlib.import_module(module), cls)
    if name not in _stock_names():
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY) + _stock_names(), n=3)
        raise ValueError(
            f"unknown model {name!r}; did you mean {close}? fork models: {list(_REGISTRY)}"
        )
    from recbole.utils import get_model

    return get_model(name)


def _stock_names() -> list[str]:
    """Names of RecBole's stock models (from its per-model default files)."""
    from pathlib import Path

    import recbole

    props = Path(recbole.__file__).parent / "properties" / "model"
    return sorted(p.stem for p in props.glob("*.yaml"))
