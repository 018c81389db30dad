"""Fetch the real Amazon raw files (UCSD 2018 release, 2014 5-core files) into RAW.

Standard library only (urllib) plus tqdm. Each file is downloaded into `<name>.part`, resumed
with an HTTP Range request after a cut connection, verified (size from the server and from
the raw file table when known, sha256 when known) and only then renamed to its final name, so a
file under its final name is always complete and is skipped on the next run.

Without network (the first connection fails on DNS or is refused) the call fails at once with
a `DownloadError` that lists the files to place by hand in RAW and their URLs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from etl.errors import EtlError
from etl.raw_files import RAW_FILES, RELEASES, RawFile, download_selection, join_url

CHUNK_BYTES = 1 << 20
USER_AGENT = "recbole-fork-scaling-etl/0.1 (urllib)"


class DownloadError(EtlError):
    """A raw file could not be fetched or verified; the message is one line."""


class _Offline(Exception):
    """The very first connection failed in a way that means there is no network."""


class _Retry(Exception):
    """A transient failure: try again, resuming from what `.part` holds."""


def file_url(entry: RawFile, base_urls: Mapping[str, str] | None = None) -> str:
    """The URL of `entry`: its release's base URL (or `base_urls[release]`) and its source."""
    if entry.source is None:
        raise ValueError(f"raw file {entry.name} has no download source")
    base = (base_urls or {}).get(entry.release, RELEASES[entry.release].base_url)
    return join_url(base, entry.source)


def download_raw_files(
    raw_dir: Path,
    files: Sequence[str] | None = None,
    base_urls: Mapping[str, str] | None = None,
    retries: int = 5,
    timeout: float = 30,
    progress: bool = True,
    table: Mapping[str, RawFile] | None = None,
    backoff: float = 1.0,
) -> list[Path]:
    """Download the raw files into `raw_dir`, resuming partial downloads; skip complete ones.

    Args:
        raw_dir: destination folder (created if missing).
        files: names to fetch (keys of `table`); None fetches every downloadable one of a
            given `table`, or the Amazon 2018 study's files of the default table (2018 ratings
            and metadata, 2014 fine-tuning files; see `etl.raw_files.download_selection`).
        base_urls: release key -> base URL, replacing `RELEASES[key].base_url` (a mirror).
        retries: attempts per file after a transient failure (cut connection, timeout, HTTP
            5xx) that brought no new byte; an attempt that made progress does not count.
        timeout: socket timeout in seconds for connecting and for each read.
        progress: show a tqdm bar per file.
        table: file name -> `RawFile` (source, release, expected size and sha256); defaults to
            `etl.raw_files.RAW_FILES`.
        backoff: seconds before the first retry, doubled each time (capped at 60).

    Returns:
        The final paths, in the order of `files`.

    Raises:
        ValueError: a name in `files` is not in the table.
        DownloadError: no network on the first connection (the message lists every missing
            file and its URL to place by hand in `raw_dir`), an HTTP error such as 404, a size
            or sha256 mismatch (the partial file is deleted), or retries exhausted.
    """
    default = table is None
    table = RAW_FILES if table is None else table
    downloadable = [n for n, entry in table.items() if entry.source is not None]
    if files is None and default:
        files = download_selection("amazon", "2018")
    names = downloadable if files is None else list(files)
    unknown = [n for n in names if n not in downloadable]
    if unknown:
        valid = sorted(downloadable) if len(downloadable) <= 20 else "see etl/raw_files.py"
        raise ValueError(f"unknown raw file(s) {unknown}; valid names: {valid}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    urls = {n: file_url(table[n], base_urls) for n in names}
    state = {"connected": False}
    paths = []
    for name in names:
        final = raw_dir / name
        final.parent.mkdir(parents=True, exist_ok=True)  # 2023 splits keep their folders
        if _complete(final, table[name]):
            paths.append(final)
            continue
        try:
            _fetch(name, urls[name], final, table[name], retries, timeout, progress, backoff, state)
        except _Offline as err:
            missing = [n for n in names if not _complete(raw_dir / n, table[n])]
            listing = "; ".join(f"{n} <- {urls[n]}" for n in missing)
            raise DownloadError(
                f"no network ({err}): download these files by hand and place them in "
                f"{raw_dir}: {listing}"
            ) from None
        paths.append(final)
    return paths


def _complete(path: Path, entry: RawFile) -> bool:
    """A final file exists only after verification; re-check its size when it is known."""
    return path.is_file() and (entry.size is None or path.stat().st_size == entry.size)


def _is_offline(err: BaseException) -> bool:
    """DNS failure, refused connection or unreachable network: no point in retrying."""
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, socket.gaierror | ConnectionRefusedError):
        return True
    return isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)


