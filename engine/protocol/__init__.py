"""Sans-IO HL7 v2 protocol layer: MLLP framing, ER7 read/write, charsets, ACKs.

Rule kept: nothing here does I/O or imports asyncio, aiohttp or the store; callers push
bytes or text in and get events, messages or text out, so every piece is testable alone.
"""

from engine.protocol.ack import AckError, AckInfo, build_ack, parse_ack
from engine.protocol.charset import CharsetError, codec_for, decode_message
from engine.protocol.er7 import (
    Encoding,
    Er7Error,
    Header,
    Message,
    Path,
    PathError,
    escape,
    parse_path,
    peek_header,
    unescape,
)
from engine.protocol.mllp import Event, Frame, Framer, Oversized, Truncated, frame

__all__ = [
    "AckError",
    "AckInfo",
    "CharsetError",
    "Encoding",
    "Er7Error",
    "Event",
    "Frame",
    "Framer",
    "Header",
    "Message",
    "Oversized",
    "Path",
    "PathError",
    "Truncated",
    "build_ack",
    "codec_for",
    "decode_message",
    "escape",
    "frame",
    "parse_ack",
    "parse_path",
    "peek_header",
    "unescape",
]
