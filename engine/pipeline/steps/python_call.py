"""`python: module.function` calls a function from transforms/module.py, for what YAML
cannot say.

The function takes the document (an `engine.protocol.er7.Message`, or a JSON dict after a
`convert` step), and also the run's `engine.pipeline.context.RunContext` when its signature
names two positional parameters: `def f(message)` and `def f(doc, context)` both work (see
`engine.pipeline.transforms.arguments`). It returns the document (changed in place or a new
one, a Message or a dict) or None (= changed in place). It must not do I/O. It may raise
`engine.pipeline.errors.StepError` with a safe text and a field, or `StepFiltered` with a
reason when there is nothing to send; any other exception fails the channel with the
exception's type name only (its text may quote the message, so it is kept in the store and
never sent back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import ANY_FLOW, CheckContext, Plugin
from engine.pipeline.context import Document, RunContext
from engine.pipeline.errors import StepError, StepFiltered
from engine.pipeline.steps.base import CompileContext, label
from engine.pipeline.transforms import TransformError, arguments, load_function
from engine.protocol.er7 import Message

SCHEMA: dict[str, Any] = {"type": "string", "pattern": r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$"}


def _check(args: str, ctx: CheckContext) -> list[ConfigProblem]:
    try:
        arguments(load_function(ctx.transforms_dir, args), args)
    except TransformError as exc:
        return [ConfigProblem(ctx.at(()), str(exc))]
    return []


# What a function returns is known only when it runs.
PLUGIN = Plugin("python", SCHEMA, _check, "call a named function from transforms/", ANY_FLOW)


def call_transform(
    function: Callable[..., Any],
    takes: int,
    doc: Document,
    run: RunContext,
    what: str,
    *,
    passes: tuple[type[Exception], ...] = (),
) -> Any:
    """Call a transforms/ function as the module docstring says. StepError, StepFiltered and
    the `passes` types (errors whose texts are safe by contract) go through; anything else
    becomes a StepError naming its type only (its text may quote the message)."""
    try:
        return function(doc, run) if takes == 2 else function(doc)
    except (StepError, StepFiltered):
        raise
    except Exception as exc:
        if isinstance(exc, passes):
            raise
        raise StepError(
            f"{what} raised {type(exc).__name__}", detail=f"{type(exc).__name__}: {exc}"
        ) from exc


def loaded(ctx: CompileContext, name: str) -> Callable[..., Any]:
    """The function `name` ("module.function"), imported once per compile context."""
    function = ctx.functions.get(name)
    if function is None:
        function = load_function(ctx.transforms_dir, name)
        ctx.functions[name] = function
    return function


class PythonCall:
    # Project code: it may change what it is handed, the run's context included.
    user_code = True
    reads_only = False

    def __init__(self, spec: StepSpec, function: Callable[..., Any]) -> None:
        self.label = label(spec)
        self._name = spec.args
        self._function = function
        self._takes = arguments(function, spec.args)

    def apply(self, doc: Document, run: RunContext) -> Document:
        what = f"{self.label} ({self._name})"
        result = call_transform(self._function, self._takes, doc, run, what)
        if result is None:
            return doc
        if not isinstance(result, Message | dict):
            raise StepError(
                f"{what} returned {type(result).__name__}, expected the document "
                "(a Message or a dict) or None"
            )
        return result


def compile_step(spec: StepSpec, ctx: CompileContext) -> PythonCall:
    return PythonCall(spec, loaded(ctx, spec.args))
