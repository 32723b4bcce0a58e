"""Users, passwords, TOTP and API keys on a real identity file, with a clock the test moves."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.security import totp
from engine.security.identities import (
    PUBLIC_REFUSAL,
    SCRYPT_N,
    Identities,
    Identity,
    IdentityError,
    Refusal,
    check_password,
    key_hash,
)
from engine.security.identities_store import IdentityStore
from tests.unit.security.identity_support import DAY, PASSWORD, START, FakeClock


@pytest.fixture
def ids(path: Path, clock: FakeClock) -> Iterator[Identities]:
    with IdentityStore(path) as store:
        yield Identities(store, clock)


def refused(result: Identity | Refusal, reason: str) -> bool:
    return (
        isinstance(result, Refusal) and result.reason == reason and result.public == PUBLIC_REFUSAL
    )


def stored_bytes(path: Path) -> bytes:
    """The identity file and its WAL, as `strings` would see them."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# passwords


def test_passwords_are_scrypt_with_a_salt_per_user(ids: Identities, path: Path):
    ids.add_user("alice", "operator", PASSWORD)
    ids.add_user("bob", "operator", PASSWORD)
    alice, bob = ids.store.user("alice"), ids.store.user("bob")
    assert alice is not None and bob is not None
    scheme, n, r, p, salt, digest = alice.password.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**15, 8, 1) and SCRYPT_N >= 2**15
    raw_salt = base64.b64decode(salt + "==")
    assert len(raw_salt) == 16
    # It is scrypt with exactly those parameters, recomputed independently.
    again = hashlib.scrypt(PASSWORD.encode(), salt=raw_salt, n=2**15, r=8, p=1, dklen=32,
                           maxmem=64 * 2**20)  # fmt: skip
    assert base64.b64encode(again).decode().rstrip("=") == digest
    assert alice.password != bob.password
    assert alice.password.split("$")[4] != bob.password.split("$")[4]
    assert PASSWORD.encode() not in stored_bytes(path)
    assert "scrypt" not in repr(alice) and alice.password not in repr(alice)


def test_right_password_authenticates_and_wrong_ones_are_refused_alike(ids: Identities):
    ids.add_user("alice", "viewer", PASSWORD)
    assert ids.authenticate_password("alice", PASSWORD, None) == Identity(
        "alice", "viewer", "password"
    )
    wrong = ids.authenticate_password("alice", PASSWORD + "!", None)
    nobody = ids.authenticate_password("mallory", PASSWORD, None)
    assert refused(wrong, "bad_password") and refused(nobody, "unknown_user")
    assert wrong.public == nobody.public  # the caller cannot tell which part was wrong
    huge = ids.authenticate_password("alice", PASSWORD + "x" * 5000, None)
    assert refused(huge, "bad_password")
    assert refused(ids.authenticate_password("no such name!", PASSWORD, None), "unknown_user")


def test_a_damaged_stored_hash_refuses_instead_of_crashing():
    assert check_password(PASSWORD, "scrypt$not$a$hash") is False
    assert check_password(PASSWORD, "bcrypt$1$2$3$AAAA$AAAA") is False
    assert check_password(PASSWORD, "scrypt$32768$8$1$!!!$AAAA") is False


def test_bad_user_requests_are_clear_errors(ids: Identities):
    with pytest.raises(IdentityError, match="12 to 1024 characters"):
        ids.add_user("alice", "viewer", "short")
    with pytest.raises(IdentityError, match="role must be one of"):
        ids.add_user("alice", "root", PASSWORD)
    with pytest.raises(IdentityError, match="user name"):
        ids.add_user("alice smith", "viewer", PASSWORD)
    ids.add_user("alice", "viewer", PASSWORD)
    with pytest.raises(IdentityError, match="exists already"):
        ids.add_user("alice", "operator", PASSWORD)
    with pytest.raises(IdentityError, match="no user"):
        ids.disable_user("bob")


def test_a_disabled_user_cannot_log_in(ids: Identities):
    ids.add_user("alice", "operator", PASSWORD)
    ids.disable_user("alice")
    assert refused(ids.authenticate_password("alice", PASSWORD, None), "disabled")
    with pytest.raises(IdentityError, match="disabled already"):
        ids.disable_user("alice")


# TOTP


