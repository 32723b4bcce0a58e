"""The file destination: writes each payload as one file in a directory.

The rule it keeps: a reader of the directory never sees half a file. Each payload goes to a
temporary file in the same directory, is flushed and fsynced, then renamed over its final name
(os.replace, atomic on POSIX) and the directory is fsynced so the rename survives power loss.
The default name holds the delivery id, so a retried delivery overwrites its own file instead
of adding a second one. Files are created owner-read/write only (they hold PHI).

Blocking I/O runs in a worker thread. Failures are `Retry` with the OS reason, never content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import string
import tempfile
from pathlib import Path
from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import DestinationConfig
from engine.config.registry import CheckContext, Plugin
from engine.config.units import PATH
from engine.destinations.base import DeliveryMeta, Outcome, Reject, Retry, Sent
from engine.protocol.er7 import Er7Error, peek_header

DEFAULT_FILENAME = "{message_id}-{delivery_id}.hl7"
PLACEHOLDERS = frozenset({"message_id", "delivery_id", "channel", "control_id"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# Values used to try a template out at configuration time.
_SAMPLE = {"message_id": 1, "delivery_id": 1, "channel": "channel", "control_id": "CTRL1"}


def check_filename(template: str) -> str | None:
    """What is wrong with a filename template, or None. Placeholders are the names in
    PLACEHOLDERS; the result must be a plain file name (no directories)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"expected a filename template: {exc}"
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        known = ", ".join(sorted(PLACEHOLDERS))
        return f"unknown placeholder {{{unknown[0]}}} in filename; expected one of {known}"
    try:
        sample = template.format(**_SAMPLE)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        return f"expected a filename template: {exc}"
    if not _plain_name(sample):
        return "expected a plain file name (no '/', not '.' or '..')"
    return None


def _check(args: Any, ctx: CheckContext) -> list[ConfigProblem]:
    template = args.get("filename", DEFAULT_FILENAME) if isinstance(args, dict) else None
    if not isinstance(template, str):
        return []
    problem = check_filename(template)
    return [] if problem is None else [ConfigProblem(ctx.at(("filename",)), problem)]


PLUGIN = Plugin(
    name="file",
    description="Writes each payload atomically as one file in a directory.",
    schema={
        "type": "object",
        "additionalProperties": False,
        "required": ["directory"],
        "properties": {
            "directory": {"x-unit": PATH, "type": "string", "minLength": 1},
            "filename": {
                "type": "string",
                "minLength": 1,
                "x-expected": "a file name template like {message_id}-{delivery_id}.hl7",
                "default": DEFAULT_FILENAME,
                "description": "Template; placeholders {message_id}, {delivery_id}, {channel}, "
                "{control_id} (MSH-10, reduced to A-Z a-z 0-9 . _ -).",
            },
        },
    },
    check=_check,
)


def build(config: DestinationConfig) -> FileDestination:
    opts = config.options
    return FileDestination(
        config.name,
        directory=Path(opts["directory"]),
        filename=str(opts.get("filename", DEFAULT_FILENAME)),
    )


def sanitise(text: str) -> str:
    """Reduce a value to characters that are safe in any file name."""
    return _UNSAFE.sub("_", text)


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


class FileDestination:
    """One directory. `concurrency` is 1: files are written one after another."""

    concurrency = 1

    def __init__(self, name: str, *, directory: Path, filename: str = DEFAULT_FILENAME) -> None:
        problem = check_filename(filename)
        if problem is not None:
            raise ValueError(problem)
        self.name = name
        self.directory = directory
        self.filename = filename

    def filename_for(self, payload: bytes, meta: DeliveryMeta) -> str:
        try:
            control_id = peek_header(payload).control_id
        except Er7Error:
            control_id = ""
        return self.filename.format(
            message_id=meta.message_id,
            delivery_id=meta.delivery_id,
            channel=sanitise(meta.channel),
            control_id=sanitise(control_id),
        )

    async def send(self, payload: bytes, meta: DeliveryMeta) -> Outcome:
        name = self.filename_for(payload, meta)
        if not _plain_name(name):
            return Reject(f"filename template gave an unusable file name {name!r}")
        try:
            await asyncio.to_thread(write_atomically, self.directory, name, payload)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return Retry(f"could not write {name} in {self.directory}: {reason}")
        return Sent(code="", response=f"written {name}".encode())

    async def close(self) -> None:
        return None


def write_atomically(directory: Path, name: str, data: bytes) -> None:
    """Write `data` as directory/name so that the name only ever shows complete content."""
    created = not directory.is_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(directory.parent)
    # Hidden and suffixed, so a reader globbing `*.hl7` never picks up a file being written;
    # the name is cut so that prefix + random part + suffix stays within NAME_MAX.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name[:200]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(directory, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
