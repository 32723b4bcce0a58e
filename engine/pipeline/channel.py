"""Running one channel on one document: accept → filter → steps → per-destination payloads.

Pure CPU work, no I/O: the same code serves the live engine, `engine replay` and
`engine test`. A channel runs on an HL7 v2 message (ER7 text or an already parsed
`Message`) or on a JSON document (a FHIR resource as a dict), always on its own copy, so one
channel's steps never leak into another's. Steps get the run's `RunContext` (time, control
id, appointment state). Any failure becomes an `error` outcome naming the step and field; a
bug in a step (an unexpected exception) is an `error` too, never a crash of the engine. A
step with nothing to send (`StepFiltered`) gives a `filtered` outcome with its reason.

The output is what the last step left: an HL7 v2 message is written in the charset its own
MSH-18 names, as a receiver reads it (the received message's codec, or the one a step chose
by changing MSH-18; text that charset cannot hold is an `error` outcome); a JSON document is
written as compact UTF-8 JSON. `content_type` says which. Filters read HL7 v2 fields: a
filter handed a JSON document is an `error` outcome.

`order_by` names a field path (`SCH-1.1`) or an element path (`identifier.0.value`); each
reads its own kind of document, and a path of the other kind gives every payload the one
lane "" (strict FIFO: ordering is never lost, only parallelism).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.config.model import ChannelConfig, DestinationConfig
from engine.pipeline.context import Document, RunContext
from engine.pipeline.documents import content_type, copy_document, describe, encode_json
from engine.pipeline.elements import element_text, parse_element_path
from engine.pipeline.errors import APPLICATION_ERROR, StepError, StepFiltered
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
    # "application/hl7-v2", "application/fhir+json" or "application/json" ("" unless ok)
    content_type: str = ""
    document: Document | None = None  # what the steps left (a Message is also `message`)


_NO_CONTEXT = RunContext()
LaneKey = Callable[[Document], str]


def lane_key(order_by: str | None) -> LaneKey:
    """How a destination's lane is read from the output document (see the docstring)."""
    if order_by is None:
        return lambda doc: ""
    try:
        path = parse_path(order_by)
    except ValueError:  # not a field path: an element path (the configuration checked it)
        element = parse_element_path(order_by)
        return lambda doc: element_text(doc, element) if isinstance(doc, dict) else ""
    return lambda doc: doc.get(path) if isinstance(doc, Message) else ""


class CompiledChannel:
    def __init__(self, config: ChannelConfig, ctx: CompileContext) -> None:
        self.config = config
        self.name = config.name
        self._accept = frozenset(config.accept_types)
        self._filter: Predicate | None = (
            compile_condition(config.filter) if config.filter is not None else None
        )
        self._steps: list[Step] = [compile_step(spec, ctx) for spec in config.steps]
        # Whether a step runs project code (a `python` step, a custom converter), which could
        # change the run's context: intake then gives this channel its own copy of it.
        self.user_code = any(getattr(step, "user_code", False) for step in self._steps)
        # A first step that only reads its input (a built-in converter) needs no copy of it.
        self._copy = not (self._steps and getattr(self._steps[0], "reads_only", False))
        self._lanes = [(d, lane_key(d.order_by)) for d in config.destinations]

    def accepts(self, message_type: str) -> bool:
        """`message_type` is "SIU^S12" (MSH-9.1^MSH-9.2)."""
        return not self._accept or message_type in self._accept

    def run(
        self,
        source: str | Message | dict[str, Any],
        codec: str,
        only: frozenset[str] | None = None,
        context: RunContext | None = None,
    ) -> ChannelOutcome:
        """Run the channel on ER7 text, or on a copy of an already parsed message or JSON
        document (so one channel's steps never reach another's); `codec` is the one the
        source came in. `only` restricts the payloads to these destinations (replay --to);
        `context` is what the run knows beyond the document (none: time 0, no appointment)."""
        run = context if context is not None else _NO_CONTEXT
        step_label = "parse"
        try:
            if isinstance(source, str):
                doc: Document = Message.parse(source)
            else:
                doc = copy_document(source) if self._copy else source
            charset = doc.get("MSH-18") if isinstance(doc, Message) else None
            step_label = "filter"
            if self._filter is not None:
                if not isinstance(doc, Message):
                    raise StepError(
                        f"filter: filters read HL7 v2 fields; the channel holds {describe(doc)}"
                    )
                if not self._filter(doc):
                    return ChannelOutcome(self.name, "filtered")
            for step in self._steps:
                step_label = step.label
                doc = step.apply(doc, run)
            step_label = "encode"
            if isinstance(doc, Message):
                if doc.get("MSH-18") != charset:
                    codec = codec_for(doc.get("MSH-18"))
                output = doc.to_er7().encode(codec)
            else:
                codec = "utf-8"
                output = encode_json(doc)
            payloads = [
                Payload(dest, key(doc), output)
                for dest, key in self._lanes
                if only is None or dest.name in only
            ]
        except StepFiltered as exc:
            return ChannelOutcome(self.name, "filtered", error=exc.reason, error_step=step_label)
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
            self.name,
            "ok",
            output=output,
            message=doc if isinstance(doc, Message) else None,
            payloads=payloads,
            codec=codec,
            content_type=content_type(doc),
            document=doc,
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
