"""`engine check`: load the configuration and print every problem, or a one-line summary.

Each problem is printed as `file:line:column: message`, with the file relative to the current
directory when it lies under it (so editors and terminals can jump to it); the exit status is
1 when there is any problem, 0 otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from engine.config.errors import ConfigError
from engine.config.loader import load
from engine.config.model import EngineConfig
from engine.config.registry import Plugin


def run_check(
    routes_path: Path,
    out: TextIO,
    *,
    steps: Mapping[str, Plugin] | None = None,
    destinations: Mapping[str, Plugin] | None = None,
) -> int:
    """Print every problem (1) or the summary (0); registries default as in `load`."""
    try:
        config = load(routes_path, steps=steps, destinations=destinations)
    except ConfigError as exc:
        for line in problem_lines(exc):
            out.write(line + "\n")
        return 1
    out.write(summary(config) + "\n")
    return 0


def problem_lines(error: ConfigError) -> list[str]:
    """Each problem as `engine check` prints it: `file:line:column: message`, the file
    relative to the current directory when it lies under it. `engine reload` and the running
    engine's reload answer with these same lines."""
    cwd = Path(os.getcwd())
    return [
        f"{_shown(p.pos.file, cwd)}:{p.pos.line}:{p.pos.column}: {p.message}"
        for p in error.problems
    ]


def summary(config: EngineConfig) -> str:
    """`ok: 1 listener, 1 channel, 2 tables, 3 channel tests`."""
    tests = sum(len(channel.tests) for channel in config.channels.values())
    counts = [
        _count(len(config.listeners), "listener"),
        _count(len(config.channels), "channel"),
        _count(len(config.tables), "table"),
        _count(tests, "channel test"),
    ]
    return "ok: " + ", ".join(counts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _shown(file: Path, cwd: Path) -> str:
    absolute = Path(os.path.abspath(file))
    return str(absolute.relative_to(cwd)) if absolute.is_relative_to(cwd) else str(file)
