"""engine.security.tls: the contexts' settings, the allow-list, refusal words; and the dev
certificates of `engine certs dev` (files, modes, names, the printed fingerprint)."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from engine.cli import main
from engine.config.model import ClientTls, ListenerTls
from engine.security.devcerts import DevCerts, make_dev_certs
from engine.security.tls import (
    AllowList,
    TlsConfigError,
    client_context,
    fingerprint,
    is_loopback,
    server_context,
)


@pytest.fixture
def certs(tmp_path: Path) -> DevCerts:
    return make_dev_certs(tmp_path / "certs", ["ehr.example.test", "10.20.30.40"])


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER)


def test_server_context_is_tls12_minimum_with_modern_ciphers(certs: DevCerts) -> None:
    context = server_context(ListenerTls(str(certs.server), str(certs.server_key)))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.options & ssl.OP_NO_COMPRESSION
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(n.startswith("ECDHE-") for n in tls12)
    assert all("GCM" in n or "CHACHA20" in n for n in tls12)


def test_client_ca_requires_client_certificates(certs: DevCerts) -> None:
    context = server_context(ListenerTls(str(certs.server), str(certs.server_key),
                                         client_ca=str(certs.ca)))
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_client_context_verifies_by_default(certs: DevCerts, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    with caplog.at_level(logging.WARNING):
        context = client_context(None, who="destination a")
        with_ca = client_context(ClientTls(ca=str(certs.ca), cert=str(certs.client),
                                           key=str(certs.client_key)))
    assert not caplog.records
    for made in (context, with_ca):
        assert made.verify_mode == ssl.CERT_REQUIRED and made.check_hostname
        assert made.minimum_version == ssl.TLSVersion.TLSv1_2


def test_verify_false_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        context = client_context(ClientTls(verify=False), who="destination lab")
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "destination lab" in record.getMessage() and "verification is off" in record.getMessage()


def test_errors_name_the_option(tmp_path: Path, certs: DevCerts) -> None:
    with pytest.raises(TlsConfigError) as caught:
        client_context(ClientTls(ca=str(tmp_path / "none.pem")))
    assert caught.value.option == "ca"
    with pytest.raises(TlsConfigError) as caught:
        client_context(ClientTls(key=str(certs.client_key)))
    assert caught.value.option == "cert"
    with pytest.raises(TlsConfigError) as caught:
        server_context(ListenerTls(str(certs.server), str(certs.server), client_ca=str(certs.ca)))
    assert caught.value.option == "key"
    with pytest.raises(TlsConfigError) as caught:
        server_context(ListenerTls(str(certs.server), str(certs.server_key),
                                   client_ca=str(certs.ca), allow=("CN=a", "zz")))
    assert caught.value.option == "allow[1]"


def test_allow_list_by_fingerprint_with_or_without_colons(certs: DevCerts,
                                                         tmp_path: Path) -> None:
    client = der(certs.client)
    digest = hashlib.sha256(client).hexdigest()
    other = make_dev_certs(tmp_path / "other")
    for entry in (digest, digest.upper(), fingerprint(client), "sha256:" + fingerprint(client)):
        allow = AllowList([entry])
        assert allow.permits(client)
        assert not allow.permits(der(other.client))
        assert not allow.permits(None)


def test_allow_list_by_subject(certs: DevCerts, tmp_path: Path) -> None:
    client = der(certs.client)
    other = der(make_dev_certs(tmp_path / "o", client_cn="lab-feed").client)
    assert AllowList(["CN=engine-dev-client"]).permits(client)
    assert not AllowList(["CN=engine-dev-client"]).permits(other)
    assert AllowList(["CN=lab-feed"]).permits(other)
    # A full subject must match whole: an extra attribute makes it another subject.
    assert not AllowList(["CN=engine-dev-client,O=Clinic"]).permits(client)
    assert AllowList(["CN=x", "CN=lab-feed"]).permits(other)


def test_empty_allow_list_permits_what_the_ca_signed(certs: DevCerts) -> None:
    assert not AllowList([])
    assert AllowList([]).permits(der(certs.client))


@pytest.mark.parametrize("entry", ["ab:cd", "not a subject", "=x", "0" * 63])
def test_bad_allow_entries(entry: str) -> None:
    with pytest.raises(TlsConfigError) as caught:
        AllowList(["CN=ok", entry])
    assert caught.value.option == "allow[1]"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.9.9.9", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.1", False), ("ehr.test", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_dev_certs_files_modes_and_names(certs: DevCerts) -> None:
    for key in (certs.ca_key, certs.server_key, certs.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate(certs.server.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "ehr.example.test"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.20.30.40")}
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    server.verify_directly_issued_by(ca)
    x509.load_pem_x509_certificate(certs.client.read_bytes()).verify_directly_issued_by(ca)
    assert certs.client_fingerprint == fingerprint(der(certs.client))


def test_dev_certs_do_not_overwrite(certs: DevCerts) -> None:
    before = certs.ca_key.read_bytes()
    with pytest.raises(FileExistsError):
        make_dev_certs(certs.directory)
    assert certs.ca_key.read_bytes() == before
    again = make_dev_certs(certs.directory, force=True)
    assert again.ca_key.read_bytes() != before
    assert stat.S_IMODE(again.ca_key.stat().st_mode) == 0o600


def test_engine_certs_dev_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dev"
    assert main(["certs", "dev", "--dir", str(out), "--host", "ehr.example.test"]) == 0
    printed = capsys.readouterr().out
    expected = fingerprint(der(out / "client.pem"))
    assert f"client certificate SHA-256 (for allow:): {expected}" in printed
    assert "ehr.example.test" in printed
    assert "PRIVATE KEY" not in printed
    assert main(["certs", "dev", "--dir", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
