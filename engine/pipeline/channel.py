"""Running one channel on one message: accept → filter → steps → per-destination payloads.

Pure CPU work, no I/O: the same code serves the live engine, `engine replay` and
`engine test`. Each channel parses its own copy of the message, so one channel's steps never
leak into another's. Any failure becomes an `error` outcome naming the step and field; a
bug in a step (an unexpected exception) is an `error` too, never a crash of the engine.

The output is written in the charset its own MSH-18 names, as a receiver reads it: the
received message's codec, or the one a step chose by changing MSH-18. Text that charset
cannot hold is an `error` outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from engine.config.model import ChannelConfig, DestinationConfig
from engine.pipeline.errors import APPLICATION_ERROR, StepError
from engine.pipeline.filters import Predicate, compile_condition
from engine.pipeline.steps import compile_step
from engine.pipeline.steps.base import CompileContext, Step
from engine.protocol.charset import codec_for
from engine.protocol.er7 import Er7Error, Message, parse_path

log = logging.getLogger("engine.pipeline")


@dataclass(frozen=True)
class Payload:
    destination: DestinationConfig
    lane: str
    data: bytes


@dataclass
class ChannelOutcome:
    channel: str
    status: Literal["ok", "filtered", "error"]
    output: bytes = b""
    message: Message | None = None
    error: str = ""
    error_detail: str = ""
    error_step: str = ""
    error_field: str = ""
    error_code: int = APPLICATION_ERROR
    payloads: list[Payload] = field(default_factory=list)
    codec: str = ""  # the Python codec `output` is written in ("" unless ok)


class CompiledChannel:
    def __init__(self, config: ChannelConfig, ctx: CompileContext) -> None:
        self.config = config
        self.name = config.name
        self._accept = frozenset(config.accept_types)
        self._filter: Predicate | None = (
            compile_condition(config.filter) if config.filter is not None else None
        )
        self._steps: list[Step] = [compile_step(spec, ctx) for spec in config.steps]
        self._lanes = [
            (d, parse_path(d.order_by) if d.order_by else None) for d in config.destinations
        ]

    def accepts(self, message_type: str) -> bool:
        """`message_type` is "SIU^S12" (MSH-9.1^MSH-9.2)."""
        return not self._accept or message_type in self._accept

    def run(self, source: str | Message, codec: str, only: str | None = None) -> ChannelOutcome:
        """Run the channel on ER7 text, or on a copy of an already parsed message (so one
        channel's steps never reach another's); `only` restricts the payloads to one
        destination (replay --to)."""
        step_label = "parse"
        try:
            message = source.copy() if isinstance(source, Message) else Message.parse(source)
            charset = message.get("MSH-18")
            step_label = "filter"
            if self._filter is not None and not self._filter(message):
                return ChannelOutcome(self.name, "filtered")
            for step in self._steps:
                step_label = step.label
                message = step.apply(message)
            step_label = "encode"
            if message.get("MSH-18") != charset:
                codec = codec_for(message.get("MSH-18"))
            output = message.to_er7().encode(codec)
            payloads = [
                Payload(dest, message.get(path) if path is not None else "", output)
                for dest, path in self._lanes
                if only is None or dest.name == only
            ]
        except StepError as exc:
            return ChannelOutcome(
                self.name,
                "error",
                error=exc.text,
                error_detail=exc.detail,
                error_step=step_label,
                error_field=exc.field,
                error_code=exc.code,
            )
        except Er7Error as exc:
            return ChannelOutcome(
                self.name,
                "error",
                error=f"{step_label}: {exc}",
                error_step=step_label,
                error_field=_field_of(exc.location),
                error_code=exc.code,
            )
        except UnicodeEncodeError as exc:
            return ChannelOutcome(
                self.name,
                "error",
                error=f"the output cannot be written in {codec} (MSH-18)",
                error_detail=str(exc),
                error_step=step_label,
            )
        except Exception as exc:  # a bug in a step must fail this message, not the engine
            # Type only: an exception's text may quote the message (PHI).
            log.error("channel %s: unexpected %s in %s", self.name, type(exc).__name__, step_label)
            return ChannelOutcome(
                self.name,
                "error",
                error=f"{step_label}: internal error ({type(exc).__name__})",
                error_detail=f"{type(exc).__name__}: {exc}",
                error_step=step_label,
            )
        return ChannelOutcome(
            self.name, "ok", output=output, message=message, payloads=payloads, codec=codec
        )


def _field_of(location: str) -> str:
    """The field path (`MSH-18`) of an ERL location (`MSH^1^18`): outcomes name fields the
    way steps do, and the listener turns them back into ERR-2."""
    parts = location.split("^")
    if len(parts) < 3 or not all(p.isdigit() and p != "0" for p in parts[1:]):
        return ""
    segment, seq, number, *deeper = parts
    path = segment if seq == "1" else f"{segment}[{seq}]"
    path += f"-{number}"
    if deeper and deeper[0] != "1":
        path += f"[{deeper[0]}]"
    return path + "".join(f".{n}" for n in deeper[1:3])


def compile_channels(
    channels: dict[str, ChannelConfig], ctx: CompileContext
) -> dict[str, CompiledChannel]:
    return {name: CompiledChannel(cfg, ctx) for name, cfg in channels.items()}
