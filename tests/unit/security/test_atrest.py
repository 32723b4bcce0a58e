"""engine.security.atrest: sealing round trip, the row binding, tampering, unknown keys, the
blind index, and key files (format, errors with file:line:column, permissions)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from engine.security.atrest import (
    CLEAR,
    AtRestError,
    KeyFileError,
    KeyRing,
    RowSealer,
    decode_key,
    index_key_id,
    load_key_file,
    new_key_line,
    sealed_key_id,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
BODY = b"MSH|^~\\&|EPIC|...\rPID|1||MRN100001^^^MAIN_HOSP^MR||Sample^Pat\r"


def ring(current: str = "ka", **keys: bytes) -> KeyRing:
    return KeyRing(keys or {"ka": KEY_A, "kb": KEY_B}, current)


def test_a_sealed_value_opens_at_its_row_and_hides_the_plaintext() -> None:
    sealer = RowSealer(ring())
    sealed = sealer.seal("messages", "raw", 7, BODY)
    assert b"MRN100001" not in sealed and b"Sample" not in sealed
    assert sealed_key_id(sealed) == "ka"
    assert sealer.open("messages", "raw", 7, sealed) == BODY
    # A random nonce per value: sealing twice never gives the same bytes.
    assert sealer.seal("messages", "raw", 7, BODY) != sealed


@pytest.mark.parametrize(
    "place", [("messages", "raw", 8), ("messages", "ack", 7), ("attempts", "raw", 7)]
)
def test_a_value_moved_to_another_row_column_or_table_does_not_open(
    place: tuple[str, str, int],
) -> None:
    sealer = RowSealer(ring())
    sealed = sealer.seal("messages", "raw", 7, BODY)
    with pytest.raises(AtRestError, match="altered or moved"):
        sealer.open(*place, sealed)


def test_a_tampered_value_or_relabelled_key_id_does_not_open() -> None:
    sealer = RowSealer(ring())
    sealed = bytearray(sealer.seal("messages", "raw", 7, BODY))
    flipped = bytes(sealed[:-5]) + bytes([sealed[-5] ^ 1]) + bytes(sealed[-4:])
    with pytest.raises(AtRestError, match="altered"):
        sealer.open("messages", "raw", 7, flipped)
    relabelled = bytes(sealed).replace(b"ka", b"kb", 1)  # same length id, other key
    with pytest.raises(AtRestError):
        sealer.open("messages", "raw", 7, relabelled)


def test_every_key_of_the_ring_opens_and_new_values_use_the_current_one() -> None:
    old = RowSealer(ring("ka")).seal("t", "c", 1, b"x")
    rotated = RowSealer(ring("kb"))
    assert rotated.open("t", "c", 1, old) == b"x"
    assert sealed_key_id(rotated.seal("t", "c", 1, b"x")) == "kb"


def test_a_value_under_a_key_not_configured_fails_naming_the_key() -> None:
    sealed = RowSealer(ring("kb")).seal("t", "c", 1, b"x")
    with pytest.raises(AtRestError, match="key kb, which is not configured"):
        RowSealer(KeyRing({"ka": KEY_A}, "ka")).open("t", "c", 1, sealed)
    with pytest.raises(AtRestError, match="key kb, which is not configured"):
        CLEAR.open("t", "c", 1, sealed)


def test_without_keys_values_stay_clear_and_clear_values_read_through_a_ring() -> None:
    assert CLEAR.seal("t", "c", 1, BODY) == BODY
    assert CLEAR.seal_text("t", "c", 1, "MRN1") == "MRN1"
    sealer = RowSealer(ring())
    assert sealer.open("t", "c", 1, BODY) == BODY
    assert sealer.open_text("t", "c", 1, "MRN1") == "MRN1"
    sealed = sealer.seal_text("t", "c", 1, "MRN1")
    assert isinstance(sealed, bytes) and sealer.open_text("t", "c", 1, sealed) == "MRN1"


def test_the_blind_index_is_keyed_tagged_and_searchable_under_every_key() -> None:
    both = ring("ka")
    entry = both.index("patient", "MRN100001")
    assert b"MRN100001" not in entry and index_key_id(entry) == "ka"
    assert entry == both.index("patient", "MRN100001")  # deterministic: searchable
    assert entry != both.index("patient", "MRN100002")
    assert entry != both.index("appointment", "MRN100001")
    assert entry != both.index("patient", "MRN100001", "kb")
    assert set(RowSealer(both).search_values("patient", "MRN100001")) == {
        "MRN100001", entry, both.index("patient", "MRN100001", "kb")}
    # The index key is derived, never the data key: an HMAC under the raw key differs.
    import hashlib
    import hmac

    raw = hmac.new(KEY_A, b"patient\x00MRN100001", hashlib.sha256).digest()[:16]
    assert not entry.endswith(raw)


def test_the_ring_never_shows_a_key() -> None:
    text = repr(ring()) + str(ring())
    assert "ka" in text
    for key in (KEY_A, KEY_B):
        assert base64.b64encode(key).decode() not in text and repr(key) not in text


def test_a_ring_refuses_a_current_id_it_lacks_and_short_keys() -> None:
    with pytest.raises(ValueError, match="current key kc"):
        KeyRing({"ka": KEY_A}, "kc")
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing({"ka": KEY_A[:16]}, "ka")


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "atrest.keys"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_new_key_lines_load_from_an_owner_only_key_file(tmp_path: Path) -> None:
    lines = [new_key_line("k2026a"), new_key_line("k2026b")]
    assert lines[0] != new_key_line("k2026a")
    path = key_file(tmp_path, "# at-rest keys\n\n" + "\n".join(lines) + "\n")
    keys = load_key_file(path)
    assert sorted(keys) == ["k2026a", "k2026b"] and all(len(k) == 32 for k in keys.values())
    assert keys["k2026a"] == decode_key(lines[0].split()[1])


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, new_key_line("ka") + "\n", mode)
    with pytest.raises(KeyFileError, match="chmod 600") as err:
        load_key_file(path)
    assert err.value.where == f"{path}:1:1"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("ka\n", "2:3", "expected '<key id> <base64 key>'"),
        ("-bad AAAA\n", "2:3", "key id of 1-32"),
        ("ka not*base64\n", "2:6", "not valid base64"),
        (f"ka {base64.b64encode(b'short').decode()}\n", "2:6", "32-byte key, got 5 bytes"),
        ("ka {k}\nka {k}\n", "3:3", "key id ka appears twice"),
    ],
)
def test_key_file_problems_name_the_place_and_never_the_key(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    good = base64.b64encode(KEY_A).decode()
    path = key_file(tmp_path, "# keys\n  " + text.replace("{k}", good).replace("\nka", "\n  ka"))
    with pytest.raises(KeyFileError) as err:
        load_key_file(path)
    assert err.value.where == f"{path}:{where}"
    assert message in err.value.message
    assert good not in str(err.value) and "not*base64" not in str(err.value)


def test_new_key_line_refuses_a_bad_id() -> None:
    with pytest.raises(ValueError, match="key id"):
        new_key_line("has space")
