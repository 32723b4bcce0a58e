"""The test kit's webhook receiver: an aiohttp endpoint that verifies each POST with
`engine.webhooks.Verifier` and records what it accepted and what it refused, for webhook
destination tests and `engine fake-webhooks`.

The rule it keeps: an event is recorded as accepted only if the Standard Webhooks checks pass
(signature, timestamp within tolerance, id not seen before) and its body is a JSON object;
that answers 204. A refusal answers 400 and is recorded with the VerificationError reason.
Answers queued with `answer_with(status, times)` (500, 410 Gone, ...) are given before any
check, so they neither record an event nor use up its webhook-id: the sender's retry of the
same id is still accepted. Any path is accepted; POST is the only method.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.testing.http_fake import HttpFake
from engine.webhooks import VerificationError, Verifier, WebhookSecret


@dataclass(frozen=True)
class Attempt:
    """One POST as answered: its webhook-id (as sent, "" if none), path, status, and why it
    was not accepted ("" when accepted, "injected" for a queued answer, else the reason)."""

    msg_id: str
    path: str
    status: int
    reason: str = ""


@dataclass(frozen=True)
class Accepted:
    msg_id: str
    path: str
    event: dict[str, Any]


class WebhookReceiver(HttpFake):
    route = "/{tail:.*}"
    method = "*"

    """A webhook endpoint on host:port (0 = any free port; read `url` after `start`)."""

    def __init__(
        self,
        secrets: Sequence[WebhookSecret | str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tolerance: float = 300.0,
        clock: Callable[[], float] = time.time,
        on_attempt: Callable[[Attempt, dict[str, Any] | None], None] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.on_attempt = on_attempt
        self.verifier = Verifier(secrets, tolerance=tolerance, clock=clock)
        self.accepted: list[Accepted] = []
        self.rejected: list[Attempt] = []
        self.attempts: list[Attempt] = []
        self._answers: list[int] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/webhooks"

    @property
    def events(self) -> list[dict[str, Any]]:
        """The accepted events' JSON bodies, in arrival order."""
        return [a.event for a in self.accepted]

    def answer_with(self, status: int, times: int = 1) -> None:
        """Answer the next `times` POSTs with `status` (e.g. 500, 410) without checking them."""
        if not 100 <= status <= 599:
            raise ValueError("answer_with takes an HTTP status")
        self._answers += [status] * times

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        event: dict[str, Any] | None = None
        if self._answers:
            attempt = Attempt(msg_id, request.path, self._answers.pop(0), "injected")
        else:
            reason = self._check(request, body)
            if reason:
                attempt = Attempt(msg_id, request.path, 400, reason)
                self.rejected.append(attempt)
            else:
                event = json.loads(body)
                self.accepted.append(Accepted(msg_id, request.path, event))
                attempt = Attempt(msg_id, request.path, 204)
        self.attempts.append(attempt)
        if self.on_attempt is not None:
            self.on_attempt(attempt, event)
        self._changed()
        return web.Response(status=attempt.status)

    def _check(self, request: web.Request, body: bytes) -> str:
        """ "" if the request is accepted, else the reason it is not."""
        # A body that is not an event is refused before the id is remembered, so a fixed
        # resend under the same id still goes through.
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            return "body"
        try:
            self.verifier.verify(request.headers, body)
        except VerificationError as exc:
            return exc.reason
        return ""

def format_attempt(attempt: Attempt, event: dict[str, Any] | None) -> str:
    """One console line per POST. Events carry ids only, but only the type is shown."""
    kind = f" {event.get('type', '?')}" if event is not None else ""
    verdict = "accepted" if attempt.status < 300 else f"refused ({attempt.reason})"
    return f"{attempt.status} {verdict} id={attempt.msg_id or '-'}{kind}"


async def run(
    port: int,
    host: str = "127.0.0.1",
    secrets: Sequence[str] = (),
    write: Callable[[str], Any] = print,
) -> None:
    """`engine fake-webhooks`: listen, print one line per POST, serve until cancelled. With no
    secret given, one is generated and shown once so the sender can be configured with it."""
    keys: list[WebhookSecret | str] = list(secrets)
    if not keys:
        generated = WebhookSecret.generate()
        write(f"webhook secret (generated): {generated}")
        keys = [generated]
    receiver = WebhookReceiver(
        keys, host, port, on_attempt=lambda a, e: write(format_attempt(a, e))
    )
    await receiver.start()
    write(f"webhook receiver listening on {receiver.url} (any path)")
    await receiver.serve_forever()
