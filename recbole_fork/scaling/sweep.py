"""Sweeps over model and data sizes, one Ray Tune trial per grid point, resumable via MLflow.

A sweep file (``confs/sweeps/*.yaml``) names a base training config, a grid of overrides and
a budget; every grid point becomes a trial named from its hyperparameters
(``sasrecx-d64-l2-amazon-1M-s42``), the same string for the MLflow run, the checkpoint
folder and the Ray trial. Before launching, the sweep asks MLflow which runs of the
experiment are FINISHED and skips those names, so a sweep stopped and started again runs
only what is missing or failed. A failed trial never stops the others; failures are
listed at the end.

Sweep file keys:

- ``base_config`` (str): the training config the grid overrides.
- ``experiment`` (str): MLflow experiment of every trial.
- ``grid`` (dict: key -> list): config keys and their values; the product is the sweep.
- ``budget`` (dict): ``{epochs: 10}``, ``{epochs: {amazon-100K: 50, amazon-1M: 20}}`` per
  dataset, ``{tokens: 5e6}``: epochs = ceil(tokens / interactions of the dataset), or
  ``{flops: [1e12, 3e12, 1e13]}``: compute budgets, one trial per value crossed with the grid
  (IsoFLOP profiles); each trial gets ``train_flops_budget: <FLOPs>``, the trainer stops when
  its counted training FLOPs reach it and plans its LR schedule for that length (epochs then
  do not bound the run, so none is set). Pending trials are launched smallest budget first
  (grid order within a budget), so a sweep stopped part way holds whole IsoFLOP profiles of
  its smaller budgets rather than every budget of its first sizes.
- ``tune`` (dict, optional): hyperparameters tuned per size, crossed with every grid point.
  A key maps to a list (``learning_rate: [3e-4, 1e-3, 3e-3]``: every size tries each) or to
  one grid key whose values each get their own list (per size)::

      tune:
        learning_rate: [3.0e-4, 1.0e-3, 3.0e-3]
        warmup_steps:
          hidden_size: {16: [100, 300], 128: [300, 1000]}

  The report (``scripts/scaling_report.py --tune learning_rate warmup_steps``) keeps, per
  (N, D) or (N, C) cell, the setting with the best mean validation metric, lists the winner
  per size and warns when it sits at the edge of its list.
- ``seeds`` (list, optional): replicate every trial with each seed (``seeds: [2020, 2021]``);
  the report averages a cell's seeds and resamples them for its intervals. Not together
  with ``seed`` in the grid.
- ``overrides`` (dict, optional): fixed config keys for every trial.
- ``inner_size`` (int or ``same_as_hidden``, optional): shorthand for the feed-forward width.
- ``data_path`` (str, optional): folder of the atomic datasets (``<data_path>/<name>/``).
- ``checkpoint_dir`` (str): checkpoints go to ``<checkpoint_dir>/<run name>/checkpoint.pth``.
- ``trainable`` (str, optional): dotted path of the training function, called as
  ``fn(config, checkpoint_path, resume=..., tracking_uri=...)``; default
  ``recbole_fork.run.pre_train``.
- ``config_builder`` (str, optional): dotted path called as ``fn(base_config, overrides)``;
  default ``recbole_fork.config.build_config``.

Relative paths are relative to the project root (the nearest folder above the sweep file
holding ``pyproject.toml``; else the sweep file's folder), never to the working directory.
A value ``same_as_<key>`` (e.g. ``inner_size: same_as_hidden``) copies the trial's value of
``<key>`` (``hidden`` stands for ``hidden_size``).

Ray is imported only inside ``run_sweep`` and ``run_trial``.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recbole_fork import tracking
from recbole_fork.errors import UserError
from recbole_fork.naming import tag

logger = logging.getLogger(__name__)

DEFAULT_TRAINABLE = "recbole_fork.run.pre_train"
DEFAULT_CONFIG_BUILDER = "recbole_fork.config.build_config"
CHECKPOINT_FILE = "checkpoint.pth"
_SPEC_KEYS = {
    "base_config", "experiment", "grid", "budget", "overrides", "inner_size", "data_path",
    "checkpoint_dir", "trainable", "config_builder", "tune", "seeds",
}  # fmt: skip
BUDGET_KEY = "train_flops_budget"  # the trainer's config key for a compute budget (FLOPs)
_REQUIRED = ("base_config", "experiment", "grid", "budget", "checkpoint_dir")
_ALIASES = {"hidden": "hidden_size", "layers": "n_layers"}


class SweepError(UserError):
    """A user-caused problem with a sweep file (one line naming the key and the fix)."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated sweep file (paths absolute)."""

    path: Path
    base_config: Path
    experiment: str
    grid: dict[str, list[Any]]
    budget: dict[str, Any]
    overrides: dict[str, Any]
    checkpoint_dir: Path
    data_path: Path | None = None
    trainable: str = DEFAULT_TRAINABLE
    config_builder: str = DEFAULT_CONFIG_BUILDER
    tune: dict[str, Any] = field(default_factory=dict)
    seeds: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Trial:
    """One grid point: its name, the config overrides, where its checkpoint goes."""

    run_name: str
    overrides: dict[str, Any]
    checkpoint_path: Path


