"""Liveness and readiness of a running engine, for the admin server's `/health/live` and
`/health/ready` (and any load balancer or orchestrator behind them).

Rule kept: ready means the engine can keep its promise now: the store takes a write (a real
transaction through the store's writer, bounded in time) and every configured listener is
bound and accepting. Answers are JSON-able dicts of fixed words, configuration names and
numbers: no path, no exception text, nothing from a message.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from engine.store.base import Store

if TYPE_CHECKING:
    from engine.runtime.engine import Engine

# A probe slower than this counts as not writable: a balancer should not send to an engine
# whose commits take seconds.
PROBE_TIMEOUT = 2.0

Health = tuple[bool, dict[str, Any]]


def live() -> Health:
    """The process answers: always `(True, {"status": "ok"})`. `/health/live` answers 200 with
    the dict as JSON; a process that cannot run this does not answer at all."""
    return True, {"status": "ok"}


async def ready(engine: Engine, timeout: float = PROBE_TIMEOUT) -> Health:
    """`(ok, body)`: `/health/ready` answers 200 when ok, else 503, with `body` as JSON:

        {"status": "ok" | "unavailable",
         "checks": {"store writable": {"ok": true, "seconds": 0.0004},
                    "listeners bound": {"ok": false, "listeners": {"epic-siu": true,
                                                                   "booking-api": false}}}}

    A store check that fails says why in a fixed word (`"error": "timeout"` or the exception's
    class name, e.g. `"RuntimeError"` for a closed store), never the exception's text."""
    store = await _store_writable(engine.store, timeout)
    bound = {name: listener.bound for name, listener in engine.listeners.items()}
    listeners = {"ok": all(bound.values()), "listeners": bound}
    ok = bool(store["ok"]) and bool(listeners["ok"])
    return ok, {
        "status": "ok" if ok else "unavailable",
        "checks": {"store writable": store, "listeners bound": listeners},
    }


async def _store_writable(store: Store, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        await asyncio.wait_for(store.probe(), timeout)
    except TimeoutError:
        return {"ok": False, "error": "timeout"}
    except Exception as exc:  # the reason is the class: its text may name the file
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "seconds": round(time.monotonic() - started, 6)}
