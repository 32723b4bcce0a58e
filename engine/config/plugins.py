"""Channel steps and destinations checked against the plugin registries.

A step is a single-key mapping `{<step name>: <args>}`; a destination entry holds exactly one
registered destination-type key plus optional `retry` and `order_by`. For each, the name is
looked up in its registry, the arguments are converted and validated against that plugin's
own schema, and only arguments that passed are handed to the plugin's semantic `check`, with
positions relative to the arguments (`ctx.at(("table",))`). The rule: a plugin never sees
arguments its schema rejected, so plugins need not be defensive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import semantic, validation
from engine.config.errors import ConfigProblem
from engine.config.model import DestinationConfig, Pos, RetryPolicy, StepSpec, Table
from engine.config.registry import CheckContext, Plugin
from engine.config.schema import destination_entry
from engine.config.yaml_nodes import Doc, KeyPath


@dataclass(frozen=True)
class Scope:
    """What plugin checks see of the rest of the configuration."""

    root: Path
    tables: dict[str, Table]

    @property
    def transforms_dir(self) -> Path:
        return self.root / "transforms"


def run_plugin(
    doc: Doc, prefix: KeyPath, args: Any, plugin: Plugin, scope: Scope
) -> tuple[Any, list[ConfigProblem]]:
    """`args` converted per the plugin's schema, and every problem found with them."""
    args, problems = validation.check(doc, prefix, args, plugin.schema, scope.root)
    if problems:
        return args, problems

    def at(path: tuple[str | int, ...]) -> Pos:
        return doc.at((*prefix, *path))

    return args, list(plugin.check(args, CheckContext(scope.tables, scope.transforms_dir, at)))


def steps(
    doc: Doc, items: Any, registry: Mapping[str, Plugin], scope: Scope,
    problems: list[ConfigProblem],
) -> list[StepSpec]:
    out: list[StepSpec] = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        path: KeyPath = ("steps", i)
        if not isinstance(item, dict):
            continue  # the channel schema reported it
        if len(item) != 1:
            got = f"{len(item)} keys: {', '.join(item)}" if item else "an empty mapping"
            problems.append(ConfigProblem(
                doc.at(path),
                f"expected one step per list item (start each with '- '), got {got}",
            ))
            continue
        [(kind, args)] = item.items()
        plugin = registry.get(kind)
        if plugin is None:
            problems.append(ConfigProblem(
                doc.key_at((*path, kind)),
                f"unknown step '{kind}' (expected one of: {', '.join(registry)})",
            ))
            continue
        args, found = run_plugin(doc, (*path, kind), args, plugin, scope)
        problems.extend(found)
        if not found:
            out.append(StepSpec(kind, args, doc.at(path), i + 1))
    return out


def destinations(
    doc: Doc, channel: str, entries: Any, registry: Mapping[str, Plugin], scope: Scope,
    problems: list[ConfigProblem],
) -> list[DestinationConfig]:
    out: list[DestinationConfig] = []
    schema = destination_entry(registry)
    for name, entry in (entries if isinstance(entries, dict) else {}).items():
        path: KeyPath = ("destinations", name)
        if not isinstance(entry, dict):
            continue  # the channel schema reported it
        entry, found = validation.check(doc, path, entry, schema, scope.root)
        kinds = [key for key in entry if key in registry]
        if not kinds:
            found.append(ConfigProblem(
                doc.key_at(path),
                f"expected a destination type in '{name}': one of {', '.join(registry)}",
            ))
        elif len(kinds) > 1:
            found.append(ConfigProblem(
                doc.key_at((*path, kinds[1])),
                f"expected one destination type per destination, got {kinds[0]} and {kinds[1]}",
            ))
        options: Any = {}
        if len(kinds) == 1:
            options, more = run_plugin(doc, (*path, kinds[0]), entry[kinds[0]],
                                       registry[kinds[0]], scope)
            found += more
        order_by = entry.get("order_by")
        if isinstance(order_by, str):
            more_path = semantic.field_or_element_problem(order_by, doc.at((*path, "order_by")))
            found += [more_path] if more_path is not None else []
        retry = _retry(doc, path, entry.get("retry"), found)
        problems.extend(found)
        if not found and isinstance(options, dict):
            out.append(DestinationConfig(
                name=name, channel=channel, kind=kinds[0], options=options,
                pos=doc.key_at(path), retry=retry, order_by=order_by,
            ))
    return out


def _retry(doc: Doc, path: KeyPath, value: Any, found: list[ConfigProblem]) -> RetryPolicy:
    if not isinstance(value, dict):
        return RetryPolicy()
    fields: dict[str, Any] = {k: v for k, v in value.items() if k != "backoff"}
    for key in ("first", "max", "factor", "jitter"):
        if isinstance(fields.get(key), int | float):
            fields[key] = float(fields[key])
    try:
        policy = RetryPolicy(**fields)
    except TypeError:
        return RetryPolicy()  # the schema reported the bad key
    if isinstance(policy.first, float) and isinstance(policy.max, float) \
            and policy.first > policy.max:
        first = doc.texts.get((*path, "retry", "first"), str(policy.first))
        most = doc.texts.get((*path, "retry", "max"), str(policy.max))
        found.append(ConfigProblem(
            doc.at((*path, "retry", "first")),
            f"expected first <= max, got first {first} and max {most}",
        ))
    return policy
