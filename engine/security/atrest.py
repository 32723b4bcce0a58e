"""Encryption at rest of stored values: the key ring, the sealed-value format, the blind index.

Sealed value: `00 01 <len> <key id> <12-byte nonce> <AES-256-GCM ciphertext + 16-byte tag>`.
The leading NUL marks it (no HL7 message, FHIR JSON, ACK or HTTP body starts with one; a value
without the mark is a clear value written without keys), `01` is the format version, and the
key id says which key of the ring opens it. The associated data is the value's place,
`<table>.<column>.<row id>`, so a value copied to another row or column does not open.

Blind index: a searchable patient id is stored as `00 <key id> 00 <HMAC-SHA256 first 16
bytes>` (a BLOB: a clear id is TEXT, so the two never collide). The HMAC key of key id K is
HKDF-SHA256(key K, info "engine at-rest blind index v1"): never the data key itself, tied to
a key id so that retiring a key retires its index key too. New entries use the current key;
a search hashes the id with every key of the ring, so entries made before a rotation still
match until `engine keys rotate` re-indexes them.

Rules kept: keys never leave this module's objects in clear (no repr, no error text shows
one); a value sealed with a key the ring lacks fails with the key id named, never garbage.
Where keys come from: `load_key_file` (lines `<id> <base64 of 32 bytes>`, owner-only) and
the `security.encryption` block of routes.yaml (engine.config).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
KEY_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
_KEY_ID = re.compile(KEY_ID_PATTERN)
_MARK: Final = 0x00
_VERSION: Final = 0x01
_INDEX_INFO: Final = b"engine at-rest blind index v1"
_INDEX_BYTES: Final = 16


class AtRestError(Exception):
    """A sealed value cannot be opened (key not configured, tampered, wrong place)."""


class KeyFileError(Exception):
    """A key file cannot be used. `where` is file:line:column; the text never shows a key."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def valid_key_id(text: str) -> bool:
    return _KEY_ID.match(text) is not None


def decode_key(text: str) -> bytes:
    """The 32 bytes of a base64 key; ValueError says what is wrong, never the text."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected the base64 of a 32-byte key (not valid base64)") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"expected the base64 of a 32-byte key, got {len(key)} bytes")
    return key


def new_key_line(key_id: str) -> str:
    """A fresh key as a key file line: `<id> <base64>`."""
    if not valid_key_id(key_id):
        raise ValueError(f"a key id is 1-32 letters, digits, '_', '.' or '-', got {key_id!r}")
    return f"{key_id} {base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def load_key_file(path: Path) -> dict[str, bytes]:
    """`<id> <base64>` per line; blank lines and `#` comments allowed. The file must not be
    readable or writable by group or others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise KeyFileError(f"{path}:1:1", f"cannot read the key file: {why}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}:1:1",
            f"the key file is open to group or others (mode {stat.S_IMODE(mode):o});"
            f" make it owner-only: chmod 600 {path}",
        )
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        column = line.index(body[0]) + 1
        parts = body.split()
        if len(parts) != 2:
            raise KeyFileError(f"{path}:{number}:{column}", "expected '<key id> <base64 key>'")
        key_id, encoded = parts
        if not valid_key_id(key_id):
            raise KeyFileError(
                f"{path}:{number}:{column}",
                "expected a key id of 1-32 letters, digits, '_', '.' or '-'",
            )
        if key_id in keys:
            raise KeyFileError(f"{path}:{number}:{column}", f"key id {key_id} appears twice")
        try:
            keys[key_id] = decode_key(encoded)
        except ValueError as exc:
            raise KeyFileError(
                f"{path}:{number}:{line.index(encoded) + 1}", f"key {key_id}: {exc}"
            ) from None
    return keys


def sealed_key_id(value: bytes) -> str | None:
    """The key id of a sealed value; None for a clear one."""
    if len(value) < 3 or value[0] != _MARK or value[1] != _VERSION:
        return None
    return value[3 : 3 + value[2]].decode("ascii", "replace")


def index_key_id(value: object) -> str | None:
    """The key id of a blind index entry; None for a clear (TEXT) one."""
    if not isinstance(value, bytes) or len(value) < 3 or value[0] != _MARK:
        return None
    end = value.find(b"\x00", 1)
    return value[1:end].decode("ascii", "replace") if end > 0 else None


