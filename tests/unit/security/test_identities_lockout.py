"""Credential lockout (issue 4 item 6) on a real identity file, with a clock the test moves."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.security import totp
from engine.security.identities import (
    PUBLIC_REFUSAL,
    Identities,
    Identity,
    IdentityError,
    IssuedKey,
    LockoutPolicy,
    Refusal,
)
from engine.security.identities_store import IdentityStore
from tests.unit.security.identity_support import DAY, PASSWORD, START, FakeClock

MINUTE = 60.0
WRONG = "not the password at all"


@pytest.fixture
def ids(path: Path, clock: FakeClock) -> Iterator[Identities]:
    with IdentityStore(path) as store:
        identities = Identities(store, clock)
        identities.add_user("alice", "viewer", PASSWORD)
        yield identities


def refused(result: Identity | Refusal, reason: str) -> bool:
    return (
        isinstance(result, Refusal) and result.reason == reason and result.public == PUBLIC_REFUSAL
    )


def alert_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "engine.alerts"]


def fail(ids: Identities, clock: FakeClock, times: int, step: float = MINUTE) -> None:
    """`times` wrong passwords for alice, `step` seconds apart (the clock ends on the last)."""
    for i in range(times):
        if i:
            clock.t += step
        assert refused(ids.authenticate_password("alice", WRONG, None), "bad_password")


def forged(issued: IssuedKey) -> str:
    """The key's prefix with the wrong random part: a failure counted against that key."""
    last = issued.secret[-1]
    return issued.secret[:-1] + ("A" if last != "A" else "B")


