"""Checkpoints as plain dicts: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds state dicts, counters, RNG states and the resolved config as plain data,
never a pickled object (RecBole pickles its ``Config``, which torch >= 2.6 refuses to load).

Also the rules that keep a checkpoint from being lost or silently misused, checked before
any data loads: where one may be written (``check_checkpoint_path``, ``check_output``), the
keys a reader needs (``require_keys``), and what a resumed run may change
(``resume_changes``: every key but ``HARMLESS_ON_RESUME`` must stay as the checkpoint's
resolved config says, unless the user names it).
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from recbole_fork.errors import UserError


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable or of the wrong kind (one-line message)."""


def save_checkpoint(path: str | Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous checkpoint (or none), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``.

    Raises:
        CheckpointError: no such file, or a file that is not a plain-dict checkpoint (for
            example one of RecBole's own, which pickles its Config).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one first or check the path")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a plain-dict checkpoint ({first[:200]})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def require_keys(ckpt: Mapping[str, Any], keys: Iterable[str], path: str | Path, what: str) -> None:
    """Raise CheckpointError naming the missing ``keys`` of ``ckpt`` (``what`` says who needs
    them, e.g. "resuming")."""
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing} needed for {what}: it was not written by "
            "this project's trainer, or was edited"
        )


def check_checkpoint_path(path: str | Path) -> Path:
    """Check that a checkpoint can be written at ``path``, before any work is done.

    Raises:
        CheckpointError: ``path`` is a directory, a folder above it is a file, or the
            nearest existing folder above it cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"-o {path} is a directory; name the checkpoint file, e.g. {path / 'model.pth'}"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"-o {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"-o {path}: folder {folder} is not writable")
    return path


def check_output(
    path: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init: str | Path | None = None,
    can_resume: bool = True,
) -> Path:
    """The command lines' rule for ``-o``: nothing finished is overwritten unasked.

    Args:
        path: the checkpoint to write.
        resume: ``--resume`` (the checkpoint must exist).
        overwrite: ``--overwrite`` (an existing checkpoint is replaced by the new run).
        init: the checkpoint the run reads its weights from (``-i``), never overwritten.
        can_resume: the command has ``--resume`` (named in the message).

    Raises:
        CheckpointError: ``-o`` is ``-i``; ``-o`` exists without ``--resume`` or
            ``--overwrite``; both flags; ``--resume`` without a checkpoint; see also
            ``check_checkpoint_path``.
    """
    path = check_checkpoint_path(path)
    if init is not None and same_file(path, init):
        raise CheckpointError(
            f"-o {path} is the checkpoint -i {init} reads from; write the new checkpoint to "
            "another file"
        )
    if resume and overwrite:
        raise CheckpointError("--resume continues -o and --overwrite replaces it: pass one")
    if resume:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found; train one first or check the path")
        return path
    if path.exists() and not overwrite:
        how = "continue it with --resume, or " if can_resume else ""
        raise CheckpointError(
            f"-o {path} already exists (a finished or interrupted run); {how}replace it "
            "with --overwrite, or choose another file"
        )
    return path


@contextmanager
def output_lock(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``<path>.lock`` while a run writes the checkpoint ``path``.

    A second run started on the same checkpoint stops at once with one line instead of
    overwriting the first one's epochs. The lock is the kernel's (``flock``): it goes with
    the process, also when that is killed, so a ``.lock`` file left by a killed run never
    blocks the next one. The file is removed when the run ends.

    Raises:
        CheckpointError: another process holds the lock.
    """
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder before us may have removed the file after we opened it: then our
            # lock is on a file nobody else sees, and a third run could lock a new one.
            if not (lock.exists() and os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino):
                raise BlockingIOError
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CheckpointError(
                f"another run is writing {path} ({holder}); wait for it to end or choose another -o"
            ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            yield lock
        finally:
            lock.unlink(missing_ok=True)  # before unlocking, so no one locks a removed file
            fcntl.flock(f, fcntl.LOCK_UN)


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file (through links and relative paths too)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


# Keys a resumed run may change without saying so: they change neither the weights nor the
# metrics (beyond float rounding), only how the run is shown, where it runs or how fast.
# Every other key of the resolved config alters training or its result.
HARMLESS_ON_RESUME = frozenset(
    {
        # display and tracking names (the resumed run continues the checkpoint's MLflow run)
        "show_progress", "state", "log_wandb", "wandb_project", "experiment", "run_name",
        # where it runs: device and process layout (a new world size re-plans the LR
        # schedule from the step reached; the trainer logs that)
        "device", "gpu_id", "use_gpu", "local_rank", "world_size", "nproc", "offset", "ip",
        "port", "single_spec",
        # how fast: same results
        "eval_item_chunk", "eval_user_chunk", "pin_memory", "trim_padding", "torch_compile",
        # the FLOP/s peak only scales the logged mfu
        "peak_flops",
        # RecBole's scratch folder (a private temporary one for every stock run)
        "checkpoint_dir",
    }
)  # fmt: skip


def resume_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between the checkpoint's resolved config and this run's,
    ``{key: (saved, now)}``, sorted, nested mappings compared key by key
    (``scheduler.pct_start``), ``HARMLESS_ON_RESUME`` left out. A key one side lacks
    counts as changed (its value there: None)."""
    flat_saved, flat_now = _flatten(saved), _flatten(now)
    changes = {}
    for key in sorted(set(flat_saved) | set(flat_now)):
        if key.split(".", 1)[0] in HARMLESS_ON_RESUME:
            continue
        old, new = flat_saved.get(key), flat_now.get(key)
        if old != new:
            changes[key] = (old, new)
    return changes


def check_resume(
    ckpt: Mapping[str, Any],
    now: Mapping[str, Any],
    path: str | Path,
    allow: Iterable[str] = (),
) -> dict[str, tuple[Any, Any]]:
    """Refuse to resume ``ckpt`` with a config that trains differently, unless allowed.

    Args:
        ckpt: the loaded checkpoint (its ``config``: the resolved config it was trained with).
        now: this run's resolved config (``RunSettings.resolved``).
        path: the checkpoint's path, for messages.
        allow: keys the user changes deliberately (``--allow-change KEY``); a mapping's name
            (``scheduler``) allows each of its keys.

    Returns:
        The allowed changes, ``{key: (saved, now)}`` (to be logged with the run).

    Raises:
        CheckpointError: the checkpoint holds no config; a key outside
            ``HARMLESS_ON_RESUME`` changed and was not allowed (all such keys are listed).
    """
    require_keys(ckpt, ["config"], path, "resuming")
    changes = resume_changes(ckpt["config"], now)
    allowed = set(allow)
    refused = {
        k: v for k, v in changes.items() if k not in allowed and k.split(".", 1)[0] not in allowed
    }
    if refused:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        flags = " ".join(f"--allow-change {k}" for k in refused)
        raise CheckpointError(
            f"checkpoint {path} was trained with other settings: {listed}; resume with the "
            f"run's own config and data, or continue deliberately with {flags} "
            "(recorded in MLflow)"
        )
    return changes


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out