def test_admin_needs_a_fresh_totp_code(ids: Identities, clock: FakeClock):
    secret = ids.add_user("root1", "admin", PASSWORD)
    assert secret is not None
    assert refused(ids.authenticate_password("root1", PASSWORD, None), "totp_required")
    code = totp.code_at(secret, clock.t)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert refused(ids.authenticate_password("root1", PASSWORD, wrong), "bad_totp")
    # A right code with a wrong password says nothing about the code.
    assert refused(ids.authenticate_password("root1", "x" * 12, code), "bad_password")
    assert ids.authenticate_password("root1", PASSWORD, code) == Identity(
        "root1", "admin", "password"
    )
    assert refused(ids.authenticate_password("root1", PASSWORD, code), "totp_reused")
    clock.t += 10  # still inside the same 30 s window
    assert refused(ids.authenticate_password("root1", PASSWORD, code), "totp_reused")
    clock.t += 30
    fresh = totp.code_at(secret, clock.t)
    assert ids.authenticate_password("root1", PASSWORD, fresh).role == "admin"  # type: ignore[union-attr]
    # The code of a step before the last one used is refused too, though within ±1 step.
    assert refused(ids.authenticate_password("root1", PASSWORD, code), "totp_reused")


def test_an_admin_without_a_totp_secret_is_refused(ids: Identities, path: Path):
    ids.add_user("root1", "admin", PASSWORD)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE users SET totp_secret = NULL WHERE name = 'root1'")
    conn.commit()
    conn.close()
    assert refused(ids.authenticate_password("root1", PASSWORD, None), "mfa_not_enrolled")
    assert refused(ids.authenticate_password("root1", PASSWORD, "123456"), "mfa_not_enrolled")


def test_mfa_is_optional_for_other_roles_and_then_required(ids: Identities, clock: FakeClock):
    assert ids.add_user("plain", "viewer", PASSWORD) is None
    secret = ids.add_user("careful", "operator", PASSWORD, mfa=True)
    assert secret is not None
    assert refused(ids.authenticate_password("careful", PASSWORD, None), "totp_required")
    good = ids.authenticate_password("careful", PASSWORD, totp.code_at(secret, clock.t))
    assert isinstance(good, Identity)


def test_two_logins_racing_with_one_code_cannot_both_win(path: Path, clock: FakeClock):
    with IdentityStore(path) as one, IdentityStore(path) as two:
        secret = Identities(one, clock).add_user("root1", "admin", PASSWORD)
        assert secret is not None
        step = totp.step_at(clock.t)
        assert one.use_totp_step("root1", step) is True
        assert two.use_totp_step("root1", step) is False


# API keys


def test_a_key_is_shown_once_and_stored_hashed(ids: Identities, path: Path):
    ids.add_user("feed", "system", PASSWORD)
    issued = ids.create_key("feed", "system", 90 * DAY)
    prefix, _, rest = issued.secret.partition("_")
    assert prefix == issued.key.prefix and prefix.startswith("ek") and len(rest) == 43
    assert issued.key.hash == hashlib.sha256(issued.secret.encode()).hexdigest()
    assert issued.key.expires == START + 90 * DAY
    ids.store.close()
    raw = stored_bytes(path)
    assert issued.secret.encode() not in raw and rest.encode() not in raw
    assert prefix.encode() in raw and key_hash(issued.secret).encode() in raw
    with IdentityStore(path) as reopened:
        again = Identities(reopened, lambda: START).authenticate_key(issued.secret)
    assert again == Identity("feed", "system", "key", prefix)


def test_a_wrong_or_malformed_key_is_refused(ids: Identities):
    ids.add_user("feed", "system", PASSWORD)
    issued = ids.create_key("feed", "system", DAY)
    last = issued.secret[-1]
    forged = issued.secret[:-1] + ("A" if last != "A" else "B")
    assert refused(ids.authenticate_key(forged), "unknown_key")
    assert refused(ids.authenticate_key("ek000000000000_" + "a" * 43), "unknown_key")
    for junk in ("", "Bearer x", issued.key.prefix, issued.secret + "x", "\x00" * 60):
        assert refused(ids.authenticate_key(junk), "malformed_key")


def test_a_key_expires(ids: Identities, clock: FakeClock):
    ids.add_user("feed", "system", PASSWORD)
    issued = ids.create_key("feed", "system", 30 * DAY)
    clock.t = START + 30 * DAY - 1
    assert isinstance(ids.authenticate_key(issued.secret), Identity)
    clock.t = START + 30 * DAY
    assert refused(ids.authenticate_key(issued.secret), "key_expired")
    with pytest.raises(IdentityError, match="has expired"):
        ids.rotate_key(issued.key.prefix, DAY)


def test_rotation_keeps_the_old_key_for_the_overlap_only(ids: Identities, clock: FakeClock):
    ids.add_user("feed", "system", PASSWORD)
    old = ids.create_key("feed", "system", 90 * DAY)
    clock.t = START + 10 * DAY
    new = ids.rotate_key(old.key.prefix, 7 * DAY)
    assert new.secret != old.secret and new.key.prefix != old.key.prefix
    assert (new.key.owner, new.key.role) == ("feed", "system")
    assert new.key.expires == clock.t + 90 * DAY  # the old key's lifetime, from now
    stored_old = ids.store.key(old.key.prefix)
    assert stored_old is not None and stored_old.replaced_by == new.key.prefix
    clock.t = START + 17 * DAY - 1
    assert isinstance(ids.authenticate_key(old.secret), Identity)
    assert isinstance(ids.authenticate_key(new.secret), Identity)
    clock.t = START + 17 * DAY
    assert refused(ids.authenticate_key(old.secret), "key_expired")
    assert isinstance(ids.authenticate_key(new.secret), Identity)
    with pytest.raises(IdentityError, match="rotated already"):
        ids.rotate_key(old.key.prefix, DAY)


