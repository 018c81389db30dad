"""Running the app under uvicorn: on a socket bound first (so a busy port is a one-line error
before anything else happens), in the foreground (``serve.py``) or on a background thread
(tests, benchmarks).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from recbole_fork.serving.loading import ServingError

# Connections the kernel queues before uvicorn accepts them (uvicorn's default).
BACKLOG = 2048


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one, read it from the socket).

    Raises:
        ServingError: the address cannot be bound (in use, not this machine's, ...).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServingError(f"--host {host!r} cannot be resolved ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    # The protocol must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted
    # sockets that say so, and without it every keep-alive response waits ~40 ms for the
    # client's delayed ACK (Nagle).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ServingError(
            f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host"
        ) from None
    return sock


def _uvicorn_server(app: Any, log_level: str, access_log: bool):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that SIGINT / SIGTERM end ``run`` normally after the
        graceful shutdown: uvicorn raises the signal again once it has shut down, which
        makes a clean stop exit with a KeyboardInterrupt traceback or status -15."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        backlog=BACKLOG,
        timeout_graceful_shutdown=10,
    )
    return Server(config)


def run_server(
    app: Any, sock: socket.socket, *, log_level: str = "info", access_log: bool = False
) -> None:
    """Serve ``app`` on ``sock`` until SIGINT / SIGTERM (uvicorn's graceful shutdown)."""
    server = _uvicorn_server(app, log_level, access_log)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """``app`` served by uvicorn on a background thread of this process.

    Args:
        app: the ASGI app (``create_app``).
        host: address to bind (default loopback).
        port: 0 for a free port (read ``port`` / ``url`` once started).

    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind_socket(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._server = _uvicorn_server(app, "warning", access_log=False)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        """Start serving (once; later calls do nothing); return once the app's startup
        (lifespan) has finished.

        Raises:
            RuntimeError: the server did not start within ``timeout`` seconds.
        """
        if self._thread.is_alive() or self._server.started:
            return self
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to shut down (it finishes the requests in flight) and wait for it.

        Raises:
            RuntimeError: the server thread is still running after ``timeout`` seconds.
        """
        self._server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"the server on {self.url} did not stop within {timeout} s")

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["BackgroundServer", "bind_socket", "run_server"]
