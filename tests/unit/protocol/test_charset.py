"""Charsets: MSH-18 to codec, and decoding received bytes with the codec they declare."""

from __future__ import annotations

import pytest

from engine.protocol.charset import CharsetError, codec_for, decode_message
from engine.protocol.er7 import Er7Error, Message
from tests.unit.protocol.samples import sample_bytes

MSG = (
    "MSH|^~\\&|EPIC|MAIN_HOSP|ENGINE|CLINIC|20250101||SIU^S12|C1|P|2.5.1||||||{cs}\r"
    "PID|1||{name}\r"
)


@pytest.mark.parametrize(
    ("value", "codec"),
    [
        ("", "utf-8"),
        ("UNICODE UTF-8", "utf-8"),
        ("8859/1", "latin-1"),
        ("ASCII", "ascii"),
        ("8859/2", "iso8859-2"),
        ("8859/15", "iso8859-15"),
        ("UNICODE UTF-16", "utf-16"),
        ("UNICODE UTF-32", "utf-32"),
        ("GB 18030-2000", "gb18030"),
        ("BIG-5", "big5"),
        ("KS X 1001", "euc_kr"),
        (" unicode utf-8 ", "utf-8"),
    ],
)
def test_codec_for(value: str, codec: str) -> None:
    assert codec_for(value) == codec
    "x".encode(codec)  # a real Python codec


@pytest.mark.parametrize("value", ["EBCDIC", "CNS 11643-1992", "8859/99"])
def test_unknown_charset_names_the_value(value: str) -> None:
    with pytest.raises(CharsetError) as info:
        codec_for(value)
    assert value in str(info.value)
    assert isinstance(info.value, ValueError)
    assert (info.value.code, info.value.location) == (103, "MSH^1^18")


def test_latin1_sample() -> None:
    header, text, codec = decode_message(sample_bytes("siu_s12_latin1.hl7"))
    assert codec == "latin-1"
    assert header.charset == "8859/1"
    assert header.control_id == "MSG00007"
    msg = Message.parse(text)
    assert msg.get("PID-5.1") == "Grünwaldtest"
    assert msg.get("PID-5.2") == "Renée"


def test_empty_msh18_means_utf8() -> None:
    data = MSG.format(cs="", name="Ørnsby^Zoë").encode("utf-8")
    _, text, codec = decode_message(data)
    assert codec == "utf-8"
    assert Message.parse(text).get("PID-3") == "Ørnsby^Zoë"


@pytest.mark.parametrize(
    ("cs", "encoding"), [("8859/2", "iso8859-2"), ("GB 18030-2000", "gb18030"),
                         ("UNICODE UTF-8", "utf-8")]
)
def test_declared_charset_is_used(cs: str, encoding: str) -> None:
    name = {"8859/2": "Dvořák", "GB 18030-2000": "测试", "UNICODE UTF-8": "Ünïcødé"}[cs]
    _, text, codec = decode_message(MSG.format(cs=cs, name=name).encode(encoding))
    assert codec == encoding
    assert Message.parse(text).get("PID-3") == name


def test_non_ascii_header_values_are_decoded_properly() -> None:
    data = MSG.format(cs="", name="x").replace("EPIC", "ÉPIC").encode("utf-8")
    header, _, _ = decode_message(data)
    assert header.sending_application == "ÉPIC"


def test_invalid_bytes_for_declared_charset() -> None:
    data = MSG.format(cs="UNICODE UTF-8", name="Quillfeather").encode() + b"\xff\xfe\r"
    with pytest.raises(Er7Error) as info:
        decode_message(data)
    assert (info.value.code, info.value.location) == (102, "MSH^1^18")
    assert "utf-8" in str(info.value)
    assert "Quillfeather" not in str(info.value)


def test_ascii_declared_but_not_ascii() -> None:
    with pytest.raises(Er7Error) as info:
        decode_message(MSG.format(cs="ASCII", name="Renée").encode("utf-8"))
    assert info.value.code == 102


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_wide_unicode_is_recognised_from_bytes(encoding: str) -> None:
    data = MSG.format(cs="UNICODE UTF-16", name="Zoë").encode(encoding)
    header, text, _ = decode_message(data)
    assert header.control_id == "C1"
    assert Message.parse(text).get("PID-3") == "Zoë"


def test_wide_bytes_contradicting_msh18() -> None:
    with pytest.raises(Er7Error):
        decode_message(MSG.format(cs="8859/1", name="x").encode("utf-16"))


def test_wide_msh18_on_narrow_bytes() -> None:
    with pytest.raises(Er7Error):
        decode_message(MSG.format(cs="UNICODE UTF-16", name="x").encode("utf-8"))


def test_utf8_bom_is_skipped() -> None:
    header, text, _ = decode_message(b"\xef\xbb\xbf" + MSG.format(cs="", name="x").encode())
    assert header.control_id == "C1"
    assert text.startswith("MSH|")


def test_unknown_charset_from_bytes() -> None:
    with pytest.raises(CharsetError):
        decode_message(MSG.format(cs="KLINGON", name="x").encode())


def test_not_hl7() -> None:
    with pytest.raises(Er7Error) as info:
        decode_message(b"GET / HTTP/1.1\r\n")
    assert info.value.code == 100
