"""The HTTP fakes' server: aiohttp on a loopback port (0 = a free one).

A fake subclasses `HttpFake`, sets `route` (and `method`), implements `_handle` and calls
`_changed()` whenever what a test may wait for has changed (see `fake_base`).
"""

from __future__ import annotations

from aiohttp import web

from engine.testing.fake_base import LoopbackFake


class HttpFake(LoopbackFake):
    route = "/{tail:.*}"
    method = "*"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        return self._runner is not None

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
