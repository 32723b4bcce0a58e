"""The webhook destination over real HTTP on 127.0.0.1: signatures a receiver verifies (also
across key rotation), one webhook-id across retries, 410 disabling the endpoint with an alert,
timeouts, a receiver that is down, statuses and Retry-After, and no secret or URL token in
any reason or log line."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator

from engine.config import ConfigError
from engine.config.model import DestinationConfig, Pos
from engine.config.registry import CheckContext
from engine.destinations.base import DeliveryMeta, Outcome, Reject, Retry, Sent
from engine.destinations.http_common import retry_after as _retry_after
from engine.destinations.webhook import (
    DISABLED_REASON,
    PLUGIN,
    WebhookDestination,
    build,
    message_id,
)
from engine.testing.webhook_receiver import Attempt, WebhookReceiver
from engine.webhooks import WebhookSecret
from tests.unit.pipeline.support import ConfigRoot

META = DeliveryMeta(delivery_id=41, message_id=7, channel="appointment-events")
POS = Pos(Path("/cfg/channels/appointment-events.yaml"), 9, 5)
# Synthetic, thin event: ids, time and status only.
EVENT = {
    "type": "appointment.created",
    "timestamp": "2024-03-01T09:00:00Z",
    "data": {"appointment_id": "APT-TEST-0001", "patient_id": "PT-TEST-77", "status": "booked"},
}
BODY = json.dumps(EVENT).encode()
ID41 = message_id(41, BODY)
ID42 = message_id(42, BODY)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def secret() -> WebhookSecret:
    return WebhookSecret.generate()


@pytest.fixture
async def receiver(secret: WebhookSecret) -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver([secret]) as r:
        yield r


@asynccontextmanager
async def destination(
    url: str, secrets: list[WebhookSecret], **kw: Any
) -> AsyncIterator[WebhookDestination]:
    d = WebhookDestination("intake-forms", url=url, secrets=secrets, **kw)
    try:
        yield d
    finally:
        await d.close()


@asynccontextmanager
async def http_server(handler: Handler) -> AsyncIterator[str]:
    """A bare aiohttp server answering every path with `handler`; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port nothing listens on: bound (so no one else takes it) but never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_accepted_with_a_valid_signature(
    receiver: WebhookReceiver, secret: WebhookSecret
) -> None:
    async with destination(receiver.url, [secret]) as d:
        outcome = await d.send(BODY, META)
    assert outcome == Sent(code="204", response=b"")
    assert [(a.msg_id, a.event) for a in receiver.accepted] == [(ID41, EVENT)]
    assert receiver.rejected == []


async def test_a_receiver_with_another_secret_refuses_and_that_is_a_reject(
    receiver: WebhookReceiver,
) -> None:
    async with destination(receiver.url, [WebhookSecret.generate()]) as d:
        outcome = await d.send(BODY, META)
    assert isinstance(outcome, Reject)
    assert outcome.code == "400"
    assert receiver.accepted == []
    assert [a.reason for a in receiver.rejected] == ["signature"]


async def test_rotation_signs_with_both_secrets_so_either_receiver_accepts() -> None:
    old, new = WebhookSecret.generate(), WebhookSecret.generate()
    async with (
        WebhookReceiver([old]) as knows_old,
        WebhookReceiver([new]) as knows_new,
        destination(knows_old.url, [old, new]) as to_old,
        destination(knows_new.url, [old, new]) as to_new,
    ):
        assert isinstance(await to_old.send(BODY, META), Sent)
        assert isinstance(await to_new.send(BODY, META), Sent)
    assert knows_old.events == [EVENT]
    assert knows_new.events == [EVENT]


async def test_a_retry_after_500_carries_the_same_id_and_a_fresh_timestamp(
    receiver: WebhookReceiver, secret: WebhookSecret
) -> None:
    # The first attempt's clock is far outside the receiver's tolerance: only a timestamp
    # taken again for the retry lets the retry through.
    stamps = iter([time.time() - 3600, time.time()])
    receiver.answer_with(500)
    async with destination(receiver.url, [secret], clock=lambda: next(stamps)) as d:
        first = await d.send(BODY, META)
        second = await d.send(BODY, META)
    assert isinstance(first, Retry)
    assert (first.code, first.after) == ("500", None)
    assert second == Sent(code="204", response=b"")
    assert receiver.attempts == [
        Attempt(ID41, "/webhooks", 500, "injected"),
        Attempt(ID41, "/webhooks", 204),
    ]
    assert len(receiver.accepted) == 1


