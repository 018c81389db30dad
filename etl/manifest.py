"""Per-step manifests and atomic outputs.

A step writes its outputs under temporary names, renames them, then writes
`OUT/manifests/<step>.json` last. The manifest records the step's parameters, the
fingerprints (size, mtime) of its inputs and outputs, its counts and skipped rows. A step
is skipped on a rerun when its manifest matches the current parameters, inputs and
outputs, so a step killed at any point (no manifest, or a stale one) is redone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_parquet_atomic(table: Any, path: Path) -> None:
    """Write a pyarrow table to `path` as Parquet under a temporary name, then rename."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temporary directory beside `final`, renamed to `final` when the block succeeds.

    An existing `final` is replaced; on an error the temporary directory is removed and
    `final` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def remove_stale_temporaries(directory: Path) -> None:
    """Delete `.*.tmp` and `.*.old` leftovers of killed runs in `directory` (not recursive)."""
    if directory.is_dir():
        for entry in [*directory.glob(".*.tmp"), *directory.glob(".*.old")]:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def fingerprint(paths: list[Path], root: Path) -> dict[str, list[int]]:
    """`{relative path: [size, mtime_ns]}` of each file, directories walked in sorted order.

    Paths outside `root` are keyed by their absolute path. Missing paths are left out.
    """
    out: dict[str, list[int]] = {}
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                continue
            st = f.stat()
            try:
                key = str(f.resolve().relative_to(root.resolve()))
            except ValueError:
                key = str(f.resolve())
            out[key] = [st.st_size, st.st_mtime_ns]
    return out


def manifest_path(out_dir: Path, step: str) -> Path:
    """Where the manifest of `step` lives."""
    return out_dir / "manifests" / f"{step}.json"


def _plain(value: Any) -> Any:
    """JSON round trip so tuples and lists compare equal to what was stored."""
    return json.loads(json.dumps(value, sort_keys=True))


def load_manifest(out_dir: Path, step: str) -> dict | None:
    """The manifest of `step`, or None when it is absent or unreadable."""
    path = manifest_path(out_dir, step)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_fresh(out_dir: Path, step: str, params: dict, inputs: dict[str, list[int]]) -> bool:
    """True when `step` already ran with these parameters and inputs and its outputs are intact."""
    manifest = load_manifest(out_dir, step)
    if manifest is None or manifest.get("version") != MANIFEST_VERSION:
        return False
    if manifest.get("params") != _plain(params) or manifest.get("inputs") != _plain(inputs):
        return False
    outputs = manifest.get("outputs", {})
    current = fingerprint([out_dir / p for p in outputs], out_dir)
    return current == outputs


def write_manifest(
    out_dir: Path,
    step: str,
    params: dict,
    inputs: dict[str, list[int]],
    outputs: list[Path],
    summary: dict,
) -> dict:
    """Fingerprint `outputs` and write the step's manifest atomically (the last thing a step does)."""
    manifest = {
        "version": MANIFEST_VERSION,
        "step": step,
        "params": _plain(params),
        "inputs": _plain(inputs),
        "outputs": fingerprint(outputs, out_dir),
        **_plain(summary),
    }
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    atomic_write_bytes(manifest_path(out_dir, step), data + b"\n")
    return manifest
