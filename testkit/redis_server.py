"""A real redis-server for the replication tests: its own process on a free loopback port,
with its files in a temporary folder, append-only file on, stopped and restarted at will."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

# Generous: a busy machine may take a while to start a process; every wait is bounded by it.
START_TIMEOUT_S = 10.0


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server --appendonly yes --port P --dir FOLDER`` on 127.0.0.1, with the append-only
    file synced to disk on every write (``fsync="always"``: a crash of Redis itself loses
    nothing) or once a second (``"everysec"``, Redis's default)."""

    def __init__(self, folder: Path, *, fsync: str = "always") -> None:
        self.folder = folder
        self.fsync = fsync
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = redis_server_path()
        assert binary is not None
        self._process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--save",
                "",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stops it as an operator would (SIGTERM: it finishes writing its append-only file)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def require_redis_server() -> str:
    """The reason to skip, or '' when redis-server is installed. Where CI sets
    MIXLLM_REQUIRE_REDIS, its absence is an error instead."""
    if redis_server_path() is not None:
        return ""
    if os.environ.get("MIXLLM_REQUIRE_REDIS"):
        raise RuntimeError("redis-server is not installed but MIXLLM_REQUIRE_REDIS is set")
    return "redis-server is not installed (apt-get install redis-server)"


# Every wait in the store tests is bounded by this.
WAIT_S = 20.0


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """Polls ``condition`` until it holds; fails the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def raised_by(
    call: Callable[[], object], what: str, timeout_s: float = WAIT_S
) -> list[BaseException]:
    """Runs ``call`` in a thread of its own and returns what it raised (nothing: []); fails the
    test naming ``what`` when it has not returned after ``timeout_s``: it hangs."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as err:
            raised.append(err)

    thread = threading.Thread(target=run, name=f"calling {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise AssertionError(f"{what} hung")
    return raised
