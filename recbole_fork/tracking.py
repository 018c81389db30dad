"""MLflow tracking: the one module that imports mlflow.

Default tracking URI ``sqlite:///mlruns.sqlite`` in the working directory, overridden by
``MLFLOW_TRACKING_URI`` or an explicit ``tracking_uri`` (the scripts' ``--tracking-uri``).
See the runs with ``mlflow ui --backend-store-uri sqlite:///mlruns.sqlite``.

If the tracking server cannot be reached, at the start or in the middle of a run, training
goes on: a warning says where the run is being written instead (a local sqlite file), and
everything logged so far is replayed there, so nothing is lost. When that local file cannot
be written either, a ``TrackingError`` says so in one line.

A resumed training continues the MLflow run its checkpoint names. Where that run cannot be
found (it was written to the fallback file while the server was down), the new run gets the
params, a copy of the old run's metric history when its store can be read, and tags linking
the two (``resumed_from_run_id``; ``continued_in_run_id`` on the old one).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recbole_fork.errors import UserError

# Fail over in seconds, not minutes: MLflow's default HTTP client retries 7 times with backoff.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

DEFAULT_URI = "sqlite:///mlruns.sqlite"
FALLBACK_URI = "sqlite:///mlruns-fallback.sqlite"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value

logger = logging.getLogger(__name__)

_WRITABLE_HINT = (
    "start the tracking server, or pass --tracking-uri sqlite:///<a writable folder>/mlruns.sqlite"
)


class TrackingError(UserError):
    """No tracking store can be reached or written (one line naming the stores and causes)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The URI to log to: the argument, else ``$MLFLOW_TRACKING_URI``, else the sqlite default.

    A relative sqlite path is made absolute against the working directory now: MLflow caches
    its database engine per URI string, so a relative URI would follow the first directory
    it was used in.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(Path.cwd() / uri[len(prefix) :])
    return uri


def metric_name(name: str) -> str:
    """MLflow forbids ``@`` in metric names: ``valid_ndcg@10`` -> ``valid_ndcg_at_10``."""
    return name.replace("@", "_at_")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"scheduler.type": "one_cycle", ...}`` with string values."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


def _reader(tracking_uri: str | None):
    """An ``MlflowClient`` for reading ``tracking_uri`` (see ``resolve_tracking_uri``).

    Raises:
        TrackingError: an HTTP tracking server that does not answer.
    """
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    try:
        _check_reachable(uri, write=False)
    except ConnectionError as e:
        raise TrackingError(f"{e}; start it or pass --tracking-uri") from None
    return MlflowClient(tracking_uri=uri)


