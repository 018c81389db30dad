"""Headless Chromium for tests that look at a web page (the MLflow UI).

``ensure_chromium`` finds Debian's ``chromium`` or installs it with apt-get (CI machines
start without it and run as root); ``render`` runs one headless browser, with background
networking off, to save a screenshot of a page and return its DOM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Headless on a shared, sandboxless machine: no GPU, no sandbox (we run as root), and none of
# the background traffic (updates, sync, QUIC probes, first-run pages) that would reach out
# of 127.0.0.1 or slow the page down.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
)


def _tail(text: str, lines: int = 3) -> str:
    """The last lines of a command's output, on one line (for a skip or failure message)."""
    return " | ".join(text.strip().splitlines()[-lines:])


def ensure_chromium(timeout_s: float = 600) -> str:
    """The path of the ``chromium`` binary, installed with apt-get when it is missing.

    Args:
        timeout_s: seconds allowed for each of ``apt-get update`` and ``apt-get install``.

    Raises:
        pytest.skip.Exception: chromium is missing and cannot be installed here (no apt-get,
            not root, or apt-get failed); the reason says which and how to install it.
    """
    found = shutil.which("chromium")
    if found:
        return found
    how = "install it with `apt-get install -y chromium` as root"
    if shutil.which("apt-get") is None:
        pytest.skip(f"chromium not found and apt-get is absent; {how} on a Debian machine")
    if os.geteuid() != 0:
        pytest.skip(f"chromium not found and not running as root, so apt-get cannot; {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for a dpkg lock held by another apt-get instead of failing at once.
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in (
        ["apt-get", *lock, "update"],
        ["apt-get", *lock, "install", "-y", "chromium"],
    ):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.skip(f"chromium not found and `{' '.join(cmd)}` took over {timeout_s:.0f} s")
        if done.returncode != 0:
            pytest.skip(
                f"chromium not found and `{' '.join(cmd)}` failed with {done.returncode}: "
                f"{_tail(done.stderr or done.stdout)}"
            )
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"apt-get installed chromium but it is not on PATH ({os.environ['PATH']})")
    return found


def _run(
    binary: str, profile: Path, args: list[str], timeout_s: float
) -> subprocess.CompletedProcess:
    """One headless chromium using the profile folder ``profile``; fails the test on error."""
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
    # Its own process group, so that a timeout ends the renderer and GPU processes too.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout_s:.0f} s: {' '.join(cmd)}")
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if done.returncode != 0:
        pytest.fail(f"chromium exited with {done.returncode}: {_tail(done.stderr)}")
    return done


def render(
    binary: str,
    url: str,
    png: Path,
    profile: Path,
    wait_ms: int = 15_000,
    size: tuple[int, int] = (1400, 900),
    timeout_s: float = 180,
) -> str:
    """Open ``url``, save a PNG of it to ``png`` and return its DOM as HTML.

    One browser does both, after ``wait_ms`` of virtual time: a single-page app (the MLflow
    UI) fills the page from its API only after the first HTML arrives, so an immediate dump
    would miss the data. The PNG is written to a temporary name and renamed once complete.

    Args:
        binary: the chromium path (``ensure_chromium``).
        url: the page to open.
        png: where to save the screenshot (``size`` pixels, width x height).
        profile: the browser profile folder (a fresh one per test; created if missing).
        wait_ms: virtual milliseconds for scripts and fetches to run before the capture.
        timeout_s: wall-clock seconds before the browser is killed and the test fails.
    """
    partial = png.with_name(png.stem + ".partial.png")
    args = [
        f"--virtual-time-budget={wait_ms}",
        f"--window-size={size[0]},{size[1]}",
        "--hide-scrollbars",
        f"--screenshot={partial}",
        "--dump-dom",
        url,
    ]
    done = _run(binary, profile, args, timeout_s)
    if not partial.is_file():
        pytest.fail(f"chromium wrote no screenshot to {partial}: {_tail(done.stderr)}")
    partial.replace(png)
    return done.stdout