@dataclass
class SweepResult:
    """What a sweep did, by run name.

    Attributes:
        planned: every trial of the grid, in grid order.
        skipped: already FINISHED in MLflow before this invocation.
        finished: launched now and FINISHED in MLflow afterwards.
        failed: launched now and not FINISHED: name -> the error, one line.
        not_launched: left for a later invocation by ``max_trials``.
    """

    planned: list[str]
    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_launched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the console."""
        lines = [
            f"sweep: {len(self.planned)} trials; {len(self.skipped)} already finished (skipped), "
            f"{len(self.finished)} finished now, {len(self.failed)} failed, "
            f"{len(self.not_launched)} left for a later run"
        ]
        lines += [f"  FAILED {name}: {error}" for name, error in self.failed.items()]
        return "\n".join(lines)


def project_root(path: Path) -> Path:
    """The nearest folder at or above ``path``'s folder holding ``pyproject.toml`` (else that folder)."""
    folder = path.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return folder


def _read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error is a SweepError naming file, line and column."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SweepError(f"{path}:{where}: YAML syntax error: {problem}") from None


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file.

    Raises:
        SweepError: missing file, YAML syntax error, unknown or missing key, empty grid, bad
            budget, missing base config.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found; see confs/sweeps/ for examples")
    raw = _read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: the top level must be a mapping of key: value")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise SweepError(
            f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_SPEC_KEYS))}"
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise SweepError(f"{path}: missing key {missing[0]!r} (required: {', '.join(_REQUIRED)})")
    grid = raw["grid"]
    if not isinstance(grid, dict) or not grid:
        raise SweepError(
            f"{path}: 'grid' must be a non-empty mapping of config key -> list of values"
        )
    grid = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise SweepError(f"{path}: grid key {empty[0]!r} has no values")
    budget = raw["budget"]
    if not (
        isinstance(budget, dict)
        and len(budget) == 1
        and set(budget) <= {"epochs", "tokens", "flops"}
    ):
        raise SweepError(
            f"{path}: 'budget' must be {{epochs: N}}, {{epochs: {{dataset: N}}}}, {{tokens: T}} "
            "or {flops: [C1, C2, ...]}"
        )
    if "flops" in budget:
        flops = budget["flops"] if isinstance(budget["flops"], list) else [budget["flops"]]
        try:
            flops = [float(c) for c in flops]
        except (TypeError, ValueError):
            raise SweepError(
                f"{path}: budget.flops must be numbers (FLOPs), got {budget['flops']!r}"
            ) from None
        if not flops or any(not (math.isfinite(c) and c > 0) for c in flops):
            raise SweepError(f"{path}: budget.flops must be a non-empty list of FLOPs > 0")
        if len(set(flops)) != len(flops):
            raise SweepError(f"{path}: budget.flops repeats a value")
        budget = {"flops": flops}
    tune = _check_tune(path, raw.get("tune") or {}, grid)
    seeds = raw.get("seeds") or []
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if seeds and "seed" in grid:
        raise SweepError(
            f"{path}: give the seeds either in 'seeds' or as grid key 'seed', not both"
        )
    if len(set(map(str, seeds))) != len(seeds):
        raise SweepError(f"{path}: 'seeds' repeats a value")
    clash = sorted(set(tune) & (set(grid) | {"seed"}))
    if clash:
        raise SweepError(f"{path}: {clash[0]!r} is both tuned and in the grid; keep it in one")
    overrides = dict(raw.get("overrides") or {})
    if "inner_size" in raw:
        overrides["inner_size"] = raw["inner_size"]
    root = project_root(path)

    def absolute(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else root / p

    base = absolute(raw["base_config"])
    if not base.is_file():
        raise SweepError(f"{path}: base_config {base} not found")
    return SweepSpec(
        path=path.resolve(),
        base_config=base,
        experiment=str(raw["experiment"]),
        grid=grid,
        budget=dict(budget),
        overrides=overrides,
        checkpoint_dir=absolute(raw["checkpoint_dir"]),
        data_path=absolute(raw["data_path"]) if raw.get("data_path") else None,
        trainable=str(raw.get("trainable") or DEFAULT_TRAINABLE),
        config_builder=str(raw.get("config_builder") or DEFAULT_CONFIG_BUILDER),
        tune=tune,
        seeds=list(seeds),
    )


def _check_tune(path: Path, tune: Any, grid: Mapping[str, list[Any]]) -> dict[str, Any]:
    """Validate ``tune``: key -> list, or key -> {grid key: {grid value: list}}."""
    if not isinstance(tune, dict):
        raise SweepError(f"{path}: 'tune' must map a config key to a list of values")
    out: dict[str, Any] = {}
    for key, spec in tune.items():
        if isinstance(spec, list):
            if not spec or len({str(v) for v in spec}) != len(spec):
                raise SweepError(f"{path}: tune.{key} must be a non-empty list without repeats")
            out[key] = list(spec)
            continue
        if not (isinstance(spec, dict) and len(spec) == 1):
            raise SweepError(
                f"{path}: tune.{key} must be a list, or {{<grid key>: {{<value>: [list]}}}} per size"
            )
        ((by, lists),) = spec.items()
        if by not in grid:
            raise SweepError(
                f"{path}: tune.{key} is keyed by {by!r}, which is not a grid key "
                f"({', '.join(grid)})"
            )
        if not isinstance(lists, dict):
            raise SweepError(f"{path}: tune.{key}.{by} must map each value of {by} to a list")
        missing = [v for v in grid[by] if v not in lists]
        if missing:
            raise SweepError(f"{path}: tune.{key}.{by} has no list for {by} = {missing[0]!r}")
        bad = [v for v, values in lists.items() if not isinstance(values, list) or not values]
        if bad:
            raise SweepError(f"{path}: tune.{key}.{by}.{bad[0]} must be a non-empty list")
        out[key] = {by: {v: list(values) for v, values in lists.items()}}
    return out


def tune_values(spec: SweepSpec, point: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The tuned values a grid point tries: key -> list (its size's own list where per size)."""
    out = {}
    for key, values in spec.tune.items():
        if isinstance(values, dict):
            ((by, lists),) = values.items()
            values = lists[point[by]]
        out[key] = values
    return out


def trial_name(spec: SweepSpec, overrides: Mapping[str, Any], vary: Sequence[str]) -> str:
    """A trial's run name: the project's one name (``recbole_fork.naming.run_name``) of the
    config the trial trains, resolved exactly as ``pre_train`` resolves it (the base config,
    the model's defaults, the overrides), so a trial is named as the same run alone would be.

    Raises:
        ConfigError: the trial's config is invalid (the key is named), before any launch.
    """
    from recbole_fork.config import build_config
    from recbole_fork.naming import run_name
    from recbole_fork.settings import RunSettings

    config = build_config(spec.base_config, dict(overrides))
    return run_name(RunSettings.from_config(config), vary=vary)


def count_interactions(data_path: Path, dataset: str) -> int:
    """Interactions of ``<data_path>/<dataset>/<dataset>.inter`` (lines minus the header).

    Raises:
        SweepError: the file does not exist.
    """
    inter = data_path / dataset / f"{dataset}.inter"
    if not inter.is_file():
        raise SweepError(
            f"token budget: {inter} not found; build the dataset first or set data_path"
        )
    lines = 0
    with inter.open("rb") as f:
        while chunk := f.read(1 << 24):
            lines += chunk.count(b"\n")
    return max(lines - 1, 0)


def _epochs(spec: SweepSpec, dataset: str, data_path: Path | None) -> int:
    """Epochs of one trial from the budget (see the module docstring)."""
    if "epochs" in spec.budget:
        epochs = spec.budget["epochs"]
        if isinstance(epochs, dict):
            if dataset not in epochs:
                raise SweepError(f"{spec.path}: budget.epochs has no entry for dataset {dataset!r}")
            epochs = epochs[dataset]
        return int(epochs)
    if data_path is None:
        raise SweepError(
            f"{spec.path}: a token budget needs data_path (in the sweep or the base config)"
        )
    n = count_interactions(data_path, dataset)
    return max(1, math.ceil(float(spec.budget["tokens"]) / max(n, 1)))


def _resolve_ties(values: dict[str, Any]) -> dict[str, Any]:
    """Replace ``same_as_<key>`` values by the trial's value of ``<key>``."""
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, str) and value.startswith("same_as_"):
            source = value.removeprefix("same_as_")
            source = _ALIASES.get(source, source)
            if source not in values:
                raise SweepError(
                    f"{key}: {value} refers to {source!r}, which the trial does not set"
                )
            out[key] = values[source]
    return out


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """Every trial, in order: the grid (last key fastest), then each grid point's budgets,
    tuned settings and seeds (seeds fastest).

    Raises:
        SweepError: a ``same_as_`` reference to an unknown key, a missing budget entry, or
            two trials with the same run name.
    """
    base = _read_yaml(spec.base_config) or {}
    keys = list(spec.grid)
    budgets = spec.budget.get("flops", [None])
    name_keys = keys + list(spec.tune) + ([BUDGET_KEY] if "flops" in spec.budget else [])
    trials: list[Trial] = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        point = dict(zip(keys, combo, strict=True))
        tuned = tune_values(spec, point)
        for budget, setting, seed in itertools.product(
            budgets,
            itertools.product(*tuned.values()),
            spec.seeds or [None],
        ):
            extra = dict(zip(tuned, setting, strict=True))
            if budget is not None:
                extra[BUDGET_KEY] = budget
            if seed is not None:
                extra["seed"] = seed
            trials.append(_trial(spec, base, {**point, **extra}, name_keys))
    names = [t.run_name for t in trials]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SweepError(
            f"{spec.path}: grid points share the run name {dup[0]!r}; vary a key the name shows"
        )
    return trials


def _trial(
    spec: SweepSpec, base: Mapping[str, Any], point: dict[str, Any], name_keys: list[str]
) -> Trial:
    """One trial from its grid point (with budget, tuned values and seed already in it)."""
    values = _resolve_ties({**base, **spec.overrides, **point})
    data_path = spec.data_path or (Path(values["data_path"]) if values.get("data_path") else None)
    overrides = {**spec.overrides, **point}
    overrides = {k: values[k] for k in overrides}  # ties resolved
    if "flops" not in spec.budget:
        overrides["epochs"] = _epochs(spec, str(values.get("dataset")), data_path)
    if spec.data_path is not None:
        overrides["data_path"] = str(spec.data_path)
    name = trial_name(spec, overrides, name_keys)
    overrides["run_name"] = name
    overrides["experiment"] = spec.experiment
    return Trial(name, overrides, spec.checkpoint_dir / name / CHECKPOINT_FILE)


def import_object(dotted: str) -> Any:
    """``package.module.attr`` -> the object.

    Raises:
        SweepError: the module or attribute does not exist.
    """
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise SweepError(
            f"cannot import {dotted!r} ({e}); give a dotted path module.function"
        ) from None


def finished_run_names(experiment: str, tracking_uri: str | None) -> set[str]:
    """Names of the experiment's FINISHED runs (an empty set if it does not exist yet)."""

    runs = tracking.search_runs(
        experiment, tracking_uri, filter_string="attributes.status = 'FINISHED'"
    )
    return {r["run_name"] for r in runs}


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: build the config, train, report once.

    ``config["trial"]`` carries ``run_name``, ``base_config``, ``overrides``, ``checkpoint_path``,
    ``trainable``, ``config_builder`` and ``tracking_uri`` (plain data, sent to the worker).
    A checkpoint left by an interrupted attempt is resumed.
    """
    import ray
    from ray import tune

    trial = config["trial"]
    build = import_object(trial["config_builder"])
    train = import_object(trial["trainable"])
    overrides = dict(trial["overrides"])
    gpus = ray.get_gpu_ids()
    if gpus:
        # RecBole's Config sets CUDA_VISIBLE_DEVICES to its gpu_id (default '0'), which would
        # undo the GPU(s) Ray reserved for this trial and put every trial of a node on its
        # first GPU; name Ray's GPU(s) instead. No GPU reserved: the config decides.
        overrides["gpu_id"] = ",".join(str(g) for g in gpus)
    run_config = build(trial["base_config"], overrides)
    checkpoint = Path(trial["checkpoint_path"])
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    result = train(
        run_config, checkpoint, resume=checkpoint.is_file(), tracking_uri=trial["tracking_uri"]
    )
    metrics = {
        k: float(v)
        for k, v in (result or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    tune.report({**metrics, "trial_done": 1.0})


def worker_runtime_env(root: Path) -> dict[str, Any]:
    """The Ray ``runtime_env`` of a sweep on an existing cluster: ``PYTHONPATH`` for workers.

    A local Ray's workers inherit the driver's environment; a cluster's workers inherit the
    environment of ``ray start`` instead, so a trainable or config builder outside the
    installed packages (a module of the project, ``tests.scaling.scaling_fake_trainable``)
    would not import there. This puts the project root, then the driver's ``PYTHONPATH``, on
    the workers' ``PYTHONPATH``. The paths are the driver's: every node must see the project
    at the same path, as it must already see ``base_config``, ``data_path`` and
    ``checkpoint_dir`` (a shared disk or identical checkouts).

    Args:
        root: the project root (``project_root`` of the sweep file).
    """
    paths = [str(root), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in paths if p))}}


def _one_line(error: BaseException | None) -> str:
    """The most telling line of a (Ray-wrapped) exception: the last non-empty one."""
    if error is None:
        return "the trial returned but no FINISHED MLflow run has its name"
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def run_sweep(
    spec: SweepSpec,
    *,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    max_concurrent: int | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_trials: int | None = None,
) -> SweepResult:
    """Run the trials of ``spec`` that MLflow does not list as FINISHED, with Ray Tune.

    Args:
        spec: from ``load_sweep``.
        tracking_uri: the MLflow store every trial logs to (must be reachable from every
            Ray node: an ``http://`` server, or a sqlite file on a shared disk); default
            ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns.sqlite``, a relative sqlite path
            taken from the working directory (see ``tracking.resolve_tracking_uri``).
        ray_address: an existing Ray cluster (``head:6379`` or ``auto`` from one of its
            nodes, ``ray://head:10001``), whose workers get the project root on their
            PYTHONPATH (``worker_runtime_env``); None starts a local Ray (without
            dashboard) for the sweep and stops it after.
        num_cpus: CPUs of the local Ray (ignored with ``ray_address``).
        max_concurrent: trials at once (default: as many as the resources allow).
        cpus_per_trial, gpus_per_trial: resources each trial reserves; a trial that
            reserved GPUs trains on those (its ``gpu_id`` is set to Ray's GPU ids).
        max_trials: launch at most this many of the pending trials (grid order; with
            compute budgets, smallest budget first), leaving the rest for the next invocation.

    Returns:
        What was skipped, finished and failed; a failed trial never raises here.

    Raises:
        SweepError: a bad spec (found before anything starts).
    """
    trials = expand_trials(spec)
    import_object(spec.trainable)  # a typo fails here, not once per trial on the workers
    import_object(spec.config_builder)
    result = SweepResult(planned=[t.run_name for t in trials])
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.ensure_experiment(spec.experiment, tracking_uri)
    done = finished_run_names(spec.experiment, tracking_uri)
    pending = [t for t in trials if t.run_name not in done]
    if "flops" in spec.budget:  # whole IsoFLOP profiles first (stable: grid order within)
        pending.sort(key=lambda t: float(t.overrides[BUDGET_KEY]))
    result.skipped = [t.run_name for t in trials if t.run_name in done]
    if max_trials is not None:
        result.not_launched = [t.run_name for t in pending[max_trials:]]
        pending = pending[:max_trials]
    if not pending:
        return result

    import ray
    from ray import tune

    started_ray = not ray.is_initialized()
    if started_ray:
        if ray_address:
            ray.init(address=ray_address, runtime_env=worker_runtime_env(project_root(spec.path)))
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
    try:
        space = [
            {
                "run_name": t.run_name,
                "base_config": str(spec.base_config),
                "overrides": t.overrides,
                "checkpoint_path": str(t.checkpoint_path),
                "trainable": spec.trainable,
                "config_builder": spec.config_builder,
                "tracking_uri": tracking_uri,
            }
            for t in pending
        ]
        tuner = tune.Tuner(
            tune.with_resources(run_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
            param_space={"trial": tune.grid_search(space)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=tag(spec.experiment) or "sweep",
                storage_path=str(spec.checkpoint_dir / "ray_results"),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                verbose=1,
            ),
        )
        grid = tuner.fit()
        errors = {r.config["trial"]["run_name"]: r.error for r in grid}
    finally:
        if started_ray:
            ray.shutdown()

    now_done = finished_run_names(spec.experiment, tracking_uri)
    for t in pending:
        if t.run_name in now_done:
            result.finished.append(t.run_name)
        else:
            result.failed[t.run_name] = _one_line(errors.get(t.run_name))
    return result


def _trial_name(trial: Any) -> str:
    """Ray trial name and folder: the run name."""
    return trial.config["trial"]["run_name"]