def _check_reachable(uri: str, timeout: float = 3.0, write: bool = True) -> None:
    """Raise ConnectionError when an HTTP tracking server does not answer its health check,
    or a sqlite store's file cannot be opened (``write``: for writing), which MLflow would
    retry for about 100 s."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        db = Path(uri[len(prefix) :])
        mode = os.R_OK | (os.W_OK if write else 0)
        if db.exists() and not (db.is_file() and os.access(db, mode)):
            raise ConnectionError(f"{db} is not a {'writable' if write else 'readable'} file")
        folder = db.parent
        if not db.exists() and not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise ConnectionError(f"{db} cannot be created: {folder} is not a writable folder")
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            r.read()
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(f"MLflow server {uri} is not reachable ({e})") from None


class Tracker:
    """One MLflow run: params, per-epoch metrics, artifacts, with a local fallback.

    Args:
        experiment: experiment name (created if missing).
        run_name: the run's name (built from the hyperparameters by the caller).
        tracking_uri: see ``resolve_tracking_uri``.
        run_id: continue this run (a resumed training) instead of starting a new one; when
            it is not found there, a new run is started and linked to it.
        tags: extra run tags.
        fallback_uri: where to write when ``tracking_uri`` cannot be reached.
        previous_uri: the store ``run_id`` was written to (the checkpoint records it); its
            metric history is copied into a new run that replaces it.

    Attributes:
        continued: True when this tracker continues the run ``run_id`` (which already holds
            its params: ``log_params`` then adds only keys it lacks).

    Raises:
        TrackingError: neither ``tracking_uri`` nor the fallback store can be written.
    """

    def __init__(
        self,
        experiment: str,
        run_name: str,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        fallback_uri: str | None = None,
        previous_uri: str | None = None,
    ) -> None:
        self.experiment = experiment
        self.run_name = run_name
        self.uri = resolve_tracking_uri(tracking_uri)
        default, spare = resolve_tracking_uri(DEFAULT_URI), resolve_tracking_uri(FALLBACK_URI)
        self.fallback_uri = resolve_tracking_uri(fallback_uri) if fallback_uri else None
        self.fallback_uri = self.fallback_uri or (default if self.uri != default else spare)
        self.tags = dict(tags or {})
        self._journal: list[tuple[str, tuple]] = []  # everything logged, for a replay
        self._finished = False
        self.client = None
        self.run_id: str | None = None
        self.requested_run_id = run_id
        self.previous_uri = previous_uri
        self.continued = False
        self._params_logged: dict[str, str] = {}  # the run's params (MLflow never changes one)
        try:
            self._open(self.uri, run_id)
        except Exception as e:  # any failure to reach the store: fall back, keep training
            self._fall_back(e)
        if run_id is not None and not self.continued:
            self._adopt(run_id)

    # -- opening and falling back ------------------------------------------------------

    def _open(self, uri: str, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        _check_reachable(uri)
        client = MlflowClient(tracking_uri=uri)
        params: dict[str, str] = {}
        found = None
        if run_id is not None:
            try:
                found = client.get_run(run_id)
            except Exception:
                logger.warning(f"MLflow run {run_id} not found at {uri}; starting a new run")
        if found is not None:
            client.update_run(run_id, status="RUNNING")
            params = dict(found.data.params)
        else:
            exp_id = ensure_experiment(self.experiment, uri, client=client)
            run_id = client.create_run(exp_id, run_name=self.run_name, tags=self.tags).info.run_id
        self.client, self.run_id, self.uri = client, run_id, uri
        self.continued, self._params_logged = found is not None, params

    def _adopt(self, old_run_id: str) -> None:
        """Link this new run to the run ``old_run_id`` it continues, and copy that run's
        metric history here when its store (``previous_uri``) can be read."""
        tags = {"resumed_from_run_id": old_run_id}
        if self.previous_uri:
            tags["resumed_from_tracking_uri"] = self.previous_uri
        self.set_tags(tags)
        if not self.previous_uri or self.previous_uri == self.uri:
            return
        from mlflow.tracking import MlflowClient

        try:
            _check_reachable(self.previous_uri)
            old = MlflowClient(tracking_uri=self.previous_uri)
            keys = sorted(old.get_run(old_run_id).data.metrics)
            history = [
                (m.key, m.value, m.timestamp, m.step)
                for key in keys
                for m in old.get_metric_history(old_run_id, key)
            ]
            old.set_tag(old_run_id, "continued_in_run_id", self.run_id)
            old.set_tag(old_run_id, "continued_in_tracking_uri", self.uri)
        except Exception as e:
            logger.warning(
                f"the history of MLflow run {old_run_id} at {self.previous_uri} could not be "
                f"copied ({_first_line(e)}); it stays there, linked by tags"
            )
            return
        self._record("history", history)
        logger.info(
            f"MLflow run {self.run_id} continues run {old_run_id} of {self.previous_uri}: "
            f"{len(history)} metric values copied"
        )

    def _fall_back(self, error: Exception) -> None:
        """Go on in the fallback store: continue the requested run if it is there (a run
        resumed while the server is still down), else a new one; replay the journal.

        Raises:
            TrackingError: the fallback store fails too.
        """
        if self.uri == self.fallback_uri:
            raise TrackingError(
                f"MLflow store {self.uri} failed ({_first_line(error)}); {_WRITABLE_HINT}"
            ) from error
        failed = self.uri
        logger.warning(
            f"MLflow tracking at {failed} failed ({_first_line(error)}); "
            f"writing this run to {self.fallback_uri} instead"
        )
        try:
            self._open(self.fallback_uri, self.requested_run_id)
            self.client.set_tag(self.run_id, "fallback_from", failed)
            for op, args in self._journal:
                self._do(op, args)
        except Exception as e:
            raise TrackingError(
                f"MLflow tracking at {failed} failed ({_first_line(error)}), and so did the "
                f"local fallback store {self.fallback_uri} ({_first_line(e)}); {_WRITABLE_HINT}"
            ) from e

    def _do(self, op: str, args: tuple) -> None:
        getattr(self, "_" + op)(*args)

    def _record(self, op: str, *args: Any) -> None:
        self._journal.append((op, args))
        try:
            self._do(op, args)
        except Exception as e:
            self._fall_back(e)

    # -- the operations (each replayable) -------------------------------------------------

    def _params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        # MLflow refuses to change a logged param: a run keeps the values it was started
        # with (a resumed run's deliberate changes are tags, see ``run.pre_train``).
        kept = [k for k, v in params.items() if self._params_logged.get(k, v) != v]
        if kept:
            logger.info(f"MLflow run {self.run_id} keeps its logged value of params {kept[:10]}")
        new = {k: v for k, v in params.items() if k not in self._params_logged}
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit on params
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self._params_logged.update(new)

    def _history(self, history: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), ts, step) for k, v, ts, step in history]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def _metrics(self, metrics: dict[str, float], step: int | None, timestamp: int) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), timestamp, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def _artifact(self, path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def _dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def _tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    # -- public API ---------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (possibly nested) mapping of params, flattened with dotted names.

        A param the run already holds keeps its first value (MLflow never changes one), so
        a resumed run may log its params again: only the keys it lacks are added.
        """
        self._record("params", flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics at ``step`` (the epoch); ``@`` in names becomes ``_at_``."""
        import time

        clean = {metric_name(k): float(v) for k, v in metrics.items() if v is not None}
        self._record("metrics", clean, step, int(time.time() * 1000))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file into the run's artifacts.

        Raises:
            FileNotFoundError: no such local file (a caller's mistake, not a tracking failure).
        """
        if not Path(path).is_file():
            raise FileNotFoundError(f"artifact {path} not found")
        self._record("artifact", str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Store a dict as a JSON or YAML artifact (by the file's extension)."""
        self._record("dict", obj, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._record("tags", {k: str(v) for k, v in tags.items()})

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with FINISHED, FAILED or KILLED (idempotent)."""
        if self._finished:
            return
        self._finished = True
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:
            self._fall_back(e)
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
            return
        try:
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        except TrackingError as e:  # the run's own error is the one to report
            logger.warning(f"the MLflow run's status could not be set: {e}")


def artifact_location(experiment: str, tracking_uri: str) -> str | None:
    """Where a new experiment of a sqlite store keeps its artifacts: beside the database,
    ``<db stem>-artifacts/<experiment>/`` (``mlruns.sqlite`` -> ``mlruns-artifacts/``).

    MLflow's own default for a sqlite store is ``./mlruns`` under whatever directory the
    process ran in, so a study's artifacts would land in the checkout rather than beside its
    runs. Other stores (a tracking server) choose their own location: None.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db = Path(tracking_uri[len(prefix) :])
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return (db.parent / f"{db.stem}-artifacts" / safe).resolve().as_uri()


def ensure_experiment(experiment: str, tracking_uri: str | None = None, client: Any = None) -> str:
    """The id of ``experiment``, created if missing; safe when several processes race to create it.

    A new experiment of a sqlite store keeps its artifacts beside the database
    (:func:`artifact_location`).
    """
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    client = client or _reader(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(
            experiment, artifact_location=artifact_location(experiment, uri)
        )
    except MlflowException:  # created meanwhile by another process
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


# -- reading runs back (the scaling report, sweeps) ------------------------------------------


def search_runs(
    experiment: str, tracking_uri: str | None = None, filter_string: str = ""
) -> list[dict[str, Any]]:
    """All runs of ``experiment`` as plain dicts: run_id, run_name, status, params, metrics, tags.

    Returns an empty list when the experiment does not exist.

    Raises:
        TrackingError: an HTTP tracking server that does not answer.
    """
    client = _reader(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    out, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id], filter_string, max_results=1000, page_token=token
        )
        for run in page:
            out.append(
                {
                    "run_id": run.info.run_id,
                    "run_name": run.info.run_name,
                    "status": run.info.status,
                    "params": dict(run.data.params),
                    "metrics": dict(run.data.metrics),
                    "tags": dict(run.data.tags),
                }
            )
        token = page.token
        if not token:
            return out


def metric_history(
    run_id: str, key: str, tracking_uri: str | None = None
) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric of one run, sorted by step."""
    client = _reader(tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def log_artifacts_to_run(
    run_id: str,
    paths: list[str | Path],
    tracking_uri: str | None = None,
    artifact_path: str | None = None,
) -> None:
    """Attach files to an existing run (figures of a report, a screenshot)."""
    client = _reader(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


def experiment_names(tracking_uri: str | None = None) -> list[str]:
    """Names of the store's active experiments, sorted (for an error naming what exists)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    return sorted(e.name for e in client.search_experiments())


def upgrade_database(tracking_uri: str) -> None:
    """Bring a database store to the running MLflow's schema (``mlflow db upgrade``), in place.

    Call it on a copy: an upgraded store no longer opens in the MLflow that wrote it.

    Raises:
        RuntimeError: the upgrade failed (its last output line).
    """
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", tracking_uri],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        raise RuntimeError(f"mlflow db upgrade failed: {lines[-1] if lines else done.returncode}")


def run_checkpoint(
    run_id: str, tracking_uri: str | None, dst_dir: str | Path
) -> tuple[Path, str | None]:
    """The final checkpoint a training run recorded (``session.log_checkpoint``), and the
    run's name.

    The artifact ``checkpoint/<name>`` is downloaded into ``dst_dir``; a run whose
    checkpoint was too large for an artifact gives the path in its ``checkpoint_path`` tag,
    used where it exists on this machine.

    Raises:
        CheckpointError: no such run, a run that recorded no checkpoint (it did not finish,
            or was trained before checkpoints were recorded), or a recorded path that does
            not exist here.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from recbole_fork.checkpoint import CheckpointError

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise CheckpointError(
            f"MLflow run {run_id} not found at {uri}; check the run id and --tracking-uri"
        ) from None
    tags, name = run.data.tags, run.info.run_name
    artifact = tags.get("checkpoint_artifact")
    if artifact:
        try:
            return Path(client.download_artifacts(run_id, artifact, str(dst_dir))), name
        except (MlflowException, OSError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"MLflow run {run_id}: its checkpoint artifact {artifact} cannot be read ({first})"
            ) from None
    path = tags.get("checkpoint_path")
    if not path:
        raise CheckpointError(
            f"MLflow run {run_id} recorded no checkpoint (unfinished, or trained before runs "
            "recorded one); pass the checkpoint file with -i instead"
        )
    if not Path(path).is_file():
        raise CheckpointError(
            f"MLflow run {run_id} recorded its checkpoint by path only (too large for an "
            f"artifact): {path} is not on this machine; copy it here and pass it with -i"
        )
    return Path(path), name
