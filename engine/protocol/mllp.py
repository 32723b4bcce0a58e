"""MLLP framing, sans-IO: bytes in, frame events out (`0x0B` payload `0x1C 0x0D`).

Rules kept: a frame may be split at any byte (also between 0x1C and 0x0D) and several may
arrive in one read; a 0x1C not followed by 0x0D is payload data; bytes outside frames are
skipped and counted in `stray_bytes`; a START inside a frame restarts it (the broken one is
reported as `Truncated`). An over-limit frame is never buffered whole: its first 64 KiB are
kept (enough to read MSH and answer AR), the rest is counted and dropped until its END,
when `Oversized` is emitted. Searching uses bytes.find, never a per-byte Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
_FS = 0x1C
_CR = 0x0D
HEAD_SIZE = 64 * 1024


def frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + END_BLOCK


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Oversized:
    """An over-limit frame, emitted when its END arrives."""

    head: bytes  # the first up to 64 KiB of the payload
    size: int  # total payload size


@dataclass(frozen=True, slots=True)
class Truncated:
    """A frame that never ended: EOF inside it, or a new START inside it."""

    size: int  # payload bytes received before it broke off


Event = Frame | Oversized | Truncated


class Framer:
    __slots__ = ("_buf", "_in_frame", "_max", "_oversized", "_pending_fs", "_size",
                 "stray_bytes")

    def __init__(self, max_size: int = 10 * 1024 * 1024) -> None:
        self._max = max_size
        self._in_frame = False
        self._buf = bytearray()  # payload so far; the head only, once oversized
        self._size = 0  # payload bytes so far (all of them, also the dropped ones)
        self._oversized = False
        self._pending_fs = False  # the last byte fed was a 0x1C inside a frame
        self.stray_bytes = 0

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    def _start(self) -> None:
        self._in_frame = True
        self._buf = bytearray()
        self._size = 0
        self._oversized = False
        self._pending_fs = False

    def _add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if not self._oversized:
            self._buf += chunk
            if self._size > self._max:
                self._oversized = True
                del self._buf[HEAD_SIZE:]
        elif len(self._buf) < HEAD_SIZE:
            self._buf += chunk[: HEAD_SIZE - len(self._buf)]

    def _end(self) -> Event:
        self._in_frame = False
        buf, self._buf = self._buf, bytearray()
        if self._oversized:
            return Oversized(bytes(buf), self._size)
        return Frame(bytes(buf))

    def _truncated(self) -> Truncated:
        size = self._size + (1 if self._pending_fs else 0)
        self._in_frame = False
        self._buf = bytearray()
        self._pending_fs = False
        return Truncated(size)

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos, n = 0, len(data)
        while pos < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self.stray_bytes += n - pos
                    break
                self.stray_bytes += start - pos
                self._start()
                pos = start + 1
                continue
            if self._pending_fs:
                self._pending_fs = False
                if data[pos] == _CR:
                    events.append(self._end())
                    pos += 1
                    continue
                self._add(b"\x1c")  # it was payload after all
            end = data.find(END_BLOCK, pos)
            restart = data.find(START_BLOCK, pos, n if end < 0 else end)
            if restart >= 0:
                self._add(data[pos:restart])
                events.append(self._truncated())
                self._start()
                pos = restart + 1
            elif end >= 0:
                if not self._size and not self._oversized and end - pos <= self._max:
                    events.append(Frame(data[pos:end]))  # whole frame in this read: no copy
                    self._in_frame = False
                else:
                    self._add(data[pos:end])
                    events.append(self._end())
                pos = end + 2
            else:
                last = n - 1 if data[n - 1] == _FS else n
                self._add(data[pos:last])
                self._pending_fs = last < n
                pos = n
        return events

    def eof(self) -> list[Event]:
        """[Truncated] if the stream ended inside a frame, else []."""
        return [self._truncated()] if self._in_frame else []
