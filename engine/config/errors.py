"""Configuration problems: every one names file:line:column and what was expected."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config.model import Pos


@dataclass(frozen=True)
class ConfigProblem:
    pos: Pos
    message: str

    def __str__(self) -> str:
        return f"{self.pos}: {self.message}"


class ConfigError(Exception):
    """Raised by `engine.config.load` with every problem found (never just the first)."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = sorted(
            problems, key=lambda p: (str(p.pos.file), p.pos.line, p.pos.column, p.message)
        )
        super().__init__("\n".join(str(p) for p in self.problems))
