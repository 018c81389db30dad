"""Which names of an MLflow store are N, D, C, the metrics, the seed: the report's mapping.

The report reads any MLflow store through a small YAML file (``confs/reports/*.yaml``);
without one it reads this project's own names (``StoreMapping()``). Every key is optional:

- ``experiment`` (str): the experiment to read (``--experiment`` overrides it).
- ``n``, ``d``, ``tokens``, ``compute``, ``epochs``, ``budget``, ``seed``, ``dataset``,
  ``width``, ``depth``, ``protocol`` (a reference or a list of references, the first one a run
  has wins): a reference is ``params.<name>``, ``metrics.<name>`` or ``tags.<name>``. ``n`` is
  N (non-embedding parameters), ``d`` the training interactions, ``tokens`` the training
  tokens processed, ``compute`` the training FLOPs C, ``budget`` the planned compute budget
  of a budgeted run (IsoFLOP profiles), ``width`` and ``depth`` the model's shape.
  ``protocol`` may also be plain text (no ``params.`` prefix) describing the ranking protocol.
- ``compute_k`` (number): when the store logs no training total, ``C = compute_k · N · D ·
  epochs`` (6: forward 2 and backward 4 FLOPs per parameter per training interaction; an
  estimate the report labels as such).
- ``metrics`` (list): metric names to analyse (``test/ndcg_at_5``); ``select`` (str): the
  validation metric that picks between tuned settings of a cell.
- ``forms`` (dict metric -> list): the forms to fit (``loss``, ``error-floor``,
  ``metric-power``); default: a loss gets ``loss``, a ranking metric ``error-floor`` and
  ``metric-power``.
- ``tune`` (list of param names): hyperparameters tuned per size (the cell keeps the best).
- ``group_by`` (list of param names): separate studies within the experiment (e.g. the number
  of training negatives), each analysed on its own and compared.
- ``history`` (dict): per-epoch curves to draw, ``train_loss`` / ``valid_loss`` -> metric name.
- ``caption`` (str): where the runs come from and what trained them, printed under every
  figure (e.g. "the original study's runs, trained on GPUs").
- ``one_run_per_name`` (bool): keep only the newest finished run of each run name (this
  project re-runs a failed trial under its name); false where names are not unique.

A key the mapping file names but the store does not have is a one-line error naming it and
the keys the store has.
"""

from __future__ import annotations

import bz2
import contextlib
import difflib
import gzip
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from recbole_fork.errors import UserError

DEFAULT_METRICS = ("best_test_loss", "best_test_ndcg_at_10", "best_test_hr_at_10")
REF_KINDS = ("params", "metrics", "tags")
FORM_KEYS = ("loss", "error-floor", "metric-power")
_AXES = (
    "n", "d", "tokens", "compute", "epochs", "budget", "seed", "dataset", "width", "depth",
    "protocol",
)  # fmt: skip


class MappingError(UserError, ValueError):
    """A mapping file or a store that does not fit it (one line naming the key)."""


@dataclass(frozen=True)
class StoreMapping:
    """The store's names for the report's quantities; defaults are this project's names.

    Axis fields hold references (``params.x``, ``metrics.x``, ``tags.x``), first present wins.
    ``explicit`` lists the fields a mapping file set: those must exist in the store.
    """

    experiment: str | None = None
    n: tuple[str, ...] = ("params.params_non_embedding",)
    d: tuple[str, ...] = ("params.train_interactions", "params.dataset_interactions")
    tokens: tuple[str, ...] = ("metrics.total_tokens",)
    compute: tuple[str, ...] = ("metrics.total_flops",)
    epochs: tuple[str, ...] = ("params.epochs",)
    budget: tuple[str, ...] = ("params.train_flops_budget",)
    seed: tuple[str, ...] = ("params.seed",)
    dataset: tuple[str, ...] = ("params.dataset",)
    width: tuple[str, ...] = ("params.hidden_size",)
    depth: tuple[str, ...] = ("params.n_layers",)
    protocol: tuple[str, ...] = ("params.eval_protocol", "params.eval_mode")
    compute_k: float | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    select: str | None = "best_valid_ndcg_at_10"
    forms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tune: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ()
    history: Mapping[str, str] = field(
        default_factory=lambda: {"train_loss": "train_loss", "valid_loss": "valid_loss"}
    )
    one_run_per_name: bool = True
    caption: str = ""
    explicit: frozenset[str] = frozenset()

    def with_overrides(self, **changes: Any) -> StoreMapping:
        """A copy with some fields replaced (command-line options), marked explicit."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes, explicit=self.explicit | set(changes))


def _refs(key: str, value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if not isinstance(v, str) or not v:
            raise MappingError(
                f"mapping key {key!r}: expected a reference like params.name, got {v!r}"
            )
        out.append(v)
    return tuple(out)


def load_mapping(path: str | Path) -> StoreMapping:
    """Read a mapping file (see the module docstring).

    Raises:
        MappingError: unreadable file, unknown key, a value of the wrong kind.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise MappingError(f"mapping file {path}: cannot read it ({e})") from None
    if not isinstance(raw, dict):
        raise MappingError(f"mapping file {path}: the top level must be a mapping of key: value")
    valid = sorted(f.name for f in fields(StoreMapping) if f.name != "explicit")
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise MappingError(
            f"mapping file {path}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}"
        )
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            kw[key] = () if key in _AXES else None
            continue
        if key in _AXES:
            kw[key] = _refs(key, value)
        elif key in ("metrics", "tune", "group_by"):
            kw[key] = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
        elif key == "forms":
            if not isinstance(value, dict):
                raise MappingError(f"mapping file {path}: 'forms' must map metric -> list of forms")
            forms = {}
            for metric, names in value.items():
                names = tuple(names if isinstance(names, list) else [names])
                bad = [f for f in names if f not in FORM_KEYS]
                if bad:
                    raise MappingError(
                        f"mapping file {path}: form {bad[0]!r} of {metric!r} unknown; "
                        f"choose from {', '.join(FORM_KEYS)}"
                    )
                forms[str(metric)] = names
            kw[key] = forms
        elif key == "history":
            if not isinstance(value, dict):
                raise MappingError(
                    f"mapping file {path}: 'history' must map train_loss/valid_loss -> metric"
                )
            kw[key] = {str(k): str(v) for k, v in value.items()}
        elif key == "compute_k":
            kw[key] = float(value)
        elif key == "one_run_per_name":
            kw[key] = bool(value)
        else:
            kw[key] = str(value)
    return StoreMapping(**kw, explicit=frozenset(raw))