def _fetch(
    name: str,
    url: str,
    final: Path,
    entry: RawFile,
    retries: int,
    timeout: float,
    progress: bool,
    backoff: float,
    state: dict[str, bool],
) -> None:
    """Download one file into `<final>.part`, verify it, rename it to `final`."""
    part = final.with_name(final.name + ".part")
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _attempt(url, part, entry, timeout, progress, state)
        except _Retry as err:
            after = part.stat().st_size if part.exists() else 0
            failures = 0 if after > before else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"{name}: giving up after {retries} retries without progress ({err}); "
                    f"rerun to resume from {after} bytes, or place the file in {final.parent} "
                    f"by hand ({url})"
                ) from None
            time.sleep(min(backoff * 2 ** max(failures - 1, 0), 60.0))
            continue
        _verify(name, part, entry)
        os.replace(part, final)
        return


def _attempt(
    url: str, part: Path, entry: RawFile, timeout: float, progress: bool, state: dict[str, bool]
) -> int:
    """One HTTP request appending to `part`; returns the total size once `part` holds it all.

    Raises `_Retry` on transient failures, `_Offline` when the first connection of the run
    fails for lack of network, `DownloadError` on permanent failures.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        state["connected"] = True
        if err.code == 416:  # Range past the end: `part` is complete, or longer than the file
            total = _range_total(err.headers.get("Content-Range"))
            if total is not None and total == offset:
                return total
            part.unlink(missing_ok=True)
            raise _Retry(f"HTTP 416 with {offset} bytes held; restarting from zero") from None
        if err.code == 429 or err.code >= 500:
            raise _Retry(f"HTTP {err.code} from {url}") from None
        raise DownloadError(f"HTTP {err.code} {err.reason} for {url}") from None
    except (urllib.error.URLError, OSError) as err:
        if not state["connected"] and _is_offline(err):
            raise _Offline(f"{url}: {getattr(err, 'reason', err)}") from None
        raise _Retry(f"connection failed: {getattr(err, 'reason', err)}") from None
    state["connected"] = True
    with response:
        if response.status == 206:
            start, total = (
                _range_start(response.headers.get("Content-Range")),
                _range_total(response.headers.get("Content-Range")),
            )
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start}, not {offset}; restarting")
            mode = "ab"
        else:
            # 200: the server ignored the Range header (or none was sent): start over.
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            offset, mode = 0, "wb"
        if total is not None and entry.size is not None and total != entry.size:
            raise DownloadError(
                f"{part.name[:-5]}: server reports {total} bytes, expected {entry.size} ({url})"
            )
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=part.name[:-5],
            disable=not progress,
        )
        try:
            with open(part, mode) as f:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (HTTPException, OSError) as err:  # cut connection, reset, read timeout
            raise _Retry(f"connection cut: {err!r}") from None
        finally:
            bar.close()
    size = part.stat().st_size
    if total is None:
        return size  # no length announced: a clean end of stream is all there is to go by
    if size < total:
        raise _Retry(f"connection closed at {size} of {total} bytes")
    if size > total:
        part.unlink(missing_ok=True)
        raise _Retry(f"received {size} bytes for a {total}-byte file; restarting")
    return total


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+|\*)(?:-(\d+))?/(\d+|\*)")


def _range_start(header: str | None) -> int | None:
    m = _CONTENT_RANGE.match(header or "")
    return int(m.group(1)) if m and m.group(1) != "*" else None


def _range_total(header: str | None) -> int | None:
    m = _CONTENT_RANGE.match(header or "")
    return int(m.group(3)) if m and m.group(3) != "*" else None


def _verify(name: str, part: Path, entry: RawFile) -> None:
    """Check size and sha256 of a finished `.part`; delete it and raise on a mismatch."""
    size = part.stat().st_size
    if entry.size is not None and size != entry.size:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{name}: got {size} bytes, expected {entry.size}; partial file deleted, rerun"
        )
    if entry.sha256 is not None:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(CHUNK_BYTES):
                digest.update(block)
        if digest.hexdigest() != entry.sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{name}: sha256 {digest.hexdigest()} does not match the expected "
                f"{entry.sha256}; the download was deleted, rerun to fetch it again"
            )
