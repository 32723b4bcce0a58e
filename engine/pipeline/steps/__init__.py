"""The step registry: every channel step type by name, with its schema and compiler.

Adding a step is one module exporting `PLUGIN` (schema + semantic check) and
`compile_step(spec, ctx) -> Step`, plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from engine.config.model import StepSpec
from engine.config.registry import Plugin
from engine.pipeline.steps import (
    convert,
    copy_field,
    map_table,
    python_call,
    remove_fields,
    set_fields,
)
from engine.pipeline.steps.base import CompileContext, Step

_MODULES: tuple[ModuleType, ...] = (
    set_fields, copy_field, map_table, remove_fields, convert, python_call
)

REGISTRY: dict[str, Plugin] = {m.PLUGIN.name: m.PLUGIN for m in _MODULES}
_COMPILERS: dict[str, Callable[[StepSpec, CompileContext], Step]] = {
    m.PLUGIN.name: m.compile_step for m in _MODULES
}


def compile_step(spec: StepSpec, ctx: CompileContext) -> Step:
    return _COMPILERS[spec.kind](spec, ctx)