def test_five_failures_lock_even_the_right_password(
    ids: Identities, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    fail(ids, clock, 4)
    assert ids.locked("user:alice") is None
    assert isinstance(ids.authenticate_password("alice", PASSWORD, None), Identity)
    assert alert_lines(caplog) == []

    clock.t += MINUTE
    fail(ids, clock, 1)  # the fifth within 15 minutes
    lock = ids.locked("user:alice")
    assert lock is not None and lock.until == clock.t + 15 * MINUTE and lock.failures == 5
    right = ids.authenticate_password("alice", PASSWORD, None)
    assert refused(right, "locked") and right.credential == "user:alice"
    assert refused(ids.authenticate_password("alice", WRONG, None), "locked")
    assert alert_lines(caplog) == [
        "ALERT credential locked: user:alice after 5 failed attempts in 15 min"
    ]
    assert PASSWORD not in caplog.text and WRONG not in caplog.text
    # Attempts while locked are recorded for the audit under their own reason.
    assert [r for _, r in ids.failures("user:alice", DAY)][-2:] == ["locked", "locked"]


def test_a_locked_admin_is_refused_with_the_right_code_and_the_code_is_not_spent(
    ids: Identities, clock: FakeClock
):
    secret = ids.add_user("root1", "admin", PASSWORD)
    assert secret is not None
    for _ in range(5):
        ids.authenticate_password("root1", WRONG, None)
    code = totp.code_at(secret, clock.t)
    assert refused(ids.authenticate_password("root1", PASSWORD, code), "locked")
    assert ids.unlock_user("root1") is True
    assert isinstance(ids.authenticate_password("root1", PASSWORD, code), Identity)


def test_a_key_is_locked_by_failures_against_its_prefix(
    ids: Identities, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    ids.add_user("feed", "system", PASSWORD)
    issued = ids.create_key("feed", "system", DAY)
    other = ids.create_key("feed", "system", DAY)
    for _ in range(5):
        assert refused(ids.authenticate_key(forged(issued)), "unknown_key")
    assert refused(ids.authenticate_key(issued.secret), "locked")
    assert isinstance(ids.authenticate_key(other.secret), Identity)  # only that key
    prefix = issued.key.prefix
    assert alert_lines(caplog) == [
        f"ALERT credential locked: key:{prefix} after 5 failed attempts in 15 min"
    ]
    assert issued.secret not in caplog.text and issued.secret.split("_", 1)[1] not in caplog.text
    assert ids.unlock_key(prefix) is True
    assert isinstance(ids.authenticate_key(issued.secret), Identity)


def test_the_lock_expires_lock_for_after_the_last_failure(ids: Identities, clock: FakeClock):
    fail(ids, clock, 5)
    last = clock.t
    clock.t = last + 15 * MINUTE - 1
    assert refused(ids.authenticate_password("alice", PASSWORD, None), "locked")
    clock.t = last + 15 * MINUTE
    assert ids.locked("user:alice") is None
    assert isinstance(ids.authenticate_password("alice", PASSWORD, None), Identity)


def test_a_lock_takes_its_failures_so_the_next_needs_as_many_new_ones(
    path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    policy = LockoutPolicy(failures=3, window=60 * MINUTE, lock_for=5 * MINUTE)
    with IdentityStore(path) as store:
        ids = Identities(store, clock, policy)
        ids.add_user("alice", "viewer", PASSWORD)
        fail(ids, clock, 3)
        clock.t += 5 * MINUTE  # expired, though the three are still within the hour
        fail(ids, clock, 2)
        assert isinstance(ids.authenticate_password("alice", PASSWORD, None), Identity)
        clock.t += MINUTE
        fail(ids, clock, 1)
        assert refused(ids.authenticate_password("alice", PASSWORD, None), "locked")
    assert alert_lines(caplog) == [
        "ALERT credential locked: user:alice after 3 failed attempts in 1 h",
        "ALERT credential locked: user:alice after 3 failed attempts in 1 h",
    ]


def test_failures_outside_the_window_do_not_count(ids: Identities, clock: FakeClock):
    fail(ids, clock, 4)  # minutes 0 to 3
    clock.t = START + 18 * MINUTE + 1  # the first four are all older than 15 minutes
    fail(ids, clock, 1)
    assert isinstance(ids.authenticate_password("alice", PASSWORD, None), Identity)
    clock.t += MINUTE
    fail(ids, clock, 3)
    assert isinstance(ids.authenticate_password("alice", PASSWORD, None), Identity)
    clock.t += MINUTE
    fail(ids, clock, 1)  # the fifth within the last 15 minutes
    assert refused(ids.authenticate_password("alice", PASSWORD, None), "locked")


def test_unlock_lifts_the_lock_at_once_and_clears_the_window(ids: Identities, clock: FakeClock):
    fail(ids, clock, 5)
    assert ids.unlock_user("alice") is True
    assert ids.locked("user:alice") is None and ids.locks() == []
    assert isinstance(ids.authenticate_password("alice", PASSWORD, None), Identity)

    clock.t += MINUTE
    fail(ids, clock, 4)
    assert ids.unlock_user("alice") is False  # not locked, but the four no longer count
    clock.t += MINUTE
    fail(ids, clock, 4)
    assert isinstance(ids.authenticate_password("alice", PASSWORD, None), Identity)
    clock.t += MINUTE
    fail(ids, clock, 1)
    assert refused(ids.authenticate_password("alice", PASSWORD, None), "locked")

    with pytest.raises(IdentityError, match="no user 'bob'"):
        ids.unlock_user("bob")
    with pytest.raises(IdentityError, match="no API key"):
        ids.unlock_key("ek000000000000")


def test_a_lock_survives_reopening_and_is_seen_by_another_connection(path: Path, clock: FakeClock):
    with IdentityStore(path) as store:
        ids = Identities(store, clock)
        ids.add_user("alice", "viewer", PASSWORD)
        with IdentityStore(path) as beside:  # e.g. the CLI next to the running engine
            fail(ids, clock, 5)
            assert Identities(beside, clock).locked("user:alice") is not None
    with IdentityStore(path) as reopened:
        again = Identities(reopened, clock)
        assert refused(again.authenticate_password("alice", PASSWORD, None), "locked")
        assert [lock.credential for lock in again.locks()] == ["user:alice"]
        assert again.unlock_user("alice") is True
    with IdentityStore(path) as reopened:
        assert isinstance(
            Identities(reopened, clock).authenticate_password("alice", PASSWORD, None), Identity
        )


def test_pooled_junk_never_locks_and_never_alerts(
    ids: Identities, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    for _ in range(10):
        assert refused(ids.authenticate_key("Bearer nonsense"), "malformed_key")
        assert refused(ids.authenticate_password("no such name!", PASSWORD, None), "unknown_user")
    assert ids.locks() == [] and alert_lines(caplog) == []
    assert len(ids.failures("key:(malformed)", DAY)) == 10


def test_an_unknown_user_name_locks_like_a_real_one(ids: Identities):
    # Otherwise the lockout would tell a guesser which names exist.
    for _ in range(5):
        assert refused(ids.authenticate_password("mallory", PASSWORD, None), "unknown_user")
    assert refused(ids.authenticate_password("mallory", PASSWORD, None), "locked")


def test_a_lockout_policy_is_checked():
    assert LockoutPolicy() == LockoutPolicy(failures=5, window=900.0, lock_for=900.0)
    for bad in ({"failures": 0}, {"failures": 2.5}, {"failures": True}, {"window": 0},
                {"window": -1}, {"lock_for": 0}, {"lock_for": "15m"}):  # fmt: skip
        with pytest.raises(IdentityError, match="lockout"):
            LockoutPolicy(**bad)  # type: ignore[arg-type]


def test_racing_refusals_lock_once(path: Path, clock: FakeClock):
    """Two connections (engine and CLI) each record a refusal past the threshold: the store
    locks in the transaction that records, so only the first one takes the lock."""
    with IdentityStore(path) as one, IdentityStore(path) as two:
        since, until = clock.t - 15 * MINUTE, clock.t + 15 * MINUTE
        for _ in range(4):
            assert one.record_failure_and_lock(
                "user:alice", clock.t, "bad_password", since=since, threshold=5, until=until
            ) is None  # fmt: skip
        first = one.record_failure_and_lock(
            "user:alice", clock.t, "bad_password", since=since, threshold=5, until=until
        )
        second = two.record_failure_and_lock(
            "user:alice", clock.t, "bad_password", since=since, threshold=5, until=until
        )
        assert first is not None and first.failures == 5 and second is None


def test_a_version_1_identity_file_is_upgraded(path: Path, clock: FakeClock):
    with IdentityStore(path) as store:
        Identities(store, clock).add_user("alice", "viewer", PASSWORD)
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE lockouts; PRAGMA user_version = 1;")
    conn.close()
    with IdentityStore(path) as store:
        ids = Identities(store, clock)
        fail(ids, clock, 5)
        assert refused(ids.authenticate_password("alice", PASSWORD, None), "locked")


def test_the_password_step_of_a_two_step_login_is_not_counted(ids: Identities, clock: FakeClock):
    secret = ids.add_user("root1", "admin", PASSWORD)
    assert secret is not None
    for _ in range(6):  # the right password, its code still to come
        assert refused(ids.authenticate_password("root1", PASSWORD, None), "totp_required")
    assert ids.locked("user:root1") is None
    valid = {totp.code_at(secret, clock.t + d) for d in (-30, 0, 30)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
    for _ in range(5):
        assert refused(ids.authenticate_password("root1", PASSWORD, wrong), "bad_totp")
    assert refused(ids.authenticate_password("root1", PASSWORD, None), "locked")
