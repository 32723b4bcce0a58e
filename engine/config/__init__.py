"""Configuration: `load` reads routes.yaml, channels and tables into a checked `EngineConfig`
(raising one `ConfigError` with every problem); `run_check` is `engine check`.

The names are imported on first use: the runtime imports `engine.config.model` on its hot
modules, and that must not pull in YAML and JSON Schema (about 90 ms) with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config.check import run_check
    from engine.config.errors import ConfigError, ConfigProblem
    from engine.config.loader import load, store_url
    from engine.config.model import EngineConfig

_LAZY = {
    "run_check": "engine.config.check",
    "ConfigError": "engine.config.errors",
    "ConfigProblem": "engine.config.errors",
    "load": "engine.config.loader",
    "store_url": "engine.config.loader",
    "EngineConfig": "engine.config.model",
}

__all__ = ["ConfigError", "ConfigProblem", "EngineConfig", "load", "run_check", "store_url"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine.config' has no attribute {name!r}")
