"""``scripts/serve.py``: every startup problem is one line and exit status 2 before the port
is bound; a real run serves until SIGINT and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch

from recbole_fork.serving.cli import serve_main
from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_nothing_listens(port: int) -> None:
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


def _fails(argv: list[str], capsys) -> str:
    code = serve_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    return err


def test_a_missing_checkpoint_stops_before_binding(tmp_path, capsys):
    port = free_port()
    err = _fails(["-i", str(tmp_path / "gone.pth"), "--port", str(port)], capsys)
    assert f"checkpoint {tmp_path / 'gone.pth'} not found" in err
    assert_nothing_listens(port)


def test_an_incompatible_checkpoint_stops_before_binding(tmp_path, capsys, checkpoints):
    torch.save({"format": "elsewhere/1"}, tmp_path / "x.pth")
    port = free_port()
    err = _fails(["-i", str(tmp_path / "x.pth"), "--port", str(port)], capsys)
    assert "not written by the fork's trainer" in err
    err = _fails(
        ["-i", str(checkpoints["sasrec-id"]), "--data-path", str(tmp_path), "--port", str(port)],
        capsys,
    )
    assert "dataset 'shop' of the checkpoint not found" in err
    assert_nothing_listens(port)


def test_a_busy_port_is_one_line(capsys, checkpoints):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _fails(["-i", str(checkpoints["sasrec-id"]), "--port", str(port)], capsys)
    assert f"cannot listen on 127.0.0.1:{port}" in err


@pytest.mark.slow
def test_serve_py_serves_until_sigint(checkpoints):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "scripts/serve.py", "-i", str(checkpoints["sasrec-text"]),
         "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "serve.py did not start in 120 s"
                time.sleep(0.2)
        assert health.json()["model"] == "sasrec-d16-l1-h1-text-shop-s7"
        r = requests.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": "c1"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 10
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"on http://127.0.0.1:{port}" in out and out.rstrip().endswith("stopped")
    assert_nothing_listens(port)


def test_serve_script_is_a_thin_wrapper():
    text = (Path(REPO) / "scripts" / "serve.py").read_text()
    assert "from recbole_fork.serving.cli import serve_main" in text
