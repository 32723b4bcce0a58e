"""How `engine reload` asks the running engine to reload, and gets its answer back.

The CLI finds the engine by its store (engine.runtime.instance_lock: the holder of the store's
lock wrote its pid there), writes a request file into a folder beside the store
(`<store file>.reload/<nonce>.request`, folder 0700), and sends the engine SIGHUP. The engine,
on SIGHUP, takes every request present, reloads once, and writes the result for each as
`<nonce>.answer` (written whole, then renamed into place, so a reader never sees half of it);
the CLI waits for its answer and removes it. A SIGHUP with no request (`kill -HUP`) reloads
just the same, and the engine audits it itself; a requested one is audited by the CLI, as its
caller. Who may write the folder may ask for a reload, as who may signal the process may: the
engine's own OS user.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from engine.store import sqlite_file

STALE_ANSWER = 3600.0  # an answer nobody collected (its CLI gave up) is removed after this


class ReloadRequests:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def for_store(cls, url: str) -> ReloadRequests | None:
        """The folder of a `sqlite:` store; None for a store with no file."""
        database = sqlite_file(url)
        return None if database is None else cls(database.with_name(database.name + ".reload"))

    # ---------------------------------------------------------------- the CLI's side

    def ask(self) -> str:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        nonce = secrets.token_hex(8)
        (self.folder / f"{nonce}.request").write_bytes(b"")
        return nonce

    def answer_to(self, nonce: str) -> dict[str, Any] | None:
        """The engine's answer to this request, once written (then removed)."""
        path = self.folder / f"{nonce}.answer"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        return data

    def withdraw(self, nonce: str) -> None:
        (self.folder / f"{nonce}.request").unlink(missing_ok=True)

    # ---------------------------------------------------------------- the engine's side

    def take(self) -> list[str]:
        """The nonces of every waiting request, which are removed (and old answers pruned)."""
        try:
            entries = list(self.folder.iterdir())
        except FileNotFoundError:
            return []
        nonces: list[str] = []
        now = time.time()
        for entry in entries:
            try:
                if entry.suffix == ".request":
                    entry.unlink()
                    nonces.append(entry.stem)
                elif entry.suffix == ".answer" and now - entry.stat().st_mtime > STALE_ANSWER:
                    entry.unlink()
            except FileNotFoundError:  # withdrawn meanwhile
                continue
        return nonces

    def answer(self, nonces: list[str], result: dict[str, Any]) -> None:
        body = json.dumps(result).encode()
        for nonce in nonces:
            partial = self.folder / f".{nonce}.answer.tmp"
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(body)
            os.replace(partial, self.folder / f"{nonce}.answer")
