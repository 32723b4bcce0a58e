"""`engine certs dev`: development certificates for trying TLS, and what to put in the
configuration to use them. Prints paths and the client certificate's fingerprint, never a
key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from engine.commands.common import CommandError
from engine.security.devcerts import make_dev_certs


def dev(
    directory: Path, hosts: Sequence[str], force: bool, write: Callable[[str], object] = print
) -> int:
    try:
        made = make_dev_certs(directory, hosts, force=force)
    except FileExistsError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write certificates in {directory}: "
                           f"{exc.strerror or type(exc).__name__}") from None
    write(f"wrote in {made.directory}:")
    write(f"  {made.ca.name:<16} local CA certificate (give it to clients as ca / client_ca)")
    write(f"  {made.ca_key.name:<16} local CA key (0600; keep it out of production)")
    write(f"  {made.server.name:<16} server certificate for {', '.join(made.hosts)}")
    write(f"  {made.server_key.name:<16} server key (0600)")
    write(f"  {made.client.name:<16} client certificate (CN=engine-dev-client)")
    write(f"  {made.client_key.name:<16} client key (0600)")
    write(f"client certificate SHA-256 (for allow:): {made.client_fingerprint}")
    listener = (f"cert: {made.server}, key: {made.server_key}, client_ca: {made.ca}, "
                f'allow: ["{made.client_fingerprint}"]')
    write(f"listener:    tls: {{{listener}}}")
    write(f"destination: tls: {{ca: {made.ca}, cert: {made.client}, key: {made.client_key}}}")
    return 0
