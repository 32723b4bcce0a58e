"""The files a configuration is made of, as a reload compares them and a watch polls them.

A configuration is routes.yaml, `channels/*.yaml`, `transforms/tables/*.yaml` and the Python
transforms `transforms/*.py`, beside routes.yaml (as `engine.config.loader` reads them). The
rule: files are named relative to the configuration root, so what is reported never depends
on where the engine runs; a file that vanishes while being read counts as absent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_PATTERNS = ("channels/*.yaml", "transforms/tables/*.yaml", "transforms/*.py")


def files(routes_file: Path) -> list[Path]:
    root = routes_file.parent
    found = [routes_file]
    for pattern in _PATTERNS:
        found.extend(p for p in sorted(root.glob(pattern)) if not p.name.startswith("."))
    return found


def _name(routes_file: Path, file: Path) -> str:
    return file.relative_to(routes_file.parent).as_posix()


def digests(routes_file: Path) -> dict[str, bytes]:
    """`relative name -> SHA-256 of the content`: what a reload compares."""
    found: dict[str, bytes] = {}
    for file in files(routes_file):
        try:
            found[_name(routes_file, file)] = hashlib.sha256(file.read_bytes()).digest()
        except OSError:
            continue
    return found


def stats(routes_file: Path) -> dict[str, tuple[int, int]]:
    """`relative name -> (mtime in ns, size)`: what a watch polls (a few stat calls, no
    reads; a file added or removed shows as a key added or removed)."""
    found: dict[str, tuple[int, int]] = {}
    for file in files(routes_file):
        try:
            st = os.stat(file)
        except OSError:
            continue
        found[_name(routes_file, file)] = (st.st_mtime_ns, st.st_size)
    return found
