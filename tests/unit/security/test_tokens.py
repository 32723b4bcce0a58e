"""API clients, access tokens and sessions (engine.security.tokens), on a fake clock over a
real identity file; assertions signed with real RS384 / ES384 keys."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from engine.security import totp
from engine.security.identities import (
    Identities,
    Identity,
    IdentityError,
    LockoutPolicy,
    Refusal,
)
from engine.security.identities_store import IdentityStore
from engine.security.tokens import Access
from tests.unit.security.identity_support import PASSWORD, FakeClock

TOKEN_URL = "https://engine.test/auth/token"


@pytest.fixture
def access(path: Path, clock: FakeClock) -> Iterator[Access]:
    with IdentityStore(path) as store:
        yield Access(Identities(store, clock))


def reason(found: Identity | Refusal) -> str:
    assert isinstance(found, Refusal), found
    return found.reason


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def assertion(key: Any, alg: str, clock: FakeClock, **claims: Any) -> str:
    body = {"iss": "ehr-feed", "sub": "ehr-feed", "aud": TOKEN_URL, "exp": clock.t + 240,
            "jti": "j-1", **claims}  # fmt: skip
    return jwt.encode(body, key, algorithm=alg)


def test_a_client_secret_is_shown_once_stored_hashed_and_checked(access: Access, path: Path):
    secret = access.add_client("booking-app", "system")
    assert secret is not None and secret.startswith("cs_")
    assert secret.encode() not in path.read_bytes()
    found = access.authenticate_secret("booking-app", secret)
    assert isinstance(found, Identity)
    assert (found.subject, found.role) == ("client:booking-app", "system")
    assert reason(access.authenticate_secret("booking-app", secret + "x")) == "bad_secret"
    assert reason(access.authenticate_secret("nobody", secret)) == "unknown_client"
    with pytest.raises(IdentityError, match="admin requires a person"):
        access.add_client("root-app", "admin")
    with pytest.raises(IdentityError, match="exists already"):
        access.add_client("booking-app", "viewer")


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_a_smart_assertion_gets_a_token_once_per_jti(access: Access, clock: FakeClock, alg: str):
    key = rsa.generate_private_key(65537, 2048) if alg == "RS384" else ec.generate_private_key(
        ec.SECP384R1())
    assert access.add_client("ehr-feed", "system", public_key=pem(key)) is None
    signed = assertion(key, alg, clock)
    found = access.authenticate_assertion(signed, TOKEN_URL)
    assert isinstance(found, Identity) and found.role == "system"
    assert reason(access.authenticate_assertion(signed, TOKEN_URL)) == "jti_replayed"
    fresh = assertion(key, alg, clock, jti="j-2")
    assert isinstance(access.authenticate_assertion(fresh, TOKEN_URL), Identity)


def test_bad_assertions_are_refused(path: Path, clock: FakeClock):
    store = IdentityStore(path)
    # More refusals than the default lockout allows: each is checked for its own reason.
    access = Access(Identities(store, clock, lockout=LockoutPolicy(failures=100)))
    key = ec.generate_private_key(ec.SECP384R1())
    other = ec.generate_private_key(ec.SECP384R1())
    access.add_client("ehr-feed", "system", public_key=pem(key))
    cases = {
        "another key": assertion(other, "ES384", clock, jti="a"),
        "another audience": assertion(key, "ES384", clock, jti="b", aud="https://x/token"),
        "expired": assertion(key, "ES384", clock, jti="c", exp=clock.t - 1),
        "more than 5 minutes ahead": assertion(key, "ES384", clock, jti="d", exp=clock.t + 301),
        "sub is not iss": assertion(key, "ES384", clock, jti="e", sub="other"),
        "no jti": jwt.encode({"iss": "ehr-feed", "sub": "ehr-feed", "aud": TOKEN_URL,
                              "exp": clock.t + 60}, key, algorithm="ES384"),
        "HS256 with the public key": jwt.encode(
            {"iss": "ehr-feed", "sub": "ehr-feed", "aud": TOKEN_URL, "exp": clock.t + 60,
             "jti": "f"}, b"k" * 32, algorithm="HS256"),
    }  # fmt: skip
    for what, signed in cases.items():
        assert reason(access.authenticate_assertion(signed, TOKEN_URL)) == "bad_assertion", what
    assert reason(access.authenticate_assertion("not a jwt", TOKEN_URL)) == "bad_assertion"
    store.close()


def test_weak_or_wrong_public_keys_are_refused_at_registration(access: Access):
    with pytest.raises(IdentityError, match="RSA"):
        access.add_client("weak", "system", public_key=pem(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(IdentityError, match="RSA"):
        access.add_client("p256", "system", public_key=pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(IdentityError, match="PEM"):
        access.add_client("junk", "system", public_key="-----BEGIN nothing")


def test_an_access_token_lives_five_minutes(access: Access, clock: FakeClock):
    secret = access.add_client("booking-app", "system")
    assert secret is not None
    client = access.authenticate_secret("booking-app", secret)
    assert isinstance(client, Identity)
    issued = access.issue_access(client)
    assert issued.text.startswith("et_") and issued.expires_in == 300
    clock.t += 299
    assert isinstance(access.check(issued.text), Identity)
    clock.t += 1
    assert reason(access.check(issued.text)) == "token_expired"
    with pytest.raises(IdentityError, match="900"):
        access.issue_access(client, 901)


def test_disabling_a_client_stops_its_token_at_once(access: Access):
    secret = access.add_client("booking-app", "system")
    assert secret is not None
    client = access.authenticate_secret("booking-app", secret)
    assert isinstance(client, Identity)
    issued = access.issue_access(client)
    access.disable_client("booking-app")
    assert reason(access.check(issued.text)) == "token_ended"
    assert reason(access.authenticate_secret("booking-app", secret)) == "client_disabled"


def test_sessions_end_after_15_minutes_idle_for_admins_30_for_others(
    access: Access, clock: FakeClock
):
    ids = access.identities
    secret = ids.add_user("root1", "admin", PASSWORD)
    ids.add_user("front1", "operator", PASSWORD)
    assert secret is not None
    admin = access.login("root1", PASSWORD, totp.code_at(secret, clock.t))
    assert not isinstance(admin, Refusal) and admin.token.idle == 900
    # Used every 10 minutes, a session lives on; 15 minutes idle (an admin's) it ends.
    for _ in range(3):
        clock.t += 600
        assert isinstance(access.check(admin.text), Identity)
    clock.t += 900
    assert reason(access.check(admin.text)) == "session_idle"
    other = access.login("front1", PASSWORD, None)
    assert not isinstance(other, Refusal) and other.token.idle == 1800
    clock.t += 1799
    assert isinstance(access.check(other.text), Identity)
    clock.t += 1800
    assert reason(access.check(other.text)) == "session_idle"


def test_logout_and_disabling_the_user_end_a_session(access: Access):
    ids = access.identities
    ids.add_user("front1", "operator", PASSWORD)
    ids.add_user("front2", "operator", PASSWORD)
    one, two = access.login("front1", PASSWORD, None), access.login("front2", PASSWORD, None)
    assert not isinstance(one, Refusal) and not isinstance(two, Refusal)
    assert access.end(one.text) is True
    assert reason(access.check(one.text)) == "token_ended"
    ids.disable_user("front2")
    assert reason(access.check(two.text)) == "token_ended"
    assert reason(access.check("et_made-up")) == "unknown_token"


def test_client_failures_lock_the_client_with_an_alert(
    access: Access, caplog: pytest.LogCaptureFixture
):
    secret = access.add_client("booking-app", "system")
    assert secret is not None
    with caplog.at_level(logging.WARNING, logger="engine.alerts"):
        for _ in range(5):
            access.authenticate_secret("booking-app", "cs_wrong")
    assert reason(access.authenticate_secret("booking-app", secret)) == "locked"
    assert [r.getMessage() for r in caplog.records] == [
        "ALERT credential locked: client:booking-app after 5 failed attempts in 15 min"
    ]

