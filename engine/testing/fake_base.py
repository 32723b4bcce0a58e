"""What every fake of the test kit shares, whatever it speaks (MLLP, HTTP): used as an async
context manager or served until cancelled, and `wait_until`, which re-checks a condition
whenever the fake says something changed (`_changed()`) instead of polling.

A fake implements `start()` (binding its port; 0 = a free one) and `stop()`, and reports
whether it is `running`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Self


class LoopbackFake:
    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def running(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Serve until cancelled (the CLI's Ctrl-C), then stop cleanly."""
        if not self.running:
            await self.start()
        try:
            await asyncio.Future()  # only cancellation ends this
        finally:
            await self.stop()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds, re-checked after every change the fake reports.
        Raises TimeoutError after `timeout` seconds."""
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