def is_reference(text: str) -> bool:
    """``params.x``, ``metrics.x`` or ``tags.x`` (else plain text)."""
    kind, _, name = text.partition(".")
    return kind in REF_KINDS and bool(name)


def lookup(run: Mapping[str, Any], refs: Sequence[str]) -> Any:
    """The first referenced value the run has (plain text is returned as itself); else None."""
    for ref in refs:
        if not is_reference(ref):
            return ref
        kind, _, name = ref.partition(".")
        values = run.get(kind, {})
        if name in values:
            return values[name]
    return None


def _store_keys(runs: Sequence[Mapping[str, Any]], kind: str) -> set[str]:
    return {k for r in runs for k in r.get(kind, {})}


def _missing(kind: str, name: str, have: set[str], what: str, store: str) -> MappingError:
    close = difflib.get_close_matches(name, sorted(have), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return MappingError(
        f"mapping key {what!r}: {kind}.{name} not found in {store}{hint}; the store's {kind}: "
        f"{', '.join(sorted(have)) or 'none'}"
    )


def check_mapping(mapping: StoreMapping, runs: Sequence[Mapping[str, Any]], store: str) -> None:
    """Every key the mapping names explicitly exists in at least one run; N and D always must.

    Raises:
        MappingError: the first missing key, with the store's keys of that kind.
    """
    have = {kind: _store_keys(runs, kind) for kind in REF_KINDS}
    for key in _AXES:
        refs = getattr(mapping, key)
        refs = [r for r in refs if is_reference(r)]
        if not refs or (key not in mapping.explicit and key not in ("n", "d")):
            continue
        if not any(r.partition(".")[2] in have[r.partition(".")[0]] for r in refs):
            kind, _, name = refs[0].partition(".")
            raise _missing(kind, name, have[kind], key, store)
    named = [("metrics", m) for m in mapping.metrics]
    if mapping.select and ("select" in mapping.explicit):
        named.append(("select", mapping.select))
    if "history" in mapping.explicit:
        named += [("history", m) for m in mapping.history.values()]
    for what, metric in named:
        if metric not in have["metrics"]:
            raise _missing("metrics", metric, have["metrics"], what, store)
    for what in ("tune", "group_by"):
        for name in getattr(mapping, what):
            if name not in have["params"]:
                raise _missing("params", name, have["params"], what, store)


# -- a readable copy of a store ---------------------------------------------------------------


def sqlite_revision(path: Path) -> str | None:
    """The alembic schema revision of an MLflow sqlite file (read-only), None if it has none."""
    uri = f"file:{path.resolve()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _is_sqlite_file(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


@dataclass(frozen=True)
class OpenedStore:
    """A store ready to read: its tracking URI, and what was done to get there."""

    uri: str
    label: str
    revision: str | None = None
    upgraded: bool = False


@contextlib.contextmanager
def open_store(store: str) -> Iterator[OpenedStore]:
    """Open any MLflow store for reading, never changing it.

    A local sqlite file (also ``.bz2`` or ``.gz`` compressed, or a ``sqlite:///`` URI) is copied
    into a temporary folder and the copy upgraded to the running MLflow's schema
    (``mlflow db upgrade``); a local ``mlruns`` folder is copied too (opening one may write
    to it). A server (``http://``, ``https://``) is read as it is. The temporary copy is
    deleted on exit.

    Args:
        store: a path or a tracking URI.

    Raises:
        MappingError: the path does not exist or is neither an sqlite file nor a folder.
    """
    from recbole_fork import tracking

    if store.startswith(("http://", "https://", "databricks")):
        yield OpenedStore(store, store)
        return
    path = Path(store.removeprefix("sqlite:///")) if store.startswith("sqlite:///") else Path(store)
    path = Path(str(path).removeprefix("file://"))
    if not path.exists():
        raise MappingError(f"store {store}: no such file or folder; give a path or a tracking URI")
    label = path.name
    with tempfile.TemporaryDirectory(prefix="scaling-store-") as tmp:
        if path.is_dir():
            copy = Path(tmp) / "mlruns"
            shutil.copytree(path, copy)
            yield OpenedStore(copy.resolve().as_uri(), label)
            return
        copy = Path(tmp) / "store.sqlite"
        opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
        with opener(path, "rb") as src, copy.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if not _is_sqlite_file(copy):
            raise MappingError(
                f"store {store}: not an sqlite file (nor .bz2/.gz of one) or an mlruns folder"
            )
        revision = sqlite_revision(copy)
        uri = f"sqlite:///{copy.resolve()}"
        tracking.upgrade_database(uri)
        yield OpenedStore(uri, label, revision, upgraded=sqlite_revision(copy) != revision)
