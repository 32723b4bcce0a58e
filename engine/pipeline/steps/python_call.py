"""`python: module.function` calls a function from transforms/module.py, for what YAML
cannot say.

The function takes the message (`engine.protocol.er7.Message`) and returns it (changed in
place or a new one) or None (= changed in place). It must not do I/O. It may raise
`engine.pipeline.errors.StepError` with a safe text and a field; any other exception fails the
channel with the exception's type name only (its text may quote the message, so it is kept
in the store and never sent back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import CheckContext, Plugin
from engine.pipeline.errors import StepError
from engine.pipeline.steps.base import CompileContext, label
from engine.pipeline.transforms import TransformError, load_function
from engine.protocol.er7 import Message

SCHEMA: dict[str, Any] = {"type": "string", "pattern": r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$"}


def _check(args: str, ctx: CheckContext) -> list[ConfigProblem]:
    try:
        load_function(ctx.transforms_dir, args)
    except TransformError as exc:
        return [ConfigProblem(ctx.at(()), str(exc))]
    return []


PLUGIN = Plugin("python", SCHEMA, _check, "call a named function from transforms/")


class PythonCall:
    def __init__(self, spec: StepSpec, function: Callable[..., Any]) -> None:
        self.label = label(spec)
        self._name = spec.args
        self._function = function

    def apply(self, message: Message) -> Message:
        try:
            result = self._function(message)
        except StepError:
            raise
        except Exception as exc:
            raise StepError(
                f"{self.label} ({self._name}) raised {type(exc).__name__}",
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc
        if result is None:
            return message
        if not isinstance(result, Message):
            raise StepError(
                f"{self.label} ({self._name}) returned {type(result).__name__}, "
                "expected the message or None"
            )
        return result


def compile_step(spec: StepSpec, ctx: CompileContext) -> PythonCall:
    function = ctx.functions.get(spec.args)
    if function is None:
        function = load_function(ctx.transforms_dir, spec.args)
        ctx.functions[spec.args] = function
    return PythonCall(spec, function)
