"""The contract between the configuration checker and the pluggable parts.

A channel step (`set`, `map`, ...) or a destination type (`mllp`, `file`, ...) registers a
`Plugin`: the JSON Schema of its arguments, semantic checks that need the rest of the
configuration (tables exist, field paths parse), and how to build the runtime object.
Adding one is one new module plus its schema; the checker composes the schemas from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import Pos, Table

# Position of a node inside the plugin's arguments, by key/index path from the arguments root.
PosLookup = Callable[[tuple[str | int, ...]], Pos]


@dataclass(frozen=True)
class CheckContext:
    tables: dict[str, Table]
    transforms_dir: Path
    at: PosLookup  # at(()) is the arguments node itself


SemanticCheck = Callable[[Any, CheckContext], list[ConfigProblem]]


def no_checks(args: Any, ctx: CheckContext) -> list[ConfigProblem]:
    return []


@dataclass(frozen=True)
class Plugin:
    name: str
    schema: dict[str, Any]
    check: SemanticCheck = no_checks
    description: str = ""