def test_an_overlap_never_extends_the_old_key(ids: Identities, clock: FakeClock):
    ids.add_user("feed", "system", PASSWORD)
    old = ids.create_key("feed", "system", 5 * DAY)
    ids.rotate_key(old.key.prefix, 30 * DAY)
    stored = ids.store.key(old.key.prefix)
    assert stored is not None and stored.expires == START + 5 * DAY


def test_revocation_is_effective_at_once_for_every_connection(path: Path, clock: FakeClock):
    with IdentityStore(path) as engine_side, IdentityStore(path) as cli_side:
        engine_ids, cli_ids = Identities(engine_side, clock), Identities(cli_side, clock)
        cli_ids.add_user("feed", "system", PASSWORD)
        issued = cli_ids.create_key("feed", "system", 90 * DAY)
        assert isinstance(engine_ids.authenticate_key(issued.secret), Identity)
        cli_ids.revoke_key(issued.key.prefix)
        assert refused(engine_ids.authenticate_key(issued.secret), "key_revoked")
        with pytest.raises(IdentityError, match="revoked already"):
            cli_ids.revoke_key(issued.key.prefix)
        with pytest.raises(IdentityError, match="is revoked"):
            cli_ids.rotate_key(issued.key.prefix, DAY)
        with pytest.raises(IdentityError, match="no API key"):
            cli_ids.revoke_key("ek000000000000")


def test_a_disabled_owner_s_keys_stop_working(ids: Identities):
    ids.add_user("feed", "system", PASSWORD)
    issued = ids.create_key("feed", "system", DAY)
    ids.disable_user("feed")
    assert refused(ids.authenticate_key(issued.secret), "owner_disabled")
    with pytest.raises(IdentityError, match="disabled"):
        ids.create_key("feed", "system", DAY)


def test_a_key_never_carries_more_than_its_owner(ids: Identities):
    ids.add_user("root1", "admin", PASSWORD)
    ids.add_user("desk", "operator", PASSWORD)
    with pytest.raises(IdentityError, match="cannot have the admin role"):
        ids.create_key("root1", "admin", DAY)
    with pytest.raises(IdentityError, match="carries their role"):
        ids.create_key("desk", "system", DAY)
    assert ids.create_key("root1", "system", DAY).key.role == "system"
    assert ids.create_key("desk", "operator", DAY).key.role == "operator"
    with pytest.raises(IdentityError, match="no user"):
        ids.create_key("ghost", "viewer", DAY)
    for lifetime in (0, -1, 366 * DAY):
        with pytest.raises(IdentityError, match="lifetime"):
            ids.create_key("desk", "operator", lifetime)


# failures, for lockout


def test_every_refusal_is_counted_against_its_credential(ids: Identities, clock: FakeClock):
    ids.add_user("alice", "viewer", PASSWORD)
    ids.add_user("feed", "system", PASSWORD)
    issued = ids.create_key("feed", "system", DAY)
    ids.authenticate_password("alice", "wrong password", None)
    clock.t += 60
    ids.authenticate_password("alice", "wrong again!!", None)
    ids.authenticate_password("alice", PASSWORD, None)  # a success is not a failure
    ids.revoke_key(issued.key.prefix)
    ids.authenticate_key(issued.secret)
    assert ids.failures("user:alice", 3600) == [
        (START, "bad_password"),
        (START + 60, "bad_password"),
    ]
    assert ids.failures("user:alice", 30) == [(START + 60, "bad_password")]
    assert ids.failures(f"key:{issued.key.prefix}", 3600) == [(START + 60, "key_revoked")]


# the file


def test_the_identity_file_is_private_and_beside_the_store(tmp_path: Path, ids: Identities):
    ids.add_user("alice", "viewer", PASSWORD)
    path = tmp_path / "engine.db.identities.db"
    assert path.exists()
    for part in tmp_path.glob("engine.db.identities.db*"):
        assert stat.S_IMODE(part.stat().st_mode) == 0o600, part.name


def test_a_file_that_is_not_an_identity_store_is_a_clear_error(tmp_path: Path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    from engine.security.identities_store import IdentityStoreError

    with pytest.raises(IdentityStoreError, match="not a usable identity store"):
        IdentityStore(junk)
