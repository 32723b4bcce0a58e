"""Loading named Python functions from the configuration's transforms/ folder.

`module.function` names `transforms/module.py` and a function in it. Modules are imported
under a private package name, so two configurations never share state by accident and a
transform cannot shadow an installed module. A module is imported again only when its file's
content changed (a configuration reload picks up the new code; channels compiled before keep
the functions they hold, so a message in progress finishes on the code it started with).

How a function is called (`arguments`): with (document, context) when its signature names
two positional parameters, else with (document) alone, as functions written before the run
context existed are. A function that can be called neither way is a configuration problem.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

# qualified module name -> digest of the file it was imported from
_DIGESTS: dict[str, bytes] = {}
_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")


class TransformError(Exception):
    pass


def split_name(name: str) -> tuple[str, str]:
    match = _NAME.match(name)
    if not match:
        raise TransformError(f"expected 'module.function' (a file in transforms/), got '{name}'")
    return match.group(1), match.group(2)


def _import(transforms_dir: Path, module: str) -> ModuleType:
    path = transforms_dir / f"{module}.py"
    if not path.is_file():
        raise TransformError(f"transforms/{module}.py does not exist")
    qualified = f"engine_transforms_{abs(hash(str(transforms_dir.resolve())))}.{module}"
    try:
        digest = hashlib.sha256(path.read_bytes()).digest()
    except OSError as exc:
        raise TransformError(f"transforms/{module}.py cannot be read: {exc.strerror}") from exc
    loaded = sys.modules.get(qualified)
    if loaded is not None and _DIGESTS.get(qualified) == digest:
        return loaded
    spec = importlib.util.spec_from_file_location(qualified, path)
    if spec is None or spec.loader is None:
        raise TransformError(f"transforms/{module}.py cannot be imported")
    loaded = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(loaded)
    except Exception as exc:  # a syntax or import error in user code is a config problem
        raise TransformError(
            f"transforms/{module}.py failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    sys.modules[qualified] = loaded
    _DIGESTS[qualified] = digest
    return loaded


def load_function(transforms_dir: Path, name: str) -> Callable[..., Any]:
    module_name, function_name = split_name(name)
    module = _import(transforms_dir, module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TransformError(f"transforms/{module_name}.py has no function '{function_name}'")
    return function  # type: ignore[no-any-return]


def arguments(function: Callable[..., Any], name: str) -> int:
    """How many positional arguments to call `function` with: 2 (document, context) or 1
    (document); TransformError when it takes neither (see the module docstring)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): the old convention
        return 1
    positional = [
        p for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    keyword_only = [
        p.name for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    takes_more = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    if keyword_only or len(required) > 2 or not (positional or takes_more):
        raise TransformError(
            f"{name} must take (document) or (document, context), "
            f"but its parameters are ({', '.join(p.name for p in parameters)})"
        )
    return 2 if len(positional) >= 2 else 1
