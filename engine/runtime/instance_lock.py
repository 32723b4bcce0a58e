"""One running engine per SQLite store: an exclusive lock on a file beside the database.

At start an engine releases every claim on queued deliveries and claims them again (what a
stopped or killed process held must resume), which is only right when no other engine is
using the same store. The lock is an advisory `flock`: the operating system drops it when the
process ends in any way, `kill -9` included, so a restart after a crash is never blocked. CLI
commands (`retry`, `replay`, `messages`) do not take it: they work beside a running engine.
The holder writes its process id into the file, so `engine reload` can find the engine that
runs on a store (`running_pid`): a pid is believed only while its lock is held.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from engine.store import sqlite_file


class AlreadyRunning(RuntimeError):
    pass


class InstanceLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_store(cls, url: str) -> InstanceLock | None:
        """The lock for a `sqlite:` store; None for stores shared by several engines."""
        database = sqlite_file(url)
        return None if database is None else cls(database.with_name(database.name + ".engine-lock"))

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another engine is already running on this store (lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def running_pid(self) -> int | None:
        """The pid of the engine holding this lock; None when no engine holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: an engine runs, and wrote its pid
                text = os.read(fd, 32).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
