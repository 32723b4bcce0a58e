"""`engine test`: every channel's `tests:` run offline, through the same code as live traffic.

A test reads its input file, decodes it as intake would, runs the channel (no store, no
network) and compares the outcome (`delivered`, `filtered`, `error`) and the expected field
values of each destination's payload. Failures name the test by file:line:column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config.model import ChannelConfig, ChannelTest, EngineConfig
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.protocol.er7 import Message
from engine.runtime.processing import decode

_OUTCOMES = {"ok": "delivered", "filtered": "filtered", "error": "error"}


@dataclass
class TestResult:
    channel: str
    test: ChannelTest
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _outcome(channel: CompiledChannel, test: ChannelTest) -> ChannelOutcome | str:
    try:
        data = test.input.read_bytes()
    except OSError as exc:
        return f"cannot read {test.input}: {exc.strerror}"
    decoded = decode(data)
    if decoded.rejection is not None:
        return f"input is rejected at intake: {decoded.rejection.text}"
    if not channel.accepts(decoded.message_type):
        return f"the channel does not accept {decoded.message_type}"
    return channel.run(decoded.source, decoded.codec)


def run_test(config: ChannelConfig, channel: CompiledChannel, test: ChannelTest) -> TestResult:
    result = TestResult(config.name, test)
    outcome = _outcome(channel, test)
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
        message = Message.parse(data.decode(outcome.codec, errors="replace"))
        for path, expected in fields.items():
            actual = message.get(path)
            if actual != str(expected):
                result.problems.append(
                    f"{destination} {path}: expected {str(expected)!r}, got {actual!r}"
                )
    return result


def run_all(config: EngineConfig, channels: dict[str, CompiledChannel]) -> list[TestResult]:
    return [
        run_test(cfg, channels[name], test)
        for name, cfg in sorted(config.channels.items())
        for test in cfg.tests
    ]
