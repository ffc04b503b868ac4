"""The uvicorn server `mixllm serve` runs the gateway in: its shutdown is bounded by the
gateway's ``drain_timeout_s`` in all.

uvicorn waits for the requests in flight (up to its own whole-second timeout), then runs the
app's lifespan shutdown, where the gateway drains again before its last snapshot: each wait
allowed ``drain_timeout_s`` on its own. Here the clock starts once, at the signal; requests
still in flight when it runs out are cut (their clients see an error), and the lifespan's drain
only has what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

from mixllm.serving.app import Gateway

__all__ = ["DrainingServer"]


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with one shutdown deadline shared with ``gateway``."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        # uvicorn's own cut takes whole seconds and starts after a pause of its own: it only
        # backs up the exact one below.
        config.timeout_graceful_shutdown = math.ceil(gateway.settings.drain_timeout_s) + 1
        super().__init__(config)
        self._gateway = gateway

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._gateway.stopping()
        loop = asyncio.get_running_loop()
        cut = loop.call_later(self._gateway.settings.drain_timeout_s, self._cut_requests)
        try:
            await super().shutdown(sockets)
        finally:
            cut.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, except that the signal that stopped the server is not raised again once
        it has shut down (uvicorn does, to die of it): the gateway has drained and saved by
        then, so the process exits normally."""
        if threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, _already_handled) for sig in signals}
        try:
            with super().capture_signals():
                yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _cut_requests(self) -> None:
        """Cancels every request still running (uvicorn's way of cutting one: the client's
        connection is closed)."""
        for task in self.server_state.tasks:
            task.cancel()


def _already_handled(_signal: int, _frame: FrameType | None) -> None:
    """What uvicorn's signal, raised again after its shutdown, does: nothing more."""
