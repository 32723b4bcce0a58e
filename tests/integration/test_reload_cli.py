"""The reload triggers from outside, on a real `engine run` subprocess of the shipped example:
SIGHUP, `engine reload` (checked first by the CLI: a broken file is printed and nothing
signalled; a change the engine refuses is answered with why) and `reload: {watch: true}`.
Each reload is one audit record, read back with `engine audit search`, with who asked."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from engine.commands.credentials import os_user
from engine.config.loader import store_url
from engine.runtime.instance_lock import InstanceLock
from tests.integration.cli_support import (
    CHANNEL,
    Site,
    engine,
    engine_running,
    example_copy,
    patch,
)
from tests.integration.conftest import eventually

TABLE = "transforms/tables/appointment_types.yaml"


def engine_pid(site: Site) -> int:
    lock = InstanceLock.for_store(store_url(site.routes))
    assert lock is not None
    pid = lock.running_pid()
    assert pid is not None, "no engine holds the store's lock"
    return pid


async def logged(log: Path, line: str, what: str) -> None:
    async def seen() -> bool:
        return line in log.read_text()

    await eventually(seen, timeout=20, what=what)


async def test_sighup_engine_reload_and_the_watch_each_reload_and_are_audited(
    tmp_path: Path,
) -> None:
    site = example_copy(tmp_path)
    table = site.root / TABLE
    async with engine_running(site) as log:
        # SIGHUP, as `kill -HUP` sends it: the engine audits it itself.
        patch(table, "NP_EVAL_60", "NP_EVAL_61")
        os.kill(engine_pid(site), signal.SIGHUP)
        await logged(log, "config reload (signal) reloaded: tables changed: appointment_types",
                     "the SIGHUP reload")  # fmt: skip

        # engine reload: the CLI checks, signals, and prints the engine's answer.
        patch(table, "NP_EVAL_61", "NP_EVAL_62")
        done = await site.cli("reload")
        assert (done.code, done.out) == (0, "reloaded: tables changed: appointment_types\n"), done

        # A broken channel: printed as engine check prints it; nothing reaches the engine.
        channel = site.root / CHANNEL
        good = channel.read_text()
        channel.write_text(good + "colour: blue\n")
        broken = await site.cli("reload")
        line = len(good.splitlines()) + 1
        assert broken.code == 2, broken
        assert f"{CHANNEL}:{line}:1: unknown key 'colour'" in broken.err, broken.err
        assert "nothing was reloaded" in broken.err
        channel.write_text(good)

        # A setting bound at start: the engine refuses, naming it; exit 1.
        routes = site.routes.read_text()
        patch(site.routes, rf"\bport: {site.listen}\b", f"port: {site.listen + 1}")
        moved = await site.cli("reload")
        assert moved.code == 1, moved
        assert moved.out.startswith("refused: needs a restart: listener epic-siu changed\n")
        site.routes.write_text(routes)

        # Watching, turned on by a reload, then reloading on its own after a table edit.
        site.routes.write_text(routes + "reload: {watch: true, interval: 100ms}\n")
        watching = await site.cli("reload")
        assert watching.out == "reloaded: reload settings changed\n", watching
        patch(table, "NP_EVAL_62", "NP_EVAL_63")
        await logged(log, "config reload (watch) reloaded: tables changed: appointment_types",
                     "the watch's reload")  # fmt: skip
        log_text = log.read_text()
    assert log_text.count("config reload (") == 5  # the broken one never reached the engine
    found = await engine("audit", "search", "--config", str(site.routes), "--json", "--action",
                         "E", cwd=site.root, env=site.env)  # fmt: skip
    assert found.code == 0, found
    records = [(r["who"], r["outcome"], r["query"]["trigger"], r["query"]["summary"])
               for r in reversed(found.json()) if r["what"] == "config reload"]  # fmt: skip
    me = f"os:{os_user()}"
    assert records == [
        ("engine:sighup", 0, "signal", "tables changed: appointment_types"),
        (me, 0, "cli", "tables changed: appointment_types"),
        (me, 4, "cli", "1 configuration problem, found by engine reload"),
        (me, 4, "cli", "needs a restart: listener epic-siu changed"),
        (me, 0, "cli", "reload settings changed"),
        ("engine:watch", 0, "watch", "tables changed: appointment_types"),
    ]
