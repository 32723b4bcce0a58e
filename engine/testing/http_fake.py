"""What the test kit's HTTP fakes share: an aiohttp server on a loopback port (0 = a free
one), used as an async context manager or served until cancelled, and `wait_until`, which
re-checks a condition after every request instead of polling.

A fake subclasses `HttpFake`, sets `route` (and `methods`), implements `_handle` and calls
`_changed()` whenever what a test may wait for has changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Self

from aiohttp import web


class HttpFake:
    route = "/{tail:.*}"
    method = "*"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._waiters: list[asyncio.Future[None]] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route(self.method, self.route, self._handle)
        # No access log: query strings and paths carry identifiers.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Serve until cancelled (the CLI's Ctrl-C), then stop cleanly."""
        if self._runner is None:
            await self.start()
        try:
            await asyncio.Future()  # only cancellation ends this
        finally:
            await self.stop()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds, re-checked after every request. Raises
        TimeoutError after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate():
                waiter = loop.create_future()
                self._waiters.append(waiter)
                await waiter

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
