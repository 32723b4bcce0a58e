"""`engine send FILE...`: send HL7 files over MLLP (or MLLP over TLS), one connection, and
print each ACK."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import TextIO

from engine.config.model import ClientTls
from engine.protocol.ack import parse_ack
from engine.protocol.charset import CharsetError, codec_for
from engine.protocol.er7 import Er7Error, peek_header
from engine.security.tls import TlsConfigError, client_context
from engine.testing.mllp_client import MllpClient


def describe_ack(data: bytes) -> str:
    try:
        codec = codec_for(peek_header(data).charset)
        info = parse_ack(data.decode(codec, errors="replace"))
    except (Er7Error, CharsetError) as exc:
        return f"unreadable ACK ({exc})"
    parts = [info.code]
    if info.text:
        parts.append(info.text)
    # An ERR often repeats MSA-3 word for word; say it once.
    parts.extend(e for e in info.errors if e != info.text)
    return " - ".join(parts)


async def send_files(
    files: list[Path],
    host: str,
    port: int,
    timeout: float,
    out: TextIO = sys.stdout,
    tls: ClientTls | None = None,
) -> int:
    """Send each file, print its ACK; `tls` (even empty: the system CAs) connects over TLS."""
    try:
        context = client_context(tls, "engine send") if tls is not None else None
    except TlsConfigError as exc:
        sys.stderr.write(f"engine: --tls-{exc.option}: {exc.message}\n")
        return 2
    try:
        client = await MllpClient.connect(host, port, timeout, context)
    except ssl.SSLError as exc:
        sys.stderr.write(f"engine: TLS with {host}:{port} failed: {exc.reason or exc}\n")
        return 2
    except (OSError, TimeoutError) as exc:
        sys.stderr.write(f"engine: cannot connect to {host}:{port}: {exc}\n")
        return 2
    worst = 0
    try:
        for path in files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                out.write(f"{path}: cannot read ({exc.strerror})\n")
                worst = max(worst, 1)
                continue
            try:
                ack = await client.send(data, timeout)
            except (TimeoutError, ConnectionError) as exc:
                out.write(f"{path}: no ACK ({exc or 'timed out'})\n")
                return 1
            line = describe_ack(ack)
            out.write(f"{path}: {line}\n")
            if not line.startswith(("AA", "CA")):
                worst = max(worst, 1)
    finally:
        await client.close()
    return worst