class KeyRing:
    """Keys by id, one `current` for new values, all usable for reads. `repr` shows ids only."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"current key {current} is not among the keys")
        for key_id, key in keys.items():
            if not valid_key_id(key_id) or len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id}: expected a valid id and {KEY_BYTES} bytes")
        self.current = current
        self._aead = {k: AESGCM(v) for k, v in keys.items()}
        self._headers = {
            k: bytes((_MARK, _VERSION, len(k))) + k.encode("ascii") for k in keys
        }
        # Keyed once; each entry copies the keyed state (cheaper than keying per value).
        self._index_macs = {
            k: hmac.new(HKDF(hashes.SHA256(), KEY_BYTES, None, _INDEX_INFO).derive(v),
                        digestmod=hashlib.sha256)
            for k, v in keys.items()
        }
        self._current_aead = self._aead[current]
        self._current_header = self._headers[current]

    def __repr__(self) -> str:
        return f"KeyRing(ids={sorted(self._aead)}, current={self.current})"

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._aead))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        header = self._current_header
        return header + nonce + self._current_aead.encrypt(nonce, plaintext, header + aad)

    def open(self, value: bytes, aad: bytes) -> bytes:
        key_id = sealed_key_id(value)
        if key_id is None:
            raise AtRestError("the value is not sealed")
        aead = self._aead.get(key_id)
        if aead is None:
            raise AtRestError(not_configured(key_id))
        start = 3 + len(key_id)
        nonce = value[start : start + NONCE_BYTES]
        try:
            # The header is authenticated too: a value cannot be relabelled with another id.
            return aead.decrypt(nonce, value[start + NONCE_BYTES :], value[:start] + aad)
        except InvalidTag:
            raise AtRestError(
                f"a value sealed with key {key_id} does not open at {aad.decode()}: it was"
                " altered or moved from another row"
            ) from None

    def index(self, kind: str, value: str, key_id: str | None = None) -> bytes:
        """The blind index entry of `value` under `key_id` (default: the current key)."""
        key_id = key_id or self.current
        mac = self._index_macs[key_id].copy()
        mac.update(kind.encode() + b"\x00" + value.encode())
        return b"\x00" + key_id.encode("ascii") + b"\x00" + mac.digest()[:_INDEX_BYTES]

    def index_all(self, kind: str, value: str) -> Iterator[bytes]:
        """The entries `value` may be stored under, one per key of the ring."""
        for key_id in self._aead:
            yield self.index(kind, value, key_id)


def not_configured(key_id: str) -> str:
    return (
        f"the store holds values encrypted with key {key_id}, which is not configured"
        " (security.encryption in routes.yaml)"
    )


@dataclass(frozen=True)
class RowSealer:
    """What a store calls: seal and open a column value at its place, index patient ids.
    Without a ring values stay clear, and a sealed one fails with its key id named."""

    ring: KeyRing | None = None

    def seal(self, table: str, column: str, row: object, value: bytes) -> bytes:
        if self.ring is None:
            return value
        return self.ring.seal(value, f"{table}.{column}.{row}".encode())

    def open(self, table: str, column: str, row: object, value: bytes) -> bytes:
        if not value or value[0] != _MARK:
            return value  # clear: written without keys (a sealed value starts with NUL)
        key_id = sealed_key_id(value)
        if key_id is None:
            return value
        if self.ring is None:
            raise AtRestError(not_configured(key_id))
        return self.ring.open(value, f"{table}.{column}.{row}".encode())

    def seal_text(self, table: str, column: str, row: object, text: str) -> str | bytes:
        """A TEXT column's value: sealed, it is stored as a BLOB (a clear one stays TEXT)."""
        if self.ring is None or not text:
            return text
        return self.ring.seal(text.encode(), f"{table}.{column}.{row}".encode())

    def open_text(self, table: str, column: str, row: object, value: str | bytes) -> str:
        if isinstance(value, str):
            return value
        return self.open(table, column, row, value).decode()

    def index(self, kind: str, value: str) -> str | bytes:
        return value if self.ring is None else self.ring.index(kind, value)

    def search_values(self, kind: str, value: str) -> list[str | bytes]:
        """What a stored entry for `value` may be: clear (written without keys) or indexed
        under any key of the ring."""
        found: list[str | bytes] = [value]
        if self.ring is not None:
            found.extend(self.ring.index_all(kind, value))
        return found


CLEAR: Final = RowSealer()
