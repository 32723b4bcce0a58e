"""A bare python-hl7 (`hl7.mllp`) ACK echo server: the benchmark's baseline.

It parses each message with `hl7.parse` and answers `create_ack()`, storing nothing: what a
minimal Python MLLP service costs, to compare the engine against. Run as
`python -m engine.testing.hl7_echo PORT`; it prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


async def _serve(port: int) -> None:
    import hl7.mllp

    async def handle(reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                writer.writemessage(message.create_ack())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(handle, host="127.0.0.1", port=port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
