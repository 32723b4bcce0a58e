"""The `engine` command: argument parsing and dispatch to engine.commands.

`engine run | check | reload | test | send | messages | show | replay | retry | fake-ehr |
fake-fhir | fake-webhooks | bench | certs dev | audit verify | audit search | users ... |
apikeys ... | keys new | keys status | keys rotate`.
Every command takes `--config PATH` (default routes.yaml in the current directory);
channels/ and transforms/ are found beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from engine.commands.audit import add_parser as add_audit_parser
from engine.commands.common import CommandError, fail, load_config, open_for, routes_security
from engine.commands.credentials import CliCaller
from engine.commands.identities import add_parsers as add_identity_parsers
from engine.commands.inspect import add_filters
from engine.commands.keys import add_parser as add_keys_parser

if TYPE_CHECKING:
    from engine.config.model import EngineConfig
    from engine.security.audit import AuditHook

T = TypeVar("T")


def _run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main())
    return uvloop.run(main())


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version="engine 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            type=Path,
            default=Path("routes.yaml"),
            help="routes.yaml (default: ./routes.yaml)",
        )
        return p

    p = command("run", "start the engine on a configuration")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    command("check", "validate the configuration; print every problem as file:line:column")
    command("test", "run every channel's tests offline")
    p = command("reload", "check the configuration, then have the running engine reload it")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the engine's answer (default 60)")

    p = command("send", "send HL7 files over MLLP and print each ACK")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK")
    p.add_argument("--tls", action="store_true",
                   help="MLLP over TLS, verified against the system CAs (or --tls-ca)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificates to verify the listener with")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="its private key")

    p = command("messages", "search stored messages (newest first)")
    add_filters(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--store", help="store URL (default: the one in the configuration)")

    p = command("show", "show a message: raw, channel results, deliveries, attempts")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--store")

    p = command("replay", "run stored messages through the channels again and deliver")
    p.add_argument("ids", nargs="*", type=int, metavar="ID")
    add_filters(p)
    p.set_defaults(limit=0)
    p.add_argument("--to", metavar="DESTINATION", action="append",
                   help="deliver only to this destination (repeat for several)")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent where")

    p = command("retry", "send failed deliveries again (one, several, or a destination's)")
    p.add_argument("delivery_ids", nargs="*", type=int, metavar="DELIVERY_ID")
    p.add_argument("--destination", help="every failed delivery of this destination")
    p.add_argument("--store")

    p = command("fake-ehr", "a fake MLLP EHR: ACKs what it receives and prints it")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6661)
    p.add_argument(
        "--mode", default="aa", choices=["aa", "ae", "ar", "timeout", "drop", "wrong-id"]
    )
    p.add_argument("--quiet", action="store_true", help="count messages, do not print them")

    p = command("fake-fhir", "a fake FHIR server: stores Appointments and prints each request")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)

    p = command("fake-webhooks", "a webhook receiver that verifies signatures and prints events")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument(
        "--secret-env",
        default="WEBHOOK_SECRET",
        help="environment variable holding the whsec_ secret (one is generated if unset)",
    )

    p = command("bench", "measure the engine end to end on the example channel")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument(
        "--skip-baseline", action="store_true", help="do not measure the bare hl7.mllp echo server"
    )
    p.add_argument(
        "--fhir",
        action="store_true",
        help="measure POSTed FHIR Appointments (fhir-to-siu) instead of the MLLP feed",
    )
    p.add_argument("--json", action="store_true")

    certs = sub.add_parser("certs", help="certificates for TLS",
                           description="certificates for TLS")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    p = certs_sub.add_parser(
        "dev", help="make a local CA, a server and a client certificate for trying TLS",
        description="make a local CA, a server and a client certificate for trying TLS",
    )
    p.add_argument("--dir", type=Path, default=Path("certs"), help="folder (default: ./certs)")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="another name or IP for the server certificate (repeatable)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    for name, text in (("login", "open a CLI session (password, and TOTP when you have it)"),
                       ("logout", "end the CLI session")):
        p = command(name, text)
        p.add_argument("--identities-db", type=Path,
                       help="the identity file (default: $ENGINE_IDENTITIES_DB, else beside "
                            "the store)")
        if name == "login":
            p.add_argument("--user", required=True)
            p.add_argument("--password-stdin", action="store_true",
                           help="read the password, then the TOTP code, one line each")
    add_audit_parser(sub)
    add_identity_parsers(sub)
    add_keys_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.caller = _authorize(args)
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows up here, not in Python's flush at exit
        return code
    except CommandError as exc:
        return fail(str(exc))
    except BrokenPipeError:
        # The reader went away (`engine messages | head`): stop quietly, as Unix tools do.
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        return 130


def _authorize(args: argparse.Namespace) -> CliCaller | None:
    """Who runs this command, if it touches PHI, checked against the permission table before
    anything is opened (engine.commands.credentials)."""
    from engine.commands.credentials import authorize
    from engine.commands.identities import identities_path

    return authorize(
        args, lambda: identities_path(args.config, getattr(args, "identities_db", None))
    )


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; without this that flush fails on the same broken
    # pipe and prints a second error.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


GC_THRESHOLD = 20_000


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "certs":
        from engine.commands.certs import dev

        return dev(args.dir, args.host, args.force)
    if args.command == "audit":
        from engine.commands.audit import run as run_audit

        return run_audit(args)
    if args.command == "keys":
        from engine.commands.keys import run as run_keys

        return run_keys(args)
    if args.command in ("users", "apikeys", "clients"):
        from engine.commands.identities import run as run_identities

        return run_identities(args, args.caller, sys.stdout, sys.stdin)
    if args.command in ("login", "logout"):
        from engine.commands import credentials
        from engine.commands.identities import identities_path

        db = identities_path(args.config, args.identities_db)
        if args.command == "logout":
            return credentials.logout(db)
        return credentials.login(args.config, db, args.user, args.password_stdin, sys.stdin,
                                 sys.stdout)
    config_path: Path = args.config
    if args.command == "check":
        from engine.config import run_check

        return run_check(config_path, sys.stdout)
    if args.command == "run":
        _setup_logging(args.log_level)
        from engine.runtime.engine import Engine
        from engine.runtime.instance_lock import AlreadyRunning
        from engine.runtime.security import refusals

        config = load_config(config_path)
        refused = refusals(config)
        if refused:
            raise CommandError(f"cannot start ({config.security.profile} profile): "
                               + "; ".join(refused))
        engine = Engine(config)
        # Everything loaded so far (modules, schemas, compiled channels) lives as long as the
        # process: kept out of the collector's scans, and young collections made rarer, since
        # validating a FHIR body allocates hundreds of short-lived objects. Measured with
        # `engine bench --fhir`: see README, "Measured".
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)
        try:
            _run_async(engine.run_until_signalled)
        except (OSError, AlreadyRunning) as exc:  # from start(): a port in use, a store in use
            raise CommandError(f"cannot start: {exc}") from exc
        return 0
    if args.command == "reload":
        from engine.commands.reload import run as run_reload

        return run_reload(args, args.caller, sys.stdout)
    if args.command == "test":
        return _channel_tests(config_path)
    if args.command == "send":
        from engine.commands.send import send_files
        from engine.config.model import ClientTls

        tls = None
        if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
            tls = ClientTls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
        return _run_async(
            lambda: send_files(args.files, args.host, args.port, args.timeout, tls=tls)
        )
    if args.command in ("fake-ehr", "fake-fhir", "fake-webhooks"):
        return _fake(args)
    if args.command == "bench" and args.fhir:
        from engine.bench_fhir import run_fhir_bench

        return run_fhir_bench(args.messages, args.connections, args.json, Path.cwd())
    if args.command == "bench":
        from engine.bench import run_bench

        return run_bench(args.messages, args.connections, not args.skip_baseline, args.json)
    return _run_async(lambda: _store_command(args))


def _fake(args: argparse.Namespace) -> int:
    """The test kit's fakes, served until Ctrl-C. Output is flushed per line: whoever reads a
    pipe (tee, grep, a test) sees each message arrive."""
    write: Callable[[str], Any] = functools.partial(print, flush=True)
    try:
        if args.command == "fake-ehr":
            from engine.testing.fake_ehr import run as run_fake_ehr

            if args.quiet:
                write = _ignore
            _run_async(lambda: run_fake_ehr(args.port, args.host, args.mode, write=write))
        elif args.command == "fake-fhir":
            from engine.testing.fake_fhir import run as run_fake_fhir

            _run_async(lambda: run_fake_fhir(args.port, args.host, write=write))
        else:
            from engine.testing.webhook_receiver import run as run_receiver

            # The secret comes from the environment, never from the command line (it would
            # show in the process list and the shell history).
            secret = os.environ.get(args.secret_env, "")
            secrets = [secret] if secret else []
            _run_async(lambda: run_receiver(args.port, args.host, secrets=secrets, write=write))
    except OSError as exc:
        raise CommandError(f"cannot start the {args.command}: {exc}") from exc
    return 0


def _ignore(line: str) -> None:
    return None


async def _store_command(args: argparse.Namespace) -> int:
    from engine.commands.audit import cli_hook
    from engine.security.alert_webhook import delivering

    config = load_config(args.config) if args.command == "replay" else None
    audit = cli_hook(args.config, args.caller.actor, getattr(args, "store", None))
    # A burst or out-of-hours read seen by the audit hook goes to the alert webhook too.
    async with delivering(routes_security(args.config)):
        return await _on_store(args, config, audit)


async def _on_store(args: argparse.Namespace, config: EngineConfig | None, audit: AuditHook) -> int:
    from engine.commands import inspect, operate
    from engine.security.atrest import AtRestError

    store = await open_for(args.config, getattr(args, "store", None))
    try:
        if args.command == "messages":
            return await inspect.messages(store, args, audit=audit)
        if args.command == "show":
            return await inspect.show(store, args.id, args.json, audit=audit)
        if args.command == "replay":
            assert config is not None
            return await operate.replay(store, config, args, audit=audit)
        if args.command == "retry":
            return await operate.retry(store, args, audit=audit)
        raise CommandError(f"unknown command {args.command}")
    except AtRestError as exc:  # a row sealed with a key this configuration lacks
        raise CommandError(str(exc)) from exc
    finally:
        await store.close()


def _channel_tests(config_path: Path) -> int:
    from engine.pipeline.channel_tests import run_all
    from engine.runtime.engine import compile_config

    config = load_config(config_path)
    results = run_all(config, compile_config(config))
    for result in results:
        mark = "PASS" if result.passed else "FAIL"
        print(f"{mark} {result.channel}: {result.test.name}")
        for problem in result.problems:
            print(f"  {result.test.pos}: {problem}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
