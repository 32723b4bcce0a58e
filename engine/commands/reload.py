"""`engine reload`: check the configuration here, then have the running engine reload it.

Steps: the configuration is loaded and its channels compiled as `engine check` and `engine
run` do; a problem is printed as `file:line:column: message` and nothing is signalled (exit
2). Otherwise the engine running on the configuration's store is asked
(engine.runtime.reload_control) and its answer printed: `reloaded: <what changed>` (exit 0)
or `refused: <why>` with the problems (exit 1; its running configuration stays). Every
attempt, refused here or there, is one audit record as the caller (action E, "config
reload"), written once the outcome is known.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import TextIO

from engine.commands.audit import cli_hook
from engine.commands.common import CommandError
from engine.commands.credentials import CliCaller
from engine.config import ConfigError
from engine.config.check import problem_lines
from engine.runtime.instance_lock import InstanceLock
from engine.runtime.reload import (
    FAILED,
    ReloadResult,
    load_and_compile,
    problem_count,
    refused,
)
from engine.runtime.reload_control import ReloadRequests

POLL = 0.05  # seconds between looks for the engine's answer


def run(args: argparse.Namespace, caller: CliCaller, out: TextIO) -> int:
    audit = cli_hook(args.config, caller.actor)  # a bad audit key stops us before acting
    if not args.config.exists():
        raise CommandError(f"{args.config}: no such configuration file (use --config PATH)")
    try:
        config, _ = load_and_compile(args.config)
    except ConfigError as exc:
        lines = problem_lines(exc)
        audit(refused(f"{problem_count(len(lines))}, found by engine reload").audit_event("cli"))
        raise CommandError("the configuration is not valid; nothing was reloaded:\n"
                           + "\n".join(lines)) from exc  # fmt: skip
    except Exception as exc:  # a checked configuration should compile: say what, not a trace
        raise CommandError(f"compiling the channels failed: {type(exc).__name__}") from exc
    lock = InstanceLock.for_store(config.store)
    requests = ReloadRequests.for_store(config.store)
    pid = lock.running_pid() if lock is not None else None
    if pid is None or requests is None:
        raise CommandError(f"no engine is running on {config.store} (start it with engine run)")
    nonce = requests.ask()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        requests.withdraw(nonce)
        raise CommandError(f"no engine is running on {config.store}") from None
    result = _wait(requests, nonce, args.timeout)
    audit(result.audit_event("cli"))
    out.write(result.text() + "\n")
    return 0 if result.accepted else 1


def _wait(requests: ReloadRequests, nonce: str, timeout: float) -> ReloadResult:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = requests.answer_to(nonce)
        if answer is not None:
            return ReloadResult.from_json(answer)
        time.sleep(POLL)
    requests.withdraw(nonce)
    return refused(f"the engine did not answer within {timeout:g} s (see its log)",
                   outcome=FAILED)  # fmt: skip