async def test_another_delivery_gets_another_id(
    receiver: WebhookReceiver, secret: WebhookSecret
) -> None:
    async with destination(receiver.url, [secret]) as d:
        await d.send(BODY, META)
        await d.send(BODY, DeliveryMeta(delivery_id=42, message_id=7, channel="c"))
    assert [a.msg_id for a in receiver.accepted] == [ID41, ID42]


async def test_410_disables_the_endpoint_with_one_alert(
    receiver: WebhookReceiver, secret: WebhookSecret, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.alerts")
    receiver.answer_with(410)
    async with destination(receiver.url, [secret]) as d:
        gone = await d.send(BODY, META)
        later = await d.send(BODY, DeliveryMeta(delivery_id=42, message_id=8, channel="c"))
        assert d.disabled
        assert d.requests == 1
    assert isinstance(gone, Reject)
    assert gone.code == "410"
    assert DISABLED_REASON in gone.reason
    assert later == Reject(DISABLED_REASON, code="410")
    assert len(receiver.attempts) == 1  # the second send made no request
    alerts = [r for r in caplog.records if r.name == "engine.alerts"]
    assert len(alerts) == 1
    line = alerts[0].getMessage()
    assert line.startswith("ALERT webhook endpoint disabled")
    assert "intake-forms" in line
    assert "410" in line
    assert "127.0.0.1" not in line and "/webhooks" not in line


async def test_concurrent_410s_alert_once(
    receiver: WebhookReceiver, secret: WebhookSecret, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.alerts")
    receiver.answer_with(410, times=3)
    async with destination(receiver.url, [secret], connections=3) as d:
        outcomes = await asyncio.gather(
            *(d.send(BODY, DeliveryMeta(i, i, "c")) for i in range(1, 4))
        )
    assert all(isinstance(o, Reject) for o in outcomes)
    assert len([r for r in caplog.records if r.name == "engine.alerts"]) == 1


async def test_no_answer_within_the_timeout_is_a_retry(secret: WebhookSecret) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(status=204)

    # 1 s, not less: the request must reach the handler first even on a loaded machine.
    async with http_server(stall) as base, destination(base, [secret], timeout=1.0) as d:
        try:
            outcome = await d.send(BODY, META)
        finally:
            release.set()
    assert arrived.is_set()  # the request got there: it is the answer that was missing
    assert isinstance(outcome, Retry)
    assert outcome.reason == "no answer from http://127.0.0.1:" + base.rsplit(":", 1)[1] + (
        " within 1 s"
    )


async def test_receiver_down_is_a_retry(free_port: int, secret: WebhookSecret) -> None:
    async with destination(f"http://127.0.0.1:{free_port}/hooks", [secret]) as d:
        outcome = await d.send(BODY, META)
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith(f"could not connect to http://127.0.0.1:{free_port}")


def answer(status: int, headers: dict[str, str] | None = None, text: str = "") -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, headers=headers, text=text)

    return handler


HTTP_DATE = format_datetime(datetime(2030, 1, 1, tzinfo=UTC), usegmt=True)


@pytest.mark.parametrize(
    ("status", "headers", "kind", "after"),
    [
        (200, {}, Sent, None),
        (202, {}, Sent, None),
        (429, {"Retry-After": "7"}, Retry, 7.0),
        (503, {"Retry-After": HTTP_DATE}, Retry, 3600.0),
        (500, {"Retry-After": "soon"}, Retry, None),
        (502, {}, Retry, None),
        (408, {}, Retry, None),
        (400, {}, Reject, None),
        (401, {}, Reject, None),
        (404, {}, Reject, None),
        (422, {}, Reject, None),
        (307, {"Location": "http://127.0.0.1:1/elsewhere"}, Reject, None),
    ],
)
async def test_status_decides_the_outcome(
    secret: WebhookSecret,
    status: int,
    headers: dict[str, str],
    kind: type[Outcome],
    after: float | None,
) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp() - 3600
    async with (
        http_server(answer(status, headers, text="see docs")) as base,
        destination(base + "/hook", [secret], clock=lambda: now) as d,
    ):
        outcome = await d.send(BODY, META)
        assert not d.disabled
    assert isinstance(outcome, kind)
    assert outcome.code == str(status)
    assert outcome.response == b"see docs"
    if isinstance(outcome, Retry):
        assert outcome.after == after


async def test_request_carries_content_type_and_signature_headers(
    secret: WebhookSecret,
) -> None:
    seen: list[tuple[dict[str, str], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    nxt = WebhookSecret.generate()
    async with http_server(record) as base, destination(base, [secret, nxt]) as d:
        await d.send(BODY, META)
    ((got, body),) = seen
    assert body == BODY
    assert got["Content-Type"] == "application/json"
    assert got["webhook-id"] == ID41
    assert got["webhook-timestamp"].isdigit()
    assert [s[:3] for s in got["webhook-signature"].split(" ")] == ["v1,", "v1,"]


async def test_big_answers_are_kept_only_up_to_the_cap(secret: WebhookSecret) -> None:
    async with (
        http_server(answer(500, text="x" * 200_000)) as base,
        destination(base, [secret]) as d,
    ):
        outcome = await d.send(BODY, META)
    assert isinstance(outcome, Retry)
    assert len(outcome.response) == 64 * 1024


async def test_no_secret_or_url_token_in_reasons_or_logs(
    free_port: int, secret: WebhookSecret, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "tok-Zq81synthetic"
    outcomes: list[Outcome] = []
    receiver = WebhookReceiver([secret])
    receiver.answer_with(500)
    receiver.answer_with(410)
    async with receiver:
        url = f"http://user:{token}@127.0.0.1:{receiver.port}/hooks/{token}?token={token}"
        async with destination(url, [secret]) as d:
            outcomes += [await d.send(BODY, META) for _ in range(3)]
    down = f"http://user:{token}@127.0.0.1:{free_port}/hooks?token={token}"
    async with destination(down, [secret]) as d:
        outcomes.append(await d.send(BODY, META))
    assert [type(o) for o in outcomes] == [Retry, Reject, Reject, Retry]
    texts = [o.reason for o in outcomes if not isinstance(o, Sent)]
    texts += [r.getMessage() for r in caplog.records]
    key = str(secret).removeprefix("whsec_")
    for text in texts:
        assert token not in text
        assert key not in text and "whsec_" not in text
        assert "appointment" not in text.lower()


def config(**options: Any) -> DestinationConfig:
    return DestinationConfig("intake-forms", "appointment-events", "webhook", options, POS)


def test_build_applies_defaults() -> None:
    s = WebhookSecret.generate()
    d = build(config(url="https://hooks.example.test/in", secret=str(s)))
    assert (d.name, d.concurrency, d.timeout, d.origin) == (
        "intake-forms",
        4,
        10.0,
        "https://hooks.example.test",
    )


async def test_build_with_secret_next_signs_with_both(
    receiver: WebhookReceiver, secret: WebhookSecret
) -> None:
    # The receiver knows only the rotation's next secret.
    old = WebhookSecret.generate()
    d = build(
        config(
            url=receiver.url, secret=str(old), secret_next=str(secret), timeout=2.5, connections=2
        )
    )
    try:
        assert (d.timeout, d.concurrency) == (2.5, 2)
        assert isinstance(await d.send(BODY, META), Sent)
    finally:
        await d.close()


@pytest.mark.parametrize("option", ["secret", "secret_next"])
def test_build_names_the_bad_option_never_its_value(option: str) -> None:
    good = str(WebhookSecret.generate())
    bad = "whsec_c2hvcnQ="  # base64 of a key far too short
    options = {"url": "https://h.example.test/", "secret": good, option: bad}
    with pytest.raises(ValueError, match=rf"appointment-events\.yaml:9:5: .*'{option}'") as err:
        build(config(**options))
    assert "c2hvcnQ" not in str(err.value)


@pytest.mark.parametrize(
    "url", ["ftp://h.example.test/", "https:///nohost", "not a url", "http://h:99999999/"]
)
def test_a_url_that_is_not_http_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ValueError, match="url") as err:
        WebhookDestination("x", url=url, secrets=[WebhookSecret.generate()])
    assert url not in str(err.value)


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ({"url": "https://h.example.test/in", "secret": "s"}, True),
        (
            {
                "url": "http://127.0.0.1:9/in",
                "secret": "s",
                "secret_next": "t",
                "timeout": 1.5,
                "connections": 64,
            },
            True,
        ),
        ({"secret": "s"}, False),
        ({"url": "https://h.example.test/in"}, False),
        ({"url": "ftp://h.example.test/", "secret": "s"}, False),
        ({"url": "https://h/", "secret": "s", "connections": 0}, False),
        ({"url": "https://h/", "secret": "s", "connections": 65}, False),
        ({"url": "https://h/", "secret": "s", "timeout": 0}, False),
        ({"url": "https://h/", "secret": "s", "secret_next": ""}, False),
        ({"url": "https://h/", "secret": "s", "headers": {}}, False),
    ],
)
def test_schema(options: dict[str, Any], ok: bool) -> None:
    Draft202012Validator.check_schema(PLUGIN.schema)
    errors = list(Draft202012Validator(PLUGIN.schema).iter_errors(options))
    assert (not errors) is ok


def test_check_points_at_a_bad_secret_without_quoting_it() -> None:
    seen: list[tuple[str | int, ...]] = []

    def at(where: tuple[str | int, ...]) -> Pos:
        seen.append(where)
        return Pos(POS.file, 11, 15)

    ctx = CheckContext(tables={}, transforms_dir=Path("/cfg/transforms"), at=at)
    good = str(WebhookSecret.generate())
    assert PLUGIN.check({"url": "https://h/", "secret": good, "secret_next": good}, ctx) == []
    problems = PLUGIN.check({"url": "https://h/", "secret": good, "secret_next": "pw123"}, ctx)
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{POS.file}:11:15: webhook secret must start with")
    assert "pw123" not in str(problems[0])
    assert seen == [("secret_next",)]


def test_check_leaves_an_unresolved_secret_reference_to_the_loader() -> None:
    ctx = CheckContext(tables={}, transforms_dir=Path("/cfg/transforms"),
                       at=lambda where: Pos(POS.file, 11, 15))
    unresolved = {"url": "https://h/", "secret": "${HOOK_SECRET}"}
    assert PLUGIN.check(unresolved, ctx) == []
    # Only the unresolved one is skipped: a bad value beside it is still found.
    problems = PLUGIN.check({**unresolved, "secret_next": "pw123"}, ctx)
    assert [p.message.split(" must ")[0] for p in problems] == ["webhook secret"]


WEBHOOK_CHANNEL = """\
    destinations:
      events:
        webhook: {url: https://hooks.example/in, secret: "${HOOK_TEST_SECRET}"}
    """


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "environment variable HOOK_TEST_SECRET is not set"),
        ("pw123", "webhook secret must start with 'whsec_'"),
    ],
)
def test_engine_check_reports_one_problem_for_a_missing_or_bad_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str
) -> None:
    """Through the configuration loader, as `engine check` runs it: an unset variable is one
    problem (not also "must start with whsec_"); a set but malformed secret is one too."""
    if value is None:
        monkeypatch.delenv("HOOK_TEST_SECRET", raising=False)
    else:
        monkeypatch.setenv("HOOK_TEST_SECRET", value)
    root = ConfigRoot(tmp_path).with_channel(WEBHOOK_CHANNEL)
    with pytest.raises(ConfigError) as caught:
        root.load()
    (problem,) = caught.value.problems
    assert problem.message.startswith(expected), problem
    assert (problem.pos.file.name, problem.pos.line) == ("feed.yaml", 3)
    assert "pw123" not in str(problem)


def test_retry_after_forms() -> None:
    now = 1_000_000.0
    assert _retry_after(None, now) is None
    assert _retry_after(" 120 ", now) == 120.0
    assert _retry_after("10000000", now) == 86400.0  # capped
    assert _retry_after("-5", now) is None
    assert _retry_after("", now) is None
    assert _retry_after(format_datetime(datetime.fromtimestamp(now + 30, UTC), True), now) == 30
    assert _retry_after(format_datetime(datetime.fromtimestamp(now - 30, UTC), True), now) == 0
    assert _retry_after("Thu, 01 Jan 1970 00:00:00 -0000", now) == 0.0


async def test_after_close_sends_are_retried_and_close_is_idempotent(
    receiver: WebhookReceiver, secret: WebhookSecret
) -> None:
    d = WebhookDestination("intake-forms", url=receiver.url, secrets=[secret])
    assert isinstance(await d.send(BODY, META), Sent)
    await d.close()
    await d.close()
    outcome = await d.send(BODY, META)
    assert isinstance(outcome, Retry)
    assert receiver.attempts == [Attempt(ID41, "/webhooks", 204)]
