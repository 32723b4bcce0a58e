"""What a compiled step is, and what compiling one may use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.config.model import StepSpec, Table
from engine.protocol.er7 import Message


class Step(Protocol):
    label: str  # "steps[2] map", used in ERR texts and `engine show`

    def apply(self, message: Message) -> Message:
        """Return the changed message (usually the same object, changed in place); raise
        StepError when the step cannot do its work."""


@dataclass
class CompileContext:
    tables: dict[str, Table]
    transforms_dir: Path
    # python functions already imported, by "module.function" (shared across channels)
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)


def label(spec: StepSpec) -> str:
    return f"steps[{spec.index}] {spec.kind}"
