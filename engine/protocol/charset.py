"""Character sets: HL7 table 0211 (MSH-18) to Python codecs, and decoding a received message.

Rule kept: a message is decoded exactly once, with the codec its own MSH-18 names (empty means
UTF-8, which is what feeds really send). The header is peeked from the bytes first: read as
latin-1 every byte maps to one character, so the ASCII separators split the MSH fields
correctly whatever the real charset (this holds for ASCII-compatible charsets; UTF-16/32 are
recognised by their byte pattern instead). Error texts never quote message content.
"""

from __future__ import annotations

from engine.protocol.er7 import Er7Error, Header, peek_header

# HL7 v2.5.1 table 0211. The ISO IR 14/87/159 sets arrive with ISO 2022 escape sequences,
# which is what Python's iso2022_jp codecs read. "UNICODE" (deprecated in v2.5) is sent by
# feeds as UTF-8; a real UTF-16 stream is recognised from its bytes (see _sniff_wide).
_TABLE_0211 = {
    "": "utf-8",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR14": "iso2022_jp",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_1",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    # Not in the table, but sent by real feeds and unambiguous.
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
}
_WIDE = {"utf-16", "utf-32"}

# Byte patterns of "MS" (or a byte-order mark) at the start of a UTF-16/32 message.
_WIDE_STARTS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"M\x00\x00\x00S\x00\x00\x00", "utf-32-le"),
    (b"\x00\x00\x00M\x00\x00\x00S", "utf-32-be"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
    (b"M\x00S\x00", "utf-16-le"),
    (b"\x00M\x00S", "utf-16-be"),
)
_UTF8_BOM = b"\xef\xbb\xbf"


class CharsetError(Er7Error):
    """MSH-18 names a character set this engine cannot decode (table 0211, code 103)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=103, location="MSH^1^18")


def codec_for(msh18: str) -> str:
    """The Python codec for an MSH-18 value; CharsetError naming the value if unknown."""
    codec = _TABLE_0211.get(msh18.strip().upper())
    if codec is None:
        raise CharsetError(f"MSH-18 character set {msh18[:40]!r} is not supported")
    return codec


def _sniff_wide(data: bytes) -> str | None:
    if data[:1] not in (b"\xff", b"\xfe", b"\x00", b"M"):
        return None
    for start, codec in _WIDE_STARTS:
        if data.startswith(start):
            return codec
    return None


def _decode(data: bytes, codec: str, declared: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        raise Er7Error(
            f"message bytes are not valid {codec} (MSH-18 {declared[:40]!r}): "
            f"{e.reason} at byte {e.start}",
            code=102, location="MSH^1^18",
        ) from None


def decode_message(data: bytes) -> tuple[Header, str, str]:
    """(header, text, codec) of a received message; Er7Error (or CharsetError) if it can't."""
    wide = _sniff_wide(data)
    if wide is not None:
        text = _decode(data, wide, "")
        header = peek_header(text)
        declared = header.charset.strip().upper()
        if declared not in ("", "UNICODE") and codec_for(declared) not in _WIDE:
            raise Er7Error(
                f"message is {wide} but MSH-18 declares {header.charset[:40]!r}",
                code=102, location="MSH^1^18",
            )
        return header, text.lstrip("\ufeff"), wide
    if data.startswith(_UTF8_BOM):
        data = data[3:]
    header = peek_header(data)
    codec = codec_for(header.charset)
    if codec in _WIDE:
        raise Er7Error(
            f"MSH-18 declares {header.charset[:40]!r} but the message is not in that encoding",
            code=102, location="MSH^1^18",
        )
    text = _decode(data, codec, header.charset)
    if not all(f.isascii() for f in header.fields):
        # Non-ASCII header values were read as latin-1 above: read them again, decoded.
        header = peek_header(text)
    return header, text, codec
