"""Development certificates for trying TLS out: a local CA, a server certificate and a client
certificate, PEM files in one folder (`engine certs dev`).

Rules it keeps: private keys are written with mode 0600 from the start (never readable by
others, not even for a moment); existing files are never overwritten unless asked; the
server certificate names localhost and 127.0.0.1 plus the hosts given (IP addresses as IP
SANs, others as DNS names). Keys are ECDSA P-256: quick to make, accepted everywhere the
engine's ciphers are. These are for development: the CA key sits beside the certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.security.tls import fingerprint

VALID_DAYS = 365
CLIENT_CN = "engine-dev-client"
FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem",
         "client-key.pem")


@dataclass(frozen=True)
class DevCerts:
    """Where `make_dev_certs` wrote each file, and the client certificate's fingerprint."""

    directory: Path
    ca: Path
    ca_key: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    client_fingerprint: str
    hosts: tuple[str, ...]


def make_dev_certs(
    directory: Path, hosts: Sequence[str] = (), *, force: bool = False,
    client_cn: str = CLIENT_CN,
) -> DevCerts:
    """Write the CA, server and client certificates into `directory` (created if needed).
    Raises FileExistsError naming the first file already there, unless `force`."""
    directory.mkdir(parents=True, exist_ok=True)
    if not force:
        for name in FILES:
            if (directory / name).exists():
                raise FileExistsError(f"{directory / name} exists (use --force to replace)")
    names = tuple(dict.fromkeys(["localhost", "127.0.0.1", *hosts]))
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engine development CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _leaf(ca, ca_key, server_key, "localhost", now,
                   ExtendedKeyUsageOID.SERVER_AUTH, _san(names))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _leaf(ca, ca_key, client_key, client_cn, now, ExtendedKeyUsageOID.CLIENT_AUTH,
                   None)
    paths = tuple(directory / name for name in FILES)
    ca_path, ca_key_path, server_path, server_key_path, client_path, client_key_path = paths
    for path, cert in ((ca_path, ca), (server_path, server), (client_path, client)):
        _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    for path, key in ((ca_key_path, ca_key), (server_key_path, server_key),
                      (client_key_path, client_key)):
        _write(path, key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ), 0o600)
    der = client.public_bytes(serialization.Encoding.DER)
    return DevCerts(directory, ca_path, ca_key_path, server_path, server_key_path, client_path,
                    client_key_path, client_fingerprint=fingerprint(der), hosts=names)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little behind
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, key: ec.EllipticCurvePrivateKey,
    cn: str, now: datetime.datetime, purpose: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        _builder(subject, ca.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, mode: int) -> None:
    # O_CREAT with the mode: a key is never on disk with wider permissions, even briefly.
    # A replaced file keeps its old mode under O_CREAT, hence the chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
