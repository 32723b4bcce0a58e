"""`engine test`: every channel's `tests:` run offline, through the same code as live traffic.

A test reads its input file and decodes it as intake would: `.json` files are FHIR
Appointments (validated like an HTTP body), anything else HL7 v2 (decoded per MSH-18, HL7
times without an offset read in the configuration's `timezone`). It runs the channel with a
run context built as intake builds one, with a fixed clock (`TEST_NOW`) and control id
(`TEST_CONTROL_ID`) so outputs are the same on every run: the appointment the input carries
(its canonical form), assessed against the test's `previous:` file (the appointment's
earlier version, as the engine would hold it; none: the appointment is new), with
disposition `current` (`unchanged` when the assessment says so). No store, no network: so
no double booking against other appointments, and `conflicts: reject` is not applied (a
test shows what the channel makes of a version it takes).

It then compares the outcome (`delivered`, `filtered`, `error`) and each destination's
payload: for an HL7 v2 output the `expect` keys are field paths (`SCH-7.1`), for a JSON
output element paths (`participant.0.actor.identifier.value`, `data.status`, read as
`engine.pipeline.elements` says); values are compared as text. Failures name the test by
file:line:column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.appointments.state import Known, appointment_key, assess
from engine.config.model import ChannelConfig, ChannelTest, EngineConfig
from engine.fhir import Invalid, parse_appointment
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.pipeline.context import AppointmentContext, RunContext
from engine.pipeline.documents import HL7_V2
from engine.pipeline.elements import element_text, parse_element_path
from engine.protocol.er7 import Message, PathError, parse_path
from engine.runtime.processing import Decoded, decode, decode_fhir
from engine.store.base import AppointmentDisposition

_OUTCOMES = {"ok": "delivered", "filtered": "filtered", "error": "error"}
TEST_NOW = 1_741_608_000.0  # 2025-03-10T12:00:00Z
TEST_CONTROL_ID = "ENGINETEST0001"


@dataclass
class TestResult:
    channel: str
    test: ChannelTest
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def read_input(path: Path, tz: tzinfo = UTC, role: str = "input") -> Decoded | str:
    """A test file decoded as intake decodes it, or why intake would not take it; `role`
    ("input", "previous") names the file in that text."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if path.suffix == ".json":
        try:
            return decode_fhir(parse_appointment(data), data)
        except Invalid as exc:
            return f"{role} is rejected at intake: {exc}"
    decoded = decode(data, tz)
    if decoded.rejection is not None:
        return f"{role} is rejected at intake: {decoded.rejection.text}"
    return decoded


def run_context(decoded: Decoded, previous: dict[str, Any] | None) -> RunContext:
    """The context intake would run `decoded` with, had the engine last held `previous`."""
    resource = decoded.appointment
    if resource is None:
        return RunContext(TEST_NOW, TEST_CONTROL_ID)
    known = Known(appointment_key(previous), 1, previous, None) if previous else None
    assessment = assess(
        resource, known, source_time=None, expects_existing=decoded.expects_existing
    )
    disposition: AppointmentDisposition = (
        "unchanged" if assessment.change == "unchanged" else "current"
    )
    return RunContext(
        TEST_NOW,
        TEST_CONTROL_ID,
        AppointmentContext(resource, previous, assessment, disposition),
    )


def _previous(test: ChannelTest, decoded: Decoded, tz: tzinfo) -> dict[str, Any] | str | None:
    """The canonical earlier version the test names (None: no `previous:`), or a problem."""
    path = test.previous
    if path is None:
        return None
    if decoded.appointment is None:
        return "previous is given, but the input carries no appointment the engine can key"
    earlier = read_input(path, tz, "previous")
    if isinstance(earlier, str):
        return earlier
    if earlier.appointment is None:
        return f"previous {path.name} carries no appointment the engine can key"
    if appointment_key(earlier.appointment) != appointment_key(decoded.appointment):
        return f"previous {path.name} is another appointment than the input"
    return earlier.appointment


def _outcome(channel: CompiledChannel, test: ChannelTest, tz: tzinfo) -> ChannelOutcome | str:
    decoded = read_input(test.input, tz)
    if isinstance(decoded, str):
        return decoded
    if not channel.accepts(decoded.message_type):
        return f"the channel does not accept {decoded.message_type}"
    previous = _previous(test, decoded, tz)
    if isinstance(previous, str):
        return previous
    return channel.run(decoded.source, decoded.codec, context=run_context(decoded, previous))


def run_test(
    config: ChannelConfig, channel: CompiledChannel, test: ChannelTest, tz: tzinfo = UTC
) -> TestResult:
    """One test; `tz` is the configuration's time zone (HL7 times without an offset)."""
    result = TestResult(config.name, test)
    outcome = _outcome(channel, test, tz)
    if isinstance(outcome, str):
        result.problems.append(outcome)
        return result
    got = _OUTCOMES[outcome.status]
    wanted = test.outcome or "delivered"
    if got != wanted:
        why = ""
        if outcome.error:
            # Most error texts already start with the step's label; say it once.
            step = "" if outcome.error.startswith(outcome.error_step) else outcome.error_step
            why = f" ({step}: {outcome.error})" if step else f" ({outcome.error})"
        result.problems.append(f"expected outcome {wanted}, got {got}{why}")
        return result
    payloads = {p.destination.name: p.data for p in outcome.payloads}
    for destination, fields in test.expect.items():
        data = payloads.get(destination)
        if data is None:
            result.problems.append(f"nothing was sent to {destination}")
            continue
        result.problems.extend(
            f"{destination} {problem}" for problem in _compare(outcome, data, fields)
        )
    return result


def _compare(outcome: ChannelOutcome, data: bytes, fields: dict[str, str]) -> list[str]:
    problems = []
    if outcome.content_type == HL7_V2:
        message = Message.parse(data.decode(outcome.codec, errors="replace"))
        for path, expected in fields.items():
            try:
                actual = message.get(parse_path(path))
            except PathError:
                problems.append(
                    f"{path}: the output is an HL7 v2 message; expected a field path like "
                    "SCH-1.1"
                )
                continue
            if actual != str(expected):
                problems.append(f"{path}: expected {str(expected)!r}, got {actual!r}")
        return problems
    document = json.loads(data)
    for path, expected in fields.items():
        try:
            parse_path(path)
        except PathError:
            actual = element_text(document, parse_element_path(path))
            if actual != str(expected):
                problems.append(f"{path}: expected {str(expected)!r}, got {actual!r}")
            continue
        problems.append(
            f"{path}: the output is JSON ({outcome.content_type}); expected an element path "
            "like status or participant.0.actor.reference"
        )
    return problems


def run_all(config: EngineConfig, channels: dict[str, CompiledChannel]) -> list[TestResult]:
    tz = ZoneInfo(config.timezone)
    return [
        run_test(cfg, channels[name], test, tz)
        for name, cfg in sorted(config.channels.items())
        for test in cfg.tests
    ]
