"""MLLP framer: payloads come back exactly, however the stream is cut."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.protocol.mllp import (
    END_BLOCK,
    HEAD_SIZE,
    START_BLOCK,
    Event,
    Frame,
    Framer,
    Oversized,
    Truncated,
    frame,
)
from tests.unit.protocol.samples import SAMPLE_FILES


def feed_all(framer: Framer, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += framer.feed(chunk)
    return events


def test_frame_wraps_payload() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    assert START_BLOCK == b"\x0b"
    assert END_BLOCK == b"\x1c\r"


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_every_sample_split_at_every_byte(path: Path) -> None:
    payload = path.read_bytes()
    data = frame(payload)
    for cut in range(len(data) + 1):
        framer = Framer()
        events = feed_all(framer, [data[:cut], data[cut:]])
        assert events == [Frame(payload)], cut
        assert framer.stray_bytes == 0
        assert not framer.in_frame
        assert framer.eof() == []


def test_every_sample_fed_one_byte_at_a_time() -> None:
    payloads = [p.read_bytes() for p in SAMPLE_FILES]
    data = b"".join(frame(p) for p in payloads)
    framer = Framer()
    events = feed_all(framer, [data[i : i + 1] for i in range(len(data))])
    assert events == [Frame(p) for p in payloads]


def test_several_frames_in_one_feed_with_stray_bytes_counted() -> None:
    framer = Framer()
    data = b"junk" + frame(b"one") + b"\n" + frame(b"two") + b"\r\n" + frame(b"three") + b"\n"
    assert framer.feed(data) == [Frame(b"one"), Frame(b"two"), Frame(b"three")]
    assert framer.stray_bytes == 4 + 1 + 2 + 1
    assert not framer.in_frame


def test_lone_0x1c_is_payload_also_across_reads() -> None:
    framer = Framer()
    events = framer.feed(b"\x0bab\x1c")
    assert events == [] and framer.in_frame
    events += framer.feed(b"cd\x1c\x1c")
    events += framer.feed(b"\r")
    assert events == [Frame(b"ab\x1ccd\x1c")]


def test_end_split_between_0x1c_and_0x0d() -> None:
    framer = Framer()
    assert framer.feed(b"\x0bMSH|1\x1c") == []
    assert framer.feed(b"\r\x0bMSH|2\x1c\r") == [Frame(b"MSH|1"), Frame(b"MSH|2")]


def test_empty_frame() -> None:
    assert Framer().feed(b"\x0b\x1c\r") == [Frame(b"")]


def test_payload_ending_in_0x1c() -> None:
    assert Framer().feed(b"\x0bab\x1c\x1c\r") == [Frame(b"ab\x1c")]


def test_oversized_then_normal_frame_on_same_stream() -> None:
    framer = Framer(max_size=100)
    big = b"MSH|^~\\&|" + b"x" * 200_000
    data = frame(big) + frame(b"MSH|small")
    events = feed_all(framer, [data[i : i + 7000] for i in range(0, len(data), 7000)])
    assert events == [Oversized(big[:HEAD_SIZE], len(big)), Frame(b"MSH|small")]
    # Never buffered whole: what is kept is bounded by the head size.
    assert len(framer._buf) == 0


def test_oversized_in_one_feed_and_frame_at_exact_limit() -> None:
    framer = Framer(max_size=10)
    events = framer.feed(frame(b"0123456789") + frame(b"0123456789A"))
    assert events == [Frame(b"0123456789"), Oversized(b"0123456789A", 11)]


def test_oversized_buffer_stays_bounded_while_streaming() -> None:
    framer = Framer(max_size=1000)
    framer.feed(START_BLOCK)
    for _ in range(100):
        framer.feed(b"y" * 10_000)
        assert len(framer._buf) <= HEAD_SIZE
    assert framer.feed(END_BLOCK) == [Oversized(b"y" * HEAD_SIZE, 1_000_000)]


def test_eof_inside_frame_is_truncated() -> None:
    framer = Framer()
    assert framer.feed(b"\x0bMSH|partial") == []
    assert framer.in_frame
    assert framer.eof() == [Truncated(len(b"MSH|partial"))]
    assert not framer.in_frame
    assert framer.eof() == []


def test_eof_after_dangling_0x1c_counts_it() -> None:
    framer = Framer()
    framer.feed(b"\x0babc\x1c")
    assert framer.eof() == [Truncated(4)]


def test_eof_outside_frame_is_quiet() -> None:
    framer = Framer()
    framer.feed(frame(b"done") + b"\n")
    assert framer.eof() == []


def test_start_inside_frame_restarts_it() -> None:
    framer = Framer()
    events = framer.feed(b"\x0bhalf a mess\x0bMSH|whole\x1c\r")
    assert events == [Truncated(len(b"half a mess")), Frame(b"MSH|whole")]


def test_restart_across_reads_after_dangling_0x1c() -> None:
    framer = Framer()
    events = framer.feed(b"\x0bab\x1c") + framer.feed(b"\x0bcd\x1c\r")
    assert events == [Truncated(3), Frame(b"cd")]


def _without_markers(data: bytes) -> bytes:
    """A legal payload: no START, no END (a lone 0x1C, also a final one, is fine)."""
    data = data.replace(b"\x0b", b"")
    while b"\x1c\r" in data:
        data = data.replace(b"\x1c\r", b"\x1c")
    return data


payload_bytes = st.binary(max_size=300).map(_without_markers)


@settings(derandomize=True, database=None, max_examples=300)
@given(
    payloads=st.lists(payload_bytes, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
    stray=st.sampled_from([b"", b"\n", b"\r\n"]),
)
def test_random_payloads_and_cuts_give_back_the_payloads(
    payloads: list[bytes], cuts: list[int], stray: bytes
) -> None:
    data = b"".join(frame(p) + stray for p in payloads)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in pairwise(points)]
    framer = Framer()
    assert feed_all(framer, chunks) == [Frame(p) for p in payloads]
    assert framer.stray_bytes == len(stray) * len(payloads)
    assert framer.eof() == []
